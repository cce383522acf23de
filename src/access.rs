//! Who may write: banned and allowed pubkeys (with an "inbox" mode), banned
//! event ids, kind allow and deny lists, and blocked IP ranges.
//!
//! The lists have two sources: relay.toml's `[access]` section, a read-only
//! seed, and the database (tables of migration 2), which NIP-86 and the
//! `admin` CLI edit at run time. The relay decides by an in-memory snapshot,
//! [`AccessLists`], the union of both: a check is a few hash look-ups, never
//! a query. [`watch`] keeps the snapshot fresh: it polls `PRAGMA
//! data_version` on its own read connection (the number moves whenever
//! another connection or process commits) and re-reads the lists only when
//! their version row moved, so an edit made by the host CLI in another
//! process reaches a running relay within [`POLL_PERIOD`]. Edits made by
//! this process reload the snapshot at once.
//!
//! Kind 62 (NIP-62, request to vanish) is exempt from every list: a banned
//! or unlisted author keeps the right to have their data erased.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use rusqlite::Connection;

use crate::config::{self, Config, Durability};
use crate::nostr::hex::decode_lower;
use crate::nostr::nip19::parse_pubkey;
use crate::nostr::{Event, kind};
use crate::server::info;
use crate::shutdown::Shutdown;
use crate::store::lists::{self, Edit, InfoField, Report, StoredLists};
use crate::store::{self, Store, StoreError, unix_now};

/// How often a running relay looks for edits made by other processes.
pub const POLL_PERIOD: Duration = Duration::from_millis(250);

/// The reason shown for entries that come from relay.toml.
pub const SEED_REASON: &str = "listed in relay.toml";

/// An IPv4 or IPv6 network: an address and a prefix length. A single
/// address is a /32 (IPv4) or /128 (IPv6) network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Reads `1.2.3.4`, `10.0.0.0/8`, `2001:db8::/32` or `::1`. Host bits
    /// are cleared (`10.1.2.3/8` is `10.0.0.0/8`), so one network has one
    /// spelling, which is what the database stores. IPv4-mapped IPv6
    /// addresses are read as IPv4.
    pub fn parse(text: &str) -> Option<Cidr> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().ok()?;
        let address = address.to_canonical();
        let max = max_prefix(address);
        let prefix = match prefix {
            Some(prefix) if prefix.bytes().all(|b| b.is_ascii_digit()) && !prefix.is_empty() => {
                prefix.parse::<u8>().ok().filter(|p| *p <= max)?
            }
            Some(_) => return None,
            None => max,
        };
        Some(Cidr {
            network: mask(address, prefix),
            prefix,
        })
    }

    /// Whether `ip` is in this network (IPv4-mapped IPv6 addresses count
    /// as the IPv4 address they carry).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix) == self.network
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
    }
}

/// relay.toml's `[access]` lists, parsed: the part of the lists that no
/// run-time edit can remove.
#[derive(Debug, Clone, Default)]
pub struct Seed {
    denied_pubkeys: Vec<[u8; 32]>,
    allowed_pubkeys: Vec<[u8; 32]>,
    inbox: bool,
    allowed_kinds: Vec<u16>,
    denied_kinds: Vec<u16>,
    denied_ips: Vec<Cidr>,
}

