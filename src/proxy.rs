//! Reverse-proxy mode: allowed requests go to the upstream and the response
//! streams back; denied requests get the forward-auth `401` and never reach
//! the upstream.

mod headers;
mod relay;

use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{self, Decision};
use crate::config::{Config, Upstream};
use crate::forward;
use crate::http::body::BodyReader;
use crate::http::conn::{Conn, is_timeout};
use crate::http::request::{Framing, Version};
use crate::http::response::Response;
use crate::http::{Persistence, Request, Service, send_response};
use crate::keys::KeyStore;
use crate::metrics::{Metrics, UpstreamError};
use crate::ratelimit::LogLimiter;
use crate::shutdown::ConnectionGuard;
use crate::upstream::{
    self, ReadHeadError, ResponseBody, ResponseHead, UpstreamConn, UpstreamPool,
};
use headers::{ClientFraming, ClientHeadOptions, Forwarding};
use relay::{Encoding, Relay, RelayError, RelayPool};

static UPSTREAM_FAILURE_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));

/// Reverse-proxy service of the auth listener.
pub struct Proxy {
    keys: Arc<KeyStore>,
    metrics: Arc<Metrics>,
    upstream: UpstreamPool,
    key_id_header: String,
    pass_authorization: bool,
    /// Time the upstream gets to send its response head, counted from the
    /// end of the forwarded request.
    response_timeout: Duration,
    relays: RelayPool,
}

/// Failure that ends an exchange before a response head arrived.
enum ExchangeError {
    /// The upstream failed; the client gets `status` (502 or 504).
    Upstream {
        kind: UpstreamError,
        status: u16,
        detail: String,
    },
    /// Reading the request body from the client failed.
    ClientBody(io::Error),
    /// Writing to the client failed; the connection is dropped.
    Client(io::Error),
}

/// Response head that arrived, with what is known about the request by then.
struct Exchange {
    upstream: UpstreamConn,
    response: ResponseHead,
    /// Time from the request head going out to the response head arriving.
    latency: Duration,
    /// Whether the whole request body was read from the client and sent.
    request_complete: bool,
}

impl Proxy {
    pub fn new(
        upstream: &Upstream,
        config: &Config,
        keys: Arc<KeyStore>,
        metrics: Arc<Metrics>,
    ) -> Proxy {
        let settings = upstream::Settings {
            connect_timeout: config.upstream_connect_timeout,
            io_timeout: config.io_timeout,
            max_idle: config.upstream_max_idle,
        };
        Proxy {
            keys,
            metrics,
            upstream: UpstreamPool::new(upstream.clone(), settings),
            key_id_header: config.key_id_header.clone(),
            pass_authorization: config.pass_authorization,
            response_timeout: config.upstream_timeout,
            relays: RelayPool::default(),
        }
    }

    /// Forwards an allowed request and relays the response.
    fn forward(
        &self,
        conn: &mut Conn,
        request: &Request<'_>,
        key_id: &str,
        guard: &ConnectionGuard,
    ) -> io::Result<Persistence> {
        let forwarding = Forwarding {
            client: conn.peer.ip(),
            key_id_header: &self.key_id_header,
            key_id,
            pass_authorization: self.pass_authorization,
            fallback_host: self.upstream.authority(),
        };
        let upstream_head = headers::upstream_request_head(request, &forwarding);
        let mut relay = self.relays.take();

        let exchange = match self.exchange(conn, request, &upstream_head, &mut relay) {
            Ok(exchange) => exchange,
            Err(ExchangeError::Upstream {
                kind,
                status,
                detail,
            }) => {
                self.metrics.record_upstream_error(kind);
                self.log_failure(conn, &format!("{detail}; responded with {status}"));
                let response = Response::new(status).json_error(
                    if status == 504 {
                        "upstream_timeout"
                    } else {
                        "bad_gateway"
                    },
                    &format!("the upstream service {}", describe_failure(kind)),
                );
                // The request body may still be unread, so only a request
                // without one leaves the connection usable.
                let close = guard.is_closing() || request.head.framing.has_body();
                return send_response(conn, request, response, close);
            }
            Err(ExchangeError::ClientBody(error)) => {
                return self.reject_body(conn, request, &error);
            }
            Err(ExchangeError::Client(error)) => return Err(error),
        };
        self.relay_response(conn, request, exchange, &mut relay, guard)
    }

