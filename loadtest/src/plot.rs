//! `--plot FILE.svg`: a hand-drawn SVG with two panels: latency against percentile (the
//! HdrHistogram way: the x axis stretches the tail, 90%, 99%, 99.9%, ...) for each
//! histogram of the run, and connections open over time.

use std::fmt::Write;

use crate::histogram::Hist;

const WIDTH: f64 = 900.0;
const PANEL: f64 = 300.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const GAP: f64 = 90.0;
/// Tail depth of the percentile axis: 1 - 10^-NINES.
const NINES: f64 = 5.0;
const COLOURS: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

pub fn svg(title: &str, curves: &[(&str, &Hist)], ramp: &[(f64, u64)]) -> String {
    let height = TOP + 2.0 * PANEL + GAP + 60.0;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(
        out,
        r#"<text x="{LEFT}" y="28" font-size="16" font-weight="bold">{}</text>"#,
        escape(title)
    );
    percentiles(&mut out, curves, TOP);
    connections(&mut out, ramp, TOP + PANEL + GAP);
    out.push_str("</svg>\n");
    out
}

fn percentiles(out: &mut String, curves: &[(&str, &Hist)], top: f64) {
    let max_ms = curves.iter().map(|(_, h)| h.0.max() as f64 / 1e3).fold(0.0, f64::max).max(0.001);
    frame(out, top, "percentile", "latency (ms)", max_ms);
    for (tick, label) in
        [(0.0, "0%"), (1.0, "90%"), (2.0, "99%"), (3.0, "99.9%"), (4.0, "99.99%"), (5.0, "99.999%")]
    {
        let x = x_at(tick / NINES);
        let _ = write!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            top + PANEL + 16.0
        );
    }
    for (i, (name, hist)) in curves.iter().enumerate() {
        if hist.0.is_empty() {
            continue;
        }
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<(f64, f64)> = (0..=200)
            .map(|step| {
                let depth = NINES * step as f64 / 200.0;
                let q = 1.0 - 10f64.powf(-depth);
                let ms = hist.0.value_at_quantile(q) as f64 / 1e3;
                (x_at(depth / NINES), y_at(top, ms / max_ms))
            })
            .collect();
        polyline(out, &points, colour);
        legend(out, i, name, colour, top);
    }
}

fn connections(out: &mut String, ramp: &[(f64, u64)], top: f64) {
    let max_t = ramp.last().map_or(1.0, |&(t, _)| t).max(0.001);
    let max_n = ramp.iter().map(|&(_, n)| n).max().unwrap_or(0).max(1) as f64;
    frame(out, top, "seconds", "connections open", max_n);
    for i in 0..=5 {
        let t = max_t * i as f64 / 5.0;
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t:.1}</text>"#,
            x_at(i as f64 / 5.0),
            top + PANEL + 16.0
        );
    }
    let points: Vec<(f64, f64)> =
        ramp.iter().map(|&(t, n)| (x_at(t / max_t), y_at(top, n as f64 / max_n))).collect();
    polyline(out, &points, COLOURS[0]);
}

/// Axes, horizontal grid lines with y labels, and the axis titles.
fn frame(out: &mut String, top: f64, x_title: &str, y_title: &str, y_max: f64) {
    let right = WIDTH - RIGHT;
    let bottom = top + PANEL;
    for i in 0..=4 {
        let y = y_at(top, i as f64 / 4.0);
        let value = y_max * i as f64 / 4.0;
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 6.0,
            y + 4.0,
            short(value)
        );
    }
    let _ = write!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{:.1}" height="{PANEL}" fill="none" stroke="#333"/>"##,
        right - LEFT
    );
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{x_title}</text>"#,
        (LEFT + right) / 2.0,
        bottom + 36.0
    );
    let _ = write!(
        out,
        r#"<text x="18" y="{:.1}" transform="rotate(-90 18 {:.1})" text-anchor="middle">{y_title}</text>"#,
        top + PANEL / 2.0,
        top + PANEL / 2.0
    );
}

fn legend(out: &mut String, i: usize, name: &str, colour: &str, top: f64) {
    let y = top + 18.0 + 18.0 * i as f64;
    let x = LEFT + 14.0;
    let _ = write!(
        out,
        r#"<line x1="{x}" y1="{y}" x2="{:.1}" y2="{y}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
        x + 24.0,
        x + 30.0,
        y + 4.0,
        escape(name)
    );
}

fn polyline(out: &mut String, points: &[(f64, f64)], colour: &str) {
    let list: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = write!(
        out,
        r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
        list.join(" ")
    );
}

fn x_at(fraction: f64) -> f64 {
    LEFT + fraction * (WIDTH - RIGHT - LEFT)
}

fn y_at(top: f64, fraction: f64) -> f64 {
    top + PANEL - fraction * PANEL
}

fn short(v: f64) -> String {
    match v {
        v if v >= 10_000.0 => format!("{:.0}k", v / 1e3),
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 1.0 => format!("{v:.1}"),
        v => format!("{v:.3}"),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_well_formed_document() {
        let mut h = Hist::default();
        (1..=10_000).for_each(|v| h.record(v));
        let text = svg("a <test>", &[("delivery", &h)], &[(0.0, 0), (1.0, 10)]);
        assert!(text.starts_with("<svg") && text.ends_with("</svg>\n"));
        assert!(text.contains("a &lt;test&gt;"));
        assert_eq!(text.matches("<polyline").count(), 2);
    }
}
