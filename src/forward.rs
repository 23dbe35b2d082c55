//! Forward-auth mode: every request on the auth listener gets a decision,
//! `200` to allow or `401` to deny, whatever its method, path or query.
//!
//! Gateways turn any other status into an error (nginx `auth_request`
//! responds with 500) or a denial (Envoy `ext_authz`), so this service never
//! sends one for a request it could parse.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{self, Decision};
use crate::http::conn::Conn;
use crate::http::response::Response;
use crate::http::{Persistence, Request, Service, send_response};
use crate::keys::KeyStore;
use crate::metrics::Metrics;
use crate::ratelimit::LogLimiter;
use crate::shutdown::ConnectionGuard;

static DENIAL_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));

/// Forward-auth service of the auth listener.
pub struct ForwardAuth {
    pub keys: Arc<KeyStore>,
    pub metrics: Arc<Metrics>,
    /// Response header that carries the matching key's id.
    pub key_id_header: String,
}

impl Service for ForwardAuth {
    fn respond(
        &self,
        conn: &mut Conn,
        request: &Request<'_>,
        guard: &ConnectionGuard,
    ) -> io::Result<Persistence> {
        // The decision needs the head only. A declared body is never read:
        // nginx `auth_request` sends the client's Content-Length without the
        // body, so waiting for it would hang. The connection closes instead,
        // because unread body bytes cannot be distinguished from the next request.
        let close = guard.is_closing() || request.head.framing.has_body();

        let response = match auth::decide(request, &self.keys) {
            Decision::Allow(entry) => {
                self.metrics.record_allowed();
                Response::new(200)
                    .header(&self.key_id_header, entry.id.as_str())
                    .header("Cache-Control", "no-store")
            }
            Decision::Deny {
                reason,
                token_presented,
            } => {
                self.metrics.record_denied(reason);
                log_denial(conn, reason);
                denial(reason, token_presented)
            }
        };

        send_response(conn, request, response, close)
    }
}

/// Builds the `401` response for a denied request.
pub fn denial(reason: auth::DenyReason, token_presented: bool) -> Response {
    Response::new(401)
        .header("WWW-Authenticate", auth::challenge(token_presented))
        .header("Cache-Control", "no-store")
        .json_error("unauthorized", reason.message())
}

/// Logs a denial at debug, and at most one line per 10 s at info with a count.
pub fn log_denial(conn: &Conn, reason: auth::DenyReason) {
    match DENIAL_LOG.check() {
        Some(0) => log::info!("denied a request from {}: {}", conn.peer, reason.label()),
        Some(suppressed) => log::info!(
            "denied a request from {}: {} ({suppressed} more denials since the previous message)",
            conn.peer,
            reason.label()
        ),
        None => log::debug!("denied a request from {}: {}", conn.peer, reason.label()),
    }
}