    /// Sends the request upstream and waits for the final response head.
    ///
    /// A connection from the idle pool that turns out to be closed is
    /// replaced by a new one once, if the upstream cannot have acted on the
    /// request. That holds when writing the head failed, since no body byte
    /// was read yet. It also holds when the connection closed before any
    /// response byte and the request is a GET, HEAD or OPTIONS without a body.
    fn exchange(
        &self,
        conn: &mut Conn,
        request: &Request<'_>,
        upstream_head: &[u8],
        relay: &mut Relay,
    ) -> Result<Exchange, ExchangeError> {
        let mut fresh_only = false;
        loop {
            let mut upstream = match (!fresh_only).then(|| self.upstream.take_idle()).flatten() {
                Some(upstream) => upstream,
                None => self
                    .upstream
                    .connect()
                    .map_err(|error| ExchangeError::Upstream {
                        kind: UpstreamError::Connect,
                        status: if error.kind() == io::ErrorKind::TimedOut {
                            504
                        } else {
                            502
                        },
                        detail: format!(
                            "connecting to upstream {} failed: {error}",
                            self.upstream.authority()
                        ),
                    })?,
            };

            if let Err(error) = upstream.write_all(upstream_head) {
                if upstream.reused {
                    log::debug!(
                        "reused upstream connection to {} failed ({error}); retrying on a new connection",
                        upstream.address
                    );
                    fresh_only = true;
                    continue;
                }
                return Err(ExchangeError::Upstream {
                    kind: UpstreamError::Closed,
                    status: 502,
                    detail: format!(
                        "sending the request to upstream {} failed: {error}",
                        upstream.address
                    ),
                });
            }
            let started = Instant::now();

            let request_complete = self.send_body(conn, request, &mut upstream, relay)?;
            let deadline = Instant::now() + self.response_timeout;
            match read_final_head(&mut upstream, deadline) {
                Ok(response) => {
                    return Ok(Exchange {
                        upstream,
                        response,
                        latency: started.elapsed(),
                        request_complete,
                    });
                }
                Err(ReadHeadError::ClosedEarly(error))
                    if upstream.reused && is_retry_safe(request) =>
                {
                    log::debug!(
                        "reused upstream connection to {} closed before responding ({error}); retrying on a new connection",
                        upstream.address
                    );
                    fresh_only = true;
                }
                Err(ReadHeadError::ClosedEarly(error)) => {
                    return Err(ExchangeError::Upstream {
                        kind: UpstreamError::Closed,
                        status: 502,
                        detail: format!(
                            "upstream {} closed the connection before responding: {error}",
                            upstream.address
                        ),
                    });
                }
                Err(ReadHeadError::TimedOut) => {
                    return Err(ExchangeError::Upstream {
                        kind: UpstreamError::Timeout,
                        status: 504,
                        detail: format!(
                            "upstream {} sent no response head within {:?} (--upstream-timeout)",
                            upstream.address, self.response_timeout
                        ),
                    });
                }
                Err(ReadHeadError::Invalid(reason)) => {
                    return Err(ExchangeError::Upstream {
                        kind: UpstreamError::Protocol,
                        status: 502,
                        detail: format!(
                            "upstream {} sent an invalid response: {reason}",
                            upstream.address
                        ),
                    });
                }
            }
        }
    }

