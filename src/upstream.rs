//! Upstream connections of reverse-proxy mode: connecting with a fresh name
//! resolution each time, a bounded pool of idle keep-alive connections, and
//! reading response heads.

use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::Upstream;
use crate::http::conn::is_timeout;
use crate::http::request::{MAX_HEADERS_CEILING, parse_content_length};

/// Size of each upstream connection's read buffer in bytes. It is also the
/// largest response head accepted.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Maximum time a connection stays in the idle pool.
///
/// NOTE: several upstream servers close idle keep-alive connections after
/// 5 s by default: uvicorn (`--timeout-keep-alive`), gunicorn (`keepalive`)
/// and Node.js releases before `server.keepAliveTimeout` became 65 s.
/// Reusing a connection for at most 4 s stays below that. An upstream with
/// a shorter timeout can still close a connection while a request is on its
/// way, and keygate repeats only requests that are safe to repeat.
const IDLE_LIFETIME: Duration = Duration::from_secs(4);

/// Connection settings shared by every upstream connection.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Time allowed to connect, across all resolved addresses.
    pub connect_timeout: Duration,
    /// Maximum wait for each read or write of a body.
    pub io_timeout: Duration,
    /// Maximum number of idle connections kept; 0 disables reuse.
    pub max_idle: usize,
}

/// Upstream with its pool of idle connections.
pub struct UpstreamPool {
    upstream: Upstream,
    settings: Settings,
    /// Idle connections, oldest first.
    idle: Mutex<Vec<IdleConn>>,
}

struct IdleConn {
    conn: UpstreamConn,
    since: Instant,
}

impl UpstreamPool {
    pub fn new(upstream: Upstream, settings: Settings) -> UpstreamPool {
        UpstreamPool {
            upstream,
            settings,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// `host:port` of the upstream as configured, for logs and the `Host` fallback.
    pub fn authority(&self) -> &str {
        &self.upstream.authority
    }

    fn lock_idle(&self) -> MutexGuard<'_, Vec<IdleConn>> {
        self.idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Takes the most recently used idle connection that still looks open.
    ///
    /// Connections past [`IDLE_LIFETIME`], closed by the upstream, or with
    /// unexpected bytes waiting are dropped on the way.
    pub fn take_idle(&self) -> Option<UpstreamConn> {
        loop {
            let entry = {
                let mut idle = self.lock_idle();
                let entry = idle.pop()?;
                if entry.since.elapsed() >= IDLE_LIFETIME {
                    // The rest are older still.
                    idle.clear();
                    return None;
                }
                entry
            };
            // The liveness check is a syscall, so it runs after the lock is
            // released; holding the lock across it made request threads queue.
            let mut conn = entry.conn;
            if conn.looks_open() {
                conn.reused = true;
                return Some(conn);
            }
        }
    }

    /// Returns a connection after a complete exchange, so a later request can reuse it.
    pub fn put_idle(&self, conn: UpstreamConn) {
        if self.settings.max_idle == 0 || conn.start < conn.end {
            return;
        }
        let mut idle = self.lock_idle();
        if idle.len() >= self.settings.max_idle {
            idle.remove(0);
        }
        idle.push(IdleConn {
            conn,
            since: Instant::now(),
        });
    }

    /// Opens a new connection.
    ///
    /// The host name is resolved on every call, because the addresses behind
    /// a name (a Kubernetes Service, for example) can change while keygate
    /// runs. Each address is tried in turn until `connect_timeout` is spent.
    pub fn connect(&self) -> io::Result<UpstreamConn> {
        let target = (self.upstream.host.as_str(), self.upstream.port);
        let deadline = Instant::now() + self.settings.connect_timeout;
        let mut last_error = io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} resolved to no address", self.upstream.host),
        );
        for address in target.to_socket_addrs()? {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect timed out before trying {address}"),
                ));
            }
            match TcpStream::connect_timeout(&address, left) {
                Ok(stream) => return UpstreamConn::new(stream, address, &self.settings),
                Err(error) => {
                    last_error = io::Error::new(error.kind(), format!("{address}: {error}"));
                }
            }
        }
        Err(last_error)
    }
}

