//! Key-file reloading: a thread that polls the file's contents and swaps the
//! key set when they change.
//!
//! The poller compares bytes instead of watching inotify events or comparing
//! metadata. That catches every way a file can change: a Kubernetes `..data`
//! symlink swap, `mv` over the file, an editor's save, delete and recreate,
//! and an in-place rewrite that keeps the size and the modification time.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::keyfile::{self, ReadError, Snapshot};
use crate::keys::{self, KeySet, KeyStore, ParsedKeyFile};
use crate::metrics::{Metrics, unix_millis_now};
use crate::notify::Notifier;
use crate::text;

/// Number of times a changing file is re-read before waiting for the next poll.
const MAX_SETTLE_ATTEMPTS: u32 = 5;

/// Request sent to the poller thread.
pub enum Command {
    /// Reload now, as after SIGHUP.
    ReloadNow,
    Stop,
}

/// Reloader state that the admin endpoints read.
#[derive(Default)]
pub struct ReloadStatus {
    /// Milliseconds since the Unix epoch when the poller last ran a check.
    heartbeat_ms: AtomicU64,
    /// Maximum time in milliseconds between two checks of a healthy poller.
    max_silence_ms: AtomicU64,
    /// Current read failure, shown by `/readyz`.
    error: Mutex<Option<String>>,
}

impl ReloadStatus {
    fn beat(&self) {
        self.heartbeat_ms
            .store(unix_millis_now(), Ordering::Relaxed);
    }

    /// Returns whether the poller checked the file recently enough.
    pub fn poller_alive(&self) -> bool {
        let last = self.heartbeat_ms.load(Ordering::Relaxed);
        unix_millis_now().saturating_sub(last) <= self.max_silence_ms.load(Ordering::Relaxed)
    }

    pub fn current_error(&self) -> Option<String> {
        self.error
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    fn set_error(&self, error: Option<String>) {
        *self
            .error
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = error;
    }
}

/// Settings of the poller.
#[derive(Clone, Debug)]
pub struct Settings {
    pub path: PathBuf,
    pub min_key_length: usize,
    /// Maximum size of the key file in bytes.
    pub max_file_bytes: u64,
    /// Time between two checks of the file.
    pub poll_interval: Duration,
    /// Time between the two reads that must agree before new contents are adopted.
    pub settle_delay: Duration,
}

/// Key-file poller. Runs on its own thread through [`Reloader::spawn`].
pub struct Reloader {
    settings: Settings,
    keys: Arc<KeyStore>,
    metrics: Arc<Metrics>,
    status: Arc<ReloadStatus>,
    notifier: Arc<Notifier>,
    /// Bytes of the key file that the set in force was built from.
    current_bytes: Vec<u8>,
    /// The failure being reported, kept so it is logged once and not per poll.
    failing: Option<ReadError>,
    warned_unlinked: bool,
}

/// Loads the key file at start-up.
///
/// Returns the parsed file and the bytes it came from. A file that cannot be
/// read is an error, and so is one without valid keys, because starting with
/// an empty set would deny every request without anybody noticing.
pub fn initial_load(settings: &Settings) -> Result<(ParsedKeyFile, Snapshot), String> {
    let snapshot = keyfile::read(&settings.path, settings.max_file_bytes)
        .map_err(|error| error.to_string())?;
    let parsed = keys::parse_key_file(&snapshot.bytes, settings.min_key_length);
    log_skipped_lines(settings, &parsed);
    if parsed.keys.is_empty() {
        return Err(format!(
            "key file {} contains no valid keys ({} lines); add one key per line, at least {} visible ASCII characters",
            settings.path.display(),
            parsed.lines.len(),
            settings.min_key_length
        ));
    }
    Ok((parsed, snapshot))
}

impl Reloader {
    pub fn new(
        settings: Settings,
        initial_bytes: Vec<u8>,
        keys: Arc<KeyStore>,
        metrics: Arc<Metrics>,
        status: Arc<ReloadStatus>,
        notifier: Arc<Notifier>,
    ) -> Reloader {
        // A healthy poller checks at least once per interval. Reading and
        // settling add up to a few settle delays, and a busy machine adds a
        // second or two, so the bound is generous.
        let max_silence = settings.poll_interval * 3
            + settings.settle_delay * (MAX_SETTLE_ATTEMPTS + 1)
            + Duration::from_secs(5);
        status
            .max_silence_ms
            .store(max_silence.as_millis() as u64, Ordering::Relaxed);
        status.beat();
        Reloader {
            settings,
            keys,
            metrics,
            status,
            notifier,
            current_bytes: initial_bytes,
            failing: None,
            warned_unlinked: false,
        }
    }