impl Seed {
    /// Parses the section; the error names the key at fault (the same check
    /// runs in `Config::validate`).
    pub fn from_config(access: &config::Access) -> Result<Seed, String> {
        let pubkeys = |key: &str, values: &[String]| {
            values
                .iter()
                .map(|v| {
                    parse_pubkey(v).ok_or_else(|| {
                        format!("access.{key}: {v:?} is not a pubkey (64 hex characters or npub)")
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let denied_ips = access
            .denied_ips
            .iter()
            .map(|v| {
                Cidr::parse(v).ok_or_else(|| {
                    format!("access.denied_ips: {v:?} is not an IP address or CIDR range")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Seed {
            denied_pubkeys: pubkeys("denied_pubkeys", &access.denied_pubkeys)?,
            allowed_pubkeys: pubkeys("allowed_pubkeys", &access.allowed_pubkeys)?,
            inbox: access.inbox,
            allowed_kinds: access.allowed_kinds.clone(),
            denied_kinds: access.denied_kinds.clone(),
            denied_ips,
        })
    }

    /// Refuses an edit that relay.toml would undo at once: lifting a ban or
    /// an allowance that the file sets. The file is the operator's; the
    /// database cannot override it.
    pub fn refusal(&self, edit: &Edit) -> Option<String> {
        let why = match edit {
            Edit::UnbanPubkey(pk) if self.denied_pubkeys.contains(pk) => "access.denied_pubkeys",
            Edit::UnallowPubkey(pk) if self.allowed_pubkeys.contains(pk) => {
                "access.allowed_pubkeys"
            }
            Edit::AllowKind(kind) if self.denied_kinds.contains(kind) => "access.denied_kinds",
            Edit::UnblockIp(cidr)
                if self
                    .denied_ips
                    .iter()
                    .any(|seeded| seeded.to_string() == *cidr) =>
            {
                "access.denied_ips"
            }
            _ => return None,
        };
        Some(format!(
            "this entry is in {why} in relay.toml, which the database cannot override; \
             edit relay.toml and restart the relay"
        ))
    }
}

/// One list entry: why it is there, and whether relay.toml put it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The admin's note (NIP-86 reason), or [`SEED_REASON`].
    pub reason: String,
    /// Set in relay.toml: the database cannot lift it.
    pub from_config: bool,
}

/// The lists in force: relay.toml's seed ∪ the database, as of one version.
/// Immutable; a reload builds a new one.
#[derive(Debug)]
pub struct AccessLists {
    /// The database's `lists_version` this snapshot was read at.
    pub version: i64,
    /// Pubkeys whose events are refused.
    pub banned_pubkeys: HashMap<[u8; 32], Listed>,
    /// When non-empty, the only pubkeys whose events are accepted.
    pub allowed_pubkeys: HashMap<[u8; 32], Listed>,
    /// A non-allowed author may write events that p-tag an allowed pubkey.
    pub inbox: bool,
    /// Event ids refused (and deleted when they were banned).
    pub banned_events: HashMap<[u8; 32], Listed>,
    /// When non-empty, the only kinds accepted (less `denied_kinds`).
    pub allowed_kinds: BTreeSet<u16>,
    /// Kinds refused; wins over `allowed_kinds`.
    pub denied_kinds: BTreeSet<u16>,
    /// Networks whose connections are closed and events refused.
    pub blocked_ips: Vec<(Cidr, Listed)>,
    /// The configuration with NIP-86's NIP-11 overrides applied (for the
    /// NIP-11 document and the home page).
    pub config: Config,
    relay_info: Bytes,
}

impl AccessLists {
    /// Builds the snapshot from the configuration and the stored lists.
    pub fn build(config: &Config, seed: &Seed, stored: StoredLists) -> AccessLists {
        let seeded = || Listed {
            reason: SEED_REASON.to_owned(),
            from_config: true,
        };
        let stored_entry = |reason: String| Listed {
            reason,
            from_config: false,
        };
        let from_seed = |keys: &[[u8; 32]]| -> HashMap<[u8; 32], Listed> {
            keys.iter().map(|k| (*k, seeded())).collect()
        };
        let mut banned_pubkeys = from_seed(&seed.denied_pubkeys);
        for (key, reason) in stored.banned_pubkeys {
            banned_pubkeys
                .entry(key)
                .or_insert_with(|| stored_entry(reason));
        }
        let mut allowed_pubkeys = from_seed(&seed.allowed_pubkeys);
        for (key, reason) in stored.allowed_pubkeys {
            allowed_pubkeys
                .entry(key)
                .or_insert_with(|| stored_entry(reason));
        }
        let banned_events = stored
            .banned_events
            .into_iter()
            .map(|(id, reason)| (id, stored_entry(reason)))
            .collect();
        let allowed_kinds: BTreeSet<u16> = seed
            .allowed_kinds
            .iter()
            .copied()
            .chain(stored.allowed_kinds)
            .collect();
        let denied_kinds = seed
            .denied_kinds
            .iter()
            .copied()
            .chain(stored.disallowed_kinds)
            .collect();
        let mut blocked_ips: Vec<(Cidr, Listed)> = seed
            .denied_ips
            .iter()
            .map(|cidr| (*cidr, seeded()))
            .collect();
        for (text, reason) in stored.blocked_ips {
            match Cidr::parse(&text) {
                Some(cidr) if !blocked_ips.iter().any(|(c, _)| *c == cidr) => {
                    blocked_ips.push((cidr, stored_entry(reason)));
                }
                Some(_) => {}
                None => tracing::warn!(cidr = %text, "ignoring an unreadable blocked_ip row"),
            }
        }
        let mut effective = config.clone();
        for (key, value) in stored.info {
            match key.as_str() {
                "name" => effective.info.name = value,
                "description" => effective.info.description = value,
                "icon" => effective.info.icon = value,
                _ => {}
            }
        }
        let mut doc = info::relay_info(&effective);
        // NIP-11: restricted_writes is for "a special pubkey-based whitelist
        // or … events of a specific niche kind".
        if (!allowed_pubkeys.is_empty() || !allowed_kinds.is_empty())
            && let Some(limitation) = doc.get_mut("limitation")
        {
            limitation["restricted_writes"] = serde_json::Value::Bool(true);
        }
        AccessLists {
            version: stored.version,
            banned_pubkeys,
            allowed_pubkeys,
            inbox: seed.inbox,
            banned_events,
            allowed_kinds,
            denied_kinds,
            blocked_ips,
            config: effective,
            relay_info: Bytes::from(doc.to_string()),
        }
    }

    /// Whether connections and events from `ip` are refused.
    pub fn is_ip_blocked(&self, ip: IpAddr) -> bool {
        self.blocked_ips.iter().any(|(cidr, _)| cidr.contains(ip))
    }

    /// Whether events of `kind` are accepted: not denied (the deny list
    /// wins), and on the allow list if there is one.
    pub fn is_kind_allowed(&self, kind: u16) -> bool {
        !self.denied_kinds.contains(&kind)
            && (self.allowed_kinds.is_empty() || self.allowed_kinds.contains(&kind))
    }

    /// The kinds on the allow list that are not denied: what NIP-86's
    /// `listallowedkinds` reports (empty: every kind not denied).
    pub fn effective_allowed_kinds(&self) -> Vec<u16> {
        self.allowed_kinds
            .difference(&self.denied_kinds)
            .copied()
            .collect()
    }

    /// The write rules for one event from `address` (`None`: not from the
    /// network). `Err` is the full `OK false` reason, prefixed `blocked:`.
    pub fn check(&self, event: &Event, address: Option<IpAddr>) -> Result<(), String> {
        if event.kind == kind::REQUEST_TO_VANISH {
            return Ok(());
        }
        if address.is_some_and(|ip| self.is_ip_blocked(ip)) {
            return Err("blocked: your IP address is blocked on this relay".into());
        }
        if self.banned_events.contains_key(&event.id) {
            return Err("blocked: this event is banned on this relay".into());
        }
        if self.banned_pubkeys.contains_key(&event.pubkey) {
            return Err("blocked: this pubkey is banned on this relay".into());
        }
        if !self.is_kind_allowed(event.kind) {
            return Err(format!(
                "blocked: events of kind {} are not accepted on this relay",
                event.kind
            ));
        }
        if self.allowed_pubkeys.is_empty() || self.allowed_pubkeys.contains_key(&event.pubkey) {
            return Ok(());
        }
        if self.inbox {
            let to_member = event
                .tag_values("p")
                .filter_map(decode_lower::<32>)
                .any(|p| self.allowed_pubkeys.contains_key(&p));
            if to_member {
                return Ok(());
            }
            return Err(
                "blocked: this relay accepts events only from its members or addressed (p-tagged) to them"
                    .into(),
            );
        }
        Err("blocked: this pubkey is not on this relay's allow list".into())
    }

    /// The NIP-11 document with NIP-86's overrides, serialized once.
    pub fn relay_info(&self) -> Bytes {
        self.relay_info.clone()
    }
}

/// The running relay's access lists: the snapshot in force, and where
/// they are stored (watched for edits by other processes or nodes, edited
/// by NIP-86).
pub struct AccessControl {
    /// relay.toml's part: replaced by a reload (SIGHUP).
    settings: RwLock<Arc<Settings>>,
    current: RwLock<Arc<AccessLists>>,
    source: Source,
}

/// Where the stored lists live.
enum Source {
    /// A read connection that watches the file, and one (opened on the
    /// first edit: most relays never get one) that edits it.
    Sqlite {
        watcher: Box<Mutex<Watcher>>,
        editor: Mutex<Option<Connection>>,
        database: PathBuf,
        durability: Durability,
    },
    /// The store's own pool. Its methods are async; ours are called on
    /// blocking threads (they block on SQLite), where `block_on` is allowed.
    Postgres(Arc<Store>),
}

/// What relay.toml contributes to the lists and the NIP-11 document.
struct Settings {
    config: Config,
    seed: Seed,
}

struct Watcher {
    conn: Connection,
    data_version: i64,
}

/// Runs a store future from one of the blocking threads the access
/// methods are called on.
fn block_on<T>(future: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::runtime::Handle::try_current()
        .map(|handle| handle.block_on(future))
        .map_err(|_| "the access lists were used outside the relay's runtime".to_owned())
}

impl AccessControl {
    /// Reads the lists of an already migrated SQLite database (the store
    /// opens it first) and keeps a read connection to watch it.
    pub fn open(config: &Config) -> Result<AccessControl, String> {
        let seed = Seed::from_config(&config.access)?;
        let conn = store::open_connection(&config.database, config.storage.durability, true)
            .map_err(|e| e.to_string())?;
        let data_version = data_version(&conn).map_err(|e| e.to_string())?;
        let stored = lists::load(&conn).map_err(|e| StoreError::from(e).to_string())?;
        Ok(AccessControl::with(
            config,
            seed,
            stored,
            Source::Sqlite {
                watcher: Box::new(Mutex::new(Watcher { conn, data_version })),
                editor: Mutex::new(None),
                database: config.database.clone(),
                durability: config.storage.durability,
            },
        ))
    }

    /// Reads the lists from the store `config` names: SQLite through
    /// [`AccessControl::open`], PostgreSQL through the store's pool.
    pub async fn open_with(config: &Config, store: Arc<Store>) -> Result<AccessControl, String> {
        if store.sqlite().is_some() {
            return AccessControl::open(config);
        }
        let seed = Seed::from_config(&config.access)?;
        let stored = store.lists().await.map_err(|e| e.to_string())?;
        Ok(AccessControl::with(
            config,
            seed,
            stored,
            Source::Postgres(store),
        ))
    }

    fn with(config: &Config, seed: Seed, stored: StoredLists, source: Source) -> AccessControl {
        let lists = AccessLists::build(config, &seed, stored);
        AccessControl {
            settings: RwLock::new(Arc::new(Settings {
                config: config.clone(),
                seed,
            })),
            current: RwLock::new(Arc::new(lists)),
            source,
        }
    }

    /// The lists in force now. Cheap (an `Arc` clone); hold it for one
    /// decision, not longer, or edits will be missed.
    pub fn current(&self) -> Arc<AccessLists> {
        // A poisoned lock still holds a complete snapshot: swaps are one store.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// relay.toml's part of the lists.
    pub fn seed(&self) -> Seed {
        self.settings().seed.clone()
    }

    fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The stored lists, read now. Blocks.
    fn load(&self) -> Result<StoredLists, String> {
        match &self.source {
            Source::Sqlite { watcher, .. } => {
                let watcher = watcher.lock().unwrap_or_else(|e| e.into_inner());
                lists::load(&watcher.conn).map_err(|e| StoreError::from(e).to_string())
            }
            Source::Postgres(store) => block_on(store.lists())?.map_err(|e| e.to_string()),
        }
    }

    /// Puts a reloaded relay.toml in force (SIGHUP): its `[access]` seed,
    /// and the configuration the NIP-11 document is made from (NIP-86's
    /// overrides in the database still win). Re-reads the stored lists, so
    /// it blocks: call it from a blocking thread.
    pub fn reconfigure(&self, config: &Config) -> Result<(), String> {
        let seed = Seed::from_config(&config.access)?;
        // Read first: a failure leaves the old settings in force.
        let stored = self.load()?;
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Settings {
            config: config.clone(),
            seed,
        });
        self.install(stored);
        Ok(())
    }

    /// Applies an edit to the database and reloads the snapshot before
    /// returning, so the caller's next request already sees it. Blocks:
    /// call it from a blocking thread. Returns how many stored events the
    /// edit deleted.
    pub fn edit(&self, edit: &Edit) -> Result<usize, String> {
        let seed = self.settings().seed.clone();
        match &self.source {
            Source::Sqlite {
                editor,
                database,
                durability,
                ..
            } => {
                let mut editor = editor.lock().unwrap_or_else(|e| e.into_inner());
                let conn = match &mut *editor {
                    Some(conn) => conn,
                    empty => empty.insert(
                        store::open_connection(database, *durability, false)
                            .map_err(|e| e.to_string())?,
                    ),
                };
                let deleted = apply_edit(conn, &seed, edit)?;
                let stored = lists::load(conn).map_err(|e| StoreError::from(e).to_string())?;
                self.install(stored);
                Ok(deleted)
            }
            Source::Postgres(store) => {
                let deleted = block_on(apply_edit_to(store, &seed, edit))??;
                self.install(self.load()?);
                Ok(deleted)
            }
        }
    }

    /// The reported events waiting for a moderator. Blocks.
    pub fn reports(&self) -> Result<Vec<Report>, String> {
        match &self.source {
            Source::Sqlite { watcher, .. } => {
                let watcher = watcher.lock().unwrap_or_else(|e| e.into_inner());
                lists::reports(&watcher.conn).map_err(|e| StoreError::from(e).to_string())
            }
            Source::Postgres(store) => block_on(store.reports())?.map_err(|e| e.to_string()),
        }
    }

    /// One look for edits by other connections (another process, another
    /// node): with SQLite cheap when nothing was committed (one pragma),
    /// one row read when only events were; with PostgreSQL one row read.
    fn poll(&self) -> Result<(), String> {
        let version = match &self.source {
            Source::Sqlite { watcher, .. } => {
                let mut watcher = watcher.lock().unwrap_or_else(|e| e.into_inner());
                let sqlite = |e: rusqlite::Error| StoreError::from(e).to_string();
                let now = data_version(&watcher.conn).map_err(sqlite)?;
                if now == watcher.data_version {
                    return Ok(());
                }
                watcher.data_version = now;
                lists::version(&watcher.conn).map_err(sqlite)?
            }
            Source::Postgres(store) => {
                block_on(store.lists_version())?.map_err(|e| e.to_string())?
            }
        };
        if version == self.current().version {
            return Ok(());
        }
        let stored = self.load()?;
        tracing::info!(version = stored.version, "access lists reloaded");
        self.install(stored);
        Ok(())
    }

    /// Swaps in a snapshot, unless a newer one is already in force (an
    /// edit and the watcher may race).
    fn install(&self, stored: StoredLists) {
        let settings = self.settings();
        let lists = Arc::new(AccessLists::build(&settings.config, &settings.seed, stored));
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if lists.version >= current.version {
            *current = lists;
        }
    }
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |row| row.get(0))
}

/// Applies one edit on `conn` (the relay's or the CLI's), after refusing
/// what relay.toml forbids. Returns how many stored events it deleted.
pub fn apply_edit(conn: &mut Connection, seed: &Seed, edit: &Edit) -> Result<usize, String> {
    if let Some(refusal) = seed.refusal(edit) {
        return Err(refusal);
    }
    lists::apply(conn, edit, &seed.allowed_kinds, unix_now())
        .map_err(|e| StoreError::from(e).to_string())
}

/// [`apply_edit`] for a PostgreSQL store (the relay's or the CLI's): the
/// same refusal of what relay.toml forbids, then one transaction that also
/// bumps the lists version every node polls.
pub async fn apply_edit_to(store: &Store, seed: &Seed, edit: &Edit) -> Result<usize, String> {
    if let Some(refusal) = seed.refusal(edit) {
        return Err(refusal);
    }
    store
        .apply_edit(edit, &seed.allowed_kinds, unix_now())
        .await
        .map_err(|e| e.to_string())
}

/// Keeps `access` in step with the database until shutdown: every
/// [`POLL_PERIOD`], on a blocking thread, a look at `PRAGMA data_version`
/// (SQLite) or at the `lists_version` row (PostgreSQL, where the edits of
/// the CLI and of every node land).
pub async fn watch(access: Arc<AccessControl>, mut shutdown: Shutdown) {
    let mut ticker = tokio::time::interval(POLL_PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = ticker.tick() => {}
        }
        let polled = access.clone();
        match tokio::task::spawn_blocking(move || polled.poll()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot read the access lists"),
            Err(error) => tracing::warn!(%error, "the access list watcher failed"),
        }
    }
}

/// Parses a NIP-86 / CLI info field name.
pub fn info_field(name: &str) -> Option<InfoField> {
    match name {
        "name" => Some(InfoField::Name),
        "description" => Some(InfoField::Description),
        "icon" => Some(InfoField::Icon),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(adjust: impl FnOnce(&mut config::Access, &mut StoredLists)) -> AccessLists {
        let mut access = config::Access::default();
        let mut stored = StoredLists::default();
        adjust(&mut access, &mut stored);
        let seed = Seed::from_config(&access).unwrap();
        AccessLists::build(&Config::default(), &seed, stored)
    }

    fn event(pubkey: u8, kind: u16, p: Option<u8>) -> Event {
        Event {
            id: [9; 32],
            pubkey: [pubkey; 32],
            created_at: 0,
            kind,
            tags: p
                .map(|p| vec![vec!["p".to_owned(), hex::encode([p; 32])]])
                .unwrap_or_default(),
            content: String::new(),
            sig: [0; 64],
        }
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let net = Cidr::parse("10.1.2.3/8").unwrap();
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert!(net.contains("10.255.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert_eq!(
            Cidr::parse("127.0.0.1").unwrap().to_string(),
            "127.0.0.1/32"
        );
        let v6 = Cidr::parse("2001:db8::1/32").unwrap();
        assert_eq!(v6.to_string(), "2001:db8::/32");
        assert!(v6.contains("2001:db8:ffff::2".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0/8",
            "::/129",
            "x",
            "1.2.3.4/+8",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn bans_and_allow_lists() {
        let open = lists(|_, _| {});
        assert!(open.check(&event(1, 1, None), None).is_ok());
        let banned = lists(|_, s| s.banned_pubkeys.push(([1; 32], "spam".into())));
        assert!(
            banned
                .check(&event(1, 1, None), None)
                .unwrap_err()
                .starts_with("blocked:")
        );
        assert!(banned.check(&event(2, 1, None), None).is_ok());
        let members = lists(|a, _| a.allowed_pubkeys.push(hex::encode([1; 32])));
        assert!(members.check(&event(1, 1, None), None).is_ok());
        assert!(
            members.check(&event(2, 1, Some(1)), None).is_err(),
            "not an inbox"
        );
        let inbox = lists(|a, _| {
            a.allowed_pubkeys.push(hex::encode([1; 32]));
            a.inbox = true;
        });
        assert!(inbox.check(&event(2, 1, Some(1)), None).is_ok());
        assert!(inbox.check(&event(2, 1, Some(3)), None).is_err());
        assert!(inbox.check(&event(2, 1, None), None).is_err());
    }

    #[test]
    fn kinds_ips_events_and_vanish() {
        let l = lists(|a, s| {
            a.allowed_kinds = vec![1, 7];
            s.disallowed_kinds.push(7);
            a.denied_ips.push("192.0.2.0/24".into());
            s.banned_events.push(([9; 32], String::new()));
            s.banned_pubkeys.push(([5; 32], String::new()));
        });
        assert_eq!(l.effective_allowed_kinds(), vec![1]);
        let mut note = event(1, 1, None);
        assert!(l.check(&note, None).unwrap_err().contains("banned"));
        note.id = [8; 32];
        assert!(l.check(&note, None).is_ok());
        assert!(l.check(&note, Some("192.0.2.7".parse().unwrap())).is_err());
        assert!(l.check(&note, Some("192.0.3.7".parse().unwrap())).is_ok());
        let mut reaction = event(1, 7, None);
        reaction.id = [8; 32];
        assert!(l.check(&reaction, None).unwrap_err().contains("kind 7"));
        // NIP-62: always through, even banned, from a blocked address.
        let vanish = event(5, kind::REQUEST_TO_VANISH, None);
        assert!(l.check(&vanish, Some("192.0.2.7".parse().unwrap())).is_ok());
    }

    #[test]
    fn seed_entries_cannot_be_lifted_at_run_time() {
        let seed = Seed::from_config(&config::Access {
            denied_pubkeys: vec![hex::encode([1; 32])],
            denied_ips: vec!["10.0.0.1".into()],
            ..config::Access::default()
        })
        .unwrap();
        assert!(seed.refusal(&Edit::UnbanPubkey([1; 32])).is_some());
        assert!(seed.refusal(&Edit::UnbanPubkey([2; 32])).is_none());
        assert!(
            seed.refusal(&Edit::UnblockIp("10.0.0.1/32".into()))
                .is_some()
        );
        let bad = config::Access {
            allowed_pubkeys: vec!["nope".into()],
            ..config::Access::default()
        };
        assert!(
            Seed::from_config(&bad)
                .unwrap_err()
                .contains("access.allowed_pubkeys")
        );
    }

    #[test]
    fn relay_toml_errors_name_the_key() {
        let mut config = Config::default();
        config.management.admins = vec!["npub1nope".into()];
        let error = config.validate().unwrap_err().0;
        assert!(error.contains("management.admins"), "{error}");
        let mut config = Config::default();
        config.access.denied_ips = vec!["10.0.0.0/40".into()];
        let error = config.validate().unwrap_err().0;
        assert!(error.contains("access.denied_ips"), "{error}");
        let mut config = Config::default();
        config.management.admins = vec![hex::encode([2; 32])];
        config.access.denied_pubkeys = vec![hex::encode([3; 32]).to_uppercase()];
        assert!(config.validate().is_ok());
        assert_eq!(config.admin_pubkeys(), vec![[2; 32]]);
    }

    #[test]
    fn overrides_reach_nip11() {
        let l = lists(|a, s| {
            s.info.push(("name".into(), "Renamed".into()));
            a.allowed_kinds.push(1);
        });
        let doc: serde_json::Value = serde_json::from_slice(&l.relay_info()).unwrap();
        assert_eq!(doc["name"], "Renamed");
        assert_eq!(doc["limitation"]["restricted_writes"], true);
        assert_eq!(l.config.info.name, "Renamed");
    }
}
