//! Listeners: one accept thread each, handing connections to a bounded
//! worker pool, and rejecting connections past the cap with 503.

use std::io::{self, Read, Write};
use std::net::{Shutdown as SocketShutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::http::conn::{Conn, Limits};
use crate::http::{self, Service};
use crate::metrics::Metrics;
use crate::pool::{Job, Pool};
use crate::ratelimit::LogLimiter;
use crate::shutdown::Shutdown;

/// Pause after an accept error that more accepting cannot fix at once,
/// such as descriptor exhaustion, so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Response sent to connections past the cap, without reading their request.
const OVER_CAPACITY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: application/json\r\n\
Retry-After: 1\r\n\
Content-Length: 72\r\n\
Connection: close\r\n\r\n\
{\"error\":\"over_capacity\",\"message\":\"too many connections; retry later\"}\n";

static ACCEPT_ERROR_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(5));
static OVER_CAPACITY_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));

/// Binds a listener, resolving a host name if the address has one.
pub fn bind(address: &str, option: &str) -> Result<TcpListener, String> {
    let candidates: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|error| format!("invalid address {address:?} for {option}: {error}; expected HOST:PORT or [IPV6]:PORT"))?
        .collect();
    let mut last_error = None;
    for candidate in &candidates {
        match TcpListener::bind(candidate) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(match last_error {
        Some(error) => format!(
            "cannot listen on {address} ({option}): {error}; choose a free address or stop the process using it"
        ),
        None => format!("address {address:?} for {option} resolved to nothing; use an IP address"),
    })
}

/// Listener with its accept thread running.
pub struct RunningListener {
    pub name: &'static str,
    pub address: SocketAddr,
    /// Second handle to the listening socket, used to wake the accept thread.
    wake: TcpListener,
    thread: JoinHandle<()>,
}

impl RunningListener {
    /// Stops accepting and waits for the accept thread to exit.
    pub fn stop(self) {
        // Shutting down a listening socket makes a blocked accept() return
        // EINVAL on Linux, which wakes the accept thread without a dummy connection.
        // SAFETY: the descriptor belongs to `self.wake`, which is alive here.
        unsafe { libc::shutdown(self.wake.as_raw_fd(), libc::SHUT_RDWR) };
        if self.thread.join().is_err() {
            log::error!("the {} accept thread panicked", self.name);
        }
    }
}

/// Everything a listener's connections share.
pub struct ListenerContext {
    pub name: &'static str,
    pub service: Arc<dyn Service>,
    pub limits: Limits,
    pub max_connections: usize,
    pub shutdown: Arc<Shutdown>,
    pub metrics: Arc<Metrics>,
}

/// Starts the accept thread and the worker pool of `listener`.
pub fn start(listener: TcpListener, context: ListenerContext) -> io::Result<RunningListener> {
    let address = listener.local_addr()?;
    let wake = listener.try_clone()?;
    let name = context.name;
    let context = Arc::new(context);

    let worker_context = Arc::clone(&context);
    let pool = Pool::new(
        &format!("keygate-{name}"),
        context.max_connections,
        move |job| serve(job, &worker_context),
    );

    let thread = thread::Builder::new()
        .name(format!("keygate-{name}-accept"))
        .spawn(move || accept_loop(listener, &pool, &context))?;
    Ok(RunningListener {
        name,
        address,
        wake,
        thread,
    })
}

fn accept_loop(listener: TcpListener, pool: &Pool, context: &ListenerContext) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if context.shutdown.is_closing() {
                    return;
                }
                if let Err(job) = pool.dispatch(Job { stream, peer }) {
                    reject_over_capacity(job.stream, job.peer, context);
                }
            }
            Err(_) if context.shutdown.is_closing() => return,
            Err(error) => handle_accept_error(&error, context.name),
        }
    }
}

fn handle_accept_error(error: &io::Error, name: &str) {
    match error.kind() {
        // The client gave up before accept() returned; nothing to do.
        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted => {}
        _ => {
            if let Some(suppressed) = ACCEPT_ERROR_LOG.check() {
                log::warn!(
                    "accepting a connection on the {name} listener failed: {error} ({suppressed} more failures since the previous message); \
                     if this says too many open files, raise the descriptor limit (ulimit -n, LimitNOFILE=) or lower --max-connections"
                );
            }
            // Descriptor or memory exhaustion persists for a while; pausing keeps
            // the loop from spinning while the kernel keeps the connection queued.
            thread::sleep(ACCEPT_ERROR_PAUSE);
        }
    }
}

/// Sends 503 to a connection past the cap, from the accept thread.
///
/// Every step is non-blocking, so a client that does not read cannot stall
/// accepting. Reading what the client already sent before closing avoids a
/// reset that could destroy the 503 before the client reads it.
fn reject_over_capacity(mut stream: TcpStream, peer: SocketAddr, context: &ListenerContext) {
    context.metrics.record_rejected(503);
    if let Some(suppressed) = OVER_CAPACITY_LOG.check() {
        log::warn!(
            "rejected a connection from {peer} on the {} listener: {} connections already open (--max-connections); \
             {suppressed} more rejected since the previous message",
            context.name,
            context.max_connections
        );
    }
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let _ = stream.write(OVER_CAPACITY_RESPONSE);
    let _ = stream.shutdown(SocketShutdown::Write);
    let mut scratch = [0u8; 4096];
    let _ = stream.read(&mut scratch);
}

fn serve(job: Job, context: &ListenerContext) {
    let guard = context.shutdown.register(&job.stream);
    let conn = match Conn::new(job.stream, job.peer, context.limits.clone()) {
        Ok(conn) => conn,
        Err(error) => {
            log::debug!("cannot set up the connection from {}: {error}", job.peer);
            return;
        }
    };
    http::serve_connection(conn, context.service.as_ref(), &guard, &context.metrics);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_capacity_response_length_matches() {
        let text = std::str::from_utf8(OVER_CAPACITY_RESPONSE).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            text.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{text}"
        );
    }
}
