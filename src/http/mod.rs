//! keygate's HTTP/1.x server layer, built on `httparse` and blocking std I/O.

pub mod body;
pub mod conn;
pub mod request;
pub mod response;

use std::io;
use std::time::Duration;

use conn::{Conn, ReadHeadError};
use request::Head;
use response::Response;

use crate::metrics::Metrics;
use crate::ratelimit::LogLimiter;
use crate::shutdown::ConnectionGuard;

/// Whether a connection stays open after a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    KeepAlive,
    Close,
}

/// Request passed to a service: the parsed head and the bytes its spans index.
pub struct Request<'a> {
    pub head: &'a Head,
    pub bytes: &'a [u8],
}

impl Request<'_> {
    pub fn method(&self) -> &[u8] {
        &self.bytes[self.head.method.clone()]
    }

    pub fn target(&self) -> &[u8] {
        &self.bytes[self.head.target.clone()]
    }

    pub fn is_head(&self) -> bool {
        self.method() == b"HEAD"
    }

    /// Iterates over `(name, value)` of every header field in order.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.head
            .headers
            .iter()
            .map(|(name, value)| (&self.bytes[name.clone()], &self.bytes[value.clone()]))
    }

    /// Iterates over the values of every header field called `name`, ignoring case.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.headers()
            .filter(move |(field, _)| field.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| value)
    }

    /// Whether the response must carry `Connection: keep-alive`, which an
    /// HTTP/1.0 client needs to keep the connection open.
    pub fn needs_keep_alive_header(&self) -> bool {
        self.head.keep_alive && self.head.version == request::Version::Http10
    }
}

/// Sends a complete response that keygate built itself and returns whether
/// the connection stays open.
///
/// The connection closes when `close` is set or the client asked for it. A
/// HEAD request gets the headers without the body.
pub fn send_response(
    conn: &mut Conn,
    request: &Request<'_>,
    response: Response,
    close: bool,
) -> io::Result<Persistence> {
    let close = close || !request.head.keep_alive;
    response
        .omit_body(request.is_head())
        .close(close)
        .send(conn, !close && request.needs_keep_alive_header())?;
    Ok(if close {
        Persistence::Close
    } else {
        Persistence::KeepAlive
    })
}

/// Request handler of a listener.
pub trait Service: Send + Sync + 'static {
    /// Responds to one request. The head is already consumed from `conn`, so any
    /// body comes next. Once `guard.is_closing()` is true, shutdown has begun
    /// and the response must close the connection. A service that waits
    /// (for an upstream, say) checks it when it writes the response head.
    fn respond(
        &self,
        conn: &mut Conn,
        request: &Request<'_>,
        guard: &ConnectionGuard,
    ) -> io::Result<Persistence>;
}

static REJECTED_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));

/// Serves requests on one connection until either side closes it.
pub fn serve_connection(
    mut conn: Conn,
    service: &dyn Service,
    guard: &ConnectionGuard,
    metrics: &Metrics,
) {
    let mut head_bytes = Vec::new();

    loop {
        let head = match conn.read_head(guard) {
            Ok(head) => head,
            Err(error) => return end_with_error(conn, error, metrics),
        };

        // The service gets its own copy of the head, so it can read the body
        // from `conn` while it still looks at the headers.
        head_bytes.clear();
        head_bytes.extend_from_slice(conn.head_bytes(&head));
        conn.consume(head.length);
        let request = Request {
            head: &head,
            bytes: &head_bytes,
        };

        match service.respond(&mut conn, &request, guard) {
            Ok(Persistence::KeepAlive) if !guard.is_closing() => {}
            Ok(_) => {
                // Only a declared body can still be on its way; without one,
                // a plain close loses nothing and frees the worker at once.
                return conn.close(request.head.framing.has_body());
            }
            Err(error) => {
                log::debug!(
                    "connection from {} ended while responding: {error}",
                    conn.peer
                );
                return;
            }
        }
    }
}

fn end_with_error(conn: Conn, error: ReadHeadError, metrics: &Metrics) {
    let (status, message) = match error {
        ReadHeadError::Closed => return,
        ReadHeadError::ClosedMidHead => {
            log::debug!(
                "client {} closed the connection in the middle of a request head",
                conn.peer
            );
            return;
        }
        ReadHeadError::Io(error) => {
            log::debug!("reading a request from {} failed: {error}", conn.peer);
            return;
        }
        ReadHeadError::TimedOut => (408, "request header not received in time"),
        ReadHeadError::Invalid(error) => (error.status(), error.message()),
    };

    metrics.record_rejected(status);
    if let Some(suppressed) = REJECTED_LOG.check() {
        log::info!(
            "rejected a request from {} with {status}: {message} ({suppressed} similar rejections not logged)",
            conn.peer
        );
    } else {
        log::debug!(
            "rejected a request from {} with {status}: {message}",
            conn.peer
        );
    }

    let mut conn = conn;
    let code = if status == 408 {
        "request_timeout"
    } else {
        "bad_request"
    };
    let _ = Response::new(status)
        .json_error(code, message)
        .close(true)
        .send(&mut conn, false);
    conn.close(true);
}
