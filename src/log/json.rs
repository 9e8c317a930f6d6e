//! A text log line as one JSON object, for log shippers (`--log-format json`).
//!
//! The node's lines are `SOURCE key=value key="quoted value" ...` (the source being
//! `ringpush`, `ringpush:` or `shard-0:`). The object is `{"ts", "source", key: value, ...}`
//! with every pair in order, a value that is a whole number written as a number, and any
//! words that are not pairs joined into `msg`. A line that does not follow the form at all
//! still comes out as valid JSON: its text is `msg`.
//!
//! Invariants:
//! - The output is one line of valid JSON whatever the input (serde_json escapes).
//! - `ts`, `source` and `msg` are never taken from a pair: a pair with one of those keys is
//!   written with a `_` prefix, so a field never hides the envelope.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// Keys the envelope owns.
const RESERVED: &[&str] = &["ts", "source", "msg"];

/// The JSON object for one text line written at `now`.
pub fn line(text: &str, now: SystemTime) -> String {
    let mut object = Map::new();
    object.insert("ts".into(), Value::String(timestamp(now)));
    let mut words = Vec::new();
    for (i, token) in tokens(text).into_iter().enumerate() {
        match token.split_once('=') {
            Some((key, value)) if i > 0 && is_key(key) => {
                let key = if RESERVED.contains(&key) {
                    format!("_{key}")
                } else {
                    key.to_string()
                };
                object.insert(key, value_of(&unquote(value)));
            }
            _ if i == 0 => {
                let source = token.strip_suffix(':').unwrap_or(&token);
                object.insert("source".into(), Value::String(source.to_string()));
            }
            _ => words.push(unquote(&token)),
        }
    }
    if !words.is_empty() {
        object.insert("msg".into(), Value::String(words.join(" ")));
    }
    Value::Object(object).to_string()
}

/// Splits on spaces outside double quotes (a quoted value keeps its spaces).
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in text.chars() {
        match c {
            _ if escaped => {
                current.push(c);
                escaped = false;
            }
            '\\' if quoted => {
                current.push(c);
                escaped = true;
            }
            '"' => {
                current.push(c);
                quoted = !quoted;
            }
            ' ' if !quoted => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// A key is a non-empty run of letters, digits, `_`, `-` and `.`.
fn is_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The value without its surrounding quotes (and `\"` / `\\` unescaped), as Rust's `{:?}`
/// of a string writes it.
fn unquote(value: &str) -> String {
    let Some(inner) = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .filter(|_| value.len() >= 2)
    else {
        return value.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A whole number as a JSON number, anything else as a string.
fn value_of(value: &str) -> Value {
    match value.parse::<i64>() {
        Ok(n) => Value::from(n),
        Err(_) => Value::String(value.to_string()),
    }
}

/// RFC 3339 in UTC with milliseconds (`2026-12-03T17:40:00.123Z`).
fn timestamp(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    fn parsed(text: &str) -> Value {
        serde_json::from_str(&line(text, at(0, 0))).expect("valid JSON")
    }

    #[test]
    fn pairs_become_fields_and_numbers_stay_numbers() {
        let v = parsed("ringpush shard=1 event=conn_closed reason=\"slow consumer\" bytes=42");
        assert_eq!(v["source"], "ringpush");
        assert_eq!(v["shard"], 1);
        assert_eq!(v["event"], "conn_closed");
        assert_eq!(v["reason"], "slow consumer");
        assert_eq!(v["bytes"], 42);
        assert!(v.get("msg").is_none());
    }

    #[test]
    fn free_text_is_msg_and_a_source_loses_its_colon() {
        let v = parsed("ringpush: a shard failed to start; stopping the others");
        assert_eq!(v["source"], "ringpush");
        assert_eq!(v["msg"], "a shard failed to start; stopping the others");
        let v = parsed("shard-0: warn=pin_failed core=1");
        assert_eq!(v["source"], "shard-0");
        assert_eq!(v["warn"], "pin_failed");
    }

    #[test]
    fn hostile_text_is_still_one_line_of_json_and_never_hides_the_envelope() {
        for text in [
            "",
            "\"",
            "x ts=evil source=evil msg=evil",
            "x a=\"unterminated",
            "x k=\"\\\"quoted\\\" \\\\ \" \u{7}\n",
        ] {
            let out = line(text, at(1, 0));
            assert!(!out.contains('\n'), "{out}");
            let v: Value = serde_json::from_str(&out).expect("valid JSON");
            assert_eq!(v["ts"], "1970-01-01T00:00:01.000Z", "{out}");
        }
        let v = parsed("x ts=evil source=evil msg=evil");
        assert_eq!(v["source"], "x");
        assert_eq!(v["_ts"], "evil");
        assert_eq!(v["_msg"], "evil");
    }

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(timestamp(at(0, 5)), "1970-01-01T00:00:00.005Z");
        // 2026-12-03T17:40:00Z
        assert_eq!(
            timestamp(at(1_796_319_600, 123)),
            "2026-12-03T17:40:00.123Z"
        );
        // A leap day.
        assert_eq!(timestamp(at(951_782_400, 0)), "2000-02-29T00:00:00.000Z");
    }
}
