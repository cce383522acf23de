//! `nostr-relayd export`: stored events as JSON lines on stdout (or a
//! file), for backups and migrations. Logs and the final count go to
//! stderr; stdout carries events only.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use crate::config::{Backend, Config};
use crate::nostr::Filter;
use crate::nostr::event::MAX_TIMESTAMP;
use crate::store::query::Order;
use crate::store::{self, Store, StoreError, unix_now};

/// `nostr-relayd export` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Only the events this NIP-01 filter matches (JSON), e.g.
    /// '{"kinds":[0,3,10002]}'. Its `limit`, if any, caps the count (the
    /// first events in the export's order); otherwise there is none.
    #[arg(long, value_name = "JSON")]
    pub filter: Option<String>,
    /// Only events created at or after this Unix time (with --filter: both apply).
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub since: Option<u64>,
    /// Only events created at or before this Unix time (with --filter: both apply).
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub until: Option<u64>,
    /// Oldest first: the exact reverse of the default order (newest first,
    /// ties in time by lowest id, as NIP-01 orders).
    #[arg(long)]
    pub oldest_first: bool,
    /// Write the events to this file (created or truncated, synced to disk
    /// at the end) instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Why an export stopped.
#[derive(Debug)]
enum Failure {
    Store(StoreError),
    Write(io::Error),
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Failure::Store(error.into())
    }
}

/// Where the events are read from.
enum Source {
    /// One read transaction on the file: a consistent snapshot.
    Sqlite(rusqlite::Connection),
    /// The PostgreSQL store, on a runtime of its own.
    Postgres(Store, tokio::runtime::Runtime),
}

impl Source {
    fn open(config: &Config) -> Result<Source, StoreError> {
        match config.storage.backend {
            Backend::Sqlite => {
                store::open_connection(&config.database, config.storage.durability, true)
                    .map(Source::Sqlite)
            }
            Backend::Postgres => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .map_err(|e| StoreError::Other(e.to_string()))?;
                let options = store::postgres_options(config);
                let store = runtime.block_on(Store::open_postgres(&options, Box::new(|_| {})))?;
                Ok(Source::Postgres(store, runtime))
            }
        }
    }

    /// Hands each selected event's JSON to `write`; returns how many.
    fn each_event(
        &self,
        filter: &Filter,
        order: Order,
        write: &mut dyn FnMut(&str) -> io::Result<()>,
    ) -> Result<u64, Failure> {
        match self {
            Source::Sqlite(conn) => {
                store::export::each_event(conn, filter, order, unix_now(), |json| {
                    write(json).map_err(Failure::Write)
                })
            }
            Source::Postgres(store, runtime) => {
                // The write error is kept aside: the store only sees that
                // the callback failed.
                let mut failed: Option<io::Error> = None;
                let mut each = |json: &str| {
                    write(json).map_err(|error| {
                        let kind = error.kind();
                        failed = Some(error);
                        io::Error::from(kind)
                    })
                };
                let outcome =
                    runtime.block_on(store.export_each(filter, order, unix_now(), &mut each));
                match (outcome, failed) {
                    (_, Some(error)) => Err(Failure::Write(error)),
                    (Ok(count), None) => Ok(count),
                    (Err(error), None) => Err(Failure::Store(error)),
                }
            }
        }
    }
}

/// Runs `nostr-relayd export`.
pub fn run(config: &Config, args: &ExportArgs) -> ExitCode {
    let filter = match export_filter(args) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let source = match Source::open(config) {
        Ok(source) => source,
        Err(error) => {
            eprintln!(
                "error: cannot open the {}: {error}",
                config.database_label()
            );
            return ExitCode::FAILURE;
        }
    };
    let (sink, file): (Box<dyn Write>, Option<&PathBuf>) = match &args.output {
        Some(path) => match File::create(path) {
            Ok(file) => (Box::new(file), Some(path)),
            Err(error) => {
                eprintln!("error: cannot create {}: {error}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => (Box::new(io::stdout().lock()), None),
    };
    let mut out = BufWriter::with_capacity(1 << 16, sink);
    let order = if args.oldest_first {
        Order::OldestFirst
    } else {
        Order::NewestFirst
    };
    let started = Instant::now();
    let outcome = source
        .each_event(&filter, order, &mut |json| {
            out.write_all(json.as_bytes())
                .and_then(|()| out.write_all(b"\n"))
        })
        .and_then(|count| {
            out.flush().map_err(Failure::Write)?;
            Ok(count)
        });
    drop(out);
    let outcome = outcome.and_then(|count| {
        // A backup is only one once it is on the disk.
        if let Some(path) = file {
            File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(Failure::Write)?;
        }
        Ok(count)
    });
    let elapsed = started.elapsed();
    match outcome {
        Ok(count) => {
            eprintln!(
                "export: {count} events; {} events/s, {:.3} s",
                super::rate(count, elapsed),
                elapsed.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        // The reader went away (`export | head`): not an error of ours.
        Err(Failure::Write(error)) if error.kind() == io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(Failure::Write(error)) => {
            let target = file.map_or("stdout".to_owned(), |p| p.display().to_string());
            eprintln!("error: writing to {target}: {error}");
            ExitCode::FAILURE
        }
        Err(Failure::Store(error)) => {
            eprintln!("error: reading the events: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `--filter` with `--since`/`--until` applied on top (both must hold).
fn export_filter(args: &ExportArgs) -> Result<Filter, String> {
    let mut filter = match &args.filter {
        Some(text) => {
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|e| format!("--filter: {e}"))?;
            Filter::from_value(&value).map_err(|e| format!("--filter: {e}"))?
        }
        None => Filter::default(),
    };
    if filter.search.is_some() {
        return Err("--filter: search (NIP-50) is not supported by export".into());
    }
    let timestamp = |value: u64, name: &str| {
        i64::try_from(value)
            .ok()
            .filter(|t| *t as u64 <= MAX_TIMESTAMP)
            .ok_or_else(|| format!("--{name} must be at most 2^53-1"))
    };
    if let Some(since) = args.since {
        let since = timestamp(since, "since")?;
        filter.since = Some(filter.since.map_or(since, |s| s.max(since)));
    }
    if let Some(until) = args.until {
        let until = timestamp(until, "until")?;
        filter.until = Some(filter.until.map_or(until, |u| u.min(until)));
    }
    Ok(filter)
}
