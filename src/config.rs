//! Command line and environment: subcommands, options and their validation.
//!
//! Every option has a flag and an environment variable. A flag wins over
//! the variable, and the variable over the default. Errors name the flag or
//! variable, the value, and what it should look like.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::keys::MAX_KEY_LENGTH;

/// Command-line usage error, reported with exit status 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Description of one option.
struct OptionSpec {
    /// Flag name without the leading `--`.
    flag: &'static str,
    env: &'static str,
    /// Placeholder for the value in help text; `None` for a switch.
    value_name: Option<&'static str>,
    default: &'static str,
    help: &'static str,
}

const fn option(
    flag: &'static str,
    env: &'static str,
    value_name: &'static str,
    default: &'static str,
    help: &'static str,
) -> OptionSpec {
    OptionSpec {
        flag,
        env,
        value_name: Some(value_name),
        default,
        help,
    }
}

/// Environment variable read for the key file when neither `--key-file`
/// nor `KEYGATE_KEY_FILE` is set.
pub const AUTH_SECRET_PATH: &str = "AUTH_SECRET_PATH";

const KEY_FILE: OptionSpec = option(
    "key-file",
    "KEYGATE_KEY_FILE",
    "PATH",
    "",
    "Key file, one key per line. Falls back to AUTH_SECRET_PATH. Required.",
);

const MIN_KEY_LENGTH: OptionSpec = option(
    "min-key-length",
    "KEYGATE_MIN_KEY_LENGTH",
    "BYTES",
    "16",
    "Shortest key accepted from the key file.",
);

const MAX_KEY_FILE_BYTES: OptionSpec = option(
    "max-key-file-bytes",
    "KEYGATE_MAX_KEY_FILE_BYTES",
    "BYTES",
    "1048576",
    "Largest key file accepted; a larger file is an error.",
);

/// Options of `keygate keys check`: only those that affect reading a key file.
const KEYS_CHECK_OPTIONS: &[OptionSpec] = &[KEY_FILE, MIN_KEY_LENGTH, MAX_KEY_FILE_BYTES];