/// Reason no response head could be read.
#[derive(Debug)]
pub enum ReadHeadError {
    /// The upstream closed or reset the connection before sending any byte.
    ClosedEarly(io::Error),
    /// No complete head arrived before the deadline.
    TimedOut,
    /// The head is invalid, or the connection failed in the middle of it.
    Invalid(String),
}

/// Response head from the upstream, copied out of the read buffer.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    /// Whether the response is HTTP/1.1 (else HTTP/1.0).
    pub http11: bool,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Framing of an upstream response body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    /// No body: a response to HEAD, or a 1xx, 204 or 304 status.
    None,
    Length(u64),
    Chunked,
    /// The body ends when the upstream closes the connection.
    UntilClose,
}

impl ResponseHead {
    /// Iterates over the values of every header field called `name`, ignoring case.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.headers
            .iter()
            .filter(move |(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_slice())
    }

    /// Works out the body framing as RFC 9112 section 6.3 orders it.
    ///
    /// Only `chunked` is accepted as a transfer coding, so a response that
    /// keygate could not decode is rejected instead of relayed wrongly.
    pub fn body(&self, request_was_head: bool) -> Result<ResponseBody, &'static str> {
        if request_was_head || self.status < 200 || self.status == 204 || self.status == 304 {
            return Ok(ResponseBody::None);
        }
        let mut codings = self.header_values("transfer-encoding").peekable();
        if codings.peek().is_some() {
            let chunked_only = codings.count() == 1
                && self
                    .header_values("transfer-encoding")
                    .all(|value| value.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            return if chunked_only {
                Ok(ResponseBody::Chunked)
            } else {
                Err("transfer coding other than chunked")
            };
        }
        let mut length = None;
        for value in self.header_values("content-length") {
            let value =
                parse_content_length(value.trim_ascii()).map_err(|_| "invalid Content-Length")?;
            if length.is_some_and(|previous| previous != value) {
                return Err("conflicting Content-Length headers");
            }
            length = Some(value);
        }
        Ok(length.map_or(ResponseBody::UntilClose, ResponseBody::Length))
    }

    /// Returns whether the upstream allows another request on this connection.
    pub fn keeps_alive(&self) -> bool {
        let mut close = false;
        let mut keep_alive = false;
        for value in self.header_values("connection") {
            for option in value.split(|&b| b == b',') {
                let option = option.trim_ascii();
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        !close && (self.http11 || keep_alive)
    }
}

/// Connection to the upstream with its read buffer.
pub struct UpstreamConn {
    stream: TcpStream,
    /// Address this connection went to.
    pub address: SocketAddr,
    buffer: Box<[u8]>,
    /// Start of the unconsumed bytes in `buffer`.
    start: usize,
    /// End of the bytes read into `buffer`.
    end: usize,
    io_timeout: Duration,
    /// Whether the connection came from the idle pool.
    pub reused: bool,
}

impl UpstreamConn {
    fn new(
        stream: TcpStream,
        address: SocketAddr,
        settings: &Settings,
    ) -> io::Result<UpstreamConn> {
        // Heads and body chunks go out in separate writes; without
        // TCP_NODELAY, Nagle's algorithm would hold each second write back
        // until the upstream acknowledges the first.
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(settings.io_timeout))?;
        Ok(UpstreamConn {
            stream,
            address,
            buffer: vec![0; READ_BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            io_timeout: settings.io_timeout,
            reused: false,
        })
    }

    /// Returns whether the upstream has neither closed the connection nor sent
    /// unrequested bytes, checked without blocking.
    fn looks_open(&self) -> bool {
        let mut probe = [0u8; 1];
        // One non-blocking peek, instead of switching the socket to
        // non-blocking mode and back around a std `peek`.
        // SAFETY: the descriptor belongs to `self.stream`, which is alive, and
        // `probe` is a writable buffer of the length passed.
        let received = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                probe.as_mut_ptr().cast(),
                probe.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        received < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }

    /// Reads the next response head, waiting until `deadline` at most, and
    /// switches to the per-read I/O timeout for the body that follows.
    pub fn read_head(&mut self, deadline: Instant) -> Result<ResponseHead, ReadHeadError> {
        let mut received_any = self.start < self.end;
        loop {
            if self.start < self.end {
                let pending = &self.buffer[self.start..self.end];
                if let Some((head, length)) = parse_head(pending)? {
                    self.consume_buffered(length);
                    self.stream
                        .set_read_timeout(Some(self.io_timeout))
                        .map_err(|error| ReadHeadError::Invalid(error.to_string()))?;
                    return Ok(head);
                }
                self.compact();
                if self.end == self.buffer.len() {
                    return Err(ReadHeadError::Invalid(format!(
                        "response head larger than {READ_BUFFER_BYTES} bytes"
                    )));
                }
            }

            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadHeadError::TimedOut);
            }
            let closed = |error: io::Error| {
                if received_any {
                    ReadHeadError::Invalid(format!(
                        "connection failed inside the response head: {error}"
                    ))
                } else {
                    ReadHeadError::ClosedEarly(error)
                }
            };
            self.stream.set_read_timeout(Some(left)).map_err(closed)?;
            match self.stream.read(&mut self.buffer[self.end..]) {
                Ok(0) => {
                    return Err(closed(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed",
                    )));
                }
                Ok(read) => {
                    self.end += read;
                    received_any = true;
                }
                Err(error) if is_timeout(&error) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(closed(error)),
            }
        }
    }

    fn consume_buffered(&mut self, count: usize) {
        self.start = (self.start + count).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

/// Parses a response head at the start of `bytes`; `None` when more bytes are needed.
fn parse_head(bytes: &[u8]) -> Result<Option<(ResponseHead, usize)>, ReadHeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS_CEILING];
    let mut response = httparse::Response::new(&mut slots);
    let length = match response.parse(bytes) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(length)) => length,
        Err(error) => {
            return Err(ReadHeadError::Invalid(format!(
                "invalid response head: {error}"
            )));
        }
    };
    let (Some(status), Some(minor)) = (response.code, response.version) else {
        return Err(ReadHeadError::Invalid("incomplete status line".into()));
    };
    let head = ResponseHead {
        status,
        reason: response.reason.unwrap_or_default().to_string(),
        http11: minor == 1,
        headers: response
            .headers
            .iter()
            .map(|header| (header.name.to_string(), header.value.to_vec()))
            .collect(),
    };
    Ok(Some((head, length)))
}

