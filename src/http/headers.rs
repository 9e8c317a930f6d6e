//! Reading header fields out of an httparse head: lookups by name, comma-separated lists and
//! the optional whitespace around values.
//!
//! Shared by the server and client sides of the handshake so both read a field the same way.
//!
//! Invariants:
//! - Names compare ASCII case-insensitively and values stay bytes: a value is never assumed to
//!   be UTF-8, since HTTP allows obs-text in it.
//! - Every line with the same name is part of one list (RFC 9110 §5.3), so a token split across
//!   lines counts the same as one line with commas.

/// The values of every header line called `name` (ASCII case-insensitive), in order.
pub(crate) fn values<'h, 'b: 'h>(
    headers: &'h [httparse::Header<'b>],
    name: &'h str,
) -> impl Iterator<Item = &'b [u8]> + 'h {
    headers
        .iter()
        .filter(move |header| header.name.eq_ignore_ascii_case(name))
        .map(|header| header.value)
}

/// The value of the header called `name` if exactly one line carries it.
pub(crate) fn single_value<'b>(headers: &[httparse::Header<'b>], name: &str) -> Option<&'b [u8]> {
    let mut found = values(headers, name);
    match (found.next(), found.next()) {
        (Some(value), None) => Some(value),
        _ => None,
    }
}

/// The comma-separated tokens of every `name` line, whitespace trimmed and empty elements
/// skipped. Lines with the same name form one list (RFC 9110 §5.3).
pub(crate) fn tokens<'h, 'b: 'h>(
    headers: &'h [httparse::Header<'b>],
    name: &'h str,
) -> impl Iterator<Item = &'b [u8]> + 'h {
    values(headers, name)
        .flat_map(|value| value.split(|&byte| byte == b','))
        .map(trim_whitespace)
        .filter(|token| !token.is_empty())
}

/// Whether the `name` list holds `token`, compared ASCII case-insensitively as RFC 9110 does
/// for `Connection` options and `Upgrade` protocol names.
pub(crate) fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &[u8]) -> bool {
    tokens(headers, name).any(|candidate| candidate.eq_ignore_ascii_case(token))
}

/// `value` without the optional whitespace (SP and HTAB) HTTP allows around values and list
/// elements.
pub fn trim_whitespace(value: &[u8]) -> &[u8] {
    let is_whitespace = |byte: &u8| *byte == b' ' || *byte == b'\t';
    let start = value
        .iter()
        .position(|b| !is_whitespace(b))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_whitespace(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}
#[cfg(test)]
mod tests {
    use super::*;

    fn field<'b>(name: &'b str, value: &'b str) -> httparse::Header<'b> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn lookups_ignore_name_case() {
        let headers = [field("HOST", "a"), field("x-other", "b")];
        assert_eq!(single_value(&headers, "Host"), Some(&b"a"[..]));
        assert_eq!(single_value(&headers, "X-Other"), Some(&b"b"[..]));
        assert_eq!(single_value(&headers, "Missing"), None);
    }

    #[test]
    fn single_value_refuses_repeats() {
        let headers = [field("Host", "a"), field("host", "a")];
        assert_eq!(single_value(&headers, "Host"), None);
        assert_eq!(values(&headers, "Host").count(), 2);
    }

    #[test]
    fn tokens_span_lines_and_skip_empty_elements() {
        let headers = [
            field("Connection", " keep-alive ,, \tUpgrade\t"),
            field("Other", "x"),
            field("connection", ",te"),
        ];
        let found: Vec<&[u8]> = tokens(&headers, "Connection").collect();
        assert_eq!(found, [&b"keep-alive"[..], b"Upgrade", b"te"]);
        assert!(has_token(&headers, "Connection", b"upgrade"));
        assert!(has_token(&headers, "CONNECTION", b"TE"));
        assert!(!has_token(&headers, "Connection", b"upgrad"));
        assert!(!has_token(&headers, "Other", b"upgrade"));
    }

    #[test]
    fn trims_only_spaces_and_tabs() {
        assert_eq!(trim_whitespace(b" \t a b \t "), b"a b");
        assert_eq!(trim_whitespace(b" \t "), b"");
        assert_eq!(trim_whitespace(b""), b"");
        assert_eq!(trim_whitespace(b"\ra\n"), b"\ra\n");
    }
}
