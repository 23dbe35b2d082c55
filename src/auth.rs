//! The authentication decision: bearer-token extraction and key lookup.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::http::Request;
use crate::keys::{KeyEntry, KeyStore};

/// Reason a request is denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// No `Authorization` header.
    MissingCredentials,
    /// An `Authorization` header that is not exactly one `Bearer <token>`.
    MalformedCredentials,
    /// A well-formed bearer token that matches no key.
    UnknownKey,
}

impl DenyReason {
    pub const ALL: [DenyReason; 3] = [
        DenyReason::MissingCredentials,
        DenyReason::MalformedCredentials,
        DenyReason::UnknownKey,
    ];

    /// Label used in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            DenyReason::MissingCredentials => "missing_credentials",
            DenyReason::MalformedCredentials => "malformed_credentials",
            DenyReason::UnknownKey => "unknown_key",
        }
    }

    /// Message for the JSON body of the 401 response.
    pub fn message(self) -> &'static str {
        match self {
            DenyReason::MissingCredentials => {
                "missing Authorization header; send Authorization: Bearer <key>"
            }
            DenyReason::MalformedCredentials => {
                "invalid Authorization header; send exactly one Authorization: Bearer <key>"
            }
            DenyReason::UnknownKey => "invalid API key",
        }
    }
}

/// Outcome of authenticating one request.
pub enum Decision {
    Allow(Arc<KeyEntry>),
    /// Denied. `token_presented` is set when the client sent a bearer token,
    /// and the challenge then carries `error="invalid_token"` (RFC 6750).
    Deny {
        reason: DenyReason,
        token_presented: bool,
    },
}

/// Credential found in a request.
#[derive(Debug, PartialEq, Eq)]
enum Credential<'a> {
    Missing,
    Malformed { token_presented: bool },
    Bearer(&'a [u8]),
}

/// Extracts the bearer token: exactly one `Authorization` header whose value
/// is `Bearer` (any case), one or more spaces, and a token without spaces.
fn extract_bearer<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Credential<'a> {
    let Some(value) = values.next() else {
        return Credential::Missing;
    };
    let repeated = values.next().is_some();

    let Some(rest) = strip_scheme(value) else {
        return Credential::Malformed {
            token_presented: false,
        };
    };
    let token = rest.trim_ascii_start();
    if token.is_empty() {
        return Credential::Malformed {
            token_presented: false,
        };
    }
    if repeated || token.iter().any(|&b| b == b' ' || b == b'\t') {
        return Credential::Malformed {
            token_presented: true,
        };
    }
    Credential::Bearer(token)
}

/// Returns what follows `Bearer` and at least one space, or `None` for another scheme.
fn strip_scheme(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    if value.len() < SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let rest = &value[SCHEME.len()..];
    match rest.first() {
        Some(b' ') => Some(rest),
        // `Bearer` alone: the right scheme with an empty token.
        None => Some(rest),
        _ => None,
    }
}

/// Decides a request against the key set in force now, and counts a
/// successful use on the matching key.
pub fn decide(request: &Request<'_>, keys: &KeyStore) -> Decision {
    match extract_bearer(request.header_values("authorization")) {
        Credential::Missing => Decision::Deny {
            reason: DenyReason::MissingCredentials,
            token_presented: false,
        },
        Credential::Malformed { token_presented } => Decision::Deny {
            reason: DenyReason::MalformedCredentials,
            token_presented,
        },
        Credential::Bearer(token) => match keys.find(token) {
            Some(entry) => {
                entry.usage.allowed.fetch_add(1, Ordering::Relaxed);
                let now = crate::metrics::unix_millis_now() / 1000;
                entry.usage.last_used_unix.store(now, Ordering::Relaxed);
                Decision::Allow(entry)
            }
            None => Decision::Deny {
                reason: DenyReason::UnknownKey,
                token_presented: true,
            },
        },
    }
}

/// Value of `WWW-Authenticate` for a denial.
pub fn challenge(token_presented: bool) -> &'static str {
    if token_presented {
        "Bearer realm=\"keygate\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"keygate\""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extract(values: &[&str]) -> Credential<'static> {
        let owned: Vec<&'static [u8]> = values
            .iter()
            .map(|value| &*Box::leak(value.as_bytes().to_vec().into_boxed_slice()))
            .collect();
        extract_bearer(owned.into_iter())
    }

    #[test]
    fn bearer_extraction_cases() {
        assert_eq!(extract(&[]), Credential::Missing);
        assert_eq!(extract(&["Bearer abc"]), Credential::Bearer(b"abc"));
        assert_eq!(extract(&["bEaReR    abc"]), Credential::Bearer(b"abc"));
        assert_eq!(
            extract(&["Bearer"]),
            Credential::Malformed {
                token_presented: false
            }
        );
        assert_eq!(
            extract(&["Bearer "]),
            Credential::Malformed {
                token_presented: false
            }
        );
        assert_eq!(
            extract(&["Basic abc"]),
            Credential::Malformed {
                token_presented: false
            }
        );
        assert_eq!(
            extract(&["Bearerabc"]),
            Credential::Malformed {
                token_presented: false
            }
        );
        assert_eq!(
            extract(&["Bearer\tabc"]),
            Credential::Malformed {
                token_presented: false
            }
        );
        assert_eq!(
            extract(&["Bearer abc def"]),
            Credential::Malformed {
                token_presented: true
            }
        );
        assert_eq!(
            extract(&["Bearer abc", "Bearer abc"]),
            Credential::Malformed {
                token_presented: true
            }
        );
        assert_eq!(
            extract(&["abc"]),
            Credential::Malformed {
                token_presented: false
            }
        );
    }
}
