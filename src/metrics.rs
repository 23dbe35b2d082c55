//! Counters for `/metrics`, rendered in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::auth::DenyReason;
use crate::keys::KeySet;

/// Statuses keygate sends when it rejects a request before any decision.
const REJECTED_STATUSES: [u16; 5] = [400, 408, 431, 503, 505];

/// Process-wide counters. All fields are monotonic unless noted.
#[derive(Default)]
pub struct Metrics {
    allowed: AtomicU64,
    denied: [AtomicU64; DenyReason::ALL.len()],
    rejected: [AtomicU64; REJECTED_STATUSES.len()],
    reloads_succeeded: AtomicU64,
    reloads_failed: AtomicU64,
    /// Unix time in milliseconds of the last successful read of the key file, 0 if none.
    last_reload_ms: AtomicU64,
    /// Unix time in milliseconds of the last adopted change of the key set.
    last_change_ms: AtomicU64,
    /// Gauge: whether the key file currently fails to read.
    key_file_failing: AtomicBool,
    /// Upstream responses by status class, index 1 to 5 for 1xx to 5xx.
    upstream_responses: [AtomicU64; 6],
    upstream_errors: [AtomicU64; UpstreamError::ALL.len()],
    /// Sum of upstream response-head latencies in microseconds.
    upstream_latency_micros: AtomicU64,
    upstream_latency_count: AtomicU64,
}

/// Kind of upstream failure, as counted in the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    Connect,
    Timeout,
    /// The upstream closed or reset the connection before a response head.
    Closed,
    Protocol,
    BodyInterrupted,
}

impl UpstreamError {
    pub const ALL: [UpstreamError; 5] = [
        UpstreamError::Connect,
        UpstreamError::Timeout,
        UpstreamError::Closed,
        UpstreamError::Protocol,
        UpstreamError::BodyInterrupted,
    ];

    pub fn label(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Closed => "closed",
            UpstreamError::Protocol => "protocol",
            UpstreamError::BodyInterrupted => "body_interrupted",
        }
    }
}

