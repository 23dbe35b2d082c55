//! One client connection: buffered reads of request heads under deadlines,
//! and the byte stream that bodies and responses use.

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown as SocketShutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::request::{self, Head, HeadError};
use crate::shutdown::ConnectionGuard;

/// Initial size of a connection's read buffer in bytes. It grows up to the
/// head limit only for requests with large heads.
const INITIAL_BUFFER_BYTES: usize = 4096;

/// Size up to which a partial head is parsed whenever a line ends.
const EAGER_PARSE_BYTES: usize = 4096;

/// Maximum time a closing connection waits for the client to stop sending.
const LINGER_TOTAL: Duration = Duration::from_secs(2);

/// Maximum wait for each read while lingering.
const LINGER_READ_TIMEOUT: Duration = Duration::from_millis(500);

/// Maximum bytes discarded while lingering.
const LINGER_MAX_BYTES: usize = 256 * 1024;

/// Per-connection limits and timeouts.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Maximum size of a request head in bytes.
    pub max_head_bytes: usize,
    /// Maximum number of header fields in a request head.
    pub max_headers: usize,
    /// Maximum time to receive a whole request head, counted from the
    /// connection's accept or the request's first byte.
    pub header_timeout: Duration,
    /// Maximum wait for the next request on a keep-alive connection.
    pub idle_timeout: Duration,
    /// Maximum wait for each read or write of a body or a response.
    pub io_timeout: Duration,
}

/// Reason no request head could be read.
#[derive(Debug)]
pub enum ReadHeadError {
    /// The client closed the connection, or stayed idle past the idle
    /// timeout, between requests. Nothing needs to be sent.
    Closed,
    /// The client closed the connection in the middle of a head.
    ClosedMidHead,
    /// The head did not arrive within the header timeout.
    TimedOut,
    /// The head is invalid.
    Invalid(HeadError),
    /// The socket failed.
    Io(io::Error),
}

/// Client connection with its read buffer.
pub struct Conn {
    stream: TcpStream,
    /// Address of the client.
    pub peer: SocketAddr,
    buffer: Vec<u8>,
    /// Start of the unconsumed bytes in `buffer`.
    start: usize,
    /// End of the bytes read into `buffer`.
    end: usize,
    /// Read timeout currently set on the socket, cached to save a syscall per request.
    read_timeout: Option<Duration>,
    limits: Limits,
    /// Whether at least one request head has been read.
    served_any: bool,
    /// Number of unconsumed bytes already searched for the end of a head.
    scanned: usize,
}

