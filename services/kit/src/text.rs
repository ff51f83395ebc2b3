//! Caller text, handled the same way by every service: one field checker (length and control
//! characters) and one way to quote caller input in an error message.
//!
//! Why here and not in each service: a rule that is implemented per handler is eventually
//! missed in one of them. Postgres refuses a NUL in `text` (the driver error surfaced as
//! `INTERNAL`) while SQLite stores it, so the two backends disagreed; an error message that
//! echoed a 4 MiB field made a status trailer larger than gRPC clients accept. Every RPC of
//! every service checks its text fields with [`check_text`] before anything reaches a store,
//! quotes caller input only through [`quote`], and bounds the final status message with
//! [`bound_message`].

use std::fmt::Write as _;

/// Most characters of caller input an error message quotes.
pub const QUOTE_MAX_CHARS: usize = 64;

/// Most bytes of a status message sent to a caller. gRPC clients refuse trailers over 16 KiB
/// (some over 8 KiB); a message a person reads needs far less.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// A field broke a rule: which field, and what the rule is. Shown to callers as
/// `"<field>: <rule>"`, so a person can fix the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct InvalidField {
    /// Path of the offending field, e.g. `lines[2].quantity`.
    pub field: String,
    /// What the field must be.
    pub rule: String,
}

impl InvalidField {
    /// A broken rule on `field`.
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

/// What a text field may hold besides its length bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// One line: no control characters at all (identifiers, names, address lines).
    Line,
    /// Free text a person wrote (a partner's status detail): tab, line feed and carriage return
    /// are kept; every other control character is refused.
    Multiline,
}

/// Checks a text field: at most `max_chars` characters (Unicode scalar values, not bytes) and
/// no control characters the stores cannot hold the same way. NUL is refused everywhere
/// (Postgres cannot store it in `text`); the other C0/C1 controls and DEL are refused too: no
/// legitimate order field carries them and they corrupt logs, CSV exports and terminals.
pub fn check_text(
    field: &str,
    value: &str,
    max_chars: usize,
    kind: TextKind,
) -> Result<(), InvalidField> {
    // Count at most max_chars + 1: a 4 MiB field costs no more than a short one to refuse.
    let chars = value.chars().take(max_chars + 1).count();
    if chars > max_chars {
        return Err(InvalidField::new(
            field,
            format!(
                "must be at most {max_chars} characters, got {}",
                value.chars().count()
            ),
        ));
    }
    let allowed = |c: char| kind == TextKind::Multiline && matches!(c, '\t' | '\n' | '\r');
    if let Some(position) = value.chars().position(|c| c.is_control() && !allowed(c)) {
        let what = match kind {
            TextKind::Line => "must not contain control characters (NUL, newlines, tabs, …)",
            TextKind::Multiline => {
                "must not contain control characters other than tab and line breaks (NUL, …)"
            }
        };
        return Err(InvalidField::new(
            field,
            format!("{what}; found one at character {position}"),
        ));
    }
    Ok(())
}

/// [`check_text`] for a field that must not be empty or blank.
pub fn check_required_text(
    field: &str,
    value: &str,
    max_chars: usize,
    kind: TextKind,
) -> Result<(), InvalidField> {
    if value.trim().is_empty() {
        return Err(InvalidField::new(field, "is required"));
    }
    check_text(field, value, max_chars, kind)
}

/// Whether `id` is a partner id: 1-63 lower-case letters, digits or `-`, not starting with `-`
/// (it names the partner's Kafka topic). The one rule the admin API and StatusIngest share.
pub fn is_partner_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && !id.starts_with('-')
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Caller input as an error message may show it: double-quoted, escaped (control characters,
/// quotes and backslashes as Rust escapes, so nothing can forge a line in a log or a terminal),
/// and cut to [`QUOTE_MAX_CHARS`] characters with the full length noted.
pub fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(QUOTE_MAX_CHARS + 16);
    quoted.push('"');
    let mut shown = 0;
    for c in value.chars() {
        if shown == QUOTE_MAX_CHARS {
            break;
        }
        quoted.extend(c.escape_debug());
        shown += 1;
    }
    quoted.push('"');
    if shown == QUOTE_MAX_CHARS && value.chars().nth(QUOTE_MAX_CHARS).is_some() {
        let _ = write!(quoted, "… ({} characters)", value.chars().count());
    }
    quoted
}

/// `message` cut to at most [`MAX_MESSAGE_BYTES`] bytes (at a character boundary, marked with
/// `…`): the last guard before a status message leaves the service.
pub fn bound_message(message: impl Into<String>) -> String {
    let mut message = message.into();
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES - '…'.len_utf8();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_counted_in_characters() {
        assert!(check_text("f", &"é".repeat(10), 10, TextKind::Line).is_ok());
        let error = check_text("f", &"é".repeat(11), 10, TextKind::Line).expect_err("long");
        assert_eq!(
            error.to_string(),
            "f: must be at most 10 characters, got 11"
        );
    }

    #[test]
    fn nul_and_other_controls_are_refused_naming_the_field() {
        for bad in ["a\0b", "a\nb", "a\u{7f}", "\u{85}x", "\u{1b}[31m"] {
            let error = check_text("customer.id", bad, 64, TextKind::Line).expect_err(bad);
            assert_eq!(error.field, "customer.id");
            assert!(error.rule.contains("control characters"), "{}", error.rule);
        }
    }

    #[test]
    fn multiline_text_keeps_line_breaks_but_not_nul() {
        assert!(check_text("detail", "a\r\n\tb", 64, TextKind::Multiline).is_ok());
        assert_eq!(
            check_text("detail", "a\0", 64, TextKind::Multiline)
                .expect_err("nul")
                .field,
            "detail"
        );
    }

    #[test]
    fn required_text_refuses_blank() {
        assert_eq!(
            check_required_text("f", "  ", 5, TextKind::Line)
                .expect_err("blank")
                .to_string(),
            "f: is required"
        );
    }

    #[test]
    fn quote_escapes_and_bounds() {
        assert_eq!(quote("UK"), "\"UK\"");
        assert_eq!(quote("a\"b\n\0"), "\"a\\\"b\\n\\0\"");
        let long = quote(&"x".repeat(4 << 20));
        assert!(long.len() < 120, "{long}");
        assert!(long.ends_with("… (4194304 characters)"), "{long}");
        assert_eq!(
            quote(&"y".repeat(QUOTE_MAX_CHARS)).len(),
            QUOTE_MAX_CHARS + 2
        );
    }

    #[test]
    fn messages_are_bounded_at_a_char_boundary() {
        assert_eq!(bound_message("short"), "short");
        let bounded = bound_message("é".repeat(MAX_MESSAGE_BYTES));
        assert!(bounded.len() <= MAX_MESSAGE_BYTES);
        assert!(bounded.ends_with('…'));
    }
}
