//! How long a request may wait for a change: `wait=` on a feed (`30`, `30s`, `5m`)
//! and `Prefer: wait=N` (RFC 7240) on a read, both cut to five minutes; and the time
//! a request spent waiting, which the latency histogram leaves out.

use std::time::Duration;

use crate::error::ApiError;

/// The longest wait: a longer one is cut to this.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// How long a request waited, left in its extensions for the middleware.
#[derive(Debug, Clone, Copy, Default)]
pub struct Waited(pub Duration);

/// A feed's `wait=`: whole seconds, bare or with `s`, or whole minutes with `m`.
pub fn parse_wait(value: &str) -> Result<Duration, ApiError> {
    let (digits, unit) = match value.strip_suffix('s') {
        Some(digits) => (digits, 1),
        None => match value.strip_suffix('m') {
            Some(digits) => (digits, 60),
            None => (value, 1),
        },
    };
    let bad = || {
        ApiError::bad_request(format!(
            "wait must be whole seconds (30, 30s) or minutes (5m), at most 5m, got '{}'",
            value.escape_debug()
        ))
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    // Too many digits for a u64 is longer than five minutes all the same.
    let seconds = digits.parse::<u64>().unwrap_or(u64::MAX);
    Ok(Duration::from_secs(seconds.saturating_mul(unit)).min(MAX_WAIT))
}

/// The `wait` preference of the `Prefer` headers (RFC 7240: comma-separated
/// preferences, each `token[=value]` with `;` parameters), cut to five minutes. A
/// preference the server cannot read is ignored, as the RFC asks.
pub fn prefer_wait<'a>(headers: impl Iterator<Item = &'a [u8]>) -> Option<Duration> {
    for header in headers {
        let Ok(header) = std::str::from_utf8(header) else {
            continue;
        };
        for preference in header.split(',') {
            let first = preference.split(';').next().unwrap_or("");
            let Some((name, value)) = first.split_once('=') else {
                continue;
            };
            if !name.trim().eq_ignore_ascii_case("wait") {
                continue;
            }
            let value = value.trim().trim_matches('"');
            if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
                return Some(Duration::from_secs(seconds).min(MAX_WAIT));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_seconds_or_minutes_and_at_most_five_minutes() {
        let secs = |v: &str| parse_wait(v).unwrap().as_secs();
        assert_eq!(
            (secs("30"), secs("30s"), secs("2m"), secs("0")),
            (30, 30, 120, 0)
        );
        assert_eq!(secs("6m"), 300);
        assert_eq!(secs("99999999999999999999999"), 300);
        for bad in ["", "s", "-1", "1.5", "1h", "3 s", "m5", "+3"] {
            assert!(parse_wait(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefer_wait_is_read_among_other_preferences() {
        let wait =
            |values: &[&str]| prefer_wait(values.iter().map(|v| v.as_bytes())).map(|d| d.as_secs());
        assert_eq!(wait(&["wait=10"]), Some(10));
        assert_eq!(wait(&["respond-async, Wait=5"]), Some(5));
        assert_eq!(wait(&["return=minimal", "wait=\"7\"; foo=bar"]), Some(7));
        assert_eq!(wait(&["wait=1000"]), Some(300));
        assert_eq!(wait(&["wait=soon"]), None);
        assert_eq!(wait(&["handling=lenient"]), None);
        assert_eq!(wait(&[]), None);
    }
}
