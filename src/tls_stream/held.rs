//! A byte buffer the TLS stream holds only while it must: consumed from the front, and
//! freed (capacity 0) the moment nothing is left, so an idle stream keeps no allocation.

use std::io;

/// Bytes held for a while, consumed from the front, freed (capacity 0) once all are.
#[derive(Default)]
pub(super) struct Held {
    buf: Vec<u8>,
    /// How far the front has been consumed.
    at: usize,
}

impl Held {
    pub(super) fn is_empty(&self) -> bool {
        self.at == self.buf.len()
    }

    pub(super) fn len(&self) -> usize {
        self.buf.len() - self.at
    }

    pub(super) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[self.at..]
    }

    pub(super) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.at..]
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.at += n;
        debug_assert!(self.at <= self.buf.len());
        if self.is_empty() {
            *self = Held::default();
        }
    }

    pub(super) fn extend(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// Lets `fill` write into `room` new bytes at the end and keeps the `n` it reports.
    pub(super) fn append_with(
        &mut self,
        room: usize,
        fill: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.compact();
        let start = self.buf.len();
        self.buf.resize(start + room, 0);
        let written = fill(&mut self.buf[start..]);
        self.buf.truncate(start + *written.as_ref().unwrap_or(&0));
        if self.is_empty() {
            *self = Held::default();
        }
        written.map(|_| ())
    }

    /// Drops the consumed front, so appending never grows past what is still held.
    fn compact(&mut self) {
        if self.at > 0 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
    }
}
