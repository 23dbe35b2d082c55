//! Streaming copy of a decoded body from one connection to the other,
//! re-encoded for the receiving side, through one fixed-size buffer.

use std::io::{self, Read, Write};
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard};

/// Body bytes moved per read and write.
pub const BODY_BUFFER_BYTES: usize = 64 * 1024;

/// Room before the data for a chunk-size line: the hex digits of
/// [`BODY_BUFFER_BYTES`] and CRLF fit in 8 bytes.
const CHUNK_PREFIX_BYTES: usize = 8;

/// Framing of the relayed body on the sending side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Bytes as they are: the length is announced elsewhere, or the body
    /// ends when the connection closes.
    Identity,
    /// One chunk per read, then the last chunk with no trailers.
    Chunked,
}

/// Failure of a relay, by the side that failed.
#[derive(Debug)]
pub enum RelayError {
    /// Reading or decoding the source failed; bytes may already have gone out.
    Read(io::Error),
    /// Writing to the destination failed.
    Write(io::Error),
}

/// Relay buffers kept for reuse between requests, so that a request does
/// not allocate and zero a fresh buffer. Concurrent requests take distinct
/// buffers; at most [`MAX_POOLED_RELAYS`] stay pooled.
#[derive(Default)]
pub struct RelayPool {
    idle: Mutex<Vec<Relay>>,
}

/// Maximum number of idle relay buffers a pool keeps.
const MAX_POOLED_RELAYS: usize = 64;

impl RelayPool {
    /// Takes a pooled buffer, or allocates one when none is idle.
    pub fn take(&self) -> PooledRelay<'_> {
        let relay = self.lock().pop().unwrap_or_else(Relay::new);
        PooledRelay {
            relay: Some(relay),
            pool: self,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Relay>> {
        self.idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Relay buffer borrowed from a [`RelayPool`]; dropping it returns it.
pub struct PooledRelay<'a> {
    relay: Option<Relay>,
    pool: &'a RelayPool,
}

impl Deref for PooledRelay<'_> {
    type Target = Relay;

    fn deref(&self) -> &Relay {
        self.relay.as_ref().expect("relay present until drop")
    }
}

impl DerefMut for PooledRelay<'_> {
    fn deref_mut(&mut self) -> &mut Relay {
        self.relay.as_mut().expect("relay present until drop")
    }
}

impl Drop for PooledRelay<'_> {
    fn drop(&mut self) {
        let Some(relay) = self.relay.take() else {
            return;
        };
        let mut idle = self.pool.lock();
        if idle.len() < MAX_POOLED_RELAYS {
            idle.push(relay);
        }
    }
}

/// Reusable buffer for relaying bodies with bounded memory.
pub struct Relay {
    /// Chunk-size prefix room, data, and room for the CRLF after the data.
    buffer: Box<[u8]>,
}

impl Relay {
    pub fn new() -> Relay {
        Relay {
            buffer: vec![0; CHUNK_PREFIX_BYTES + BODY_BUFFER_BYTES + 2].into_boxed_slice(),
        }
    }

    /// Copies everything `source` yields to `destination` and returns the
    /// number of body bytes copied.
    ///
    /// With [`Encoding::Chunked`] each chunk leaves in one write, size line
    /// and CRLF included, and the last chunk is written only after `source`
    /// ended cleanly. So a failed source never looks complete downstream.
    pub fn copy(
        &mut self,
        source: &mut impl Read,
        destination: &mut impl Write,
        encoding: Encoding,
    ) -> Result<u64, RelayError> {
        let mut total = 0u64;
        loop {
            let data_start = CHUNK_PREFIX_BYTES;
            let read =
                match source.read(&mut self.buffer[data_start..data_start + BODY_BUFFER_BYTES]) {
                    Ok(0) => break,
                    Ok(read) => read,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) => return Err(RelayError::Read(error)),
                };
            total += read as u64;
            let data_end = data_start + read;

            let frame = match encoding {
                Encoding::Identity => data_start..data_end,
                Encoding::Chunked => {
                    let size_line = format!("{read:x}\r\n");
                    let frame_start = data_start - size_line.len();
                    self.buffer[frame_start..data_start].copy_from_slice(size_line.as_bytes());
                    self.buffer[data_end..data_end + 2].copy_from_slice(b"\r\n");
                    frame_start..data_end + 2
                }
            };
            destination
                .write_all(&self.buffer[frame])
                .map_err(RelayError::Write)?;
        }
        if encoding == Encoding::Chunked {
            destination
                .write_all(b"0\r\n\r\n")
                .map_err(RelayError::Write)?;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::body::BodyReader;
    use crate::http::request::Framing;

    #[test]
    fn chunked_output_decodes_to_input() {
        let input: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut encoded = Vec::new();
        let copied = Relay::new()
            .copy(&mut &input[..], &mut encoded, Encoding::Chunked)
            .unwrap();
        assert_eq!(copied, input.len() as u64);
        assert!(encoded.ends_with(b"\r\n0\r\n\r\n"));

        let mut decoded = Vec::new();
        BodyReader::new(&encoded[..], Framing::Chunked)
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, input);
    }

    #[test]
    fn failed_source_gets_no_last_chunk() {
        let truncated = b"5\r\nhello\r\n3\r\nab";
        let mut source = BodyReader::new(&truncated[..], Framing::Chunked);
        let mut encoded = Vec::new();
        let error = Relay::new()
            .copy(&mut source, &mut encoded, Encoding::Chunked)
            .unwrap_err();
        assert!(matches!(error, RelayError::Read(_)), "{error:?}");
        assert!(!encoded.ends_with(b"0\r\n\r\n"), "{encoded:?}");
    }
}
