//! Wording helpers for log lines and command output.

use std::time::Duration;

/// Formats a count with the singular or plural noun, such as "1 key" or "3 keys".
pub fn count(count: usize, singular: &str, plural: &str) -> String {
    if count == 1 {
        format!("1 {singular}")
    } else {
        format!("{count} {plural}")
    }
}

/// Formats a configured duration for a log line: "now" for zero, else as
/// `Duration`'s debug form ("500ms", "2s").
pub fn duration(value: Duration) -> String {
    if value.is_zero() {
        "now".to_string()
    } else {
        format!("{value:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_durations() {
        assert_eq!(count(1, "key", "keys"), "1 key");
        assert_eq!(count(0, "key", "keys"), "0 keys");
        assert_eq!(count(2, "line", "lines"), "2 lines");
        assert_eq!(duration(Duration::ZERO), "now");
        assert_eq!(duration(Duration::from_millis(1500)), "1.5s");
    }
}