const SERVE_OPTIONS: &[OptionSpec] = &[
    KEY_FILE,
    option(
        "listen",
        "KEYGATE_LISTEN",
        "ADDR",
        "127.0.0.1:8080",
        "Address of the auth listener (HOST:PORT, [IPV6]:PORT).",
    ),
    option(
        "admin-listen",
        "KEYGATE_ADMIN_LISTEN",
        "ADDR",
        "127.0.0.1:8081",
        "Address of the admin listener (/healthz, /readyz, /metrics), or `off`.",
    ),
    option(
        "upstream",
        "KEYGATE_UPSTREAM",
        "URL",
        "",
        "Reverse-proxy mode: forward allowed requests to this http://HOST:PORT. Unset: forward-auth mode.",
    ),
    MIN_KEY_LENGTH,
    MAX_KEY_FILE_BYTES,
    option(
        "poll-interval",
        "KEYGATE_POLL_INTERVAL",
        "DURATION",
        "2s",
        "Time between two checks of the key file, at least 100ms.",
    ),
    option(
        "settle-delay",
        "KEYGATE_SETTLE_DELAY",
        "DURATION",
        "200ms",
        "Changed key-file contents are adopted once two reads this far apart agree.",
    ),
    option(
        "max-connections",
        "KEYGATE_MAX_CONNECTIONS",
        "COUNT",
        "1024",
        "Open connections served at once on the auth listener; more get 503.",
    ),
    option(
        "max-header-bytes",
        "KEYGATE_MAX_HEADER_BYTES",
        "BYTES",
        "32768",
        "Largest request head (request line and headers); larger gets 431.",
    ),
    option(
        "max-headers",
        "KEYGATE_MAX_HEADERS",
        "COUNT",
        "100",
        "Most header fields in one request (at most 256); more gets 431.",
    ),
    option(
        "header-timeout",
        "KEYGATE_HEADER_TIMEOUT",
        "DURATION",
        "10s",
        "Time allowed to receive a request head; slower clients get 408.",
    ),
    option(
        "idle-timeout",
        "KEYGATE_IDLE_TIMEOUT",
        "DURATION",
        "90s",
        "Time a keep-alive connection may wait for its next request.",
    ),
    option(
        "io-timeout",
        "KEYGATE_IO_TIMEOUT",
        "DURATION",
        "60s",
        "Longest wait for each read or write of a body or response.",
    ),
    option(
        "shutdown-delay",
        "KEYGATE_SHUTDOWN_DELAY",
        "DURATION",
        "0s",
        "Time between SIGTERM (readiness turns 503) and closing the listeners.",
    ),
    option(
        "shutdown-timeout",
        "KEYGATE_SHUTDOWN_TIMEOUT",
        "DURATION",
        "20s",
        "Time in-flight requests get to finish after the listeners close.",
    ),
    option(
        "key-id-header",
        "KEYGATE_KEY_ID_HEADER",
        "NAME",
        "X-Keygate-Key-Id",
        "Header that carries the matching key's id to the gateway or upstream.",
    ),
    OptionSpec {
        flag: "pass-authorization",
        env: "KEYGATE_PASS_AUTHORIZATION",
        value_name: None,
        default: "false",
        help: "Proxy mode: forward the Authorization header upstream instead of removing it.",
    },
    option(
        "upstream-connect-timeout",
        "KEYGATE_UPSTREAM_CONNECT_TIMEOUT",
        "DURATION",
        "5s",
        "Proxy mode: time allowed to connect to the upstream.",
    ),
    option(
        "upstream-timeout",
        "KEYGATE_UPSTREAM_TIMEOUT",
        "DURATION",
        "300s",
        "Proxy mode: time the upstream gets to start its response; then 504.",
    ),
    option(
        "upstream-max-idle",
        "KEYGATE_UPSTREAM_MAX_IDLE",
        "COUNT",
        "32",
        "Proxy mode: idle upstream connections kept for reuse.",
    ),
];

const HEALTHCHECK_OPTIONS: &[OptionSpec] = &[
    option(
        "url",
        "KEYGATE_HEALTHCHECK_URL",
        "URL",
        "",
        "URL to request. Default: /healthz on the admin listener (KEYGATE_ADMIN_LISTEN).",
    ),
    option(
        "timeout",
        "KEYGATE_HEALTHCHECK_TIMEOUT",
        "DURATION",
        "2s",
        "Time allowed for the whole check.",
    ),
];

/// Upstream of reverse-proxy mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Host name or IP literal, without brackets.
    pub host: String,
    pub port: u16,
    /// `host:port` as written in the URL, for logs and the Host fallback.
    pub authority: String,
}

/// Settings of the daemon.
#[derive(Clone, Debug)]
pub struct Config {
    pub key_file: PathBuf,
    pub listen: String,
    /// `None` when the admin listener is off.
    pub admin_listen: Option<String>,
    pub upstream: Option<Upstream>,
    pub min_key_length: usize,
    pub max_key_file_bytes: u64,
    pub poll_interval: Duration,
    pub settle_delay: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub io_timeout: Duration,
    pub shutdown_delay: Duration,
    pub shutdown_timeout: Duration,
    pub key_id_header: String,
    pub pass_authorization: bool,
    pub upstream_connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub upstream_max_idle: usize,
}

/// Settings of `keygate keys check`.
#[derive(Clone, Debug)]
pub struct KeysCheck {
    pub key_file: PathBuf,
    pub min_key_length: usize,
    pub max_key_file_bytes: u64,
}

/// Settings of `keygate healthcheck`.
#[derive(Clone, Debug)]
pub struct Healthcheck {
    pub url: String,
    pub timeout: Duration,
}