    /// Starts the poller thread. It stops when it receives [`Command::Stop`]
    /// or when every sender is dropped.
    pub fn spawn(mut self, commands: Receiver<Command>) -> std::io::Result<thread::JoinHandle<()>> {
        thread::Builder::new()
            .name("keygate-reload".into())
            .spawn(move || {
                lower_thread_priority();
                let mut next_poll = Instant::now() + self.settings.poll_interval;
                loop {
                    // The systemd watchdog may want a ping more often than the poll interval.
                    let wake = match self.notifier.next_watchdog_ping() {
                        Some(ping) => ping.min(next_poll),
                        None => next_poll,
                    };
                    match commands.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                        Ok(Command::ReloadNow) => self.reload_on_request(),
                        Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                        Err(RecvTimeoutError::Timeout) if Instant::now() >= next_poll => {
                            self.poll();
                            next_poll = Instant::now() + self.settings.poll_interval;
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                    }
                    self.status.beat();
                    self.notifier.watchdog();
                }
            })
    }

    /// Checks the file once; adopts new contents after they have settled.
    fn poll(&mut self) {
        let Some(mut snapshot) = self.read() else {
            return;
        };
        if snapshot.bytes == self.current_bytes {
            self.metrics.record_reload_success(false);
            return;
        }

        // New bytes may be a file in the middle of being written. Adopt them
        // only once two reads a settle delay apart agree.
        for _ in 0..MAX_SETTLE_ATTEMPTS {
            thread::sleep(self.settings.settle_delay);
            let Some(again) = self.read() else { return };
            if again.bytes == snapshot.bytes {
                self.adopt(snapshot);
                return;
            }
            snapshot = again;
        }
        log::warn!(
            "key file {} kept changing for {} reads; keeping the current keys until the next poll",
            self.settings.path.display(),
            MAX_SETTLE_ATTEMPTS + 1
        );
    }

    /// Reloads at once, for SIGHUP. The operator has finished the file, so
    /// no settle delay applies.
    fn reload_on_request(&mut self) {
        self.notifier.reloading();
        log::info!(
            "received SIGHUP; reloading key file {}",
            self.settings.path.display()
        );
        if let Some(snapshot) = self.read() {
            if snapshot.bytes == self.current_bytes {
                log::info!("key file {} is unchanged", self.settings.path.display());
                self.metrics.record_reload_success(false);
            } else {
                self.adopt(snapshot);
            }
        }
        self.notifier.ready();
    }

    /// Reads the file, logging a failure when it starts and when it ends.
    fn read(&mut self) -> Option<Snapshot> {
        match keyfile::read(&self.settings.path, self.settings.max_file_bytes) {
            Ok(snapshot) => {
                if self.failing.take().is_some() {
                    log::info!(
                        "key file {} is readable again",
                        self.settings.path.display()
                    );
                    self.status.set_error(None);
                }
                self.warn_if_unlinked(&snapshot);
                Some(snapshot)
            }
            Err(error) => {
                self.metrics.record_reload_failure();
                let repeated = self
                    .failing
                    .as_ref()
                    .is_some_and(|previous| previous.same_failure_as(&error));
                if !repeated {
                    log::error!(
                        "{error} (running as uid {}); keeping the {} keys loaded before",
                        effective_uid(),
                        self.keys.len()
                    );
                    self.status.set_error(Some(error.to_string()));
                }
                self.failing = Some(error);
                None
            }
        }
    }

