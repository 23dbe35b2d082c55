//! Unix signals, turned into events for the main thread.

use std::sync::mpsc::Sender;
use std::thread;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Request from a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// SIGHUP: reload the key file now.
    Reload,
    /// SIGTERM or SIGINT: shut down gracefully; carries the signal's name.
    Terminate(&'static str),
}

/// Installs handlers for SIGHUP, SIGTERM and SIGINT and forwards them to `events`.
///
/// Installing a handler matters when keygate is PID 1 in a container: the
/// kernel applies no default action to signals sent to PID 1, so without a
/// handler SIGTERM would be ignored.
pub fn forward(events: Sender<Event>) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    thread::Builder::new()
        .name("keygate-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let event = match signal {
                    SIGHUP => Event::Reload,
                    SIGTERM => Event::Terminate("SIGTERM"),
                    _ => Event::Terminate("SIGINT"),
                };
                if events.send(event).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}