pub fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Metrics {
    pub fn record_allowed(&self) {
        self.allowed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_denied(&self, reason: DenyReason) {
        self.denied[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_rejected(&self, status: u16) {
        if let Some(index) = REJECTED_STATUSES.iter().position(|&known| known == status) {
            self.rejected[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a successful read of the key file; `changed` when the set was replaced.
    pub fn record_reload_success(&self, changed: bool) {
        let now = unix_millis_now();
        self.reloads_succeeded.fetch_add(1, Ordering::Relaxed);
        self.last_reload_ms.store(now, Ordering::Relaxed);
        if changed {
            self.last_change_ms.store(now, Ordering::Relaxed);
        }
        self.key_file_failing.store(false, Ordering::Relaxed);
    }

    pub fn record_reload_failure(&self) {
        self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        self.key_file_failing.store(true, Ordering::Relaxed);
    }

    pub fn last_reload_unix_ms(&self) -> u64 {
        self.last_reload_ms.load(Ordering::Relaxed)
    }

    pub fn record_upstream_response(&self, status: u16, latency_micros: u64) {
        let class = usize::from(status / 100).min(5);
        self.upstream_responses[class].fetch_add(1, Ordering::Relaxed);
        self.upstream_latency_micros
            .fetch_add(latency_micros, Ordering::Relaxed);
        self.upstream_latency_count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_upstream_error(&self, error: UpstreamError) {
        self.upstream_errors[error as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Renders all metrics in the Prometheus text exposition format 0.0.4.
    pub fn render(&self, keys: &KeySet, open_connections: usize, proxy: bool) -> String {
        let mut out = String::with_capacity(4096);
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);

        family(
            &mut out,
            "keygate_requests_total",
            "counter",
            "Authentication decisions by result and reason.",
        );
        let _ = writeln!(
            out,
            "keygate_requests_total{{result=\"allowed\",reason=\"valid_key\"}} {}",
            load(&self.allowed)
        );
        for reason in DenyReason::ALL {
            let _ = writeln!(
                out,
                "keygate_requests_total{{result=\"denied\",reason=\"{}\"}} {}",
                reason.label(),
                load(&self.denied[reason as usize])
            );
        }

        family(
            &mut out,
            "keygate_requests_rejected_total",
            "counter",
            "Requests rejected before a decision, by status.",
        );
        for (index, status) in REJECTED_STATUSES.iter().enumerate() {
            let _ = writeln!(
                out,
                "keygate_requests_rejected_total{{status=\"{status}\"}} {}",
                load(&self.rejected[index])
            );
        }

        family(
            &mut out,
            "keygate_keys",
            "gauge",
            "Keys in the set in force.",
        );
        let _ = writeln!(out, "keygate_keys {}", keys.len());

        family(
            &mut out,
            "keygate_key_requests_allowed_total",
            "counter",
            "Requests allowed per key id.",
        );
        let mut entries: Vec<_> = keys.entries().collect();
        entries.sort_by_key(|entry| entry.id);
        for entry in &entries {
            let _ = writeln!(
                out,
                "keygate_key_requests_allowed_total{{key_id=\"{}\"}} {}",
                entry.id,
                load(&entry.usage.allowed)
            );
        }
        family(
            &mut out,
            "keygate_key_last_used_timestamp_seconds",
            "gauge",
            "Unix time of the last allowed request per key id, 0 if never used.",
        );
        for entry in &entries {
            let _ = writeln!(
                out,
                "keygate_key_last_used_timestamp_seconds{{key_id=\"{}\"}} {}",
                entry.id,
                load(&entry.usage.last_used_unix)
            );
        }

        family(
            &mut out,
            "keygate_reloads_total",
            "counter",
            "Key-file reads by result.",
        );
        let _ = writeln!(
            out,
            "keygate_reloads_total{{result=\"success\"}} {}",
            load(&self.reloads_succeeded)
        );
        let _ = writeln!(
            out,
            "keygate_reloads_total{{result=\"failure\"}} {}",
            load(&self.reloads_failed)
        );
        family(
            &mut out,
            "keygate_last_reload_success_timestamp_seconds",
            "gauge",
            "Unix time of the last successful key-file read.",
        );
        let _ = writeln!(
            out,
            "keygate_last_reload_success_timestamp_seconds {}",
            seconds(load(&self.last_reload_ms))
        );
        family(
            &mut out,
            "keygate_last_change_timestamp_seconds",
            "gauge",
            "Unix time the key set last changed.",
        );
        let _ = writeln!(
            out,
            "keygate_last_change_timestamp_seconds {}",
            seconds(load(&self.last_change_ms))
        );
        family(
            &mut out,
            "keygate_key_file_failing",
            "gauge",
            "1 while the key file cannot be read, else 0.",
        );
        let _ = writeln!(
            out,
            "keygate_key_file_failing {}",
            u8::from(self.key_file_failing.load(Ordering::Relaxed))
        );

        family(
            &mut out,
            "keygate_open_connections",
            "gauge",
            "Open client connections.",
        );
        let _ = writeln!(out, "keygate_open_connections {open_connections}");

        if proxy {
            self.render_upstream(&mut out);
        }
        out
    }

    fn render_upstream(&self, out: &mut String) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        family(
            out,
            "keygate_upstream_responses_total",
            "counter",
            "Upstream responses by status class.",
        );
        for class in 1..=5 {
            let _ = writeln!(
                out,
                "keygate_upstream_responses_total{{class=\"{class}xx\"}} {}",
                load(&self.upstream_responses[class])
            );
        }
        family(
            out,
            "keygate_upstream_errors_total",
            "counter",
            "Upstream failures by kind.",
        );
        for kind in UpstreamError::ALL {
            let _ = writeln!(
                out,
                "keygate_upstream_errors_total{{kind=\"{}\"}} {}",
                kind.label(),
                load(&self.upstream_errors[kind as usize])
            );
        }
        family(
            out,
            "keygate_upstream_response_seconds",
            "summary",
            "Time from sending a request upstream to its response head.",
        );
        let _ = writeln!(
            out,
            "keygate_upstream_response_seconds_sum {}",
            load(&self.upstream_latency_micros) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "keygate_upstream_response_seconds_count {}",
            load(&self.upstream_latency_count)
        );
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn seconds(millis: u64) -> String {
    format!("{}.{:03}", millis / 1000, millis % 1000)
}
