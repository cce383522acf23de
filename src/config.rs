//! `relay.toml` → [`Config`]: defaults for every key, environment overrides
//! for containers, and validation errors that name the offending key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable that overrides `listen` (host:port).
pub const ENV_LISTEN: &str = "NOSTR_RELAYD_LISTEN";
/// Environment variable that overrides `database` (a file path).
pub const ENV_DB: &str = "NOSTR_RELAYD_DB";
/// Overrides `storage.postgres_url`, so that a container's secret need not
/// be written into relay.toml.
pub const ENV_POSTGRES_URL: &str = "NOSTR_RELAYD_POSTGRES_URL";
/// Overrides `storage.postgres_replica_url`, as [`ENV_POSTGRES_URL`] does
/// the primary's.
pub const ENV_POSTGRES_REPLICA_URL: &str = "NOSTR_RELAYD_POSTGRES_REPLICA_URL";

/// Everything the relay can be told. Each field's default is the value
/// written in the shipped `relay.toml`; a test keeps the two in step.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on.
    pub listen: String,
    /// SQLite database file; its directory is created on first start.
    pub database: PathBuf,
    /// The relay's public URL (wss://…) as clients see it behind a proxy;
    /// empty: taken from each request's Host header.
    pub relay_url: String,
    /// Which log lines are written (`RUST_LOG` syntax: `info`,
    /// `info,nostr_relayd::connection=warn`, …). `RUST_LOG`, when set, wins
    /// at start; SIGHUP applies a changed value.
    pub log_level: String,
    /// PEM certificate chain (leaf first) for serving `wss://`/`https://`
    /// without a proxy; empty: plain `ws://`. Set with `tls_key` or not at all.
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert` (PKCS#8, RSA or SEC1); empty: no TLS.
    pub tls_key: PathBuf,
    pub auth: Auth,
    pub info: Info,
    pub limits: Limits,
    pub network: Network,
    pub storage: Storage,
    pub plugin: Plugin,
    pub rate_limit: RateLimit,
    pub management: Management,
    pub access: Access,
    pub search: Search,
    pub negentropy: Negentropy,
    pub metrics: Metrics,
    pub retention: Retention,
    pub cluster: Cluster,
}

/// Several relay nodes behaving as one (`cluster/`): each node publishes
/// the events it accepts to NATS and delivers what the others publish to its
/// own live subscriptions. Needs `storage.backend = "postgres"`, the one
/// database every node reads and writes.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// The NATS server(s), comma-separated (`nats://host:4222`); empty: this
    /// relay is a single node and talks to no NATS at all.
    pub nats_url: String,
    /// Subjects are `<prefix>.events` and `<prefix>.heartbeat`: two
    /// clusters may share one NATS under different prefixes.
    pub subject_prefix: String,
    /// This node's name, unique in the cluster; it tags each event the node
    /// stores (for backfill after a missed message). Empty: the host name.
    pub node_name: String,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            nats_url: String::new(),
            subject_prefix: "nostr-relayd".into(),
            node_name: String::new(),
        }
    }
}

impl Cluster {
    /// Whether this relay is one node of a cluster.
    pub fn enabled(&self) -> bool {
        !self.nats_url.trim().is_empty()
    }
}

/// A connection URL without its user and password
/// (`postgres://u:p@host/db` → `postgres://host/db`); a key=value
/// connection string is not echoed at all.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(storage.postgres_url)".into();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let path = path.split('?').next().unwrap_or("");
    format!("{scheme}://{host}{path}")
}

/// Where the events live.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One file beside the relay: the default, and the fastest on one machine.
    Sqlite,
    /// A PostgreSQL database that several relay nodes may share.
    Postgres,
}

/// What the relay forgets, and when (`retention.rs`): rules by kind, a
/// size cap, and pubkeys never pruned. The default forgets nothing.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Pubkeys (hex or npub) whose events no rule and no size cap removes:
    /// the owner of a personal relay.
    pub exempt_pubkeys: Vec<String>,
    /// Evict the oldest evictable events while the data in the database
    /// (pages in use, free pages excluded) is above this many MiB; 0 = no cap.
    pub max_database_mb: u64,
    /// Seconds between two passes of the background task.
    pub interval_seconds: u64,
    /// Events deleted per write transaction, so that a pass never holds
    /// the writer for long.
    pub batch_size: usize,
    /// The rules; a kind is governed by the first rule that names it.
    pub rules: Vec<RetentionRule>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            exempt_pubkeys: Vec::new(),
            max_database_mb: 0,
            interval_seconds: 600,
            batch_size: 100,
            rules: Vec::new(),
        }
    }
}

