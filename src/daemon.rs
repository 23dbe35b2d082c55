//! The serving process: start-up, the signal loop, and graceful shutdown.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::admin::Admin;
use crate::config::Config;
use crate::forward::ForwardAuth;
use crate::http::Service;
use crate::http::conn::Limits;
use crate::keys::{KeySet, KeyStore};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::proxy::Proxy;
use crate::reload::{self, ReloadStatus, Reloader};
use crate::server::{self, ListenerContext, RunningListener};
use crate::shutdown::Shutdown;
use crate::signals::{self, Event};
use crate::text;

/// Maximum connections served at once on the admin listener. Its own small
/// pool keeps probes working while the auth listener is flooded.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Runs the daemon until a shutdown signal has been handled.
pub fn run(config: Config) -> Result<(), String> {
    let notifier = Arc::new(Notifier::from_env());
    let settings = reload::Settings {
        path: config.key_file.clone(),
        min_key_length: config.min_key_length,
        max_file_bytes: config.max_key_file_bytes,
        poll_interval: config.poll_interval,
        settle_delay: config.settle_delay,
    };

    let (parsed, snapshot) = reload::initial_load(&settings)
        .map_err(|reason| format!("{reason} (running as uid {})", reload::effective_uid()))?;
    warn_about_key_file(&config.key_file, snapshot.mode);
    let keys = Arc::new(KeyStore::new(KeySet::build(
        parsed.keys,
        &KeySet::default(),
    )));
    let metrics = Arc::new(Metrics::default());
    metrics.record_reload_success(true);

    let shutdown = Shutdown::new();
    let auth_listener = server::bind(&config.listen, "--listen")?;
    let admin_listener = match &config.admin_listen {
        Some(address) => Some(server::bind(address, "--admin-listen")?),
        None => None,
    };

    let (events_tx, events) = mpsc::channel();
    signals::forward(events_tx)
        .map_err(|error| format!("cannot install signal handlers: {error}"))?;

    let status = Arc::new(ReloadStatus::default());
    let (reload_tx, reload_rx) = mpsc::channel();
    let reloader = Reloader::new(
        settings,
        snapshot.bytes,
        Arc::clone(&keys),
        Arc::clone(&metrics),
        Arc::clone(&status),
        Arc::clone(&notifier),
    );
    let reload_thread = reloader
        .spawn(reload_rx)
        .map_err(|error| format!("cannot start the reload thread: {error}"))?;

    let limits = Limits {
        max_head_bytes: config.max_header_bytes,
        max_headers: config.max_headers,
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
        io_timeout: config.io_timeout,
    };
    let service: Arc<dyn Service> = match &config.upstream {
        Some(upstream) => Arc::new(Proxy::new(
            upstream,
            &config,
            Arc::clone(&keys),
            Arc::clone(&metrics),
        )),
        None => Arc::new(ForwardAuth {
            keys: Arc::clone(&keys),
            metrics: Arc::clone(&metrics),
            key_id_header: config.key_id_header.clone(),
        }),
    };

    let mut listeners = Vec::new();
    let start_error = |error: std::io::Error| format!("cannot start a listener thread: {error}");
    listeners.push(
        server::start(
            auth_listener,
            ListenerContext {
                name: "auth",
                service,
                limits: limits.clone(),
                max_connections: config.max_connections,
                shutdown: Arc::clone(&shutdown),
                metrics: Arc::clone(&metrics),
            },
        )
        .map_err(start_error)?,
    );
    if let Some(listener) = admin_listener {
        let admin = Admin {
            keys: Arc::clone(&keys),
            metrics: Arc::clone(&metrics),
            reload: Arc::clone(&status),
            shutdown: Arc::clone(&shutdown),
            proxy: config.upstream.is_some(),
        };
        listeners.push(
            server::start(
                listener,
                ListenerContext {
                    name: "admin",
                    service: Arc::new(admin),
                    limits,
                    max_connections: ADMIN_MAX_CONNECTIONS,
                    shutdown: Arc::clone(&shutdown),
                    metrics: Arc::clone(&metrics),
                },
            )
            .map_err(start_error)?,
        );
    }

    log_started(&config, &listeners, keys.len());
    notifier.ready();

    let signal = loop {
        match events.recv() {
            Ok(Event::Reload) => {
                let _ = reload_tx.send(reload::Command::ReloadNow);
            }
            Ok(Event::Terminate(signal)) => break signal,
            Err(_) => return Err("the signal thread stopped unexpectedly".into()),
        }
    };

    shut_down(&config, signal, &shutdown, &notifier, listeners, &events);
    let _ = reload_tx.send(reload::Command::Stop);
    let _ = reload_thread.join();
    log::info!("keygate stopped");
    Ok(())
}

