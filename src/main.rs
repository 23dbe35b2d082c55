//! keygate: API-key authentication in front of private HTTP services.
//!
//! `main` only maps the result of [`run`] to an exit status: 0 on success,
//! 1 when the daemon or a subcommand fails, 2 for a usage error.

use keygate::{commands, config, daemon, text};

use std::io::Write;
use std::process::ExitCode;

use config::Command;

/// Failure of a run, with the exit status it maps to.
enum Failure {
    /// Invalid command line or environment; exit status 2.
    Usage(String),
    /// Anything else; exit status 1.
    Runtime(String),
    /// Failure already reported on standard output or standard error; exit status 1.
    Silent,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("keygate: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(message)) => {
            log::error!("{message}");
            // The logger may not be set up yet (subcommands), so the message
            // also goes to stderr directly when logging is off.
            if !log::log_enabled!(log::Level::Error) {
                eprintln!("keygate: {message}");
            }
            ExitCode::from(1)
        }
        Err(Failure::Silent) => ExitCode::from(1),
    }
}

fn run() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let env = |name: &str| std::env::var(name).ok();
    let command = config::parse(&args, &env).map_err(|error| Failure::Usage(error.0))?;

    match command {
        Command::Help(text) => {
            print!("{text}");
            Ok(())
        }
        Command::Version => {
            println!("keygate {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Serve(config) => {
            init_logging();
            daemon::run(*config).map_err(Failure::Runtime)
        }
        Command::KeysCheck(check) => {
            let mut stdout = std::io::stdout().lock();
            match commands::keys_check(&check, &mut stdout) {
                Ok(true) => Ok(()),
                Ok(false) => Err(Failure::Silent),
                Err(message) => Err(Failure::Runtime(message)),
            }
        }
        Command::KeysId => {
            let (id, length) =
                commands::keys_id(&mut std::io::stdin().lock()).map_err(Failure::Runtime)?;
            println!("{id}");
            if length < 16 {
                eprintln!(
                    "keygate: note: this key is {}; keygate skips keys shorter than --min-key-length, 16 bytes by default",
                    text::count(length, "byte", "bytes")
                );
            }
            Ok(())
        }
        Command::Healthcheck(check) => match commands::healthcheck(&check) {
            Ok(()) => Ok(()),
            Err(message) => {
                let _ = writeln!(std::io::stderr(), "keygate: {message}");
                Err(Failure::Silent)
            }
        },
    }
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
}
