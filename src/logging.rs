//! Diagnostics on stderr, never stdout (stdout belongs to `key`/`status`
//! output, and after exec to the program).
//!
//! The level comes from `-v` (info, debug, trace), overridden by
//! `EC_LAUNCH_LOG`. Not `RUST_LOG`: the exec'd program inherits our
//! environment, and an operator raising our verbosity must not raise its.
//! Under journald (`JOURNAL_STREAM` names our stderr, systemd.exec(5)) lines
//! carry no timestamp or colour: the journal adds its own metadata.
//!
//! The subscriber is this module's own, a few dozen lines for what a
//! launcher logs (events, no spans), writing exactly the lines
//! `tracing_subscriber::fmt` wrote before (its default format, without the
//! target): `tracing_subscriber`'s registry alone was a sixth of a
//! launch's instructions (ECP-0138).

use std::fmt::{self, Write as _};
use std::io::{self, IsTerminal, Write as _};
use std::os::fd::AsFd;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// The variable that overrides `-v`.
const LOG_ENV: &str = "EC_LAUNCH_LOG";

/// Installs the stderr logger.
pub fn init(verbosity: u8) {
    let from_env = std::env::var(LOG_ENV).ok();
    let parsed = from_env.as_deref().map(parse_level);
    let filter = match parsed {
        Some(Some(filter)) => filter,
        _ => match verbosity {
            0 => LevelFilter::INFO,
            1 => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        },
    };
    let journal = stderr_is_journal();
    let logger = Stderr {
        filter,
        time: !journal,
        ansi: !journal && io::stderr().is_terminal(),
    };
    // Only fails when a subscriber is already set: then that one logs.
    let _ = tracing::subscriber::set_global_default(logger);
    if let (Some(value), Some(None)) = (from_env, parsed) {
        tracing::warn!(
            "{LOG_ENV}={value:?} is not a level (off, error, warn, info, debug, trace); using -v"
        );
    }
}

fn parse_level(text: &str) -> Option<LevelFilter> {
    match text.trim().to_ascii_lowercase().as_str() {
        "off" => Some(LevelFilter::OFF),
        "error" => Some(LevelFilter::ERROR),
        "warn" | "warning" => Some(LevelFilter::WARN),
        "info" => Some(LevelFilter::INFO),
        "debug" => Some(LevelFilter::DEBUG),
        "trace" => Some(LevelFilter::TRACE),
        _ => None,
    }
}

/// True when `JOURNAL_STREAM` (`<dev>:<inode>`) names our stderr, which is
/// how systemd.exec(5) says to detect a journal connection.
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(io::stderr().as_fd()) {
        Ok(stat) => stat.st_dev == dev && stat.st_ino == ino,
        Err(_) => false,
    }
}

/// The stderr logger: one line per event, written at once.
#[derive(Debug)]
struct Stderr {
    filter: LevelFilter,
    /// A UTC timestamp first (not under journald).
    time: bool,
    /// Colours and styles (stderr is a terminal, not journald).
    ansi: bool,
}

/// ANSI SGR sequences, as `tracing_subscriber` (`nu-ansi-term`) writes them.
const DIM: &str = "\x1b[2m";
const ITALIC: &str = "\x1b[3m";
const RESET: &str = "\x1b[0m";

impl Subscriber for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter >= *metadata.level()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.filter)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // No span is ever entered or shown; each needs an id all the same.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = String::with_capacity(256);
        self.format(event, &mut line);
        let _ = io::stderr().write_all(line.as_bytes());
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

impl Stderr {
    /// `2026-…Z  INFO message key=value …\n`: the timestamp (RFC 3339,
    /// microseconds), the level padded to five, the message, the fields.
    fn format(&self, event: &Event<'_>, line: &mut String) {
        let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
        match (self.time, self.ansi) {
            (true, true) => {
                let _ = write!(line, "{DIM}{now}{RESET} ");
            }
            (true, false) => {
                let _ = write!(line, "{now} ");
            }
            _ => {}
        }
        let level = *event.metadata().level();
        let (name, colour) = match level {
            Level::TRACE => ("TRACE", "\x1b[35m"),
            Level::DEBUG => ("DEBUG", "\x1b[34m"),
            Level::INFO => (" INFO", "\x1b[32m"),
            Level::WARN => (" WARN", "\x1b[33m"),
            Level::ERROR => ("ERROR", "\x1b[31m"),
        };
        if self.ansi {
            let _ = write!(line, "{colour}{name}{RESET} ");
        } else {
            let _ = write!(line, "{name} ");
        }
        let mut fields = Fields {
            line,
            ansi: self.ansi,
            first: true,
        };
        event.record(&mut fields);
        line.push('\n');
    }
}

