//! `nostr-relayd import`: JSON lines into the database, through the
//! relay's own writer.
//!
//! Each line is an event object (`strfry export`, `nostr-relayd export`),
//! or, leniently, a relay-message capture: `["EVENT", {…}]` or
//! `["EVENT", "<subscription>", {…}]`. Blank lines are skipped and CRLF
//! endings are fine. Every event is checked here (id hash, Schnorr unless
//! `--no-verify`, NIP-01/40/62 validity, the bans), then queued to a
//! [`Store`] of this process, whose writer applies the same rules as for a
//! network write (duplicate, replacement, NIP-09 deletion whichever
//! arrives first, NIP-62 vanish) and commits up to `storage.max_write_batch`
//! events per transaction. Checking runs on every core, a chunk of lines
//! ahead of the writer, so parsing and signatures overlap the commits.
//!
//! Network policy (created_at window, proof of work, size limits, access
//! and allow lists, NIP-70) applies only with `--apply-policy`; rate limits
//! and the write plugin never do. Banned events and pubkeys (NIP-86
//! `banevent`/`banpubkey`) are always kept out: "never stored again" is a
//! promise of the ban, not a network rule.
//!
//! A running relay on the same database serves the imported events to
//! every later REQ (each commit is visible at once), but its live
//! subscribers do not get them: its fan-out only sees its own writer's
//! commits. SQLite serializes the two writers (`BEGIN IMMEDIATE`, busy
//! timeout).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read};
use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::access::{AccessLists, Seed};
use crate::config::{Backend, Config, Limits};
use crate::ingest::names_this_relay;
use crate::nostr::{CanonicalEvent, Event, KindClass, kind};
use crate::policy::WritePolicy;
use crate::store::{self, Store, StoreError, StoreOptions, WriteOutcome, lists, unix_now};

/// `nostr-relayd import` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// The file to read, one event per line; `-` or none: stdin.
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// Do not check Schnorr signatures (ids are still checked): for dumps
    /// from a source you trust, such as this relay's own export.
    #[arg(long)]
    pub no_verify: bool,
    /// Hold every event to the network's write rules too: the created_at
    /// window, proof of work, content and tag limits, the access lists
    /// (kinds, allow lists), and NIP-70 (refused: an import authenticates
    /// nobody).
    #[arg(long)]
    pub apply_policy: bool,
    /// Exit with status 3 when any line was rejected (the others are
    /// imported all the same).
    #[arg(long)]
    pub strict: bool,
}

/// Lines checked together, on every core, while the writer commits the
/// chunks before.
const CHUNK: usize = 1024;
/// Events queued to the writer before the reader waits for the oldest:
/// a few of the writer's batches (`storage.max_write_batch`, 1,024 by
/// default), so that it never waits for the checks, and memory stays a
/// few thousand events whatever the size of the dump.
const IN_FLIGHT: usize = 4 * CHUNK;

/// What a run did: the summary line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Summary {
    /// Events read (non-blank lines).
    read: u64,
    /// Committed.
    stored: u64,
    /// Already stored (earlier in the file, or before the import).
    duplicates: u64,
    /// Stored versions of a replaceable or addressable event removed by a
    /// newer one.
    replaced: u64,
    /// Arrived after a newer version of their address: not stored.
    superseded: u64,
    /// Removed by a NIP-09 deletion or a NIP-62 request to vanish, or kept
    /// out by one on arrival.
    deleted: u64,
    /// Already expired (NIP-40): not stored.
    expired: u64,
    /// Lines reported on stderr: not events, invalid, or refused by policy.
    rejected: u64,
}

impl Summary {
    fn line(&self, elapsed: Duration) -> String {
        format!(
            "import: read {}, stored {}, duplicates {}, replaced {}, superseded {}, deleted {}, \
             expired {}, rejected {}; {} events/s, {:.3} s",
            self.read,
            self.stored,
            self.duplicates,
            self.replaced,
            self.superseded,
            self.deleted,
            self.expired,
            self.rejected,
            super::rate(self.read, elapsed),
            elapsed.as_secs_f64()
        )
    }

