//! The `nostr-relayd` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nostr_relayd::Config;
use tracing_subscriber::EnvFilter;

/// A Nostr relay daemon: NIP-01 over WebSocket, SQLite storage, live fan-out.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, default_value = "relay.toml", value_name = "PATH")]
    config: PathBuf,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr, always: stdout is kept for data (exports).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into files or `docker logs`.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "invalid configuration");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config),
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
    }
}

fn serve(config: Config) -> ExitCode {
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
    runtime.block_on(async {
        let relay = match nostr_relayd::start(config).await {
            Ok(relay) => relay,
            Err(error) => {
                tracing::error!(%error, "cannot start the relay");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        tracing::info!("shutting down");
        relay.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn wait_for_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the relay");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