    /// Streams the request body to the upstream, re-framed, after sending
    /// `100 Continue` to a client that waits for it.
    ///
    /// Returns whether the whole body went out. A failed write upstream is
    /// not an error here: the upstream may have answered early (413, for
    /// example), so the caller reads its response before giving up.
    fn send_body(
        &self,
        conn: &mut Conn,
        request: &Request<'_>,
        upstream: &mut UpstreamConn,
        relay: &mut Relay,
    ) -> Result<bool, ExchangeError> {
        let framing = request.head.framing;
        if !framing.has_body() {
            return Ok(true);
        }
        if request.head.expect_continue && request.head.version == Version::Http11 {
            conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(ExchangeError::Client)?;
        }
        conn.use_io_timeout().map_err(ExchangeError::Client)?;

        let encoding = match framing {
            Framing::Chunked => Encoding::Chunked,
            Framing::Length(_) | Framing::None => Encoding::Identity,
        };
        let mut body = BodyReader::new(&mut *conn, framing);
        match relay.copy(&mut body, upstream, encoding) {
            Ok(_) => Ok(true),
            Err(RelayError::Read(error)) => Err(ExchangeError::ClientBody(error)),
            Err(RelayError::Write(error)) => {
                log::debug!(
                    "sending the request body to {} failed: {error}; reading its response anyway",
                    upstream.address
                );
                Ok(false)
            }
        }
    }

    /// Relays the response head and body to the client, and keeps the
    /// upstream connection for reuse when the exchange ended cleanly.
    fn relay_response(
        &self,
        conn: &mut Conn,
        request: &Request<'_>,
        exchange: Exchange,
        relay: &mut Relay,
        guard: &ConnectionGuard,
    ) -> io::Result<Persistence> {
        // Shutdown may have begun while the upstream worked on the request.
        let closing = guard.is_closing();
        let Exchange {
            mut upstream,
            response,
            latency,
            request_complete,
        } = exchange;

        let body = match response.body(request.is_head()) {
            Ok(body) => body,
            Err(reason) => {
                self.metrics.record_upstream_error(UpstreamError::Protocol);
                self.log_failure(
                    conn,
                    &format!(
                        "upstream {} sent an invalid response: {reason}; responded with 502",
                        upstream.address
                    ),
                );
                let response = Response::new(502).json_error(
                    "bad_gateway",
                    "the upstream service sent an invalid response",
                );
                return send_response(conn, request, response, closing || !request_complete);
            }
        };
        self.metrics
            .record_upstream_response(response.status, latency.as_micros() as u64);

        let http10 = request.head.version == Version::Http10;
        let framing = match body {
            ResponseBody::None => ClientFraming::None,
            ResponseBody::Length(length) => ClientFraming::Length(length),
            ResponseBody::Chunked | ResponseBody::UntilClose if http10 => ClientFraming::UntilClose,
            ResponseBody::Chunked | ResponseBody::UntilClose => ClientFraming::Chunked,
        };
        let close = closing
            || !request.head.keep_alive
            || !request_complete
            || framing == ClientFraming::UntilClose;
        let head = headers::client_response_head(
            &response,
            &ClientHeadOptions {
                framing,
                close,
                keep_alive_http10: !close && http10,
            },
        );
        conn.write_all(&head)?;

        let encoding = if framing == ClientFraming::Chunked {
            Encoding::Chunked
        } else {
            Encoding::Identity
        };
        let copied = match body {
            ResponseBody::None => Ok(0),
            ResponseBody::Length(length) => relay.copy(
                &mut BodyReader::new(&mut upstream, Framing::Length(length)),
                conn,
                encoding,
            ),
            ResponseBody::Chunked => relay.copy(
                &mut BodyReader::new(&mut upstream, Framing::Chunked),
                conn,
                encoding,
            ),
            ResponseBody::UntilClose => {
                relay.copy(&mut BodyReader::until_close(&mut upstream), conn, encoding)
            }
        };
        match copied {
            Ok(_) => {}
            Err(RelayError::Read(error)) => {
                // The client must not take a cut-off body for a whole one: a
                // Content-Length body stays short, a chunked one gets no last
                // chunk, and the connection closes.
                self.metrics
                    .record_upstream_error(UpstreamError::BodyInterrupted);
                self.log_failure(conn, &format!("the response body from upstream {} broke off: {error}; closed the client connection", upstream.address));
                return Ok(Persistence::Close);
            }
            Err(RelayError::Write(error)) => return Err(error),
        }

        // NOTE: the connection goes back to the pool only after the client has
        // the whole response, so a client that sends its next request on a new
        // connection at once may find the pool empty and open another.
        if request_complete && body != ResponseBody::UntilClose && response.keeps_alive() {
            self.upstream.put_idle(upstream);
        }
        Ok(if close {
            Persistence::Close
        } else {
            Persistence::KeepAlive
        })
    }

