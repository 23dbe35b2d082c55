//! Graceful shutdown state shared by the listeners, the connections and the
//! admin endpoints.
//!
//! Shutdown has two steps. Draining starts at the signal: `/readyz` turns
//! 503 so that load balancers stop sending traffic, while everything else
//! keeps working. Closing starts after `--shutdown-delay`: the listeners
//! stop, idle keep-alive connections are closed, and connections in the
//! middle of a request finish it and then close.

use std::collections::HashMap;
use std::net::{Shutdown as SocketShutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Open connection in the shutdown's table.
struct Tracked {
    /// Second handle to the socket, used to wake a blocked read.
    stream: TcpStream,
    /// Whether the connection waits for a request (not in the middle of one).
    idle: Arc<AtomicBool>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Tracked>,
}

/// Shared shutdown state.
#[derive(Default)]
pub struct Shutdown {
    draining: AtomicBool,
    closing: AtomicBool,
    table: Mutex<Table>,
    /// Signalled whenever a connection closes.
    connection_closed: Condvar,
}

impl Shutdown {
    pub fn new() -> Arc<Shutdown> {
        Arc::new(Shutdown::default())
    }

    /// Returns whether a shutdown signal has arrived. Readiness reports 503 from then on.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Returns whether connections are being closed.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    pub fn begin_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Starts closing: every connection that waits for a request is woken and
    /// closes; busy ones close after their current response.
    pub fn begin_closing(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.closing.store(true, Ordering::SeqCst);

        let table = self.lock();
        for tracked in table.open.values() {
            if tracked.idle.load(Ordering::SeqCst) {
                // Shutting down only the read side wakes the blocked read with
                // end-of-file, while a response that is being written still goes out.
                let _ = tracked.stream.shutdown(SocketShutdown::Read);
            }
        }
    }

    /// Registers a connection so that closing can reach it.
    ///
    /// When the socket cannot be duplicated (descriptor exhaustion), the
    /// connection is served untracked: closing neither wakes it nor waits
    /// for it, and it ends at its own idle timeout or with the process.
    pub fn register(self: &Arc<Shutdown>, stream: &TcpStream) -> ConnectionGuard {
        let idle = Arc::new(AtomicBool::new(false));
        let id = match stream.try_clone() {
            Ok(clone) => {
                let mut table = self.lock();
                table.next_id += 1;
                let id = table.next_id;
                table.open.insert(
                    id,
                    Tracked {
                        stream: clone,
                        idle: Arc::clone(&idle),
                    },
                );
                Some(id)
            }
            Err(error) => {
                log::debug!(
                    "cannot duplicate a connection's socket for shutdown tracking: {error}"
                );
                None
            }
        };
        ConnectionGuard {
            shutdown: Arc::clone(self),
            id,
            idle,
        }
    }

    /// Number of open connections.
    pub fn open_connections(&self) -> usize {
        self.lock().open.len()
    }

    /// Waits until every tracked connection has closed or `timeout` passes.
    /// Returns the number still open.
    pub fn wait_for_connections(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut table = self.lock();
        loop {
            let open = table.open.len();
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return open;
            };
            if open == 0 || left.is_zero() {
                return open;
            }
            table = self
                .connection_closed
                .wait_timeout(table, left)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Registration of one open connection. Dropping it unregisters the connection.
pub struct ConnectionGuard {
    shutdown: Arc<Shutdown>,
    id: Option<u64>,
    idle: Arc<AtomicBool>,
}

impl ConnectionGuard {
    pub fn set_idle(&self, idle: bool) {
        self.idle.store(idle, Ordering::SeqCst);
    }

    pub fn is_closing(&self) -> bool {
        self.shutdown.is_closing()
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.shutdown.lock().open.remove(&id);
            self.shutdown.connection_closed.notify_all();
        }
    }
}