    /// Counts the writer's answer for an event of `kind`.
    fn count(&mut self, kind: u16, outcome: WriteOutcome) {
        match outcome {
            WriteOutcome::Stored { removed, .. } => {
                self.stored += 1;
                if matches!(kind, kind::DELETION | kind::REQUEST_TO_VANISH) {
                    self.deleted += removed;
                } else {
                    self.replaced += removed;
                }
            }
            WriteOutcome::Duplicate => self.duplicates += 1,
            WriteOutcome::Deleted | WriteOutcome::Vanished => self.deleted += 1,
            WriteOutcome::Superseded => self.superseded += 1,
        }
    }
}

/// What the checks made of one line.
enum Checked {
    /// To the writer.
    Write(Arc<CanonicalEvent>),
    /// NIP-40: expired already, so not stored (not an error).
    Expired,
    /// Reported as `line N: <reason>`.
    Rejected(String),
}

/// The rules an event is checked by before the writer, from the event
/// alone (no database): run on several threads at once.
struct Rules {
    policy: WritePolicy,
    verify_signatures: bool,
    apply_policy: bool,
    lists: AccessLists,
    relay_url: String,
    now: i64,
}

impl Rules {
    fn check(&self, line: &[u8]) -> Checked {
        let event = match parse_line(line) {
            Ok(event) => event,
            Err(reason) => return Checked::Rejected(reason),
        };
        if let Err(error) = event.verify_id() {
            return Checked::Rejected(format!("invalid: {error}"));
        }
        // NIP-62: only a request naming this relay (or ALL_RELAYS) is
        // acted on; a capture from another relay must not vanish anyone here.
        if event.kind == kind::REQUEST_TO_VANISH && !names_this_relay(&event, &self.relay_url) {
            return Checked::Rejected(
                "invalid: this request to vanish names other relays, not this one (NIP-62; \
                 set relay_url to the URL it names)"
                    .into(),
            );
        }
        if self.apply_policy {
            if let Err(reason) = self.lists.check(&event, None) {
                return Checked::Rejected(reason);
            }
            if event.is_protected() {
                return Checked::Rejected(
                    "restricted: a protected event (NIP-70) is stored only when its \
                     authenticated author publishes it"
                        .into(),
                );
            }
        } else if event.kind != kind::REQUEST_TO_VANISH {
            if self.lists.banned_events.contains_key(&event.id) {
                return Checked::Rejected("blocked: this event is banned on this relay".into());
            }
            if self.lists.banned_pubkeys.contains_key(&event.pubkey) {
                return Checked::Rejected("blocked: this pubkey is banned on this relay".into());
            }
        }
        if event.kind != kind::REQUEST_TO_VANISH
            && matches!(event.expiration(), Ok(Some(at)) if at <= self.now)
        {
            return Checked::Expired;
        }
        if let Err(reason) = self.policy.check(&event, self.now) {
            return Checked::Rejected(reason);
        }
        // After the policy, which names kind 22242 (in the ephemeral range).
        if event.class() == KindClass::Ephemeral {
            return Checked::Rejected(format!(
                "ephemeral: events of kind {} are never stored",
                event.kind
            ));
        }
        if self.verify_signatures
            && let Err(error) = event.verify_signature()
        {
            return Checked::Rejected(format!("invalid: {error}"));
        }
        Checked::Write(Arc::new(CanonicalEvent::new(event)))
    }
}