/// Drains, stops the listeners, and waits for open requests to finish.
/// A second SIGTERM or SIGINT skips the remaining waits.
fn shut_down(
    config: &Config,
    signal: &str,
    shutdown: &Shutdown,
    notifier: &Notifier,
    listeners: Vec<RunningListener>,
    events: &mpsc::Receiver<Event>,
) {
    log::info!(
        "received {signal}; readiness now reports not ready, listeners close {}",
        if config.shutdown_delay.is_zero() {
            "now".to_string()
        } else {
            format!("in {}", text::duration(config.shutdown_delay))
        }
    );
    shutdown.begin_draining();
    notifier.stopping();

    let mut hurried = wait_unless_signalled(events, config.shutdown_delay);

    shutdown.begin_closing();
    for listener in listeners {
        listener.stop();
    }

    let open = shutdown.open_connections();
    if !hurried && open > 0 {
        log::info!(
            "waiting up to {} for {} to finish",
            text::duration(config.shutdown_timeout),
            text::count(open, "open connection", "open connections")
        );
    }
    if !hurried {
        let deadline = Instant::now() + config.shutdown_timeout;
        while !hurried && shutdown.open_connections() > 0 && Instant::now() < deadline {
            shutdown.wait_for_connections(Duration::from_millis(100));
            hurried = matches!(events.try_recv(), Ok(Event::Terminate(_)));
        }
    }
    let open = shutdown.open_connections();
    if open > 0 {
        log::warn!(
            "exiting with {open} connections still open after --shutdown-timeout or a second signal"
        );
    }
}

/// Sleeps for `delay`, ending early when a second shutdown signal arrives.
/// Returns whether one did.
fn wait_unless_signalled(events: &mpsc::Receiver<Event>, delay: Duration) -> bool {
    let deadline = Instant::now() + delay;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match events.recv_timeout(left) {
            Ok(Event::Terminate(signal)) => {
                log::warn!("received {signal} again; shutting down without waiting");
                return true;
            }
            Ok(Event::Reload) => {}
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
}

fn log_started(config: &Config, listeners: &[RunningListener], key_count: usize) {
    let mode = match &config.upstream {
        Some(upstream) => format!("reverse-proxy mode to http://{}", upstream.authority),
        None => "forward-auth mode".to_string(),
    };
    let addresses: Vec<String> = listeners
        .iter()
        .map(|listener| format!("{} on {}", listener.name, listener.address))
        .collect();
    log::info!(
        "keygate {} started in {mode}: {}; key file {} with {}, checked every {:?}",
        env!("CARGO_PKG_VERSION"),
        addresses.join(", "),
        config.key_file.display(),
        text::count(key_count, "key", "keys"),
        config.poll_interval
    );
}

/// Warns about key-file setups that work now but fail an operator later.
fn warn_about_key_file(path: &Path, mode: u32) {
    if is_mount_point(path) {
        log::warn!(
            "key file {} is itself a mount point; a file mounted on its own (Kubernetes subPath) never receives Secret updates, \
             so mount the Secret as a directory",
            path.display()
        );
    }
    if mode & 0o004 != 0 && !is_kubernetes_secret_volume(path) {
        log::warn!(
            "key file {} is readable by every user (mode {:o}); restrict it, for example with chmod 600 or 640",
            path.display(),
            mode & 0o777
        );
    }
}

/// Returns whether `path` is in a directory laid out by the kubelet's atomic
/// writer, which keeps the real files behind a `..data` symlink.
fn is_kubernetes_secret_volume(path: &Path) -> bool {
    path.parent()
        .is_some_and(|dir| dir.join("..data").is_symlink())
}

/// Returns whether `path` is a mount point listed in `/proc/self/mountinfo`.
fn is_mount_point(path: &Path) -> bool {
    let Ok(canonical) = path.canonicalize() else {
        return false;
    };
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    // The fifth field is the mount point, with spaces and similar escaped as octal.
    let escaped_path = canonical.to_string_lossy().replace(' ', "\\040");
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(escaped_path.as_str()))
}
