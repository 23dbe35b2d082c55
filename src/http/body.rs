//! Message bodies: strict decoding of `Content-Length` and chunked framing.
//!
//! The decoders return only body bytes, so the proxy re-frames what it
//! forwards and never copies a peer's raw framing to the other side.

use std::io::{self, BufRead, Read};

use super::request::Framing;

/// Maximum length of a chunk-size line, extensions included, in bytes.
const MAX_CHUNK_LINE_BYTES: usize = 4096;

/// Maximum total size of the trailer section in bytes.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data with this many bytes left.
    Data(u64),
    /// Expecting the CRLF that ends chunk data.
    DataEnd,
    /// After the last chunk; trailers and the final empty line have been read.
    Done,
}

/// Decoder of a request or response body.
pub struct BodyReader<R> {
    inner: R,
    kind: Kind,
}

enum Kind {
    Length {
        remaining: u64,
    },
    Chunked {
        state: ChunkState,
    },
    /// The body ends when the peer closes the connection (responses only).
    UntilClose,
}

impl<R: BufRead> BodyReader<R> {
    /// Creates a decoder for a request body with this framing.
    pub fn new(inner: R, framing: Framing) -> BodyReader<R> {
        let kind = match framing {
            Framing::None => Kind::Length { remaining: 0 },
            Framing::Length(remaining) => Kind::Length { remaining },
            Framing::Chunked => Kind::Chunked {
                state: ChunkState::Size,
            },
        };
        BodyReader { inner, kind }
    }

    /// Creates a decoder for a response body delimited by the end of the connection.
    pub fn until_close(inner: R) -> BodyReader<R> {
        BodyReader {
            inner,
            kind: Kind::UntilClose,
        }
    }

    /// Returns whether a length-delimited or chunked body has been read to
    /// its end. A body delimited by the end of the connection never reports
    /// done, because only the caller sees the end of the connection.
    pub fn is_done(&self) -> bool {
        match self.kind {
            Kind::Length { remaining } => remaining == 0,
            Kind::Chunked { state } => state == ChunkState::Done,
            Kind::UntilClose => false,
        }
    }

    fn read_chunked(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let Kind::Chunked { state } = &mut self.kind else {
                unreachable!()
            };
            match *state {
                ChunkState::Done => return Ok(0),
                ChunkState::Size => {
                    let size = read_chunk_size(&mut self.inner)?;
                    if size == 0 {
                        read_trailers(&mut self.inner)?;
                        *state = ChunkState::Done;
                        return Ok(0);
                    }
                    *state = ChunkState::Data(size);
                }
                ChunkState::Data(remaining) => {
                    if out.is_empty() {
                        return Ok(0);
                    }
                    let limit = out
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    let read = self.inner.read(&mut out[..limit])?;
                    if read == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "body ended inside a chunk",
                        ));
                    }
                    let left = remaining - read as u64;
                    *state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(read);
                }
                ChunkState::DataEnd => {
                    expect_crlf(&mut self.inner)?;
                    *state = ChunkState::Size;
                }
            }
        }
    }
}

impl<R: BufRead> Read for BodyReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match &mut self.kind {
            Kind::Length { remaining } => {
                if *remaining == 0 || out.is_empty() {
                    return Ok(0);
                }
                let limit = out
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                let read = self.inner.read(&mut out[..limit])?;
                if read == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before the end of the body",
                    ));
                }
                *remaining -= read as u64;
                Ok(read)
            }
            Kind::Chunked { .. } => self.read_chunked(out),
            Kind::UntilClose => self.inner.read(out),
        }
    }
}

