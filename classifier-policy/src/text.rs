//! Quoting a user's text in a message, bounded: the lowest layer, used by
//! the port lists and the model alike.

/// Bytes of a user's text an error message quotes at most. Tenant objects
/// may carry values of up to 256 KiB (an annotation); an error about one
/// must not carry it all into every log line and status it reaches.
pub const QUOTED_TEXT_LIMIT: usize = 96;

/// `text`, or its first [`QUOTED_TEXT_LIMIT`] bytes (on a character
/// boundary) followed by `...` and its full length, for quoting in an error.
pub fn clip(text: &str) -> String {
    if text.len() <= QUOTED_TEXT_LIMIT {
        return text.to_owned();
    }
    let mut end = QUOTED_TEXT_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

#[cfg(test)]
mod clip_tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text_and_bounds_long_text() {
        assert_eq!(clip("25,587"), "25,587");
        let long = "é".repeat(100_000);
        let clipped = clip(&long);
        assert!(clipped.len() < QUOTED_TEXT_LIMIT + 32, "{}", clipped.len());
        assert!(clipped.ends_with("... (200000 bytes)"), "{clipped}");
    }
}
