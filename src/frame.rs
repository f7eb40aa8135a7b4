//! Length-prefixed framing: a 4-byte big-endian length, then that many protobuf bytes.
//!
//! The decoder never sizes a buffer from a declared length: it checks the prefix against
//! the limit in force as soon as the four bytes are there, and otherwise only keeps the
//! bytes that actually arrived. It owns no I/O; callers feed it whatever they read.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

/// Bytes in the length prefix.
pub const PREFIX_LEN: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {declared} bytes exceeds the limit of {limit}")]
    TooLarge { declared: u64, limit: usize },
    #[error("frame does not decode: {0}")]
    Malformed(String),
    #[error("empty frame")]
    Empty,
}

/// Encodes `frame` with its length prefix into one contiguous buffer.
pub fn encode<M: Message>(frame: &M) -> Bytes {
    let len = frame.encoded_len();
    let mut buf = BytesMut::with_capacity(PREFIX_LEN + len);
    buf.put_u32(len as u32);
    frame.encode(&mut buf).expect("buffer was sized from encoded_len");
    buf.freeze()
}

/// Decodes frames of type `M` from a byte stream delivered in arbitrary chunks.
#[derive(Debug)]
pub struct Decoder {
    /// Bytes of an incomplete frame carried over between reads. Empty (and unallocated)
    /// whenever the stream is at a frame boundary, which is the idle state.
    partial: BytesMut,
    limit: usize,
}

impl Decoder {
    pub fn new(limit: usize) -> Self {
        Decoder { partial: BytesMut::new(), limit }
    }

    /// Changes the limit for frames whose prefix has not been checked yet.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Feeds `chunk` and calls `on_frame` for every complete frame, in order. Stops at the
    /// first error, or when `on_frame` returns `false` (the frames after it stay unread).
    pub fn feed<M, F>(&mut self, chunk: &[u8], mut on_frame: F) -> Result<(), FrameError>
    where
        M: Message + Default,
        F: FnMut(M) -> bool,
    {
        if self.partial.is_empty() {
            // The common case: whole frames straight from the caller's buffer, and only
            // an incomplete tail copied.
            let used = decode_all(chunk, self.limit, &mut on_frame)?;
            self.partial.extend_from_slice(&chunk[used..]);
            return Ok(());
        }
        self.partial.extend_from_slice(chunk);
        let mut pending = std::mem::take(&mut self.partial);
        let used = decode_all(&pending, self.limit, &mut on_frame)?;
        pending.advance(used);
        // At a frame boundary the buffer is dropped rather than kept idle.
        if !pending.is_empty() {
            self.partial = pending;
        }
        Ok(())
    }

    /// Bytes held for an incomplete frame.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }
}

/// Decodes every complete frame at the front of `buf`; returns how many bytes they used.
fn decode_all<M, F>(buf: &[u8], limit: usize, on_frame: &mut F) -> Result<usize, FrameError>
where
    M: Message + Default,
    F: FnMut(M) -> bool,
{
    let mut used = 0;
    while let Some(len) = declared_len(&buf[used..], limit)? {
        let start = used + PREFIX_LEN;
        if buf.len() - start < len {
            break;
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        let frame = M::decode(&buf[start..start + len])
            .map_err(|e| FrameError::Malformed(e.to_string()))?;
        used = start + len;
        if !on_frame(frame) {
            break;
        }
    }
    Ok(used)
}

/// The declared length of the frame at the front of `buf`, checked against `limit`, or
/// `None` when the prefix is not complete yet.
fn declared_len(buf: &[u8], limit: usize) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..PREFIX_LEN) else {
        return Ok(None);
    };
    let declared = u32::from_be_bytes(prefix.try_into().expect("four bytes"));
    if declared as u64 > limit as u64 {
        return Err(FrameError::TooLarge { declared: declared as u64, limit });
    }
    Ok(Some(declared as usize))
}

#[cfg(test)]
mod tests;