/// One `[[retention.rules]]` table: which kinds, and how long or how many
/// of them are kept.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// Kind numbers and `"first-last"` ranges (strings), e.g. `[1, "30000-39999"]`.
    pub kinds: Vec<KindSelector>,
    /// Age after which an event goes: `"90d"`, `"1y"`, …; empty: no age limit.
    #[serde(default)]
    pub max_age: String,
    /// Keep only each author's newest N events of these kinds; 0: no limit.
    #[serde(default)]
    pub max_per_author: u64,
}

/// A kind as written in a rule: a number, or a string holding a number or
/// a `"first-last"` range (TOML arrays may mix the two).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum KindSelector {
    Kind(u16),
    Text(String),
}

/// Prometheus `/metrics`: on the relay's own port for loopback clients
/// only (a reverse proxy on the same host must not expose it), or on a
/// listener of its own for a Prometheus elsewhere.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    /// Serve `/metrics`; off: 404 (counting goes on: a few atomic adds).
    pub enabled: bool,
    /// Empty: `/metrics` on the relay's port, to loopback peers without
    /// proxy headers. An address (`127.0.0.1:9100`, `0.0.0.0:9100`): a
    /// plain-HTTP listener of its own serving `/metrics` and `/health` to
    /// whoever reaches it, and no `/metrics` on the relay's port.
    pub listen: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            enabled: true,
            listen: String::new(),
        }
    }
}

/// NIP-77 negentropy sync: `NEG-OPEN`, `NEG-MSG`, `NEG-CLOSE` on the
/// WebSocket. Each open session holds its records, (created_at, id), in
/// memory: at most `max_records` × 40 bytes.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Negentropy {
    /// Answer NEG-OPEN; off: `NEG-ERR "blocked: …"`.
    pub enabled: bool,
    /// Most records (events) one session may reconcile; a filter matching
    /// more is refused with `NEG-ERR "blocked: …"` naming this number.
    pub max_records: usize,
    /// Sessions open at once on one connection (a memory bound, enforced
    /// whatever `rate_limit.enabled` says).
    pub max_sessions: usize,
    /// Seconds without a NEG-MSG after which a session is closed
    /// (`NEG-ERR "closed: …"`).
    pub idle_seconds: u64,
    /// Largest negentropy message the relay sends, in bytes before hex
    /// encoding (a NEG-MSG frame is about twice as long); 0 = no limit,
    /// otherwise at least 4096.
    pub frame_size_limit: u64,
}

impl Default for Negentropy {
    fn default() -> Self {
        Negentropy {
            enabled: true,
            max_records: 500_000,
            max_sessions: 4,
            idle_seconds: 60,
            frame_size_limit: 60_000,
        }
    }
}

/// NIP-50 full-text search: a filter's `search` is answered from an FTS5
/// index over the text of these kinds (content; for kind 0 the profile's
/// name, display_name, about and nip05). Changing `kinds` or `enabled`
/// rebuilds (or drops) the index at the next start.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Search {
    /// Answer filters with `search`; off: they are refused with
    /// `CLOSED "unsupported: …"` and the index is emptied.
    pub enabled: bool,
    /// The kinds whose text is indexed; a search over other kinds finds
    /// nothing.
    pub kinds: Vec<u16>,
}

impl Default for Search {
    fn default() -> Self {
        Search {
            enabled: true,
            kinds: vec![0, 1, 30023],
        }
    }
}

impl Search {
    /// The kinds the index holds: sorted, none when search is off.
    pub fn indexed_kinds(&self) -> Vec<u16> {
        if !self.enabled {
            return Vec::new();
        }
        let mut kinds = self.kinds.clone();
        kinds.sort_unstable();
        kinds.dedup();
        kinds
    }
}

/// The NIP-86 management API: JSON-RPC over HTTP POST on the relay's URL,
/// authorized by NIP-98. On by default, since it is useless to anyone until
/// an operator names an admin (every request gets 401/403 before that).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Management {
    /// Answer `Content-Type: application/nostr+json+rpc` POSTs on `/`.
    pub enabled: bool,
    /// Pubkeys (64 hex characters or npub) allowed to call the API.
    pub admins: Vec<String>,
}

