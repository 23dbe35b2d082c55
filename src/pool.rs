//! Bounded pool of worker threads, one per open connection.
//!
//! Threads start on demand up to the pool's maximum and exit after
//! [`IDLE_THREAD_LIFETIME`] without work. A connection goes to an idle
//! thread when there is one. When every thread is busy and the pool is
//! full, the connection goes back to the caller, which rejects it, so a
//! flood of connections never queues without bound.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

/// Time an idle worker thread waits for a connection before it exits.
const IDLE_THREAD_LIFETIME: Duration = Duration::from_secs(60);

/// Stack size of worker threads in bytes. Request handling keeps large
/// buffers on the heap, so a small stack keeps memory low with many
/// idle keep-alive connections.
const WORKER_STACK_BYTES: usize = 256 * 1024;

/// Accepted connection waiting for a worker.
pub struct Job {
    pub stream: TcpStream,
    pub peer: SocketAddr,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Threads waiting for a job and not yet promised one.
    idle: usize,
    threads: usize,
}

struct Shared {
    name: String,
    max_threads: usize,
    state: Mutex<State>,
    job_ready: Condvar,
    handler: Box<dyn Fn(Job) + Send + Sync>,
}

/// Handle to a pool; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

impl Pool {
    /// Creates a pool of at most `max_threads` threads named `name-worker`
    /// that run `handler` for each connection.
    pub fn new(
        name: &str,
        max_threads: usize,
        handler: impl Fn(Job) + Send + Sync + 'static,
    ) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                name: format!("{name}-worker"),
                max_threads: max_threads.max(1),
                state: Mutex::new(State::default()),
                job_ready: Condvar::new(),
                handler: Box::new(handler),
            }),
        }
    }

    /// Hands a connection to a worker, or returns it when all are busy.
    pub fn dispatch(&self, job: Job) -> Result<(), Job> {
        let mut state = self.shared.lock();

        if state.idle > 0 {
            state.idle -= 1;
            state.queue.push_back(job);
            drop(state);
            self.shared.job_ready.notify_one();
            return Ok(());
        }
        if state.threads >= self.shared.max_threads {
            return Err(job);
        }

        state.threads += 1;
        drop(state);
        let shared = Arc::clone(&self.shared);
        let spawned = thread::Builder::new()
            .name(self.shared.name.clone())
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || shared.run_worker(job));
        match spawned {
            Ok(_) => Ok(()),
            Err(error) => {
                self.shared.lock().threads -= 1;
                log::warn!("cannot start a {} thread: {error}", self.shared.name);
                // The job moved into the failed closure and is gone; the
                // client sees the connection close.
                Ok(())
            }
        }
    }

    /// Number of threads running, busy or idle.
    #[cfg(test)]
    pub fn threads(&self) -> usize {
        self.shared.lock().threads
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn run_worker(&self, first: Job) {
        let mut job = first;
        loop {
            let peer = job.peer;
            // A panic must cost one connection, never the worker count or the process.
            if catch_unwind(AssertUnwindSafe(|| (self.handler)(job))).is_err() {
                log::error!("internal error while serving {peer}; the connection was closed");
            }
            match self.next_job() {
                Some(next) => job = next,
                None => return,
            }
        }
    }

    /// Waits for the next job; `None` once the thread should exit.
    fn next_job(&self) -> Option<Job> {
        let mut state = self.lock();
        state.idle += 1;
        loop {
            if let Some(job) = state.queue.pop_front() {
                return Some(job);
            }
            let (next, timeout) = self
                .job_ready
                .wait_timeout(state, IDLE_THREAD_LIFETIME)
                .unwrap_or_else(|poison| poison.into_inner());
            state = next;
            if timeout.timed_out() && state.queue.is_empty() {
                // `dispatch` decrements `idle` when it promises this thread a
                // job, so an unpromised thread still counts itself here.
                if state.idle > 0 {
                    state.idle -= 1;
                    state.threads -= 1;
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;

    fn connection(listener: &TcpListener) -> Job {
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let peer = stream.local_addr().unwrap();
        Job { stream, peer }
    }

    #[test]
    fn pool_rejects_past_capacity() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let pool = Pool::new("test", 2, move |_job| {
            let _ = release_rx.lock().unwrap().recv();
        });

        assert!(pool.dispatch(connection(&listener)).is_ok());
        assert!(pool.dispatch(connection(&listener)).is_ok());
        assert!(pool.dispatch(connection(&listener)).is_err());
        assert_eq!(pool.threads(), 2);

        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
        // Both threads become idle and take new work again.
        for _ in 0..100 {
            if pool.dispatch(connection(&listener)).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!("pool never accepted work again after its threads were released");
    }
}
