//! Request logging to stderr, one line per event, prefixed with wall-clock
//! time (seconds since the Unix epoch) so lines can be lined up with the
//! proxy's own log and with test timings.

#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        let now = ::std::time::SystemTime::now()
            .duration_since(::std::time::UNIX_EPOCH)
            .unwrap_or_default();
        eprintln!(
            "{}.{:03} linkerd-test-control-plane: {}",
            now.as_secs(),
            now.subsec_millis(),
            format_args!($($arg)*)
        );
    }};
}