impl Default for Management {
    fn default() -> Self {
        Management {
            enabled: true,
            admins: Vec::new(),
        }
    }
}

/// Who may write: the read-only seed of the access lists (see `access`).
/// NIP-86 and the `admin` CLI add to these at run time, in the database;
/// what is listed here cannot be lifted there.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Access {
    /// When non-empty, only these pubkeys (hex or npub) may write.
    pub allowed_pubkeys: Vec<String>,
    /// These pubkeys (hex or npub) may never write.
    pub denied_pubkeys: Vec<String>,
    /// Inbox relay: with a non-empty allow list, anyone may also write
    /// events that p-tag an allowed pubkey.
    pub inbox: bool,
    /// When non-empty, only these kinds are accepted.
    pub allowed_kinds: Vec<u16>,
    /// These kinds are refused (this list wins over `allowed_kinds`).
    pub denied_kinds: Vec<u16>,
    /// Addresses or CIDR ranges whose connections are closed on accept.
    pub denied_ips: Vec<String>,
}

/// The NIP-11 relay information document. Empty strings mean "not set" and
/// are left out of the document.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Info {
    pub name: String,
    pub description: String,
    /// Administrator's pubkey (64 hex characters).
    pub pubkey: String,
    pub contact: String,
    pub icon: String,
    pub banner: String,
    /// The relay's own pubkey (NIP-11 `self`).
    #[serde(rename = "self")]
    pub self_pubkey: String,
    pub terms_of_service: String,
    pub posting_policy: String,
}

/// NIP-42 authentication and the reads and writes it guards.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// Challenge every connection and accept `AUTH` replies.
    pub enabled: bool,
    /// Refuse EVENTs from unauthenticated connections.
    pub required_for_write: bool,
    /// Refuse REQs (and COUNTs) from unauthenticated connections.
    pub required_for_read: bool,
    /// Kinds readable only by their author or a `p`-tagged pubkey.
    pub private_kinds: Vec<u16>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            enabled: true,
            required_for_write: false,
            required_for_read: false,
            private_kinds: vec![4, 1059],
        }
    }
}

/// Limits on what clients may send; each one advertised in NIP-11 where the
/// NIP has a field for it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_message_length: usize,
    pub max_subscriptions: usize,
    pub max_filters: usize,
    /// Longest list in one filter (ids, authors, kinds, one tag's values).
    pub max_filter_values: usize,
    /// Tag values over every tag condition of one REQ.
    pub max_tag_values: usize,
    pub max_limit: u64,
    pub default_limit: u64,
    pub max_subid_length: usize,
    pub max_event_tags: usize,
    pub max_content_length: usize,
    /// Seconds into the past an event's created_at may lie; 0 means no limit.
    pub created_at_lower_limit: u64,
    /// Seconds into the future an event's created_at may lie; 0 means no limit.
    pub created_at_upper_limit: u64,
    /// NIP-13: leading zero bits required of an event id; 0 = none.
    pub min_pow_difficulty: u8,
}

/// Connection handling.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    pub max_connections: usize,
    pub ping_interval_seconds: u64,
    pub send_queue_events: usize,
    pub max_events_in_flight: usize,
    /// Peers (addresses or CIDR ranges) whose `X-Forwarded-For` or
    /// `X-Real-IP` header names the client: the reverse proxies in front.
    pub trusted_proxies: Vec<String>,
    /// Bind with `SO_REUSEPORT`, so that a second relay (a new version) can
    /// listen on the same port while this one drains: an upgrade without
    /// refused connections.
    pub reuse_port: bool,
    /// Seconds a stop (SIGTERM, SIGINT) waits for open connections to get
    /// their last answers and close before they are dropped.
    pub shutdown_timeout_seconds: u64,
}

