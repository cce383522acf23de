//! nostr-relayd: a Nostr relay daemon.
//!
//! The crate is layered so that each NIP's rules live in one place:
//! [`nostr`] is the protocol as data (no I/O), [`store`] is SQLite (no
//! sockets), [`fanout`] matches live events to subscriptions, [`ingest`],
//! [`policy`] and [`plugin`] decide what is written, and [`server`] wires
//! them to the network. `ARCHITECTURE.md` follows one message through all of them.

pub mod access;
pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod corpus;
pub mod dump;
pub mod fanout;
pub mod healthcheck;
pub mod ingest;
pub mod logging;
pub mod management;
pub mod metrics;
pub mod nostr;
pub mod plugin;
pub mod policy;
pub mod privacy;
pub mod rate_limit;
pub mod reload;
pub mod retention;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod sync;
pub mod worker_pool;

pub use config::Config;

/// The version and the commit built from (`build.rs`), e.g.
/// `0.1.0 (3f2a9c1d07be 2026-11-27)`: in `--version` and the start-up log.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("NOSTR_RELAYD_BUILD"),
    ")"
);
pub use server::{RunningRelay, Stopped, start};
