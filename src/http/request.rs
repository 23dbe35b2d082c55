//! Request heads: `httparse` parsing plus the framing rules keygate enforces.
//!
//! Anything that two HTTP implementations could read differently is
//! rejected instead of guessed, because a gateway and keygate that disagree
//! on where a request ends can be made to authorise a smuggled request.

use std::ops::Range;

/// Compile-time ceiling for `--max-headers`; the parser's header slots live on the stack.
pub const MAX_HEADERS_CEILING: usize = 256;

/// HTTP version of a request. Only HTTP/1.0 and HTTP/1.1 are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// Body delimitation of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// A body of exactly this many bytes.
    Length(u64),
    /// A `Transfer-Encoding: chunked` body.
    Chunked,
}

impl Framing {
    pub fn has_body(self) -> bool {
        !matches!(self, Framing::None | Framing::Length(0))
    }
}

/// Parsed request head. Spans index into the bytes the head was parsed from.
#[derive(Clone, Debug)]
pub struct Head {
    pub method: Range<usize>,
    pub target: Range<usize>,
    pub version: Version,
    /// Name and value span of each header field, in order.
    pub headers: Vec<(Range<usize>, Range<usize>)>,
    pub framing: Framing,
    /// Whether the client allows the connection to stay open after the response.
    pub keep_alive: bool,
    /// Whether the client sent `Expect: 100-continue`.
    pub expect_continue: bool,
    /// Length of the head in bytes, including the final empty line.
    pub length: usize,
}

/// Reason a request head is rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Syntax or framing error; the response is 400.
    Malformed(&'static str),
    /// Head larger than the byte limit or with more headers than allowed; the response is 431.
    TooLarge,
    /// A version other than HTTP/1.0 and HTTP/1.1; the response is 505.
    UnsupportedVersion,
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            HeadError::Malformed(_) => 400,
            HeadError::TooLarge => 431,
            HeadError::UnsupportedVersion => 505,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            HeadError::Malformed(reason) => reason,
            HeadError::TooLarge => "request header section too large",
            HeadError::UnsupportedVersion => "only HTTP/1.0 and HTTP/1.1 are supported",
        }
    }
}

