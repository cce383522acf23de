//! `nostr-relayd admin …`: the NIP-86 operations from the host's shell.
//!
//! It works on the database directly, on either backend, with no HTTP and
//! no running relay needed (lists can be seeded before the first start).
//! Each edit is one short transaction, safe beside running relays (SQLite
//! serializes the writers across processes; on PostgreSQL it is the very
//! transaction a node runs for a NIP-86 call), and bumps the lists
//! version, which every running relay polls: the change is in force there
//! within `access::POLL_PERIOD`.

use std::time::Duration;

use clap::Subcommand;
use rusqlite::Connection;

use crate::access::{self, AccessLists, Cidr, Seed};
use crate::config::{Backend, Config};
use crate::nostr::hex::decode_lower;
use crate::nostr::nip19::parse_pubkey;
use crate::store::lists::{self, Edit, InfoField, Report, StoredLists};
use crate::store::{self, Store, StoreError, schema};

/// How long one statement of the CLI may run on PostgreSQL: an operator's
/// edit waits for the nodes' writers (a ban takes the event's lock), it is
/// not a client's query held to `storage.query_timeout_ms`.
const POSTGRES_STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// One admin command; each mirrors a NIP-86 method.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Ban pubkeys (hex or npub): their events are refused (NIP-86 banpubkey).
    BanPubkey {
        /// Pubkeys: 64 hex characters or npub1….
        #[arg(required = true, value_name = "PUBKEY")]
        pubkeys: Vec<String>,
        /// Why, for the record (shown by `list` and the NIP-86 list methods).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift pubkey bans (NIP-86 unbanpubkey).
    UnbanPubkey {
        /// Pubkeys: 64 hex characters or npub1….
        #[arg(required = true, value_name = "PUBKEY")]
        pubkeys: Vec<String>,
    },
    /// Add pubkeys to the allow list; once it is non-empty only listed
    /// pubkeys may write (NIP-86 allowpubkey).
    AllowPubkey {
        /// Pubkeys: 64 hex characters or npub1….
        #[arg(required = true, value_name = "PUBKEY")]
        pubkeys: Vec<String>,
        /// Why, for the record (shown by `list` and the NIP-86 list methods).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Remove pubkeys from the allow list; an empty list lets everyone
    /// write (NIP-86 unallowpubkey).
    UnallowPubkey {
        /// Pubkeys: 64 hex characters or npub1….
        #[arg(required = true, value_name = "PUBKEY")]
        pubkeys: Vec<String>,
    },
    /// Ban event ids: the stored events are deleted and never stored
    /// again (NIP-86 banevent).
    BanEvent {
        /// Event ids: 64 hex characters.
        #[arg(required = true, value_name = "EVENT_ID")]
        ids: Vec<String>,
        /// Why, for the record (shown by `list` and the NIP-86 list methods).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift event bans and clear their reports (NIP-86 allowevent).
    AllowEvent {
        /// Event ids: 64 hex characters.
        #[arg(required = true, value_name = "EVENT_ID")]
        ids: Vec<String>,
    },
    /// Allow kinds: undo a disallow-kind, or add to the kind allow list
    /// (NIP-86 allowkind).
    AllowKind {
        /// Kind numbers (0–65535).
        #[arg(required = true, value_name = "KIND")]
        kinds: Vec<u16>,
    },
    /// Refuse kinds (NIP-86 disallowkind).
    DisallowKind {
        /// Kind numbers (0–65535).
        #[arg(required = true, value_name = "KIND")]
        kinds: Vec<u16>,
    },
    /// Close connections from addresses or CIDR ranges and refuse their
    /// events (NIP-86 blockip).
    BlockIp {
        /// Addresses ("203.0.113.7") or CIDR ranges ("10.0.0.0/8").
        #[arg(required = true, value_name = "IP_OR_CIDR")]
        ips: Vec<String>,
        /// Why, for the record (shown by `list` and the NIP-86 list methods).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift IP blocks (NIP-86 unblockip).
    UnblockIp {
        /// Addresses ("203.0.113.7") or CIDR ranges ("10.0.0.0/8").
        #[arg(required = true, value_name = "IP_OR_CIDR")]
        ips: Vec<String>,
    },
    /// Set the NIP-11 name; "" goes back to relay.toml's (NIP-86 changerelayname).
    SetName {
        /// The new name.
        name: String,
    },
    /// Set the NIP-11 description; "" goes back to relay.toml's.
    SetDescription {
        /// The new description.
        description: String,
    },
    /// Set the NIP-11 icon URL; "" goes back to relay.toml's.
    SetIcon {
        /// The new icon URL.
        url: String,
    },
    /// Print every list (relay.toml's entries and the database's) and the
    /// events reported for moderation.
    List,
}

/// Runs one command against the configured database (`config.database`,
/// or PostgreSQL with `storage.backend = "postgres"`); returns what to
/// print. The arguments are checked before the database is opened.
pub fn run(config: &Config, command: &AdminCommand) -> Result<String, String> {
    let seed = Seed::from_config(&config.access)?;
    let edits = edits(command)?;
    let mut database = Database::open(config)?;
    let outcome = if edits.is_empty() {
        database
            .lists()
            .and_then(|stored| Ok((stored, database.reports()?)))
            .map(|(stored, reports)| describe(&AccessLists::build(config, &seed, stored), &reports))
    } else {
        apply_all(&mut database, &seed, edits)
    };
    database.close();
    outcome
}

/// Applies the edits in order, one transaction each; stops at the first
/// refusal or failure.
fn apply_all(
    database: &mut Database,
    seed: &Seed,
    edits: Vec<(Edit, String)>,
) -> Result<String, String> {
    let mut output = String::new();
    for (edit, done) in edits {
        let deleted = database.apply(seed, &edit)?;
        output.push_str(&done);
        if deleted > 0 {
            output.push_str(" (the stored event was deleted)");
        }
        output.push('\n');
    }
    Ok(output)
}

/// Where the stored lists are, opened (and migrated) for this one command.
enum Database {
    /// A connection of its own on the SQLite file: no writer thread, since
    /// SQLite serializes this process's transactions with the relay's.
    Sqlite(Connection),
    /// A store of its own (`Store` has no reader-only opening, so it starts
    /// a writer that stays idle), on a runtime beside this thread.
    Postgres(Store, tokio::runtime::Runtime),
}

impl Database {
    fn open(config: &Config) -> Result<Database, String> {
        let cannot_open =
            |e: StoreError| format!("cannot open the {}: {e}", config.database_label());
        match config.storage.backend {
            Backend::Sqlite => {
                let path = &config.database;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                }
                let mut conn = store::open_connection(path, config.storage.durability, false)
                    .map_err(cannot_open)?;
                schema::migrate(&mut conn, path).map_err(|e| e.to_string())?;
                Ok(Database::Sqlite(conn))
            }
            Backend::Postgres => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start the async runtime: {e}"))?;
                let options = store::postgres::PgOptions {
                    pool_size: 1,
                    query_timeout: POSTGRES_STATEMENT_TIMEOUT,
                    ..store::postgres_options(config)
                };
                // No commit hook: this process stores no events.
                let store = runtime
                    .block_on(Store::open_postgres(&options, Box::new(|_| {})))
                    .map_err(cannot_open)?;
                Ok(Database::Postgres(store, runtime))
            }
        }
    }

    /// The lists as stored (relay.toml's seed is added by the caller).
    fn lists(&self) -> Result<StoredLists, String> {
        match self {
            Database::Sqlite(conn) => {
                lists::load(conn).map_err(|e| StoreError::from(e).to_string())
            }
            Database::Postgres(store, runtime) => {
                runtime.block_on(store.lists()).map_err(|e| e.to_string())
            }
        }
    }

    /// The events reported for moderation.
    fn reports(&self) -> Result<Vec<Report>, String> {
        match self {
            Database::Sqlite(conn) => {
                lists::reports(conn).map_err(|e| StoreError::from(e).to_string())
            }
            Database::Postgres(store, runtime) => {
                runtime.block_on(store.reports()).map_err(|e| e.to_string())
            }
        }
    }

    /// One edit, refused if relay.toml forbids it (on both backends);
    /// returns how many stored events it deleted.
    fn apply(&mut self, seed: &Seed, edit: &Edit) -> Result<usize, String> {
        match self {
            Database::Sqlite(conn) => access::apply_edit(conn, seed, edit),
            Database::Postgres(store, runtime) => {
                runtime.block_on(access::apply_edit_to(store, seed, edit))
            }
        }
    }

    /// Stops the PostgreSQL store's writer and closes its connections
    /// (the SQLite connection closes when dropped).
    fn close(self) {
        if let Database::Postgres(store, _runtime) = self {
            // Called on this plain thread, outside the runtime, as it needs.
            store.close();
        }
    }
}

/// The edits a command stands for, each with its confirmation line; empty
/// for `list`.
fn edits(command: &AdminCommand) -> Result<Vec<(Edit, String)>, String> {
    let pubkeys = |texts: &[String]| -> Result<Vec<[u8; 32]>, String> {
        texts
            .iter()
            .map(|t| {
                parse_pubkey(t)
                    .ok_or_else(|| format!("{t:?} is not a pubkey (64 hex characters or npub)"))
            })
            .collect()
    };
    let ids = |texts: &[String]| -> Result<Vec<[u8; 32]>, String> {
        texts
            .iter()
            .map(|t| {
                decode_lower::<32>(&t.trim().to_ascii_lowercase())
                    .ok_or_else(|| format!("{t:?} is not an event id (64 hex characters)"))
            })
            .collect()
    };
    let cidrs = |texts: &[String]| -> Result<Vec<Cidr>, String> {
        texts
            .iter()
            .map(|t| {
                Cidr::parse(t).ok_or_else(|| format!("{t:?} is not an IP address or CIDR range"))
            })
            .collect()
    };
    let edits = match command {
        AdminCommand::List => Vec::new(),
        AdminCommand::BanPubkey {
            pubkeys: keys,
            reason,
        } => pubkeys(keys)?
            .into_iter()
            .map(|k| {
                (
                    Edit::BanPubkey(k, reason.clone()),
                    format!("banned pubkey {}", hex::encode(k)),
                )
            })
            .collect(),
        AdminCommand::UnbanPubkey { pubkeys: keys } => pubkeys(keys)?
            .into_iter()
            .map(|k| {
                (
                    Edit::UnbanPubkey(k),
                    format!("unbanned pubkey {}", hex::encode(k)),
                )
            })
            .collect(),
        AdminCommand::AllowPubkey {
            pubkeys: keys,
            reason,
        } => pubkeys(keys)?
            .into_iter()
            .map(|k| {
                (
                    Edit::AllowPubkey(k, reason.clone()),
                    format!("allowed pubkey {}", hex::encode(k)),
                )
            })
            .collect(),
        AdminCommand::UnallowPubkey { pubkeys: keys } => pubkeys(keys)?
            .into_iter()
            .map(|k| {
                (
                    Edit::UnallowPubkey(k),
                    format!("removed pubkey {} from the allow list", hex::encode(k)),
                )
            })
            .collect(),
        AdminCommand::BanEvent { ids: texts, reason } => ids(texts)?
            .into_iter()
            .map(|id| {
                (
                    Edit::BanEvent(id, reason.clone()),
                    format!("banned event {}", hex::encode(id)),
                )
            })
            .collect(),
        AdminCommand::AllowEvent { ids: texts } => ids(texts)?
            .into_iter()
            .map(|id| {
                (
                    Edit::AllowEvent(id),
                    format!("allowed event {}", hex::encode(id)),
                )
            })
            .collect(),
        AdminCommand::AllowKind { kinds } => kinds
            .iter()
            .map(|k| (Edit::AllowKind(*k), format!("allowed kind {k}")))
            .collect(),
        AdminCommand::DisallowKind { kinds } => kinds
            .iter()
            .map(|k| (Edit::DisallowKind(*k), format!("disallowed kind {k}")))
            .collect(),
        AdminCommand::BlockIp { ips, reason } => cidrs(ips)?
            .into_iter()
            .map(|c| {
                (
                    Edit::BlockIp(c.to_string(), reason.clone()),
                    format!("blocked {c}"),
                )
            })
            .collect(),
        AdminCommand::UnblockIp { ips } => cidrs(ips)?
            .into_iter()
            .map(|c| (Edit::UnblockIp(c.to_string()), format!("unblocked {c}")))
            .collect(),
        AdminCommand::SetName { name } => vec![info(InfoField::Name, name)],
        AdminCommand::SetDescription { description } => {
            vec![info(InfoField::Description, description)]
        }
        AdminCommand::SetIcon { url } => vec![info(InfoField::Icon, url)],
    };
    Ok(edits)
}

fn info(field: InfoField, value: &str) -> (Edit, String) {
    let done = if value.is_empty() {
        format!(
            "cleared the {} override (relay.toml's applies)",
            field.key()
        )
    } else {
        format!("set the relay {} to {value:?}", field.key())
    };
    (Edit::SetInfo(field, value.to_owned()), done)
}

/// Every list, one entry per line, for people.
fn describe(lists: &AccessLists, reports: &[Report]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut section = |title: &str, mut lines: Vec<String>| {
        lines.sort();
        if lines.is_empty() {
            let _ = writeln!(out, "{title}: none");
        } else {
            let _ = writeln!(out, "{title}:");
            for line in lines {
                let _ = writeln!(out, "  {}", line.trim_end());
            }
        }
    };
    let keyed = |map: &std::collections::HashMap<[u8; 32], access::Listed>| {
        map.iter()
            .map(|(k, l)| format!("{}  {}", hex::encode(k), l.reason))
            .collect::<Vec<_>>()
    };
    section("banned pubkeys", keyed(&lists.banned_pubkeys));
    section("allowed pubkeys", keyed(&lists.allowed_pubkeys));
    section("banned events", keyed(&lists.banned_events));
    section(
        "allowed kinds",
        lists
            .allowed_kinds
            .iter()
            .map(|k| format!("{k:>5}"))
            .collect(),
    );
    section(
        "disallowed kinds",
        lists
            .denied_kinds
            .iter()
            .map(|k| format!("{k:>5}"))
            .collect(),
    );
    section(
        "blocked IPs",
        lists
            .blocked_ips
            .iter()
            .map(|(c, l)| format!("{c}  {}", l.reason))
            .collect(),
    );
    section(
        "events needing moderation",
        reports
            .iter()
            .map(|r| {
                format!(
                    "{}  {} ({} reports)",
                    hex::encode(r.event_id),
                    r.reason,
                    r.reports
                )
            })
            .collect(),
    );
    let info = &lists.config.info;
    let _ = writeln!(out, "inbox: {}", lists.inbox);
    let _ = writeln!(out, "relay name: {:?}", info.name);
    let _ = writeln!(out, "relay description: {:?}", info.description);
    let _ = writeln!(out, "relay icon: {:?}", info.icon);
    out
}