/// Reads one line ending in CRLF, without the CRLF, bounded by `limit` bytes.
fn read_line<R: BufRead>(inner: &mut R, limit: usize, line: &mut Vec<u8>) -> io::Result<()> {
    line.clear();
    loop {
        let available = inner.fill_buf()?;
        if available.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "body ended inside a chunk header",
            ));
        }
        let newline = available.iter().position(|&b| b == b'\n');
        let take = newline.map_or(available.len(), |index| index + 1);
        if line.len() + take > limit {
            return Err(invalid("chunk header or trailer line too long"));
        }
        line.extend_from_slice(&available[..take]);
        inner.consume(take);
        if newline.is_some() {
            break;
        }
    }
    line.pop();
    if line.pop() != Some(b'\r') {
        return Err(invalid("chunk line not ended by CRLF"));
    }
    // Controls other than tab, including a bare CR, have no place in a chunk
    // line; rejecting them keeps a smuggled request out of an extension.
    if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7F) {
        return Err(invalid("control character in chunk line"));
    }
    Ok(())
}

/// Parses a chunk-size line: hex digits, then optional `;` extensions,
/// which are validated and ignored.
fn read_chunk_size<R: BufRead>(inner: &mut R) -> io::Result<u64> {
    let mut line = Vec::new();
    read_line(inner, MAX_CHUNK_LINE_BYTES, &mut line)?;
    parse_chunk_size(&line)
}

/// Parses the text of a chunk-size line (without its CRLF).
pub fn parse_chunk_size(line: &[u8]) -> io::Result<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(invalid("missing chunk size"));
    }
    if digits > 16 {
        return Err(invalid("chunk size too large"));
    }
    let rest = &line[digits..];
    let rest_trimmed = rest.trim_ascii_start();
    if !rest_trimmed.is_empty() && rest_trimmed[0] != b';' {
        return Err(invalid("invalid character after chunk size"));
    }

    let text = std::str::from_utf8(&line[..digits]).map_err(|_| invalid("invalid chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| invalid("invalid chunk size"))
}

fn expect_crlf<R: BufRead>(inner: &mut R) -> io::Result<()> {
    let mut ending = [0u8; 2];
    inner.read_exact(&mut ending)?;
    if ending != *b"\r\n" {
        return Err(invalid("chunk data not followed by CRLF"));
    }
    Ok(())
}

/// Reads and discards trailer fields up to the empty line that ends the body.
fn read_trailers<R: BufRead>(inner: &mut R) -> io::Result<()> {
    let mut line = Vec::new();
    let mut total = 0;
    loop {
        read_line(inner, MAX_TRAILER_BYTES, &mut line)?;
        if line.is_empty() {
            return Ok(());
        }
        total += line.len() + 2;
        if total > MAX_TRAILER_BYTES {
            return Err(invalid("trailer section too large"));
        }
        if line[0] == b' ' || line[0] == b'\t' || !line.contains(&b':') {
            return Err(invalid("invalid trailer field"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut reader = BodyReader::new(bytes, Framing::Chunked);
        let mut out = Vec::new();
        reader.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn chunked_decodes_with_extensions_and_trailers() {
        let body =
            decode(b"4;name=value\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n").unwrap();
        assert_eq!(body, b"Wikipedia");
    }

    #[test]
    fn chunked_rejects_smuggled_request_in_extension() {
        let error = decode(b"4;x\nGET /admin HTTP/1.1\r\nWiki\r\n0\r\n\r\n").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(decode(b"4;x\rGET\r\nWiki\r\n0\r\n\r\n").is_err());
    }

    #[test]
    fn chunked_rejects_bad_sizes() {
        assert!(decode(b"x\r\n\r\n").is_err());
        assert!(decode(b"11111111111111111\r\n").is_err());
        assert!(decode(b"-1\r\n").is_err());
        assert!(decode(b"4 x\r\nWiki\r\n0\r\n\r\n").is_err());
        assert!(decode(b"4\r\nWikiXX0\r\n\r\n").is_err());
    }

    #[test]
    fn chunked_reports_truncation() {
        let error = decode(b"a\r\nshort").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert!(decode(b"4\r\nWiki\r\n").is_err());
    }

    #[test]
    fn length_body_reports_truncation() {
        let mut reader = BodyReader::new(&b"abc"[..], Framing::Length(5));
        let mut out = Vec::new();
        assert_eq!(
            reader.read_to_end(&mut out).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut exact = BodyReader::new(&b"abcdef"[..], Framing::Length(3));
        let mut out = Vec::new();
        exact.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");
    }
}