/// Writes an event's fields: the message as it is (control sequences a
/// terminal would act on escaped), then `name=value` each, space-separated.
struct Fields<'a> {
    line: &'a mut String,
    ansi: bool,
    first: bool,
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        match value.source() {
            Some(source) => {
                let mut sources = Vec::new();
                let mut cause = Some(source);
                while let Some(error) = cause {
                    sources.push(Escaped(format!("{error}")));
                    cause = error.source();
                }
                let (italic, dim, reset) = self.styles();
                self.record_debug(
                    field,
                    &format_args!(
                        "{} {italic}{}{reset}{italic}.sources{reset}{dim}={reset}{sources:?}",
                        Escaped(format!("{value}")),
                        field.name()
                    ),
                );
            }
            None => self.record_debug(field, &format_args!("{}", Escaped(format!("{value}")))),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.first {
            self.first = false;
        } else {
            self.line.push(' ');
        }
        let name = field.name();
        let (italic, dim, reset) = self.styles();
        if name == "message" {
            let _ = write!(self.line, "{:?}", Escaped(format!("{value:?}")));
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            let _ = write!(self.line, "{italic}{name}{reset}{dim}={reset}{value:?}");
        }
    }
}

impl Fields<'_> {
    /// Italic, dim and reset, or nothing without colours.
    fn styles(&self) -> (&'static str, &'static str, &'static str) {
        if self.ansi {
            (ITALIC, DIM, RESET)
        } else {
            ("", "", "")
        }
    }
}

/// Text with the characters a terminal acts on (ESC, BEL, BS, FF, DEL and
/// the C1 controls) written as escapes, as `tracing_subscriber` does for
/// messages; shown with `{:?}` or `{}` alike, as the text itself.
struct Escaped(String);

impl fmt::Debug for Escaped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Escaped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for ch in self.0.chars() {
            match ch {
                '\x1b' => f.write_str("\\x1b")?,
                '\x07' => f.write_str("\\x07")?,
                '\x08' => f.write_str("\\x08")?,
                '\x0c' => f.write_str("\\x0c")?,
                '\x7f' => f.write_str("\\x7f")?,
                ch if ('\u{80}'..='\u{9f}').contains(&ch) => write!(f, "\\u{{{:x}}}", ch as u32)?,
                ch => f.write_char(ch)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// [`Stderr`]'s lines, into a buffer instead of stderr.
    struct Capture(Stderr, Arc<Mutex<String>>);

    impl Subscriber for Capture {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            self.0.enabled(metadata)
        }
        fn new_span(&self, attributes: &Attributes<'_>) -> Id {
            self.0.new_span(attributes)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            self.0.format(event, &mut self.1.lock().unwrap());
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer \x1b[2J failure")]
    struct Outer(#[source] io::Error);

    /// Every kind of event the launcher logs: levels, a message with a
    /// control sequence, Display, Debug, str, number and bool fields, and
    /// an error with a source.
    fn events() {
        let path = std::path::Path::new("/run/l/k.lock");
        tracing::info!(key = %"http://h/x", lock_file = %path.display(), "source lock acquired; starting {}", "/bin/true");
        tracing::warn!("busy: held by pid {} (\x1b]0;x\x07\u{9b})", 42);
        tracing::error!(policy = ?Some(3), slot = 2_u32, ok = true, name = "a b", "fence");
        tracing::debug!(r#type = "x", "debug line");
        tracing::trace!("trace line");
        let error = Outer(io::Error::other("inner"));
        tracing::warn!(
            error = &error as &(dyn std::error::Error + 'static),
            "with an error"
        );
    }

    #[test]
    fn lines_are_the_ones_tracing_subscriber_wrote_with_and_without_colours() {
        for ansi in [false, true] {
            let ours = Arc::new(Mutex::new(String::new()));
            let logger = Capture(
                Stderr {
                    filter: LevelFilter::TRACE,
                    time: false,
                    ansi,
                },
                ours.clone(),
            );
            tracing::subscriber::with_default(logger, events);
            let theirs = Buffer::default();
            let writer = theirs.clone();
            let reference = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_max_level(LevelFilter::TRACE)
                .with_target(false)
                .without_time()
                .with_ansi(ansi)
                .finish();
            tracing::subscriber::with_default(reference, events);
            let theirs = String::from_utf8(theirs.0.lock().unwrap().clone()).unwrap();
            assert_eq!(*ours.lock().unwrap(), theirs, "ansi {ansi}");
        }
    }

    #[test]
    fn the_timestamp_is_rfc_3339_in_utc_with_microseconds() {
        let ours = Arc::new(Mutex::new(String::new()));
        let logger = Capture(
            Stderr {
                filter: LevelFilter::INFO,
                time: true,
                ansi: false,
            },
            ours.clone(),
        );
        tracing::subscriber::with_default(logger, || tracing::info!("x"));
        let line = ours.lock().unwrap().clone();
        let (time, rest) = line.split_once(' ').unwrap();
        assert_eq!(rest, " INFO x\n");
        assert_eq!(time.len(), "2026-12-07T08:04:52.359065Z".len(), "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
    }

    #[test]
    fn levels_below_the_filter_are_not_written() {
        let ours = Arc::new(Mutex::new(String::new()));
        let logger = Capture(
            Stderr {
                filter: LevelFilter::WARN,
                time: false,
                ansi: false,
            },
            ours.clone(),
        );
        tracing::subscriber::with_default(logger, events);
        let text = ours.lock().unwrap().clone();
        assert!(!text.contains("INFO") && !text.contains("DEBUG"), "{text}");
        assert_eq!(text.lines().count(), 3, "{text}");
    }
}
