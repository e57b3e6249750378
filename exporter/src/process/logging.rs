//! Structured logs on standard error, as logfmt (the default, as
//! node_exporter writes them) or JSON, one event per line.

use std::{
    fmt::{self, Write as _},
    sync::{Mutex, PoisonError},
    time::Instant,
};

use tracing::{Event, Level, Subscriber, field::Field, level_filters::LevelFilter};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer, time::FormatTime as _},
    registry::LookupSpan,
};

/// Severity threshold for logs (`--log.level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// How log lines are written to standard error (`--log.format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Logfmt,
    Json,
}

/// Installs the global subscriber. Called once, first thing in `main`.
pub(crate) fn init(level: LogLevel, format: LogFormat) {
    let level = match level {
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Error => LevelFilter::ERROR,
    };
    let builder = tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).with_ansi(false);
    match format {
        LogFormat::Logfmt => builder.event_format(Logfmt).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).init(),
    }
}

/// A token bucket for log lines that a flood could repeat without bound
/// (access log lines, the kernel programs' messages): `rate` lines a second
/// once a burst of `burst` is spent, and the next admitted line says how
/// many were suppressed since the last one.
pub(crate) struct LineBudget {
    rate: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
}

impl LineBudget {
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst, bucket: Mutex::new(Bucket { tokens: burst, refilled: Instant::now(), suppressed: 0 }) }
    }

    /// `Some(lines suppressed before this one)` when a line may be logged.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Some(std::mem::take(&mut bucket.suppressed))
        } else {
            bucket.suppressed += 1;
            None
        }
    }
}

/// `time=... level=info msg="..." key=value ...`, quoting values that need it.
struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut time = String::new();
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut time))?;
        let level = match *event.metadata().level() {
            Level::TRACE => "trace",
            Level::DEBUG => "debug",
            Level::INFO => "info",
            Level::WARN => "warn",
            Level::ERROR => "error",
        };
        write!(writer, "time={time} level={level} source={}", event.metadata().target())?;
        let mut fields = LogfmtFields { out: String::new() };
        event.record(&mut fields);
        writer.write_str(&fields.out)?;
        writer.write_char('\n')
    }
}

struct LogfmtFields {
    out: String,
}

impl LogfmtFields {
    fn push(&mut self, key: &str, value: &str) {
        let key = if key == "message" { "msg" } else { key };
        let _ = write!(self.out, " {key}=");
        let needs_quotes =
            value.is_empty() || value.chars().any(|c| c == ' ' || c == '"' || c == '=' || c.is_control());
        if needs_quotes {
            self.out.push('"');
            for c in value.chars() {
                match c {
                    '"' => self.out.push_str("\\\""),
                    '\\' => self.out.push_str("\\\\"),
                    '\n' => self.out.push_str("\\n"),
                    c if c.is_control() => {
                        let _ = write!(self.out, "\\u{{{:x}}}", c as u32);
                    }
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        } else {
            self.out.push_str(value);
        }
    }
}

impl tracing::field::Visit for LogfmtFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field.name(), value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field.name(), &format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_quotes_only_what_needs_it() {
        let mut fields = LogfmtFields { out: String::new() };
        fields.push("message", "listening");
        fields.push("address", "127.0.0.1:9569");
        fields.push("err", "bad \"thing\"\nhere");
        fields.push("empty", "");
        assert_eq!(fields.out, r#" msg=listening address=127.0.0.1:9569 err="bad \"thing\"\nhere" empty="""#);
    }
}