/// Limits on how fast one client may go. Every refusal caused by load is
/// `rate-limited:`; addresses are never banned automatically.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    /// Turns every limit below on or off.
    pub enabled: bool,
    /// Addresses or CIDR ranges never limited (the operator's own tools).
    pub exempt: Vec<String>,
    /// New WebSocket connections per client address per minute; 0 = no limit.
    pub connections_per_minute: u32,
    /// WebSocket connections open at once per client address; 0 = no limit.
    pub max_connections_per_address: usize,
    /// EVENTs per client address per minute; 0 = no limit.
    pub events_per_minute: u32,
    /// REQs per client address per minute; 0 = no limit.
    pub reqs_per_minute: u32,
    /// EVENTs per minute by an authenticated author; 0 = no limit.
    pub events_per_minute_per_pubkey: u32,
    /// Stored queries running at once on one connection; 0 = no limit.
    pub max_concurrent_queries: usize,
    /// Refusals within a minute after which the connection is closed.
    pub max_refusals_per_minute: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            enabled: true,
            exempt: vec!["127.0.0.1".into(), "::1".into()],
            connections_per_minute: 60,
            max_connections_per_address: 100,
            events_per_minute: 300,
            reqs_per_minute: 600,
            events_per_minute_per_pubkey: 120,
            max_concurrent_queries: 8,
            max_refusals_per_minute: 60,
        }
    }
}

/// SQLite storage.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// "sqlite" (the file `database`) or "postgres" (`postgres_url`).
    pub backend: Backend,
    /// libpq-style URL of the PostgreSQL database
    /// (`postgres://user:password@host:5432/nostr`), for the "postgres"
    /// backend; `NOSTR_RELAYD_POSTGRES_URL` overrides it.
    pub postgres_url: String,
    /// A streaming replica of that database for the clients' reads (REQ,
    /// COUNT, NIP-50, NIP-77), taking them off the primary; "" = read from
    /// the primary. Writes, checks and the cluster's backfill stay on the
    /// primary. `NOSTR_RELAYD_POSTGRES_REPLICA_URL` overrides it.
    pub postgres_replica_url: String,
    /// Connections to PostgreSQL for reads (REQ, COUNT, checks); the writer
    /// holds one more of its own. With a replica, as many again to it.
    pub postgres_pool_size: usize,
    /// "normal": a commit survives a crash of the relay process.
    /// "full": fsync at every group commit; it also survives power loss.
    pub durability: Durability,
    pub reader_threads: usize,
    pub verify_threads: usize,
    pub query_timeout_ms: u64,
    pub max_write_batch: usize,
    pub expiration_sweep_seconds: u64,
    /// Largest size of the database file in bytes; 0 means no cap. Writes
    /// past it are refused with `OK false "error: …"` until space is freed
    /// (deletions, expiry), never half-done.
    pub max_database_bytes: u64,
}

/// The write-policy plugin: an external program, speaking strfry's plugin
/// protocol, that accepts or rejects each event that passed every other
/// check. Operators keep their site rules (whitelists, spam filters) out of
/// the relay, and strfry plugins run unchanged.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Plugin {
    /// The program and its arguments, split on whitespace and run without a
    /// shell (no quoting, no variables: wrap anything fancier in a script).
    /// Empty: no plugin. Every word that names an existing file is watched,
    /// and the plugin is restarted when one of them changes.
    pub command: String,
    /// Milliseconds an event may wait for the plugin's answer before the
    /// failure policy decides it; a plugin that answered nothing at all in
    /// that time is considered hung, killed and restarted.
    pub timeout_ms: u64,
    /// What an event gets while the plugin cannot answer (timed out,
    /// crashed, restarting): "reject" (fail closed) or "accept" (fail open).
    pub on_failure: OnFailure,
}

/// The answer given in the plugin's place when it cannot answer.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Fail closed: `OK false "error: …"`, so that a broken plugin never
    /// lets through what it was installed to keep out.
    Reject,
    /// Fail open: the event is accepted as if the plugin had said so, for
    /// plugins that only trim spam and must not take the relay down.
    Accept,
}

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Normal,
    Full,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7777".into(),
            database: PathBuf::from("./data/nostr-relayd.sqlite"),
            relay_url: String::new(),
            log_level: crate::logging::DEFAULT_FILTER.into(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            auth: Auth::default(),
            info: Info {
                name: "nostr-relayd".into(),
                description: "A Nostr relay.".into(),
                ..Info::default()
            },
            limits: Limits::default(),
            network: Network::default(),
            storage: Storage::default(),
            plugin: Plugin::default(),
            rate_limit: RateLimit::default(),
            management: Management::default(),
            access: Access::default(),
            search: Search::default(),
            negentropy: Negentropy::default(),
            metrics: Metrics::default(),
            retention: Retention::default(),
            cluster: Cluster::default(),
        }
    }
}

