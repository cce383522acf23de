//! The `nostr-relayd` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nostr_relayd::config::Backend;
use nostr_relayd::logging::{self, LogFormat};
use nostr_relayd::{Config, RunningRelay, Stopped};
use tokio::signal::unix;

/// A Nostr relay daemon: NIP-01 over WebSocket, SQLite storage, live fan-out.
#[derive(Parser)]
#[command(version = nostr_relayd::VERSION, about)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, default_value = "relay.toml", value_name = "PATH")]
    config: PathBuf,
    /// How log lines (on stderr) are written: `text` for people, `json`
    /// (one object per line) for log pipelines.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = logging::ENV_LOG_FORMAT,
        value_name = "FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default).
    Serve,
    /// Edit the access lists and the relay's NIP-11 name, description and
    /// icon in the database, as the NIP-86 API does; a running relay applies
    /// each change within a second.
    Admin {
        #[command(subcommand)]
        command: nostr_relayd::admin::AdminCommand,
    },
    /// Reconcile this relay's database with a remote relay for a filter
    /// (NIP-77, else paginated REQs): download, upload or both; resumable;
    /// `--stream` then mirrors the remote live.
    Sync(nostr_relayd::sync::SyncArgs),
    /// Write the stored events as JSON lines (one event per line, newest
    /// first, byte for byte as stored) to stdout: backups, migrations.
    Export(nostr_relayd::dump::ExportArgs),
    /// Read events as JSON lines (an export, `strfry export`, or captured
    /// `["EVENT", …]` messages) into the database, through the relay's
    /// storage rules; rejected lines are reported on stderr.
    Import(nostr_relayd::dump::ImportArgs),
    /// Apply the [retention] rules and size cap once, beside a running
    /// relay or not; `--dry-run` prints what would go and deletes nothing.
    Prune {
        /// Count what would be pruned, per rule, without deleting anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Give the space of deleted events back to the file system (VACUUM:
    /// needs up to twice the database's size free and blocks writers
    /// throughout; stop the relay first).
    Vacuum,
    /// Copy the database, complete and consistent, while the relay runs
    /// (SQLite's online backup), and check the copy.
    Backup {
        /// Where to write the copy.
        #[arg(value_name = "PATH")]
        path: PathBuf,
        /// Overwrite PATH if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Check the configuration (the file and the environment overrides)
    /// and print it in full as TOML; exit 2 naming the bad key if invalid.
    CheckConfig,
    /// Exit 0 if a running relay answers 200 on /health, else 1 (for a
    /// container's HEALTHCHECK: the image has no curl).
    Healthcheck {
        /// Where to ask [default: /health on the configured listen port,
        /// on this machine].
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr, always: stdout is kept for data (exports).
    logging::init(cli.log_format);
    let command = cli.command.unwrap_or(Command::Serve);
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "invalid configuration");
            // Docker reserves a healthcheck's exit code 2.
            return match command {
                Command::Healthcheck { .. } => ExitCode::FAILURE,
                _ => ExitCode::from(2),
            };
        }
    };
    // RUST_LOG, when set, wins at start; otherwise relay.toml's log_level.
    if !logging::filter_from_env()
        && let Err(error) = logging::set_filter(&config.log_level)
    {
        tracing::warn!(%error, "log_level not applied");
    }
    if let Some(refusal) = sqlite_only(&command, &config) {
        eprintln!("error: {refusal}");
        return ExitCode::FAILURE;
    }
    match command {
        Command::Serve => serve(config, &cli.config),
        Command::Admin { command } => match nostr_relayd::admin::run(&config, &command) {
            Ok(output) => {
                print!("{output}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Sync(args) => nostr_relayd::sync::run(&config, &args),
        Command::Export(args) => nostr_relayd::dump::export::run(&config, &args),
        Command::Import(args) => nostr_relayd::dump::import::run(&config, &args),
        Command::Prune { dry_run } => {
            print_or_fail(nostr_relayd::retention::prune_command(&config, dry_run))
        }
        Command::Vacuum => print_or_fail(
            nostr_relayd::store::maintenance::vacuum(&config.database, config.storage.durability)
                .map(|report| report.to_string())
                .map_err(|e| e.to_string()),
        ),
        Command::Backup { path, force } => print_or_fail(
            nostr_relayd::store::maintenance::backup(&config.database, &path, force)
                .map(|report| report.to_string())
                .map_err(|e| e.to_string()),
        ),
        Command::CheckConfig => check_config(&config),
        Command::Healthcheck { url } => healthcheck(&config, url.as_deref()),
    }
}

/// The commands that work on the SQLite file itself, refused with the
/// PostgreSQL backend with what to use instead.
fn sqlite_only(command: &Command, config: &Config) -> Option<String> {
    if config.storage.backend == Backend::Sqlite {
        return None;
    }
    let (name, instead) = match command {
        Command::Vacuum => ("vacuum", "PostgreSQL's autovacuum, or VACUUM FULL in psql"),
        Command::Backup { .. } => ("backup", "pg_dump, or `nostr-relayd export` for the events"),
        _ => return None,
    };
    Some(format!(
        "`nostr-relayd {name}` works on the SQLite file and storage.backend is \"postgres\"; \
         use {instead}"
    ))
}

/// `check-config`: the configuration in force (file and environment
/// overrides, every default written out) on stdout. An invalid one has
/// already stopped `main` with the error, naming the key, and exit 2.
fn check_config(config: &Config) -> ExitCode {
    match config.to_toml() {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `healthcheck`: 0 when the relay answers 200, else 1 (never 2, which
/// Docker reserves).
fn healthcheck(config: &Config, url: Option<&str>) -> ExitCode {
    let url = match url {
        Some(url) => Ok(url.to_owned()),
        None => nostr_relayd::healthcheck::default_url(config).map_err(|e| e.to_string()),
    };
    match url.and_then(|url| nostr_relayd::healthcheck::check(&url)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("unhealthy: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A maintenance command's report on stdout, or its error on stderr.
fn print_or_fail(outcome: Result<String, String>) -> ExitCode {
    match outcome {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config, path: &Path) -> ExitCode {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "raised the open-file limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open-file limit"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        // Before the relay starts: SIGHUP's default action ends the process.
        let mut signals = match Signals::new() {
            Ok(signals) => signals,
            Err(error) => {
                tracing::error!(%error, "cannot listen for signals");
                return ExitCode::FAILURE;
            }
        };
        let relay = match nostr_relayd::start(config).await {
            Ok(relay) => relay,
            Err(error) => {
                tracing::error!(%error, "cannot start the relay");
                return ExitCode::FAILURE;
            }
        };
        while let Signal::Reload = signals.next().await {
            reload(&relay, path).await;
        }
        tracing::info!("shutting down");
        let stopping = relay.shutdown();
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                stopped = &mut stopping => {
                    match stopped {
                        Stopped::Clean => tracing::info!("stopped cleanly"),
                        Stopped::Deadline => tracing::warn!(
                            "stopped; connections still open at \
                             network.shutdown_timeout_seconds were dropped"
                        ),
                    }
                    return ExitCode::SUCCESS;
                }
                signal = signals.next() => match signal {
                    // Acknowledged events are committed already: nothing
                    // promised is lost by not waiting.
                    Signal::Stop => {
                        tracing::warn!("asked again to stop: exiting without finishing the drain");
                        return ExitCode::FAILURE;
                    }
                    Signal::Reload => tracing::info!("SIGHUP ignored while stopping"),
                },
            }
        }
    });
    // Tasks of connections dropped at the deadline are not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}

/// SIGHUP: relay.toml (the same `--config` path, with the same environment
/// overrides) read, validated and put in force; an invalid file changes
/// nothing.
async fn reload(relay: &RunningRelay, path: &Path) {
    tracing::info!(path = %path.display(), "SIGHUP: reloading the configuration");
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "configuration not reloaded; the running one stays in force");
            return;
        }
    };
    if let Err(error) = relay.reload(config).await {
        tracing::error!(%error, "configuration not reloaded; the running one stays in force");
    }
}

/// What the process was asked to do.
enum Signal {
    /// SIGHUP.
    Reload,
    /// SIGTERM or SIGINT.
    Stop,
}

/// The signals `serve` answers, listened for from start to exit so that
/// none is missed between two.
struct Signals {
    hangup: unix::Signal,
    terminate: unix::Signal,
    interrupt: unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            hangup: unix::signal(unix::SignalKind::hangup())?,
            terminate: unix::signal(unix::SignalKind::terminate())?,
            interrupt: unix::signal(unix::SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.hangup.recv() => Signal::Reload,
            _ = self.terminate.recv() => Signal::Stop,
            _ = self.interrupt.recv() => Signal::Stop,
        }
    }
}
