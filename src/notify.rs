//! systemd's service notification protocol (`sd_notify`), spoken directly
//! over the Unix datagram socket named by `NOTIFY_SOCKET`.
//!
//! Without `NOTIFY_SOCKET` every method does nothing, so the same binary
//! runs unchanged outside systemd.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Connection to the service manager, if one asked for notifications.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Time between watchdog pings: half of `WATCHDOG_USEC`.
    watchdog_period: Option<Duration>,
    last_ping: Mutex<Instant>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Notifier {
        let target = std::env::var("NOTIFY_SOCKET").ok().and_then(|path| match open(&path) {
            Ok(target) => Some(target),
            Err(error) => {
                log::warn!("cannot use NOTIFY_SOCKET {path}: {error}; systemd will not hear from keygate");
                None
            }
        });

        let watchdog_for_us = std::env::var("WATCHDOG_PID")
            .map(|pid| pid.trim() == std::process::id().to_string())
            .unwrap_or(true);
        let watchdog_period = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && watchdog_for_us && target.is_some())
            .map(|usec| Duration::from_micros(usec / 2));

        Notifier {
            target,
            watchdog_period,
            last_ping: Mutex::new(Instant::now()),
        }
    }

    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// Tells systemd a reload started; `ready` ends it.
    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            monotonic_micros()
        ));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// Returns when the next watchdog ping is due, if systemd asked for pings.
    pub fn next_watchdog_ping(&self) -> Option<Instant> {
        let period = self.watchdog_period?;
        Some(
            *self
                .last_ping
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                + period,
        )
    }

    /// Sends `WATCHDOG=1` if a ping is due.
    pub fn watchdog(&self) {
        let Some(period) = self.watchdog_period else {
            return;
        };
        let mut last = self
            .last_ping
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if last.elapsed() >= period {
            *last = Instant::now();
            drop(last);
            self.send("WATCHDOG=1");
        }
    }

    fn send(&self, message: &str) {
        let Some((socket, address)) = &self.target else {
            return;
        };
        if let Err(error) = socket.send_to_addr(message.as_bytes(), address) {
            log::warn!(
                "sending {:?} to NOTIFY_SOCKET failed: {error}",
                message.lines().next().unwrap_or_default()
            );
        }
    }
}

fn open(path: &str) -> io::Result<(UnixDatagram, SocketAddr)> {
    let address = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(path)?,
    };
    Ok((UnixDatagram::unbound()?, address))
}

fn monotonic_micros() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec, and CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}
