//! Where the relay's log goes and how it looks: always stderr (stdout is
//! kept for data: exports, `check-config`), human-readable lines for a
//! person or JSON lines for a log shipper, and a level filter that can be
//! replaced while the relay runs (SIGHUP with a new `log_level`).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

/// Environment variable that picks the log format (`--log-format`).
pub const ENV_LOG_FORMAT: &str = "NOSTR_RELAYD_LOG_FORMAT";

/// The level used when neither `RUST_LOG` nor the configuration names one.
pub const DEFAULT_FILTER: &str = "info";

/// How each log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per record; coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line, fields at the top level: for Loki,
    /// Elasticsearch, `jq` and other log pipelines.
    Json,
}

/// The live filter's handle; set once by [`init`].
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Whether `RUST_LOG` chose the filter at start, recorded by [`init`].
static FROM_ENV: OnceLock<bool> = OnceLock::new();

/// Installs the global subscriber: stderr, `format`, and the filter from
/// `RUST_LOG` (else [`DEFAULT_FILTER`]). Call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let from_env = EnvFilter::try_from_default_env().ok();
    let _ = FROM_ENV.set(from_env.is_some());
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    // Colour only for a person at a terminal, never into files or `docker logs`.
    let ansi = std::io::stderr().is_terminal();
    let (subscriber, handle) = subscriber(format, filter, std::io::stderr, ansi);
    if subscriber.try_init().is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// The subscriber [`init`] installs, writing to `writer`, and the handle
/// that swaps its filter.
fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> (
    impl tracing::Subscriber + Send + Sync + 'static,
    reload::Handle<EnvFilter, Registry>,
)
where
    W: for<'w> fmt::MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    let (filter, handle) = reload::Layer::new(filter);
    let text = (format == LogFormat::Text)
        .then(|| fmt::layer().with_writer(writer.clone()).with_ansi(ansi));
    let json = (format == LogFormat::Json).then(|| {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
    });
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json);
    (subscriber, handle)
}

/// Whether `RUST_LOG` set the filter at start: then it wins over the
/// configuration's level until the operator asks for a reload.
pub fn filter_from_env() -> bool {
    FROM_ENV.get().copied().unwrap_or(false)
}

/// Replaces the level filter of the running process with `directives`
/// (`RUST_LOG` syntax: `info`, `warn,nostr_relayd::connection=info`, …),
/// so an operator can turn on `debug` without a restart. An invalid string
/// leaves the filter as it was and says why.
pub fn set_filter(directives: &str) -> Result<(), String> {
    let handle = FILTER
        .get()
        .ok_or_else(|| "logging is not initialized".to_owned())?;
    reload_filter(handle, directives)
}

fn reload_filter(
    handle: &reload::Handle<EnvFilter, Registry>,
    directives: &str,
) -> Result<(), String> {
    handle
        .reload(parse_filter(directives)?)
        .map_err(|e| e.to_string())
}

/// Parses a filter strictly: a typo must be reported, not ignored.
pub fn parse_filter(directives: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| format!("{directives:?} is not a log filter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A log sink the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().unwrap().clone();
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    #[test]
    fn filters_parse_strictly() {
        assert!(parse_filter("info").is_ok());
        assert!(parse_filter("info,nostr_relayd::connection=warn").is_ok());
        // A bare word is a target (at every level), so only levels are checkable.
        assert!(parse_filter("nostr_relayd=verbose").is_err());
    }

    #[test]
    fn json_lines_carry_the_fields_at_the_top_level() {
        let out = Captured::default();
        let sink = out.clone();
        let (subscriber, _) = subscriber(
            LogFormat::Json,
            EnvFilter::new("info"),
            move || sink.clone(),
            false,
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(ip = "192.0.2.7", events = 3, "connection closed");
            tracing::debug!("not at info");
        });
        let lines = out.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "connection closed");
        assert_eq!(line["ip"], "192.0.2.7");
        assert_eq!(line["events"], 3);
    }

    #[test]
    fn a_reloaded_filter_takes_effect_and_a_bad_one_changes_nothing() {
        let out = Captured::default();
        let sink = out.clone();
        let (subscriber, handle) = subscriber(
            LogFormat::Text,
            EnvFilter::new("info"),
            move || sink.clone(),
            false,
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("one");
            reload_filter(&handle, "debug").unwrap();
            tracing::debug!("two");
            assert!(reload_filter(&handle, "nonsense=level").is_err());
            tracing::debug!("three");
            reload_filter(&handle, "warn").unwrap();
            tracing::info!("four");
            tracing::warn!("five");
        });
        let lines = out.lines();
        let said: Vec<&str> = ["one", "two", "three", "four", "five"]
            .into_iter()
            .filter(|word| lines.iter().any(|l| l.ends_with(word)))
            .collect();
        assert_eq!(said, ["two", "three", "five"], "{lines:?}");
        assert!(
            lines.iter().all(|l| !l.contains('\x1b')),
            "no colour: {lines:?}"
        );
    }
}