impl Default for Plugin {
    fn default() -> Self {
        Plugin {
            command: String::new(),
            timeout_ms: 2000,
            on_failure: OnFailure::Reject,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_length: 262_144,
            max_subscriptions: 32,
            max_filters: 16,
            max_filter_values: 1000,
            max_tag_values: 1000,
            max_limit: 1000,
            default_limit: 500,
            max_subid_length: 64,
            max_event_tags: 2500,
            max_content_length: 102_400,
            created_at_lower_limit: 0,
            created_at_upper_limit: 900,
            min_pow_difficulty: 0,
        }
    }
}

impl Default for Network {
    fn default() -> Self {
        Network {
            max_connections: 10_000,
            ping_interval_seconds: 30,
            send_queue_events: 2048,
            max_events_in_flight: 64,
            trusted_proxies: vec!["127.0.0.1".into(), "::1".into()],
            reuse_port: false,
            shutdown_timeout_seconds: 10,
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            backend: Backend::Sqlite,
            postgres_url: String::new(),
            postgres_replica_url: String::new(),
            postgres_pool_size: 16,
            durability: Durability::Normal,
            reader_threads: 6,
            verify_threads: 0,
            query_timeout_ms: 5000,
            max_write_batch: 1024,
            expiration_sweep_seconds: 60,
            max_database_bytes: 0,
        }
    }
}

