//! `nostr-relayd admin …`: the NIP-86 operations from the host's shell.
//!
//! It works on the database directly, with no HTTP and no running relay
//! needed (lists can be seeded before the first start). Each edit is one
//! short transaction, safe beside a running relay (SQLite serializes the
//! writers), and bumps the lists version, which a running relay polls:
//! the change is in force there within `access::POLL_PERIOD`.

use clap::Subcommand;

use crate::access::{self, AccessLists, Cidr, Seed};
use crate::config::Config;
use crate::nostr::hex::decode_lower;
use crate::nostr::nip19::parse_pubkey;
use crate::store::lists::{self, Edit, InfoField};
use crate::store::{self, StoreError, schema};

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

/// Runs one command against `config.database`; returns what to print.
pub fn run(config: &Config, command: &AdminCommand) -> Result<String, String> {
    let seed = Seed::from_config(&config.access)?;
    let path = &config.database;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut conn = store::open_connection(path, config.storage.durability, false)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    schema::migrate(&mut conn, path).map_err(|e| e.to_string())?;
    let edits = edits(command)?;
    if edits.is_empty() {
        let stored = lists::load(&conn).map_err(|e| StoreError::from(e).to_string())?;
        let reports = lists::reports(&conn).map_err(|e| StoreError::from(e).to_string())?;
        return Ok(describe(
            &AccessLists::build(config, &seed, stored),
            &reports,
        ));
    }
    let mut output = String::new();
    for (edit, done) in edits {
        let deleted = access::apply_edit(&mut conn, &seed, &edit)?;
        output.push_str(&done);
        if deleted > 0 {
            output.push_str(" (the stored event was deleted)");
        }
        output.push('\n');
    }
    Ok(output)
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
fn describe(lists: &AccessLists, reports: &[lists::Report]) -> String {
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