/// One line: an event object, `["EVENT", event]` or `["EVENT", sub, event]`.
fn parse_line(line: &[u8]) -> Result<Event, String> {
    let value: Value =
        serde_json::from_slice(line).map_err(|error| format!("malformed JSON: {error}"))?;
    let event = match value {
        Value::Object(_) => value,
        Value::Array(items) => {
            let mut items = items.into_iter();
            match (items.next(), items.next(), items.next(), items.next()) {
                (Some(Value::String(verb)), Some(event @ Value::Object(_)), None, None)
                | (
                    Some(Value::String(verb)),
                    Some(Value::String(_)),
                    Some(event @ Value::Object(_)),
                    None,
                ) if verb == "EVENT" => event,
                _ => return Err(NOT_AN_EVENT.into()),
            }
        }
        _ => return Err(NOT_AN_EVENT.into()),
    };
    Event::from_value(&event).map_err(|error| format!("invalid: {error}"))
}

const NOT_AN_EVENT: &str = "not an event: expected an event object, [\"EVENT\", event] or [\"EVENT\", subscription, event]";

/// Runs `nostr-relayd import`.
pub fn run(config: &Config, args: &ImportArgs) -> ExitCode {
    let (input, size): (Box<dyn Read>, Option<u64>) = match &args.path {
        Some(path) if path.as_os_str() != "-" => match File::open(path) {
            Ok(file) => {
                let size = file
                    .metadata()
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|m| m.len());
                (Box::new(file), size)
            }
            Err(error) => {
                eprintln!("error: cannot open {}: {error}", path.display());
                return ExitCode::FAILURE;
            }
        },
        _ => {
            if io::stdin().is_terminal() {
                eprintln!("reading events from stdin, one per line (Ctrl-D to end)");
            }
            (Box::new(io::stdin().lock()), None)
        }
    };
    let (store, rules, _runtime) = match open(config, args) {
        Ok(opened) => opened,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let progress = Progress::new(size);
    let started = Instant::now();
    let mut importer = Importer {
        store: &store,
        rules: &rules,
        progress: &progress,
        summary: Summary::default(),
        in_flight: VecDeque::with_capacity(IN_FLIGHT + CHUNK),
    };
    let read = importer.read_all(BufReader::with_capacity(1 << 20, input));
    // Whatever stopped the reading, what was queued is committed (or
    // failed) and counted.
    let outcome = read.and(importer.settle_all());
    let summary = importer.summary;
    progress.finish();
    // Closing runs the writer's final checkpoint: the imported events end
    // in the database file itself, and the WAL is left empty.
    store.close();
    drop(store);
    eprintln!("{}", summary.line(started.elapsed()));
    match outcome {
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
        Ok(()) if args.strict && summary.rejected > 0 => ExitCode::from(3),
        Ok(()) => ExitCode::SUCCESS,
    }
}

/// The database (its own writer, created and migrated if need be), the
/// runtime a PostgreSQL store runs on, and the rules, with the lists as
/// stored now.
fn open(
    config: &Config,
    args: &ImportArgs,
) -> Result<(Store, Rules, Option<tokio::runtime::Runtime>), String> {
    let cannot_open = |e: StoreError| format!("cannot open the {}: {e}", config.database_label());
    let (store, stored, runtime) = match config.storage.backend {
        Backend::Sqlite => {
            let path = &config.database;
            let options = StoreOptions {
                reader_threads: 1,
                query_timeout: Duration::from_secs(60),
                ..StoreOptions::from_config(config)
            };
            // No commit hook: nobody here subscribes.
            let store = Store::open(path, &options, Box::new(|_| {})).map_err(cannot_open)?;
            let conn = store::open_connection(path, config.storage.durability, true)
                .map_err(cannot_open)?;
            let stored = lists::load(&conn).map_err(|e| StoreError::from(e).to_string())?;
            (store, stored, None)
        }
        Backend::Postgres => {
            // The writer is a task: it needs a runtime beside this thread,
            // which queues events and waits for their outcomes.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the async runtime: {e}"))?;
            let options = crate::store::postgres_options(config);
            let (store, stored) = runtime
                .block_on(async {
                    let store = Store::open_postgres(&options, Box::new(|_| {})).await?;
                    let stored = store.lists().await?;
                    Ok::<_, StoreError>((store, stored))
                })
                .map_err(cannot_open)?;
            (store, stored, Some(runtime))
        }
    };
    let seed = Seed::from_config(&config.access)?;
    let policy = if args.apply_policy {
        WritePolicy::new(&config.limits)
    } else {
        // What makes an event valid; nothing about the network.
        WritePolicy::new(&Limits {
            max_event_tags: usize::MAX,
            max_content_length: usize::MAX,
            created_at_lower_limit: 0,
            created_at_upper_limit: 0,
            min_pow_difficulty: 0,
            ..config.limits.clone()
        })
    };
    let rules = Rules {
        policy,
        verify_signatures: !args.no_verify,
        apply_policy: args.apply_policy,
        lists: AccessLists::build(config, &seed, stored),
        relay_url: config.relay_url.clone(),
        now: unix_now(),
    };
    Ok((store, rules, runtime))
}