/// Parses a request head from the start of `bytes`.
///
/// Returns `Ok(None)` when more bytes are needed. `max_headers` is capped at
/// [`MAX_HEADERS_CEILING`].
pub fn parse(bytes: &[u8], max_headers: usize) -> Result<Option<Head>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS_CEILING];
    let mut request = httparse::Request::new(&mut slots[..max_headers.min(MAX_HEADERS_CEILING)]);

    let length = match request.parse(bytes) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(length)) => length,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => return Err(classify_version_error(bytes)),
        Err(error) => return Err(HeadError::Malformed(describe(error))),
    };

    // httparse accepts a bare LF as a line ending. Another parser in front of
    // keygate may not, so the two could split headers differently.
    reject_bare_line_feeds(&bytes[..length])?;

    let span = |part: &[u8]| -> Range<usize> {
        let start = part.as_ptr() as usize - bytes.as_ptr() as usize;
        start..start + part.len()
    };

    let (Some(method), Some(target), Some(minor)) = (request.method, request.path, request.version)
    else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    let version = if minor == 1 {
        Version::Http11
    } else {
        Version::Http10
    };

    let mut head = Head {
        method: span(method.as_bytes()),
        target: span(target.as_bytes()),
        version,
        headers: Vec::with_capacity(request.headers.len()),
        framing: Framing::None,
        keep_alive: version == Version::Http11,
        expect_continue: false,
        length,
    };

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut connection_close = false;
    let mut connection_keep_alive = false;

    for header in request.headers.iter() {
        head.headers
            .push((span(header.name.as_bytes()), span(header.value)));
        let name = header.name;

        if name.eq_ignore_ascii_case("content-length") {
            let value = parse_content_length(header.value)?;
            if content_length.is_some_and(|previous| previous != value) {
                return Err(HeadError::Malformed("conflicting Content-Length headers"));
            }
            content_length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked {
                return Err(HeadError::Malformed("repeated Transfer-Encoding header"));
            }
            if !header.value.eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::Malformed("Transfer-Encoding other than chunked"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for option in header.value.split(|&b| b == b',') {
                let option = option.trim_ascii();
                connection_close |= option.eq_ignore_ascii_case(b"close");
                connection_keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue |= header.value.eq_ignore_ascii_case(b"100-continue");
        }
    }

    head.framing = match (content_length, chunked) {
        (Some(_), true) => {
            return Err(HeadError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (None, true) if version == Version::Http10 => {
            return Err(HeadError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        (None, true) => Framing::Chunked,
        (Some(length), false) => Framing::Length(length),
        (None, false) => Framing::None,
    };

    head.keep_alive = match version {
        Version::Http11 => !connection_close,
        Version::Http10 => connection_keep_alive && !connection_close,
    };

    Ok(Some(head))
}

/// Parses a `Content-Length` value: plain decimal digits that fit in a `u64`.
pub fn parse_content_length(value: &[u8]) -> Result<u64, HeadError> {
    const INVALID: HeadError = HeadError::Malformed("invalid Content-Length");

    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(INVALID);
    }
    let mut length: u64 = 0;
    for &digit in value {
        length = length
            .checked_mul(10)
            .and_then(|length| length.checked_add(u64::from(digit - b'0')))
            .ok_or(INVALID)?;
    }
    Ok(length)
}

fn reject_bare_line_feeds(head: &[u8]) -> Result<(), HeadError> {
    let mut previous = 0u8;
    for &byte in head {
        if byte == b'\n' && previous != b'\r' {
            return Err(HeadError::Malformed("line ending without carriage return"));
        }
        previous = byte;
    }
    Ok(())
}

/// Tells a well-formed request line with another HTTP version (505) from a
/// line that is not HTTP at all (400).
fn classify_version_error(bytes: &[u8]) -> HeadError {
    let line_end = bytes
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(bytes.len());
    let line = &bytes[..line_end];
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();

    let looks_like_version = version
        .strip_prefix(b"HTTP/")
        .is_some_and(|number| match number {
            [major] => major.is_ascii_digit(),
            [major, b'.', minor] => major.is_ascii_digit() && minor.is_ascii_digit(),
            _ => false,
        });
    if looks_like_version && line.iter().filter(|&&b| b == b' ').count() == 2 {
        HeadError::UnsupportedVersion
    } else {
        HeadError::Malformed("invalid HTTP version")
    }
}

fn describe(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid header name (folded header lines are not accepted)",
        httparse::Error::HeaderValue => "invalid byte in header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid byte in request line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Result<Option<Head>, HeadError> {
        parse(bytes, 100)
    }

    fn malformed(bytes: &[u8]) -> bool {
        matches!(parse_all(bytes), Err(HeadError::Malformed(_)))
    }

    #[test]
    fn parse_simple_get() {
        let bytes = b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\nNEXT";
        let head = parse_all(bytes).unwrap().unwrap();
        assert_eq!(&bytes[head.method.clone()], b"GET");
        assert_eq!(&bytes[head.target.clone()], b"/a?b");
        assert_eq!(head.length, bytes.len() - 4);
        assert!(head.keep_alive);
        assert_eq!(head.framing, Framing::None);
    }

    #[test]
    fn parse_partial_head() {
        assert!(
            parse_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn content_length_rules() {
        let head = parse_all(b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n");
        assert_eq!(head.unwrap().unwrap().framing, Framing::Length(u64::MAX));
        assert!(malformed(
            b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n"
        ));
        assert!(malformed(b"POST / HTTP/1.1\r\nContent-Length: 3x\r\n\r\n"));
        assert!(malformed(b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n"));
        assert!(malformed(
            b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n"
        ));
        assert!(malformed(b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n"));
        assert!(malformed(
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"
        ));
        let same = parse_all(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(same.unwrap().unwrap().framing, Framing::Length(3));
    }

    #[test]
    fn transfer_encoding_rules() {
        let head = parse_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(head.unwrap().unwrap().framing, Framing::Chunked);
        assert!(malformed(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        ));
        assert!(malformed(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n"
        ));
        assert!(malformed(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(malformed(
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(malformed(
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
    }

    #[test]
    fn folded_header_rejected() {
        assert!(malformed(
            b"GET / HTTP/1.1\r\nX-A: a\r\n Authorization: Bearer k\r\n\r\n"
        ));
        assert!(malformed(
            b"GET / HTTP/1.1\r\nX-A: a\r\n\tAuthorization: Bearer k\r\n\r\n"
        ));
    }

    #[test]
    fn bare_line_endings_rejected() {
        assert!(malformed(
            b"GET / HTTP/1.1\r\nX-A: a\nAuthorization: Bearer k\r\n\r\n"
        ));
        assert!(malformed(
            b"GET / HTTP/1.1\r\nX-A: a\rAuthorization: Bearer k\r\n\r\n"
        ));
        assert!(malformed(b"GET / HTTP/1.1\nHost: x\n\n"));
    }

    #[test]
    fn control_bytes_in_target_rejected() {
        assert!(malformed(b"GET /a\x00b HTTP/1.1\r\n\r\n"));
        assert!(malformed(b"GET /a\x01b HTTP/1.1\r\n\r\n"));
        assert!(malformed(b"GET /a\x7fb HTTP/1.1\r\n\r\n"));
    }

    #[test]
    fn non_ascii_header_value_accepted() {
        let head = parse_all("GET / HTTP/1.1\r\nX-User: jörg\r\n\r\n".as_bytes());
        assert!(head.unwrap().is_some());
    }

    #[test]
    fn versions_classified() {
        for line in [
            &b"GET / HTTP/2.0\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/3.0\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
        ] {
            assert_eq!(
                parse_all(line).unwrap_err(),
                HeadError::UnsupportedVersion,
                "{line:?}"
            );
        }
        for line in [
            &b"GET /\r\n\r\n"[..],
            b"GET / HTTP/x.y\r\n\r\n",
            b"GET / FOO\r\n\r\n",
            b"GET / HTTP/1.1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_all(line), Err(HeadError::Malformed(_))),
                "{line:?}"
            );
        }
    }

    #[test]
    fn too_many_headers() {
        let mut bytes = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..101 {
            bytes.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        assert_eq!(parse_all(&bytes).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn connection_options() {
        let close = parse_all(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(!close.unwrap().unwrap().keep_alive);
        let old = parse_all(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!old.unwrap().unwrap().keep_alive);
        let old_kept = parse_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(old_kept.unwrap().unwrap().keep_alive);
    }

    #[test]
    fn expect_continue_detected() {
        let head =
            parse_all(b"PUT / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n");
        assert!(head.unwrap().unwrap().expect_continue);
    }
}