/// Command selected by the command line.
#[derive(Debug)]
pub enum Command {
    Serve(Box<Config>),
    KeysCheck(KeysCheck),
    KeysId,
    Healthcheck(Healthcheck),
    Help(String),
    Version,
}

/// Values of the options after flags, environment and defaults are combined.
struct Values<'a> {
    specs: &'a [OptionSpec],
    /// Value and where it came from, such as `--listen` or `KEYGATE_LISTEN`.
    values: HashMap<&'static str, (String, String)>,
}

impl Values<'_> {
    fn raw(&self, flag: &str) -> (&str, &str) {
        self.values
            .get(flag)
            .map_or(("", "default"), |(value, source)| {
                (value.as_str(), source.as_str())
            })
    }

    fn is_set(&self, flag: &str) -> bool {
        self.values.contains_key(flag)
    }

    fn string(&self, flag: &str) -> String {
        match self.values.get(flag) {
            Some((value, _)) => value.clone(),
            None => self.default(flag).to_string(),
        }
    }

    fn default(&self, flag: &str) -> &'static str {
        self.specs
            .iter()
            .find(|spec| spec.flag == flag)
            .map_or("", |spec| spec.default)
    }

    fn parsed<T>(
        &self,
        flag: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, UsageError> {
        let (value, source) = self.raw(flag);
        let (value, source) = if self.is_set(flag) {
            (value, source)
        } else {
            (self.default(flag), "default")
        };
        parse(value).ok_or_else(|| {
            UsageError(format!(
                "invalid value {value:?} for {source}: expected {expected}"
            ))
        })
    }

    fn duration(&self, flag: &str) -> Result<Duration, UsageError> {
        self.parsed(
            flag,
            "a duration such as 500ms, 2s, 1m or 1h (a plain number means seconds)",
            parse_duration,
        )
    }

    fn positive_duration(&self, flag: &str) -> Result<Duration, UsageError> {
        self.parsed(
            flag,
            "a duration above zero, such as 500ms, 2s, 1m or 1h",
            |text| parse_duration(text).filter(|duration| !duration.is_zero()),
        )
    }

    fn count(&self, flag: &str, min: usize, max: usize) -> Result<usize, UsageError> {
        self.parsed(
            flag,
            &format!("a whole number from {min} to {max}"),
            |text| {
                text.parse::<usize>()
                    .ok()
                    .filter(|count| (min..=max).contains(count))
            },
        )
    }

    fn switch(&self, flag: &str) -> Result<bool, UsageError> {
        self.parsed(flag, "true or false", |text| {
            match text.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Some(true),
                "false" | "0" | "no" | "off" | "" => Some(false),
                _ => None,
            }
        })
    }
}

/// Parses a duration: a whole number with the unit `ms`, `s`, `m` or `h`,
/// or a plain number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits == 0 {
        return None;
    }
    let number: u64 = text[..digits].parse().ok()?;
    let millis_per_unit: u64 = match &text[digits..] {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
}

/// Parses `http://HOST[:PORT][/]` into an upstream.
pub fn parse_upstream(text: &str) -> Result<Upstream, String> {
    let Some(rest) = text.strip_prefix("http://") else {
        return Err(if text.starts_with("https://") {
            "https upstreams are not supported; keygate forwards plain http:// to a local or in-cluster service".into()
        } else {
            "expected a URL of the form http://HOST:PORT".into()
        });
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err("expected http://HOST:PORT with no path, query, or user info".into());
    }

    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("unclosed [ in IPv6 address")?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or("expected :PORT after the IPv6 address")?,
            ),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => 80,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&port| port > 0)
            .ok_or("port must be a number from 1 to 65535")?,
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    Ok(Upstream {
        host: host.to_string(),
        port,
        authority: authority.to_string(),
    })
}