/// Reads body bytes: buffered ones first, then the socket.
impl Read for UpstreamConn {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start < self.end {
            let count = out.len().min(self.end - self.start);
            out[..count].copy_from_slice(&self.buffer[self.start..self.start + count]);
            self.consume_buffered(count);
            return Ok(count);
        }
        self.stream.read(out)
    }
}

impl BufRead for UpstreamConn {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.start == self.end {
            self.start = 0;
            self.end = self.stream.read(&mut self.buffer)?;
        }
        Ok(&self.buffer[self.start..self.end])
    }

    fn consume(&mut self, count: usize) {
        self.consume_buffered(count);
    }
}

impl Write for UpstreamConn {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.stream.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> ResponseHead {
        parse_head(bytes).unwrap().unwrap().0
    }

    #[test]
    fn body_framing_follows_status_and_headers() {
        let chunked = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(chunked.body(false), Ok(ResponseBody::Chunked));
        assert_eq!(chunked.body(true), Ok(ResponseBody::None));

        let length = head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(length.body(false), Ok(ResponseBody::Length(12)));

        let close = head(b"HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!(close.body(false), Ok(ResponseBody::UntilClose));
        assert!(!close.keeps_alive());

        for status in ["204 No Content", "304 Not Modified", "103 Early Hints"] {
            let text = format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\n\r\n");
            assert_eq!(head(text.as_bytes()).body(false), Ok(ResponseBody::None));
        }
    }

    #[test]
    fn body_framing_rejects_ambiguity() {
        let gzip = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert!(gzip.body(false).is_err());
        let twice = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(twice.body(false).is_err());
        let conflict = head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
        assert!(conflict.body(false).is_err());
        let signed = head(b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n");
        assert!(signed.body(false).is_err());
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        assert!(head(b"HTTP/1.1 200 OK\r\n\r\n").keeps_alive());
        assert!(!head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").keeps_alive());
        assert!(head(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n").keeps_alive());
    }

    #[test]
    fn partial_head_needs_more_bytes() {
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-")
                .unwrap()
                .is_none()
        );
        assert!(parse_head(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
    }
}