impl Conn {
    /// Wraps an accepted stream and applies the socket options every connection uses.
    pub fn new(stream: TcpStream, peer: SocketAddr, limits: Limits) -> io::Result<Conn> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(limits.io_timeout))?;
        Ok(Conn {
            stream,
            peer,
            buffer: vec![0; INITIAL_BUFFER_BYTES.min(limits.max_head_bytes.max(1))],
            start: 0,
            end: 0,
            read_timeout: None,
            limits,
            served_any: false,
            scanned: 0,
        })
    }

    /// Reads the next request head.
    ///
    /// The first head must arrive within the header timeout of the accept.
    /// Later heads may wait the idle timeout for their first byte, then get
    /// the header timeout from that byte. While no request is in progress
    /// the connection is marked idle, so that shutdown can close it.
    pub fn read_head(&mut self, guard: &ConnectionGuard) -> Result<Head, ReadHeadError> {
        let mut deadline = (!self.served_any).then(|| Instant::now() + self.limits.header_timeout);

        loop {
            if self.end > self.start {
                if self.worth_parsing() {
                    let pending = &self.buffer[self.start..self.end];
                    if let Some(head) = request::parse(pending, self.limits.max_headers)
                        .map_err(ReadHeadError::Invalid)?
                    {
                        self.served_any = true;
                        return Ok(head);
                    }
                }
                if self.end - self.start >= self.limits.max_head_bytes {
                    return Err(ReadHeadError::Invalid(HeadError::TooLarge));
                }
                deadline.get_or_insert_with(|| Instant::now() + self.limits.header_timeout);
            } else if guard.is_closing() {
                return Err(ReadHeadError::Closed);
            }

            self.make_room();
            let timeout = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return Err(self.timed_out()),
                },
                None => self.limits.idle_timeout,
            };
            self.set_read_timeout(timeout).map_err(ReadHeadError::Io)?;

            let idle = self.start == self.end;
            guard.set_idle(idle);
            // Shutdown may have begun between the check above and marking
            // the connection idle; checking again closes that window.
            if idle && guard.is_closing() {
                return Err(ReadHeadError::Closed);
            }
            let result = self.stream.read(&mut self.buffer[self.end..]);
            guard.set_idle(false);

            match result {
                Ok(0) if self.start == self.end => return Err(ReadHeadError::Closed),
                Ok(0) => return Err(ReadHeadError::ClosedMidHead),
                Ok(read) => self.end += read,
                Err(error) if is_timeout(&error) => {
                    if deadline.is_none() {
                        return Err(ReadHeadError::Closed);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(ReadHeadError::Io(error)),
            }
        }
    }

    /// Returns whether parsing the unconsumed bytes can give a result now.
    ///
    /// A head ends with an empty line, and an error shows once a line is
    /// complete. A short head is parsed whenever a line ends, so a broken
    /// request line gets its 400 at once. Past [`EAGER_PARSE_BYTES`], only
    /// an empty line triggers a parse, so a client that sends a large head
    /// a few bytes at a time costs linear work, not a parse of everything
    /// buffered after every read.
    fn worth_parsing(&mut self) -> bool {
        let pending = &self.buffer[self.start..self.end];
        // Step back so a "\n\r\n" split across two reads is still found.
        let from = self.scanned.saturating_sub(2);
        let ends_head = pending[from..].windows(2).enumerate().any(|(index, pair)| {
            pair == b"\n\n" || (pair == b"\n\r" && pending.get(from + index + 2) == Some(&b'\n'))
        });
        let ends_line = pending[self.scanned.min(pending.len())..].contains(&b'\n');
        // A match may be empty lines before the request line rather than the
        // end of the head. It is not searched again, because the real end
        // lies further on.
        self.scanned = pending.len();
        ends_head || (ends_line && pending.len() <= EAGER_PARSE_BYTES)
    }

    fn timed_out(&self) -> ReadHeadError {
        if self.start == self.end && self.served_any {
            ReadHeadError::Closed
        } else {
            ReadHeadError::TimedOut
        }
    }

    /// Returns the bytes of a head that [`Conn::read_head`] returned and
    /// that [`Conn::consume`] has not yet dropped.
    pub fn head_bytes(&self, head: &Head) -> &[u8] {
        &self.buffer[self.start..self.start + head.length]
    }

    /// Drops `count` buffered bytes, for example a head that has been answered.
    pub fn consume(&mut self, count: usize) {
        // What follows may be a pipelined request whose end was never searched for.
        self.scanned = 0;
        self.start = (self.start + count).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Switches the read timeout to the body and response timeout.
    pub fn use_io_timeout(&mut self) -> io::Result<()> {
        self.set_read_timeout(self.limits.io_timeout)
    }

    /// Closes the connection after a final response, without losing the response.
    ///
    /// Closing a socket with unread input makes the kernel send a reset,
    /// which can destroy a response the client has not read yet. So when
    /// the client may still be sending (`more_input`) or sent bytes that
    /// were not consumed, this sends FIN first and discards input until the
    /// client closes, bounded in time and bytes. Otherwise it closes at once.
    pub fn close(mut self, more_input: bool) {
        if !more_input && self.start == self.end {
            return;
        }
        if self.stream.shutdown(SocketShutdown::Write).is_err() {
            return;
        }
        let deadline = Instant::now() + LINGER_TOTAL;
        let mut discarded = self.end - self.start;
        let mut scratch = [0u8; 4096];

        while discarded < LINGER_MAX_BYTES {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            if left.is_zero()
                || self
                    .stream
                    .set_read_timeout(Some(left.min(LINGER_READ_TIMEOUT)))
                    .is_err()
            {
                break;
            }
            match self.stream.read(&mut scratch) {
                Ok(0) => break,
                Ok(read) => discarded += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    fn make_room(&mut self) {
        if self.end < self.buffer.len() {
            return;
        }
        if self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            return;
        }
        let grown =
            (self.buffer.len() * 2).min(self.limits.max_head_bytes.max(INITIAL_BUFFER_BYTES));
        self.buffer.resize(grown.max(self.buffer.len() + 1), 0);
    }

    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        // A zero timeout means "block forever" to the socket API.
        let timeout = timeout.max(Duration::from_millis(1));
        if self.read_timeout != Some(timeout) {
            self.stream.set_read_timeout(Some(timeout))?;
            self.read_timeout = Some(timeout);
        }
        Ok(())
    }
}

/// Reads body bytes: buffered ones first, then the socket.
impl Read for Conn {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start < self.end {
            let count = out.len().min(self.end - self.start);
            out[..count].copy_from_slice(&self.buffer[self.start..self.start + count]);
            self.consume(count);
            return Ok(count);
        }
        self.stream.read(out)
    }
}