type Pending = (u16, oneshot::Receiver<Result<WriteOutcome, StoreError>>);

/// One run: lines in, events queued, outcomes counted in file order.
struct Importer<'a> {
    store: &'a Store,
    rules: &'a Rules,
    progress: &'a Progress,
    summary: Summary,
    /// Events handed to the writer, oldest first, with their kind.
    in_flight: VecDeque<Pending>,
}

impl Importer<'_> {
    /// Reads to the end; an `Err` is an I/O or database failure (what was
    /// committed before it stays).
    fn read_all(&mut self, mut input: impl BufRead) -> Result<(), String> {
        let mut number = 0u64;
        let mut bytes = 0u64;
        let mut chunk: Vec<(u64, Vec<u8>)> = Vec::with_capacity(CHUNK);
        let mut spare: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut line = spare.pop().unwrap_or_default();
            line.clear();
            let read = input
                .read_until(b'\n', &mut line)
                .map_err(|e| format!("reading line {}: {e}", number + 1))?;
            let end = read == 0;
            if !end {
                number += 1;
                bytes += read as u64;
                let text = trim(&line, number == 1);
                if !text.is_empty() {
                    line.truncate(text.end);
                    line.drain(..text.start);
                    chunk.push((number, line));
                }
            }
            if chunk.len() == CHUNK || (end && !chunk.is_empty()) {
                self.import_chunk(&chunk)?;
                spare.extend(chunk.drain(..).map(|(_, line)| line));
                self.progress.update(bytes, &self.summary);
            }
            if end {
                return Ok(());
            }
        }
    }

    /// Waits for every queued event; the first failure is returned after
    /// all are counted.
    fn settle_all(&mut self) -> Result<(), String> {
        let mut outcome = Ok(());
        while let Some(pending) = self.in_flight.pop_front() {
            let settled = self.settle(pending);
            if outcome.is_ok() {
                outcome = settled;
            }
        }
        outcome
    }

    /// Checks a chunk on every core, then queues its events in file order.
    fn import_chunk(&mut self, chunk: &[(u64, Vec<u8>)]) -> Result<(), String> {
        self.summary.read += chunk.len() as u64;
        let checked = check_in_parallel(self.rules, chunk);
        for ((number, _), checked) in chunk.iter().zip(checked) {
            match checked {
                Checked::Write(event) => {
                    let kind = event.event.kind;
                    let outcome = self.store.insert_queued(event).map_err(store_failure)?;
                    self.in_flight.push_back((kind, outcome));
                }
                Checked::Expired => self.summary.expired += 1,
                Checked::Rejected(reason) => {
                    self.summary.rejected += 1;
                    self.progress.report(&format!("line {number}: {reason}"));
                }
            }
        }
        while self.in_flight.len() > IN_FLIGHT {
            if let Some(pending) = self.in_flight.pop_front() {
                self.settle(pending)?;
            }
        }
        Ok(())
    }

    /// Waits for one queued event's commit and counts it.
    fn settle(&mut self, (kind, outcome): Pending) -> Result<(), String> {
        let outcome = outcome
            .blocking_recv()
            .unwrap_or(Err(StoreError::Closed))
            .map_err(store_failure)?;
        self.summary.count(kind, outcome);
        Ok(())
    }
}