/// A configuration that cannot be used, naming the key at fault.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads `path` and applies the environment overrides. A missing file is
    /// an error: a typo in `--config` must not silently start with defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let mut config = Config::from_toml(&text)
            .map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))?;
        config.apply_env(|name| std::env::var(name).ok());
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text; keys left out keep their defaults.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(e.to_string()))
    }

    /// The configuration as TOML, every key written out: what
    /// `check-config` prints, and a file that loads as this same config.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError(format!("cannot write as TOML: {e}")))
    }

    /// Applies `NOSTR_RELAYD_LISTEN`, `NOSTR_RELAYD_DB` and
    /// `NOSTR_RELAYD_POSTGRES_URL`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        if let Some(listen) = var(ENV_LISTEN).filter(|v| !v.is_empty()) {
            self.listen = listen;
        }
        if let Some(db) = var(ENV_DB).filter(|v| !v.is_empty()) {
            self.database = PathBuf::from(db);
        }
        if let Some(url) = var(ENV_POSTGRES_URL).filter(|v| !v.is_empty()) {
            self.storage.postgres_url = url;
        }
        if let Some(url) = var(ENV_POSTGRES_REPLICA_URL).filter(|v| !v.is_empty()) {
            self.storage.postgres_replica_url = url;
        }
    }

    /// The listen address, parsed.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|e| {
            ConfigError(format!(
                "listen: {:?} is not an address:port ({e})",
                self.listen
            ))
        })
    }

    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        let fail = |key: &str, why: &str| Err(ConfigError(format!("{key}: {why}")));
        if let Err(why) = crate::logging::parse_filter(&self.log_level) {
            return fail("log_level", &why);
        }
        self.validate_backend()?;
        let hex_or_empty = |v: &str| v.is_empty() || crate::nostr::hex::is_hex32(v);
        if !hex_or_empty(&self.info.pubkey) {
            return fail(
                "info.pubkey",
                "must be 64 lowercase hex characters or empty",
            );
        }
        if !hex_or_empty(&self.info.self_pubkey) {
            return fail("info.self", "must be 64 lowercase hex characters or empty");
        }
        if !self.relay_url.is_empty()
            && crate::nostr::relay_url::RelayUrl::parse(&self.relay_url).is_none()
        {
            return fail("relay_url", "must be a ws:// or wss:// URL, or empty");
        }
        match (
            self.tls_cert.as_os_str().is_empty(),
            self.tls_key.as_os_str().is_empty(),
        ) {
            (false, true) => return fail("tls_key", "must be set when tls_cert is"),
            (true, false) => return fail("tls_cert", "must be set when tls_key is"),
            _ => {}
        }
        if (self.auth.required_for_read || self.auth.required_for_write) && !self.auth.enabled {
            return fail(
                "auth.enabled",
                "must be true when auth.required_for_read or auth.required_for_write is",
            );
        }
        for (key, list) in [
            ("network.trusted_proxies", &self.network.trusted_proxies),
            ("rate_limit.exempt", &self.rate_limit.exempt),
        ] {
            if let Some(bad) = list
                .iter()
                .find(|entry| crate::access::Cidr::parse(entry).is_none())
            {
                return Err(ConfigError(format!(
                    "{key}: {bad:?} is not an IP address or CIDR range"
                )));
            }
        }
        let l = &self.limits;
        if l.max_message_length < 1024 {
            return fail("limits.max_message_length", "must be at least 1024");
        }
        if l.max_subscriptions == 0 {
            return fail("limits.max_subscriptions", "must be at least 1");
        }
        if l.max_filter_values == 0 {
            return fail("limits.max_filter_values", "must be at least 1");
        }
        if l.max_tag_values == 0 {
            return fail("limits.max_tag_values", "must be at least 1");
        }
        if l.max_filters == 0 {
            return fail("limits.max_filters", "must be at least 1");
        }
        if l.default_limit > l.max_limit {
            return fail("limits.default_limit", "must not exceed limits.max_limit");
        }
        if l.max_subid_length == 0 {
            return fail("limits.max_subid_length", "must be at least 1");
        }
        let n = &self.network;
        if n.max_connections == 0 {
            return fail("network.max_connections", "must be at least 1");
        }
        if n.send_queue_events == 0 {
            return fail("network.send_queue_events", "must be at least 1");
        }
        if n.max_events_in_flight == 0 {
            return fail("network.max_events_in_flight", "must be at least 1");
        }
        let s = &self.storage;
        if s.reader_threads == 0 {
            return fail("storage.reader_threads", "must be at least 1");
        }
        if s.max_write_batch == 0 {
            return fail("storage.max_write_batch", "must be at least 1");
        }
        if s.query_timeout_ms == 0 {
            return fail("storage.query_timeout_ms", "must be at least 1");
        }
        if s.expiration_sweep_seconds == 0 {
            return fail("storage.expiration_sweep_seconds", "must be at least 1");
        }
        if self.plugin.timeout_ms == 0 {
            return fail("plugin.timeout_ms", "must be at least 1");
        }
        let neg = &self.negentropy;
        if neg.max_records == 0 {
            return fail("negentropy.max_records", "must be at least 1");
        }
        if neg.max_sessions == 0 {
            return fail("negentropy.max_sessions", "must be at least 1");
        }
        if neg.idle_seconds == 0 {
            return fail("negentropy.idle_seconds", "must be at least 1");
        }
        if neg.frame_size_limit != 0 && neg.frame_size_limit < 4096 {
            return fail(
                "negentropy.frame_size_limit",
                "must be 0 (no limit) or at least 4096",
            );
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<SocketAddr>().is_err() {
            return fail(
                "metrics.listen",
                "must be empty (the relay's port, loopback only) or an address:port",
            );
        }
        self.validate_access()?;
        crate::retention::Policy::from_config(&self.retention, self.storage.max_database_bytes)
            .map_err(ConfigError)?;
        Ok(())
    }

    /// `[management]` and `[access]`: every key and range must parse.
    /// The storage backend and the cluster settings fit together.
    fn validate_backend(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, why: &str| Err(ConfigError(format!("{key}: {why}")));
        let postgres = self.storage.backend == Backend::Postgres;
        if postgres && self.storage.postgres_url.trim().is_empty() {
            return fail(
                "storage.postgres_url",
                "must be set when storage.backend is \"postgres\" (or set NOSTR_RELAYD_POSTGRES_URL)",
            );
        }
        if !postgres && !self.storage.postgres_replica_url.trim().is_empty() {
            return fail(
                "storage.postgres_replica_url",
                "is for storage.backend = \"postgres\": SQLite has no replicas",
            );
        }
        if postgres && self.storage.postgres_pool_size == 0 {
            return fail("storage.postgres_pool_size", "must be at least 1");
        }
        if postgres && self.storage.max_database_bytes > 0 {
            return fail(
                "storage.max_database_bytes",
                "caps the SQLite file only; with PostgreSQL, use retention.max_database_mb \
                 (evicts the oldest events) and the database server's own disk monitoring",
            );
        }
        if self.cluster.enabled() && !postgres {
            return fail(
                "cluster.nats_url",
                "a cluster needs storage.backend = \"postgres\": every node must read and write one database",
            );
        }
        if self.cluster.subject_prefix.is_empty()
            || self
                .cluster
                .subject_prefix
                .contains(|c: char| c.is_whitespace() || c == '*' || c == '>')
        {
            return fail(
                "cluster.subject_prefix",
                "must be a NATS subject without spaces or wildcards",
            );
        }
        if self.cluster.node_name.contains(|c: char| c.is_whitespace()) {
            return fail("cluster.node_name", "must not contain spaces");
        }
        Ok(())
    }

    /// Where the events are, for messages: the SQLite file, or the
    /// PostgreSQL server and database without the credentials.
    pub fn database_label(&self) -> String {
        match self.storage.backend {
            Backend::Sqlite => format!("database {}", self.database.display()),
            Backend::Postgres if self.storage.postgres_replica_url.trim().is_empty() => format!(
                "PostgreSQL database {}",
                redact_url(&self.storage.postgres_url)
            ),
            Backend::Postgres => format!(
                "PostgreSQL database {} (clients' reads from {})",
                redact_url(&self.storage.postgres_url),
                redact_url(&self.storage.postgres_replica_url)
            ),
        }
    }

    /// This node's name in a cluster (and on the events it stores in
    /// PostgreSQL): `cluster.node_name`, else the host name.
    pub fn node_name(&self) -> String {
        if !self.cluster.node_name.is_empty() {
            return self.cluster.node_name.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|n| !n.is_empty()))
            .unwrap_or_else(|| "node".into())
    }

    fn validate_access(&self) -> Result<(), ConfigError> {
        if let Some(bad) = self
            .management
            .admins
            .iter()
            .find(|a| crate::nostr::nip19::parse_pubkey(a).is_none())
        {
            return Err(ConfigError(format!(
                "management.admins: {bad:?} is not a pubkey (64 hex characters or npub)"
            )));
        }
        crate::access::Seed::from_config(&self.access).map_err(ConfigError)?;
        Ok(())
    }

    /// The `management.admins` keys, decoded (validated at load).
    pub fn admin_pubkeys(&self) -> Vec<[u8; 32]> {
        self.management
            .admins
            .iter()
            .filter_map(|a| crate::nostr::nip19::parse_pubkey(a))
            .collect()
    }

    /// Event-checking threads (duplicate look-up, policy, signature): the
    /// configured number, or one per core.
    pub fn verify_threads(&self) -> usize {
        match self.storage.verify_threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_url_is_shown_without_its_credentials() {
        assert_eq!(
            redact_url("postgres://relay:s3cret@db.internal:5432/nostr?sslmode=require"),
            "postgres://db.internal:5432/nostr"
        );
        assert_eq!(
            redact_url("postgres://localhost/nostr"),
            "postgres://localhost/nostr"
        );
        assert_eq!(
            redact_url("host=db password=s3cret dbname=nostr"),
            "(storage.postgres_url)"
        );
    }

    #[test]
    fn a_cluster_needs_postgres() {
        let mut config = Config::default();
        config.cluster.nats_url = "nats://127.0.0.1:4222".into();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.starts_with("cluster.nats_url:"), "{error}");
        config.storage.backend = Backend::Postgres;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.starts_with("storage.postgres_url:"), "{error}");
        config.storage.postgres_url = "postgres://localhost/nostr".into();
        config.validate().unwrap();
    }

    #[test]
    fn a_replica_is_for_postgres_and_comes_from_the_environment_too() {
        let mut config = Config::default();
        config.storage.postgres_replica_url = "postgres://replica/nostr".into();
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.starts_with("storage.postgres_replica_url:"),
            "{error}"
        );
        config.storage.backend = Backend::Postgres;
        config.storage.postgres_url = "postgres://u:secret@primary/nostr".into();
        config.validate().unwrap();
        assert_eq!(
            config.database_label(),
            "PostgreSQL database postgres://primary/nostr \
             (clients' reads from postgres://replica/nostr)"
        );
        config.apply_env(|name| {
            (name == ENV_POSTGRES_REPLICA_URL).then(|| "postgres://other/nostr".to_owned())
        });
        assert_eq!(
            config.storage.postgres_replica_url,
            "postgres://other/nostr"
        );
    }

    #[test]
    fn postgres_takes_retention_rules_and_the_size_cap_but_not_the_file_cap() {
        let mut config = Config::default();
        config.storage.backend = Backend::Postgres;
        config.storage.postgres_url = "postgres://localhost/nostr".into();
        config.retention.rules = vec![RetentionRule {
            kinds: vec![KindSelector::Kind(7)],
            max_age: "90d".into(),
            max_per_author: 0,
        }];
        config.retention.max_database_mb = 100;
        config.validate().unwrap();
        config.storage.max_database_bytes = 1 << 30;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.starts_with("storage.max_database_bytes:"), "{error}");
        assert!(error.contains("retention.max_database_mb"), "{error}");
    }

    #[test]
    fn shipped_relay_toml_equals_the_defaults() {
        let text = include_str!("../relay.toml");
        let parsed = Config::from_toml(text).expect("relay.toml parses");
        assert_eq!(parsed, Config::default());
        // Every key is active: nothing is commented out.
        for line in text.lines() {
            if let Some(comment) = line.trim_start().strip_prefix('#') {
                let commented_key = comment.trim().split_once(" = ").is_some_and(|(key, _)| {
                    !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                });
                assert!(!commented_key, "commented-out key in relay.toml: {line}");
            }
        }
    }

    #[test]
    fn the_toml_written_loads_as_the_same_config() {
        let mut config = Config::default();
        config.info.self_pubkey = "ab".repeat(32);
        config.storage.durability = Durability::Full;
        let text = config.to_toml().unwrap();
        assert_eq!(Config::from_toml(&text).unwrap(), config, "{text}");
    }

    #[test]
    fn metrics_listen_is_empty_or_an_address() {
        for listen in ["", "127.0.0.1:9100", "0.0.0.0:9100", "[::1]:9100"] {
            let config = Config::from_toml(&format!("[metrics]\nlisten = {listen:?}\n")).unwrap();
            assert!(config.validate().is_ok(), "{listen}");
        }
        let config = Config::from_toml("[metrics]\nlisten = \"localhost\"\n").unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .0
                .starts_with("metrics.listen:")
        );
    }

    #[test]
    fn env_overrides_the_file() {
        let mut config = Config::default();
        config.apply_env(|name| match name {
            ENV_LISTEN => Some("0.0.0.0:8080".into()),
            ENV_DB => Some("/data/x.sqlite".into()),
            _ => None,
        });
        assert_eq!(config.listen, "0.0.0.0:8080");
        assert_eq!(config.database, PathBuf::from("/data/x.sqlite"));
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::from_toml("[limits]\nmax_limitt = 5\n").unwrap_err();
        assert!(err.0.contains("max_limitt"), "{err}");
        let mut config = Config::default();
        config.limits.default_limit = config.limits.max_limit + 1;
        assert!(
            config
                .validate()
                .unwrap_err()
                .0
                .contains("limits.default_limit")
        );
        let config = Config {
            listen: "nope".into(),
            ..Config::default()
        };
        assert!(config.validate().unwrap_err().0.contains("listen"));
    }

    #[test]
    fn tls_needs_both_files_or_neither() {
        let both = Config::from_toml("tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n").unwrap();
        assert!(both.validate().is_ok());
        let cert_only = Config::from_toml("tls_cert = \"/c.pem\"\n").unwrap();
        assert!(cert_only.validate().unwrap_err().0.starts_with("tls_key:"));
        let key_only = Config::from_toml("tls_key = \"/k.pem\"\n").unwrap();
        assert!(key_only.validate().unwrap_err().0.starts_with("tls_cert:"));
    }

    #[test]
    fn the_plugin_section_is_checked() {
        let config = Config::from_toml(
            "[plugin]\ncommand = \"/opt/p.py --strict\"\ntimeout_ms = 50\non_failure = \"accept\"\n",
        )
        .unwrap();
        assert_eq!(config.plugin.on_failure, OnFailure::Accept);
        assert_eq!(config.plugin.timeout_ms, 50);
        let err = Config::from_toml("[plugin]\non_failure = \"maybe\"\n").unwrap_err();
        assert!(err.0.contains("on_failure"), "{err}");
        let mut config = Config::default();
        config.plugin.timeout_ms = 0;
        assert!(
            config
                .validate()
                .unwrap_err()
                .0
                .contains("plugin.timeout_ms")
        );
    }
}
