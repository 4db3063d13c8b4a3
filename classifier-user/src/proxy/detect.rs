//! Protocol detection from a client's first bytes, as a sidecar does it for
//! connections nobody declared: HTTP/2 by its connection preface, HTTP/1 by
//! a request line's method token. Anything else is forwarded as opaque TCP.

/// What the client's first bytes look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    /// Not HTTP (or too few bytes to tell): forward as opaque TCP.
    Other,
}

/// The start of the HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest method token we accept (registered methods are at most 17 bytes).
const MAX_METHOD_LEN: usize = 24;

pub fn detect(first_bytes: &[u8]) -> Detected {
    if first_bytes.starts_with(H2_PREFACE) {
        return Detected::Http2;
    }
    // An HTTP/1 request line starts with `METHOD SP`; a method is a token
    // (RFC 9110 §9.1), in practice upper-case letters.
    let method_len = first_bytes
        .iter()
        .take(MAX_METHOD_LEN + 1)
        .take_while(|b| b.is_ascii_uppercase() || *b == &b'-' || *b == &b'_')
        .count();
    if method_len > 0 && method_len <= MAX_METHOD_LEN && first_bytes.get(method_len) == Some(&b' ')
    {
        return Detected::Http1;
    }
    Detected::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_request_lines() {
        assert_eq!(
            detect(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Detected::Http1
        );
        assert_eq!(detect(b"POST /a HTTP/1.0\r\n"), Detected::Http1);
        assert_eq!(detect(b"M-SEARCH * HTTP/1.1\r\n"), Detected::Http1);
        assert_eq!(detect(b"OPTIONS "), Detected::Http1);
    }

    #[test]
    fn http2_preface() {
        assert_eq!(
            detect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04"),
            Detected::Http2
        );
        // A truncated preface still starts like an HTTP/1 request line.
        assert_eq!(detect(b"PRI * HTTP/2.0\r\n"), Detected::Http1);
    }

    #[test]
    fn everything_else_is_opaque() {
        assert_eq!(detect(b""), Detected::Other);
        assert_eq!(detect(b"get / HTTP/1.1\r\n"), Detected::Other);
        assert_eq!(detect(b"GET"), Detected::Other);
        assert_eq!(detect(b" GET /"), Detected::Other);
        assert_eq!(detect(b"\x16\x03\x01\x02\x00\x01"), Detected::Other); // TLS
        assert_eq!(detect(b"\x4a\x00\x00\x00\x0a"), Detected::Other); // MySQL greeting
        assert_eq!(detect(&[b'A'; 40]), Detected::Other);
    }
}