/// Writes response bytes straight to the socket, unbuffered.
impl Write for Conn {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.stream.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BufRead for Conn {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.start == self.end {
            self.start = 0;
            self.end = self.stream.read(&mut self.buffer)?;
        }
        Ok(&self.buffer[self.start..self.end])
    }

    fn consume(&mut self, count: usize) {
        Conn::consume(self, count);
    }
}

/// Returns whether a socket error is a read or write timeout.
pub fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn conn() -> Conn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let peer = client.local_addr().unwrap();
        let limits = Limits {
            max_head_bytes: 32768,
            max_headers: 100,
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(1),
        };
        Conn::new(client, peer, limits).unwrap()
    }

    /// Appends `bytes` as if a read had returned them.
    fn receive(conn: &mut Conn, bytes: &[u8]) {
        if conn.buffer.len() < conn.end + bytes.len() {
            conn.buffer.resize(conn.end + bytes.len(), 0);
        }
        conn.buffer[conn.end..conn.end + bytes.len()].copy_from_slice(bytes);
        conn.end += bytes.len();
    }

    #[test]
    fn short_head_parsed_at_each_line_end() {
        let mut conn = conn();
        receive(&mut conn, b"GET / HT");
        assert!(!conn.worth_parsing(), "no line has ended yet");
        receive(&mut conn, b"TP/1.1\r\n");
        assert!(conn.worth_parsing(), "the request line has ended");
        receive(&mut conn, b"Host: x");
        assert!(!conn.worth_parsing(), "no new line has ended");
    }

    #[test]
    fn large_head_parsed_only_at_empty_line() {
        let mut conn = conn();
        receive(&mut conn, b"GET / HTTP/1.1\r\n");
        for _ in 0..600 {
            receive(&mut conn, b"X-Filler: 0123456789\r\n");
        }
        assert!(conn.end > EAGER_PARSE_BYTES);
        assert!(
            !conn.worth_parsing(),
            "lines alone do not trigger a parse past the eager size"
        );
        receive(&mut conn, b"X-Last: 1\r\n");
        assert!(
            !conn.worth_parsing(),
            "one more header line does not either"
        );
        receive(&mut conn, b"\r\n");
        assert!(conn.worth_parsing(), "the empty line ends the head");
    }

    #[test]
    fn end_of_head_split_across_reads_found() {
        let mut conn = conn();
        receive(&mut conn, b"GET / HTTP/1.1\r\n");
        for _ in 0..600 {
            receive(&mut conn, b"X-Filler: 0123456789\r\n");
        }
        assert!(!conn.worth_parsing());
        // The final CRLF arrives one byte at a time.
        receive(&mut conn, b"\r");
        assert!(!conn.worth_parsing());
        receive(&mut conn, b"\n");
        assert!(conn.worth_parsing(), "\\n\\r\\n split across reads");
    }

    #[test]
    fn consume_rescans_pipelined_bytes() {
        let mut conn = conn();
        receive(&mut conn, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
        assert!(conn.worth_parsing());
        conn.consume(19);
        assert!(
            conn.worth_parsing(),
            "the second request's end must be found again"
        );
    }
}
