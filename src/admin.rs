//! Admin listener: liveness, readiness and metrics for probes and Prometheus.

use std::io;
use std::sync::Arc;

use crate::http::conn::Conn;
use crate::http::response::{Response, json_escape};
use crate::http::{Persistence, Request, Service, send_response};
use crate::keys::KeyStore;
use crate::metrics::Metrics;
use crate::reload::ReloadStatus;
use crate::shutdown::ConnectionGuard;
use crate::shutdown::Shutdown;

/// Service of the admin listener.
pub struct Admin {
    pub keys: Arc<KeyStore>,
    pub metrics: Arc<Metrics>,
    pub reload: Arc<ReloadStatus>,
    pub shutdown: Arc<Shutdown>,
    /// Whether keygate runs as a reverse proxy, which adds upstream metrics.
    pub proxy: bool,
}

impl Admin {
    fn healthz(&self) -> Response {
        if self.reload.poller_alive() {
            Response::new(200).body("text/plain; charset=utf-8", b"ok\n".to_vec())
        } else {
            Response::new(503).body(
                "text/plain; charset=utf-8",
                b"key-file poller has stopped checking the key file\n".to_vec(),
            )
        }
    }

    fn readyz(&self) -> Response {
        let keys = self.keys.len();
        let draining = self.shutdown.is_draining();
        let reason = if draining {
            Some("shutting down")
        } else if keys == 0 {
            Some("no valid keys loaded; every request is denied")
        } else {
            None
        };

        let last_reload_ms = self.metrics.last_reload_unix_ms();
        let error = self
            .reload
            .current_error()
            .map_or("null".to_string(), |e| format!("\"{}\"", json_escape(&e)));
        let body = format!(
            "{{\"ready\":{},\"reason\":{},\"keys\":{keys},\"last_reload_unix\":{}.{:03},\"reload_error\":{error}}}\n",
            reason.is_none(),
            reason.map_or("null".to_string(), |reason| format!("\"{reason}\"")),
            last_reload_ms / 1000,
            last_reload_ms % 1000,
        );
        let status = if reason.is_none() { 200 } else { 503 };
        Response::new(status).body("application/json", body.into_bytes())
    }

    fn metrics(&self) -> Response {
        let text = self.metrics.render(
            &self.keys.snapshot(),
            self.shutdown.open_connections(),
            self.proxy,
        );
        Response::new(200).body(
            "text/plain; version=0.0.4; charset=utf-8",
            text.into_bytes(),
        )
    }
}

impl Service for Admin {
    fn respond(
        &self,
        conn: &mut Conn,
        request: &Request<'_>,
        guard: &ConnectionGuard,
    ) -> io::Result<Persistence> {
        let close = guard.is_closing() || request.head.framing.has_body();
        let path = request
            .target()
            .split(|&b| b == b'?')
            .next()
            .unwrap_or_default();
        let method = request.method();

        let response = if method != b"GET" && method != b"HEAD" {
            Response::new(405)
                .header("Allow", "GET, HEAD")
                .json_error("method_not_allowed", "use GET or HEAD")
        } else {
            match path {
                b"/healthz" => self.healthz(),
                b"/readyz" => self.readyz(),
                b"/metrics" => self.metrics(),
                _ => Response::new(404).json_error(
                    "not_found",
                    "admin paths are /healthz, /readyz and /metrics",
                ),
            }
        };

        send_response(
            conn,
            request,
            response.header("Cache-Control", "no-store"),
            close,
        )
    }
}