/// Checks that a listen address has the form `HOST:PORT` or `[IPV6]:PORT`
/// with a numeric port. Host names are resolved later, when binding.
fn validate_listen(address: &str) -> Result<(), String> {
    if address.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err("expected HOST:PORT or [IPV6]:PORT, such as 127.0.0.1:8080".into());
    };
    if host.is_empty() || host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err("expected HOST:PORT or [IPV6]:PORT, such as 127.0.0.1:8080; put an IPv6 address in brackets".into());
    }
    port.parse::<u16>()
        .map(|_| ())
        .map_err(|_| "the port must be a number from 0 to 65535".into())
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Collects flags from `args` and variables from `env` for the given options.
/// Positional arguments are returned separately.
fn collect<'a>(
    specs: &'a [OptionSpec],
    args: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Values<'a>, Vec<String>), UsageError> {
    let mut values = HashMap::new();
    for spec in specs {
        if let Some(value) = env(spec.env) {
            values.insert(spec.flag, (value, spec.env.to_string()));
        }
    }

    let mut positional = Vec::new();
    let mut index = 0;
    while index < args.len() {
        let arg = &args[index];
        index += 1;
        let Some(flag_text) = arg.strip_prefix("--") else {
            if arg.starts_with('-') && arg != "-" {
                return Err(UsageError(format!(
                    "unknown option {arg:?}; run keygate --help for the list"
                )));
            }
            positional.push(arg.clone());
            continue;
        };
        let (name, inline) = match flag_text.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (flag_text, None),
        };
        let Some(spec) = specs.iter().find(|spec| spec.flag == name) else {
            return Err(UsageError(format!(
                "unknown option --{name}; run keygate --help for the list"
            )));
        };
        let value = match (spec.value_name, inline) {
            (None, Some(value)) => value,
            (None, None) => "true".to_string(),
            (Some(_), Some(value)) => value,
            (Some(value_name), None) => {
                let Some(value) = args.get(index) else {
                    return Err(UsageError(format!("--{name} needs a value ({value_name})")));
                };
                index += 1;
                value.clone()
            }
        };
        values.insert(spec.flag, (value, format!("--{name}")));
    }
    Ok((Values { specs, values }, positional))
}