    /// Sends 400 for an invalid request body, 408 for one that stalled, and
    /// nothing when the client is gone. The connection closes in every case.
    fn reject_body(
        &self,
        conn: &mut Conn,
        request: &Request<'_>,
        error: &io::Error,
    ) -> io::Result<Persistence> {
        log::debug!(
            "reading the request body from {} failed: {error}",
            conn.peer
        );
        let response = match error.kind() {
            io::ErrorKind::InvalidData => {
                Response::new(400).json_error("bad_request", "invalid chunked request body")
            }
            _ if is_timeout(error) => Response::new(408)
                .json_error("request_timeout", "request body not received in time"),
            // The client closed the connection or it failed, so no response can arrive.
            _ => return Ok(Persistence::Close),
        };
        send_response(conn, request, response, true)
    }

    /// Logs an upstream failure at warn, at most once per 10 s with a count,
    /// and at debug otherwise.
    fn log_failure(&self, conn: &Conn, message: &str) {
        match UPSTREAM_FAILURE_LOG.check() {
            Some(suppressed) => log::warn!(
                "{message} (request from {}; {suppressed} more upstream failures since the previous message)",
                conn.peer
            ),
            None => log::debug!("{message} (request from {})", conn.peer),
        }
    }
}

impl Service for Proxy {
    fn respond(
        &self,
        conn: &mut Conn,
        request: &Request<'_>,
        guard: &ConnectionGuard,
    ) -> io::Result<Persistence> {
        match auth::decide(request, &self.keys) {
            Decision::Allow(entry) => {
                self.metrics.record_allowed();
                if request.method() == b"CONNECT" {
                    let response = Response::new(405).json_error(
                        "method_not_allowed",
                        "keygate does not tunnel CONNECT requests",
                    );
                    return send_response(conn, request, response, true);
                }
                self.forward(conn, request, entry.id.as_str(), guard)
            }
            Decision::Deny {
                reason,
                token_presented,
            } => {
                self.metrics.record_denied(reason);
                forward::log_denial(conn, reason);
                // The body of a denied request is never read, so the connection
                // cannot serve another request after it.
                let close = guard.is_closing() || request.head.framing.has_body();
                send_response(
                    conn,
                    request,
                    forward::denial(reason, token_presented),
                    close,
                )
            }
        }
    }
}

/// Reads response heads until a final one, dropping interim 1xx responses.
///
/// NOTE: interim responses such as `103 Early Hints` are not relayed. keygate
/// sends its own `100 Continue`, and strips `Upgrade`, so `101` is an error.
fn read_final_head(
    upstream: &mut UpstreamConn,
    deadline: Instant,
) -> Result<ResponseHead, ReadHeadError> {
    loop {
        let head = upstream.read_head(deadline)?;
        match head.status {
            101 => {
                return Err(ReadHeadError::Invalid(
                    "101 Switching Protocols without an upgrade request".into(),
                ));
            }
            100..=199 => continue,
            _ => return Ok(head),
        }
    }
}

/// Returns whether a request may be sent again after a reused connection closed
/// without a response: the upstream may have acted on it, so only safe
/// methods without a body qualify.
fn is_retry_safe(request: &Request<'_>) -> bool {
    !request.head.framing.has_body() && matches!(request.method(), b"GET" | b"HEAD" | b"OPTIONS")
}

fn describe_failure(kind: UpstreamError) -> &'static str {
    match kind {
        UpstreamError::Connect => "could not be reached",
        UpstreamError::Timeout => "did not respond in time",
        UpstreamError::Closed => "closed the connection without responding",
        UpstreamError::Protocol => "sent an invalid response",
        UpstreamError::BodyInterrupted => "broke off its response",
    }
}