fn store_failure(error: StoreError) -> String {
    format!("storing events: {error}")
}

/// Where the line's text is: without its end (LF or CRLF), surrounding
/// whitespace, or (on the first line) a UTF-8 byte order mark.
fn trim(line: &[u8], first: bool) -> Range<usize> {
    let bom = if first && line.starts_with(b"\xef\xbb\xbf") {
        3
    } else {
        0
    };
    let rest = &line[bom..];
    let start = bom + (rest.len() - rest.trim_ascii_start().len());
    let end = start + line[start..].trim_ascii_end().len();
    start..end
}

/// [`Rules::check`] of every line, split over the available cores, in order.
fn check_in_parallel(rules: &Rules, chunk: &[(u64, Vec<u8>)]) -> Vec<Checked> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let part = chunk.len().div_ceil(threads).max(1);
    if threads == 1 || chunk.len() < 64 {
        return chunk.iter().map(|(_, line)| rules.check(line)).collect();
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunk
            .chunks(part)
            .map(|lines| {
                scope.spawn(move || {
                    lines
                        .iter()
                        .map(|(_, line)| rules.check(line))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(chunk.chunks(part))
            .flat_map(|(handle, lines)| match handle.join() {
                Ok(checked) => checked,
                // Checking is total (parsing never panics on any input);
                // should a bug make it panic, its lines are reported.
                Err(_) => lines
                    .iter()
                    .map(|_| Checked::Rejected("error: checking this line failed".into()))
                    .collect(),
            })
            .collect()
    })
}

/// The progress bar: at a terminal only, with events/s; nothing otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
}

impl Progress {
    fn new(size: Option<u64>) -> Progress {
        let bar = io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(size, ProgressDrawTarget::stderr());
            let template = if size.is_some() {
                "{bar:30} {percent:>3}% {msg} [{elapsed} < {eta}]"
            } else {
                "{spinner} {msg} [{elapsed}]"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar
        });
        Progress {
            bar,
            started: Instant::now(),
        }
    }

    fn update(&self, bytes: u64, summary: &Summary) {
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
            bar.set_message(format!(
                "{} read, {} stored, {} rejected, {} events/s",
                summary.read,
                summary.stored,
                summary.rejected,
                super::rate(summary.read, self.started.elapsed())
            ));
        }
    }

    /// A line on stderr, above the bar if there is one.
    fn report(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_events_or_event_messages() {
        let event = r#"{"id":"aa","pubkey":"bb"}"#;
        for line in [
            event.to_owned(),
            format!(r#"["EVENT",{event}]"#),
            format!(r#"["EVENT","sub",{event}]"#),
        ] {
            // The shape is accepted; the fields are then judged.
            let error = parse_line(line.as_bytes()).unwrap_err();
            assert!(error.starts_with("invalid: "), "{line}: {error}");
        }
        for line in [
            "[]",
            "42",
            r#""EVENT""#,
            r#"["EVENT"]"#,
            r#"["OK",{}]"#,
            r#"["EVENT","sub",{},{}]"#,
            r#"["EVENT",1,{}]"#,
        ] {
            assert_eq!(
                parse_line(line.as_bytes()).unwrap_err(),
                NOT_AN_EVENT,
                "{line}"
            );
        }
        assert!(
            parse_line(b"{nope")
                .unwrap_err()
                .starts_with("malformed JSON: ")
        );
    }

    #[test]
    fn line_ends_and_byte_order_marks_are_trimmed() {
        assert_eq!(trim(b"{}\r\n", false), 0..2);
        assert_eq!(trim(b"\xef\xbb\xbf {}\n", true), 4..6);
        assert!(trim(b" \t\r\n", false).is_empty());
    }
}