/// Resolves the key file from `--key-file`, `KEYGATE_KEY_FILE` or `AUTH_SECRET_PATH`.
fn key_file(
    values: &Values<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, UsageError> {
    let secret_path = env(AUTH_SECRET_PATH).filter(|path| !path.is_empty());
    let chosen = match values.values.get("key-file") {
        Some((path, source)) if source == "KEYGATE_KEY_FILE" => {
            if let Some(other) = secret_path.as_ref().filter(|other| *other != path) {
                return Err(UsageError(format!(
                    "KEYGATE_KEY_FILE ({path:?}) and AUTH_SECRET_PATH ({other:?}) name different key files; unset one of them"
                )));
            }
            Some(path.clone())
        }
        Some((path, _)) => Some(path.clone()),
        None => secret_path,
    };
    match chosen.filter(|path| !path.is_empty()) {
        Some(path) => Ok(PathBuf::from(path)),
        None => Err(UsageError(format!(
            "no key file given; pass --key-file PATH or set KEYGATE_KEY_FILE or {AUTH_SECRET_PATH}"
        ))),
    }
}

fn build_config(
    values: &Values<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, UsageError> {
    let upstream = match values.string("upstream").trim() {
        "" => None,
        text => Some(parse_upstream(text).map_err(|reason| {
            let (_, source) = values.raw("upstream");
            UsageError(format!("invalid value {text:?} for {source}: {reason}"))
        })?),
    };
    let admin_listen = match values.string("admin-listen").trim() {
        "off" | "none" | "" => None,
        address => Some(address.to_string()),
    };
    for (flag, address) in [
        ("listen", Some(values.string("listen"))),
        ("admin-listen", admin_listen.clone()),
    ] {
        if let Some(address) = address {
            validate_listen(address.trim()).map_err(|reason| {
                let (_, source) = values.raw(flag);
                let source = if values.is_set(flag) {
                    source.to_string()
                } else {
                    format!("--{flag}")
                };
                UsageError(format!("invalid value {address:?} for {source}: {reason}"))
            })?;
        }
    }
    let key_id_header = values.string("key-id-header");
    if !is_header_name(&key_id_header) {
        let (_, source) = values.raw("key-id-header");
        return Err(UsageError(format!(
            "invalid value {key_id_header:?} for {source}: expected an HTTP header name such as X-Keygate-Key-Id"
        )));
    }

    Ok(Config {
        key_file: key_file(values, env)?,
        listen: values.string("listen"),
        admin_listen,
        upstream,
        min_key_length: values.count("min-key-length", 1, MAX_KEY_LENGTH)?,
        max_key_file_bytes: values.count("max-key-file-bytes", 1024, 1 << 30)? as u64,
        poll_interval: values.parsed(
            "poll-interval",
            "a duration of at least 100ms, such as 2s",
            |text| parse_duration(text).filter(|duration| *duration >= Duration::from_millis(100)),
        )?,
        settle_delay: values.duration("settle-delay")?,
        max_connections: values.count("max-connections", 1, 65_536)?,
        max_header_bytes: values.count("max-header-bytes", 1024, 1 << 20)?,
        max_headers: values.count("max-headers", 1, crate::http::request::MAX_HEADERS_CEILING)?,
        header_timeout: values.positive_duration("header-timeout")?,
        idle_timeout: values.positive_duration("idle-timeout")?,
        io_timeout: values.positive_duration("io-timeout")?,
        shutdown_delay: values.duration("shutdown-delay")?,
        shutdown_timeout: values.duration("shutdown-timeout")?,
        key_id_header,
        pass_authorization: values.switch("pass-authorization")?,
        upstream_connect_timeout: values.positive_duration("upstream-connect-timeout")?,
        upstream_timeout: values.positive_duration("upstream-timeout")?,
        upstream_max_idle: values.count("upstream-max-idle", 0, 4096)?,
    })
}

/// Parses the command line (without the program name) and the environment.
pub fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Command, UsageError> {
    match args.first().map(String::as_str) {
        Some("--help" | "-h" | "help") => return Ok(Command::Help(help_text())),
        Some("--version" | "-V") => return Ok(Command::Version),
        Some("keys") => return parse_keys(&args[1..], env),
        Some("healthcheck") => return parse_healthcheck(&args[1..], env),
        _ => {}
    }
    if args.iter().any(|arg| arg == "--help" || arg == "-h") {
        return Ok(Command::Help(help_text()));
    }

    let (values, positional) = collect(SERVE_OPTIONS, args, env)?;
    if let Some(extra) = positional.first() {
        return Err(UsageError(format!(
            "unexpected argument {extra:?}; subcommands are `keys check`, `keys id` and `healthcheck`, see keygate --help"
        )));
    }
    Ok(Command::Serve(Box::new(build_config(&values, env)?)))
}

fn parse_keys(
    args: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Command, UsageError> {
    match args.first().map(String::as_str) {
        Some("id") if args.len() == 1 => Ok(Command::KeysId),
        Some("id") => Err(UsageError(
            "keygate keys id takes no arguments; it reads one key on standard input".into(),
        )),
        Some("check") => {
            let (values, positional) = collect(KEYS_CHECK_OPTIONS, &args[1..], env)?;
            if positional.len() > 1 {
                return Err(UsageError(
                    "keygate keys check takes at most one FILE".into(),
                ));
            }
            let key_file = match positional.first() {
                Some(path) => PathBuf::from(path),
                None => key_file(&values, env).map_err(|_| {
                    UsageError(format!(
                        "no key file to check; run keygate keys check FILE, or set --key-file, KEYGATE_KEY_FILE or {AUTH_SECRET_PATH}"
                    ))
                })?,
            };
            Ok(Command::KeysCheck(KeysCheck {
                key_file,
                min_key_length: values.count("min-key-length", 1, MAX_KEY_LENGTH)?,
                max_key_file_bytes: values.count("max-key-file-bytes", 1024, 1 << 30)? as u64,
            }))
        }
        _ => Err(UsageError(
            "usage: keygate keys check [FILE] | keygate keys id".into(),
        )),
    }
}

fn parse_healthcheck(
    args: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Command, UsageError> {
    let (values, positional) = collect(HEALTHCHECK_OPTIONS, args, env)?;
    if let Some(extra) = positional.first() {
        return Err(UsageError(format!(
            "unexpected argument {extra:?}; usage: keygate healthcheck [--url URL]"
        )));
    }
    let url = match values.string("url").trim() {
        "" => {
            let admin = env("KEYGATE_ADMIN_LISTEN").unwrap_or_else(|| "127.0.0.1:8081".to_string());
            format!("http://{}/healthz", loopback_for(&admin))
        }
        url => url.to_string(),
    };
    Ok(Command::Healthcheck(Healthcheck {
        url,
        timeout: values.positive_duration("timeout")?,
    }))
}

/// Replaces a wildcard listen address with the loopback address of its family.
fn loopback_for(listen: &str) -> String {
    if let Some(port) = listen.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = listen.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        listen.to_string()
    }
}

fn help_text() -> String {
    let mut text = format!(
        "keygate {}: API-key authentication for private HTTP services.\n\n\
         Usage:\n  \
         keygate --key-file PATH [OPTIONS]      serve (forward-auth, or reverse proxy with --upstream)\n  \
         keygate keys check [FILE]              check a key file with the daemon's rules\n  \
         keygate keys id < KEY                  print the id of the key on standard input\n  \
         keygate healthcheck [--url URL]        exit 0 if the admin /healthz answers 200\n\n\
         Options (flag, environment variable, default). Durations take ms, s, m or h;\n\
         a plain number means seconds. A flag wins over its variable.\n\n",
        env!("CARGO_PKG_VERSION")
    );
    for spec in SERVE_OPTIONS {
        let flag = match spec.value_name {
            Some(value_name) => format!("--{} {value_name}", spec.flag),
            None => format!("--{}", spec.flag),
        };
        let default = if spec.default.is_empty() {
            "none".to_string()
        } else {
            spec.default.to_string()
        };
        let _ = writeln!(
            text,
            "  {flag}\n      {}\n      env {}, default {default}",
            spec.help, spec.env
        );
    }
    let _ = writeln!(
        text,
        "\nThe key file may also be given in {AUTH_SECRET_PATH}. Logging follows RUST_LOG (default info).\n\
         Signals: SIGHUP reloads the key file now; SIGTERM and SIGINT shut down gracefully."
    );
    let _ = writeln!(text, "\nhealthcheck options:");
    for spec in HEALTHCHECK_OPTIONS {
        let _ = writeln!(
            text,
            "  --{} {}\n      {}\n      env {}, default {}",
            spec.flag,
            spec.value_name.unwrap_or_default(),
            spec.help,
            spec.env,
            if spec.default.is_empty() {
                "see above"
            } else {
                spec.default
            }
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| arg.to_string()).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn serve(list: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, UsageError> {
        match parse(&args(list), env)? {
            Command::Serve(config) => Ok(*config),
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in [
            "",
            "s",
            "-1s",
            "1.5s",
            "2 days",
            "1d",
            "99999999999999999999",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn key_file_sources() {
        let error = serve(&[], &no_env).unwrap_err();
        assert!(
            error.0.contains("--key-file") && error.0.contains("AUTH_SECRET_PATH"),
            "{error}"
        );

        let from_env = |name: &str| (name == "AUTH_SECRET_PATH").then(|| "/keys".to_string());
        assert_eq!(
            serve(&[], &from_env).unwrap().key_file,
            PathBuf::from("/keys")
        );
        assert_eq!(
            serve(&["--key-file", "/other"], &from_env)
                .unwrap()
                .key_file,
            PathBuf::from("/other")
        );
    }

    #[test]
    fn flag_beats_environment() {
        let env = |name: &str| match name {
            "KEYGATE_LISTEN" => Some("0.0.0.0:9".to_string()),
            "KEYGATE_POLL_INTERVAL" => Some("5s".to_string()),
            _ => None,
        };
        let config = serve(&["--key-file=/k", "--listen", "[::1]:7"], &env).unwrap();
        assert_eq!(config.listen, "[::1]:7");
        assert_eq!(config.poll_interval, Duration::from_secs(5));
    }

    #[test]
    fn bad_values_name_their_source() {
        let error = serve(&["--key-file", "/k", "--poll-interval", "fast"], &no_env).unwrap_err();
        assert!(
            error.0.contains("--poll-interval") && error.0.contains("\"fast\""),
            "{error}"
        );
        let env = |name: &str| (name == "KEYGATE_MAX_CONNECTIONS").then(|| "0".to_string());
        let error = serve(&["--key-file", "/k"], &env).unwrap_err();
        assert!(error.0.contains("KEYGATE_MAX_CONNECTIONS"), "{error}");
        let error = serve(&["--key-file", "/k", "--bogus"], &no_env).unwrap_err();
        assert!(error.0.contains("--bogus"), "{error}");
    }

    #[test]
    fn listen_addresses_validated() {
        for good in ["127.0.0.1:8080", "[::1]:0", "0.0.0.0:9", "localhost:8080"] {
            assert!(validate_listen(good).is_ok(), "{good}");
        }
        for bad in [
            "8080",
            ":8080",
            "127.0.0.1",
            "::1:80",
            "host:http",
            "host:70000",
        ] {
            assert!(validate_listen(bad).is_err(), "{bad}");
        }
        let error = serve(&["--key-file", "/k", "--listen", "8080"], &no_env).unwrap_err();
        assert!(
            error.0.contains("--listen") && error.0.contains("\"8080\""),
            "{error}"
        );
    }

    #[test]
    fn upstream_urls() {
        let upstream = parse_upstream("http://app.default.svc:8080").unwrap();
        assert_eq!(
            (upstream.host.as_str(), upstream.port),
            ("app.default.svc", 8080)
        );
        assert_eq!(parse_upstream("http://localhost/").unwrap().port, 80);
        assert_eq!(parse_upstream("http://[::1]:9000").unwrap().host, "::1");
        assert!(parse_upstream("https://x:1").unwrap_err().contains("https"));
        assert!(parse_upstream("x:1").is_err());
        assert!(parse_upstream("http://x:1/base").is_err());
        assert!(parse_upstream("http://x:99999").is_err());
        assert!(parse_upstream("http://:80").is_err());
    }

    #[test]
    fn subcommands_parse() {
        assert!(matches!(
            parse(&args(&["keys", "id"]), &no_env).unwrap(),
            Command::KeysId
        ));
        match parse(
            &args(&["keys", "check", "/f", "--min-key-length", "8"]),
            &no_env,
        )
        .unwrap()
        {
            Command::KeysCheck(check) => {
                assert_eq!(check.key_file, PathBuf::from("/f"));
                assert_eq!(check.min_key_length, 8);
            }
            other => panic!("{other:?}"),
        }
        match parse(&args(&["healthcheck"]), &|name| {
            (name == "KEYGATE_ADMIN_LISTEN").then(|| "0.0.0.0:9".into())
        })
        .unwrap()
        {
            Command::Healthcheck(check) => assert_eq!(check.url, "http://127.0.0.1:9/healthz"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn help_lists_every_option() {
        let text = help_text();
        for spec in SERVE_OPTIONS {
            assert!(text.contains(&format!("--{}", spec.flag)), "{}", spec.flag);
            assert!(text.contains(spec.env), "{}", spec.env);
        }
    }
}