    fn warn_if_unlinked(&mut self, snapshot: &Snapshot) {
        if snapshot.link_count == 0 && !self.warned_unlinked {
            log::warn!(
                "key file {} was deleted but is still reachable through a bind mount, so it will never change; \
                 a Kubernetes Secret mounted with subPath does not receive updates, mount the Secret as a directory instead",
                self.settings.path.display()
            );
            self.warned_unlinked = true;
        }
    }

    /// Parses `snapshot` and swaps the new key set in.
    fn adopt(&mut self, snapshot: Snapshot) {
        let started = Instant::now();
        let parsed = keys::parse_key_file(&snapshot.bytes, self.settings.min_key_length);
        log_skipped_lines(&self.settings, &parsed);

        let previous = self.keys.snapshot();
        let set = KeySet::build(parsed.keys, &previous);
        let old_ids = previous.ids();
        let new_ids = set.ids();
        let count = set.len();

        let replaced = self.keys.replace(set);
        // Dropping a large set takes a while; it happens here, outside the lock.
        drop(replaced);
        drop(previous);

        self.current_bytes = snapshot.bytes;
        self.metrics.record_reload_success(true);

        let added: Vec<&str> = new_ids
            .iter()
            .filter(|id| old_ids.binary_search(id).is_err())
            .map(|id| id.as_str())
            .collect();
        let removed: Vec<&str> = old_ids
            .iter()
            .filter(|id| new_ids.binary_search(id).is_err())
            .map(|id| id.as_str())
            .collect();
        log::info!(
            "reloaded key file {} in {:?}: {}, {} added, {} removed",
            self.settings.path.display(),
            started.elapsed(),
            text::count(count, "key", "keys"),
            added.len(),
            removed.len()
        );
        if !added.is_empty() {
            log::info!("key ids added: {}", summarize_ids(&added));
        }
        if !removed.is_empty() {
            log::info!("key ids removed: {}", summarize_ids(&removed));
        }
        if count == 0 {
            log::error!(
                "key file {} contains no valid keys; every request is denied and /readyz reports not ready until a valid key is added",
                self.settings.path.display()
            );
        }
    }
}

/// Lists up to 20 ids and counts the rest, so one log line stays readable
/// when a large file changes.
fn summarize_ids(ids: &[&str]) -> String {
    const SHOWN: usize = 20;
    let mut text = ids
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN {
        text.push_str(&format!(" and {} more", ids.len() - SHOWN));
    }
    text
}

fn log_skipped_lines(settings: &Settings, parsed: &ParsedKeyFile) {
    for (line, reason) in parsed.skipped() {
        log::warn!(
            "key file {} line {line} skipped: {reason}",
            settings.path.display()
        );
    }
    let short = parsed
        .keys
        .iter()
        .filter(|(key, _)| key.len() < keys::RECOMMENDED_KEY_LENGTH)
        .count();
    if short > 0 {
        log::warn!(
            "key file {} has {short} keys shorter than {} bytes; prefer longer random keys, such as `openssl rand -hex 32`",
            settings.path.display(),
            keys::RECOMMENDED_KEY_LENGTH
        );
    }
}

/// Lowers the calling thread's scheduling priority (nice 10), so that
/// parsing a large key file yields the CPU to request threads on a busy
/// machine. Failure only costs that preference, so it is logged at debug.
fn lower_thread_priority() {
    // SAFETY: gettid has no preconditions. On Linux, setpriority with
    // PRIO_PROCESS and a thread id changes only that thread.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
    if result != 0 {
        log::debug!(
            "cannot lower the reload thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

pub fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) takes no arguments and is documented to always succeed.
    unsafe { libc::geteuid() }
}
