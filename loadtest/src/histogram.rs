//! Latency histograms: how workers ship them (base64 of the HdrHistogram V2 encoding
//! inside JSON) and the percentile summary every report prints. Values are microseconds.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// A histogram of microseconds that serializes as base64 text.
#[derive(Debug, Clone)]
pub struct Hist(pub Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        // Three significant digits, resizing as values arrive: no upper bound to guess.
        Hist(Histogram::new(3).expect("3 significant digits is valid"))
    }
}

impl Hist {
    pub fn record(&mut self, micros: u64) {
        // An auto-resizing histogram only refuses values beyond u64 range.
        let _ = self.0.record(micros.max(1));
    }

    pub fn merge(&mut self, other: &Hist) {
        let _ = self.0.add(&other.0);
    }

    pub fn summary(&self) -> Summary {
        let h = &self.0;
        let at = |q: f64| {
            if h.is_empty() { 0 } else { h.value_at_quantile(q) }
        };
        Summary {
            count: h.len(),
            p50_us: at(0.5),
            p90_us: at(0.9),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: h.max(),
            mean_us: if h.is_empty() { 0.0 } else { h.mean() },
        }
    }

    pub fn to_base64(&self) -> String {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(&self.0, &mut bytes)
            .expect("serializing to memory cannot fail");
        STANDARD.encode(bytes)
    }

    pub fn from_base64(text: &str) -> anyhow::Result<Hist> {
        let bytes = STANDARD.decode(text)?;
        let h = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| anyhow::anyhow!("bad histogram: {e:?}"))?;
        Ok(Hist(h))
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Hist::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

/// The figures a reader compares: percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_the_trip_through_json_and_merges() {
        let mut a = Hist::default();
        (1..=1000).for_each(|v| a.record(v));
        let text = serde_json::to_string(&a).unwrap();
        let mut b: Hist = serde_json::from_str(&text).unwrap();
        b.merge(&a);
        let s = b.summary();
        assert_eq!(s.count, 2000);
        assert!((495..=505).contains(&s.p50_us), "{s:?}");
        assert_eq!(s.max_us, 1000);
    }
}
