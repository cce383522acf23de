//! Retention: what the relay forgets, and when (`[retention]` in relay.toml).
//!
//! Rules by kind say how long (`max_age`) or how many per author
//! (`max_per_author`) events are kept; a size cap evicts the oldest
//! evictable events while the data in the database is above it; exempt
//! pubkeys are never touched. A kind is governed by the first rule that
//! names it, so rules never compete for an event, and kind 62 (the NIP-62
//! record that keeps a vanished author's events out) by none.
//!
//! A pass applies every rule in order, then the size cap, as a series of
//! bounded writer jobs ([`Store::prune`]): each batch is one short
//! transaction, and the relay's own writes go on between them. What a
//! pass will delete is planned by a [`Planner`] (the kinds stored, the
//! authors over a limit): a read connection of its own on SQLite, the
//! store's pool on PostgreSQL, never the writer. The size cap measures
//! SQLite's pages in use, and PostgreSQL's stored JSON (its files keep a
//! deleted row's space, so their size would never come down). The background
//! task runs a pass every `interval_seconds`; `nostr-relayd prune` runs
//! one, or with `--dry-run` counts what one would delete without deleting.
//!
//! Pruning is not deletion in the NIP-09 sense: nothing remembers a pruned
//! event, so one sent again is stored again, and pruned again.

use std::fmt;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::config::{self, Backend, Config, KindSelector};
use crate::nostr::kind;
use crate::nostr::nip19::parse_pubkey;
use crate::shutdown::Shutdown;
use crate::store::maintenance::human_bytes;
use crate::store::postgres::PgStore;
use crate::store::retention::{self as sql, Doomed, PruneJob, Span};
use crate::store::{self, Store, StoreError, StoreOptions, unix_now};

/// When the background task's first pass runs, at the latest.
const FIRST_PASS_AFTER: Duration = Duration::from_secs(60);

/// Authors handed to the writer in one [`Doomed::BeyondNewest`] job.
const AUTHORS_PER_JOB: usize = 64;

/// The `[retention]` section, parsed and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Never pruned, by any rule or the size cap.
    pub exempt: Vec<[u8; 32]>,
    /// Bytes of data past which the oldest evictable events go; 0 = none.
    pub size_cap: u64,
    pub interval: Duration,
    pub batch_size: usize,
    pub rules: Vec<Rule>,
}

/// One rule: the kinds it names and what it keeps of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Kind ranges as written (a single kind is a range of one).
    pub kinds: Vec<RangeInclusive<u16>>,
    /// Seconds after which an event goes.
    pub max_age: Option<u64>,
    /// Each author's newest N are kept.
    pub max_per_author: Option<u64>,
}

impl Rule {
    fn names(&self, kind: u16) -> bool {
        self.kinds.iter().any(|range| range.contains(&kind))
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<String> = self
            .kinds
            .iter()
            .map(|r| {
                if r.start() == r.end() {
                    r.start().to_string()
                } else {
                    format!("{}-{}", r.start(), r.end())
                }
            })
            .collect();
        write!(f, "kinds {}", kinds.join(", "))?;
        if let Some(age) = self.max_age {
            write!(f, "; max_age {}", format_age(age))?;
        }
        if let Some(keep) = self.max_per_author {
            write!(f, "; max_per_author {keep}")?;
        }
        Ok(())
    }
}

impl Policy {
    /// Parses and checks `[retention]`; errors name the key.
    /// `hard_cap`: `storage.max_database_bytes`, which the size cap must
    /// stay below (past it writes are refused, so eviction would come too
    /// late).
    pub fn from_config(section: &config::Retention, hard_cap: u64) -> Result<Policy, String> {
        let mut exempt = Vec::with_capacity(section.exempt_pubkeys.len());
        for text in &section.exempt_pubkeys {
            exempt.push(parse_pubkey(text).ok_or_else(|| {
                format!(
                    "retention.exempt_pubkeys: {text:?} is not a pubkey (64 hex characters or npub)"
                )
            })?);
        }
        exempt.sort_unstable();
        exempt.dedup();
        let size_cap = section.max_database_mb.saturating_mul(1 << 20);
        if size_cap > 0 && hard_cap > 0 && size_cap >= hard_cap {
            return Err(format!(
                "retention.max_database_mb: {} MiB is not below storage.max_database_bytes \
                 ({hard_cap} bytes), past which writes are refused before anything is evicted",
                section.max_database_mb
            ));
        }
        if section.interval_seconds == 0 {
            return Err("retention.interval_seconds: must be at least 1".into());
        }
        if section.batch_size == 0 {
            return Err("retention.batch_size: must be at least 1".into());
        }
        let rules = section
            .rules
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                parse_rule(rule)
                    .map_err(|why| format!("retention.rules (rule {}): {why}", index + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            exempt,
            size_cap,
            interval: Duration::from_secs(section.interval_seconds),
            batch_size: section.batch_size,
            rules,
        })
    }

    /// Whether there is anything to do at all.
    pub fn is_active(&self) -> bool {
        !self.rules.is_empty() || self.size_cap > 0
    }

    /// The index of the rule that governs `kind`: the first naming it.
    /// None for kind 62, whatever the rules say.
    pub fn rule_for(&self, kind: u16) -> Option<usize> {
        if kind == kind::REQUEST_TO_VANISH {
            return None;
        }
        self.rules.iter().position(|rule| rule.names(kind))
    }

    /// The stored kinds each rule governs, in rule order.
    fn governed(&self, stored: &[u16]) -> Vec<Vec<u16>> {
        let mut governed = vec![Vec::new(); self.rules.len()];
        for &kind in stored {
            if let Some(index) = self.rule_for(kind) {
                governed[index].push(kind);
            }
        }
        governed
    }
}

fn parse_rule(rule: &config::RetentionRule) -> Result<Rule, String> {
    if rule.kinds.is_empty() {
        return Err("kinds: must name at least one kind".into());
    }
    let mut kinds = Vec::with_capacity(rule.kinds.len());
    for selector in &rule.kinds {
        let range = match selector {
            KindSelector::Kind(kind) => *kind..=*kind,
            KindSelector::Text(text) => parse_kind_range(text).ok_or_else(|| {
                format!("kinds: {text:?} is not a kind or a \"first-last\" range of kinds")
            })?,
        };
        if range == (kind::REQUEST_TO_VANISH..=kind::REQUEST_TO_VANISH) {
            return Err(
                "kinds: kind 62 (NIP-62 requests to vanish) is never pruned: they are the \
                 record that keeps a vanished author's events out"
                    .into(),
            );
        }
        kinds.push(range);
    }
    let max_age = match rule.max_age.trim() {
        "" => None,
        text => Some(parse_age(text).ok_or_else(|| {
            format!(
                "max_age: {text:?} is not a duration (a number above 0 and a unit: s, h, d, w or \
                 y, as in \"90d\" or \"1y\")"
            )
        })?),
    };
    let max_per_author = (rule.max_per_author > 0).then_some(rule.max_per_author);
    if max_age.is_none() && max_per_author.is_none() {
        return Err("needs max_age, max_per_author or both".into());
    }
    Ok(Rule {
        kinds,
        max_age,
        max_per_author,
    })
}

/// `"7"` or `"30000-39999"`.
fn parse_kind_range(text: &str) -> Option<RangeInclusive<u16>> {
    let text = text.trim();
    let (first, last) = text.split_once('-').unwrap_or((text, text));
    let (first, last) = (
        first.trim().parse::<u16>().ok()?,
        last.trim().parse::<u16>().ok()?,
    );
    (first <= last).then_some(first..=last)
}

/// Seconds in each unit `max_age` may use. No months (30 or 31 days?), and
/// no minutes, so that "m" cannot be misread.
const AGE_UNITS: [(char, u64); 5] = [
    ('s', 1),
    ('h', 3600),
    ('d', 86_400),
    ('w', 7 * 86_400),
    ('y', 365 * 86_400),
];

/// `"90d"` → seconds; None for anything else (zero included).
fn parse_age(text: &str) -> Option<u64> {
    let unit = text.chars().last()?;
    let (_, seconds) = AGE_UNITS.iter().find(|(u, _)| *u == unit)?;
    let number: u64 = text[..text.len() - 1].trim().parse().ok()?;
    (number > 0).then(|| number.checked_mul(*seconds))?
}

/// Seconds back as the largest whole unit: 31536000 → "1y".
fn format_age(seconds: u64) -> String {
    AGE_UNITS
        .iter()
        .rev()
        .find(|(_, size)| seconds.is_multiple_of(*size))
        .map_or_else(
            || format!("{seconds}s"),
            |(unit, size)| format!("{}{unit}", seconds / size),
        )
}

/// What a pass deleted, or a dry run would.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub dry_run: bool,
    /// Per rule, in order.
    pub rules: Vec<(Rule, Span)>,
    pub size_cap: Option<CapReport>,
    pub elapsed: Duration,
}

/// The size cap's part of a pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapReport {
    pub cap: u64,
    /// Data in the database after the rules (a dry run: an estimate).
    pub used_before: u64,
    /// Data in the database at the end (a dry run: an estimate).
    pub used_after: u64,
    pub evicted: Span,
    /// Past the cap with nothing evictable left: only protected kinds and
    /// exempt pubkeys remain (or, in a dry run, it looks that way).
    pub nothing_left: bool,
}

impl Report {
    /// Events deleted (or that would be), rules and size cap together.
    pub fn total(&self) -> u64 {
        self.rules.iter().map(|(_, span)| span.count).sum::<u64>()
            + self.size_cap.map_or(0, |cap| cap.evicted.count)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would prune"
        } else {
            "pruned"
        };
        let about = if self.dry_run { "about " } else { "" };
        for (index, (rule, span)) in self.rules.iter().enumerate() {
            writeln!(
                f,
                "rule {} ({rule}): {verb} {}{}",
                index + 1,
                span.count,
                span_text(span)
            )?;
        }
        match self.size_cap {
            None => writeln!(f, "size cap: none")?,
            Some(cap) => {
                write!(
                    f,
                    "size cap {}: {}{} in use after the rules; ",
                    human_bytes(cap.cap),
                    about,
                    human_bytes(cap.used_before)
                )?;
                if cap.evicted.count == 0 && !cap.nothing_left {
                    writeln!(f, "nothing to evict")?;
                } else {
                    let verb = if self.dry_run {
                        "would evict about"
                    } else {
                        "evicted"
                    };
                    writeln!(
                        f,
                        "{verb} {}{}, leaving {}{}",
                        cap.evicted.count,
                        span_text(&cap.evicted),
                        about,
                        human_bytes(cap.used_after)
                    )?;
                }
                if cap.nothing_left {
                    writeln!(
                        f,
                        "size cap: still above the cap with nothing evictable left (only \
                         protected kinds and exempt pubkeys)"
                    )?;
                }
            }
        }
        writeln!(
            f,
            "total: {verb} {} events in {:.1} s",
            self.total(),
            self.elapsed.as_secs_f64()
        )
    }
}

fn span_text(span: &Span) -> String {
    let events = if span.count == 1 { "event" } else { "events" };
    match (span.oldest, span.newest) {
        (Some(oldest), Some(newest)) => format!(
            " {events}, created_at {oldest} ({}) to {newest} ({})",
            utc_date(oldest),
            utc_date(newest)
        ),
        _ => format!(" {events}"),
    }
}

/// `YYYY-MM-DD` (UTC) of a Unix time, for people reading a report.
fn utc_date(seconds: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = seconds.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Where a pass is planned: the queries that scan (kinds stored, authors
/// over a limit) and a dry run's figures run here, never on the writer.
#[derive(Clone)]
enum Planner {
    /// A read connection of retention's own on the SQLite file, used on a
    /// blocking thread, never the relay's readers.
    Sqlite(Arc<Mutex<Connection>>),
    /// The PostgreSQL store, whose pool answers (without the readers'
    /// statement timeout: `store/postgres/retention.rs`).
    Postgres(Arc<Store>),
}

impl Planner {
    fn sqlite(conn: Connection) -> Planner {
        Planner::Sqlite(Arc::new(Mutex::new(conn)))
    }

    /// Runs `work` on the SQLite connection; None with PostgreSQL.
    async fn on_sqlite<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Option<Result<T, StoreError>> {
        let Planner::Sqlite(conn) = self else {
            return None;
        };
        let conn = conn.clone();
        Some(
            tokio::task::spawn_blocking(move || {
                // A panic while holding the lock leaves a connection that is
                // still usable: SQLite state is not shared with the panic.
                let conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                work(&conn).map_err(StoreError::from)
            })
            .await
            .map_err(|_| StoreError::Closed)
            .and_then(|outcome| outcome),
        )
    }

    fn postgres(&self) -> Result<&PgStore, StoreError> {
        match self {
            Planner::Postgres(store) => store.postgres().ok_or(StoreError::Closed),
            Planner::Sqlite(_) => Err(StoreError::Closed),
        }
    }

    async fn stored_kinds(&self) -> Result<Vec<u16>, StoreError> {
        match self.on_sqlite(sql::stored_kinds).await {
            Some(kinds) => kinds,
            None => self.postgres()?.stored_kinds().await,
        }
    }

    /// What the age rule would take of `kind`, and its JSON bytes (what a
    /// dry run of the size cap counts as already gone).
    async fn older_than(
        &self,
        kind: u16,
        before: i64,
        exempt: &[[u8; 32]],
    ) -> Result<(Span, u64), StoreError> {
        let owned = exempt.to_vec();
        match self
            .on_sqlite(move |conn| sql::older_than(conn, kind, before, &owned))
            .await
        {
            Some(figures) => figures,
            None => self.postgres()?.older_than(kind, before, exempt).await,
        }
    }

    async fn authors_beyond(
        &self,
        kinds: &[u16],
        keep: u64,
        since: i64,
        exempt: &[[u8; 32]],
    ) -> Result<Vec<[u8; 32]>, StoreError> {
        let (owned_kinds, owned_exempt) = (kinds.to_vec(), exempt.to_vec());
        match self
            .on_sqlite(move |conn| {
                sql::authors_beyond(conn, &owned_kinds, keep, since, &owned_exempt)
            })
            .await
        {
            Some(authors) => authors,
            None => {
                self.postgres()?
                    .authors_beyond(kinds, keep, since, exempt)
                    .await
            }
        }
    }

    /// What a per-author rule would take of `author`, and its JSON bytes
    /// (as in [`Planner::older_than`]).
    async fn beyond_newest_of(
        &self,
        author: [u8; 32],
        kinds: &[u16],
        keep: u64,
        since: i64,
    ) -> Result<(Span, u64), StoreError> {
        let owned = kinds.to_vec();
        match self
            .on_sqlite(move |conn| sql::beyond_newest_of(conn, &author, &owned, keep, since))
            .await
        {
            Some(figures) => figures,
            None => {
                self.postgres()?
                    .beyond_newest_of(&author, kinds, keep, since)
                    .await
            }
        }
    }

    /// Bytes in use, as the size cap measures them: SQLite's pages in use,
    /// PostgreSQL's stored JSON.
    async fn used_bytes(&self) -> Result<u64, StoreError> {
        match self.on_sqlite(sql::used_bytes).await {
            Some(used) => used,
            None => self.postgres()?.used_bytes().await,
        }
    }

    /// The size cap's part of a dry run.
    async fn estimate_eviction(
        &self,
        policy: &Policy,
        now: i64,
        ruled_json: u64,
    ) -> Result<CapReport, StoreError> {
        let owned = policy.clone();
        if let Some(report) = self
            .on_sqlite(move |conn| estimate_eviction(conn, &owned, now, ruled_json))
            .await
        {
            return report;
        }
        // The measure is the JSON itself: one byte of JSON is one byte used.
        let postgres = self.postgres()?;
        let estimate = Estimate::new(policy, postgres.used_bytes().await?, 1.0, ruled_json);
        let (evicted, json_taken) = if estimate.json_wanted > 0 {
            postgres
                .oldest_evictable(
                    estimate.json_wanted,
                    &policy.exempt,
                    aged_by_rules(policy, now),
                )
                .await?
        } else {
            (Span::default(), 0)
        };
        Ok(estimate.report(policy, evicted, json_taken))
    }

    /// Runs `sql` on the SQLite connection (a dry run's BEGIN and COMMIT:
    /// every figure from one snapshot); nothing on PostgreSQL.
    async fn execute(&self, sql: &'static str) -> Result<(), StoreError> {
        self.on_sqlite(move |conn| conn.execute_batch(sql))
            .await
            .unwrap_or(Ok(()))
    }
}

/// One pass: every rule in order, then the size cap, in batches on the
/// writer. `stop` is asked between batches (shutdown).
async fn apply(
    store: &Store,
    planner: &Planner,
    policy: &Policy,
    now: i64,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<Report, StoreError> {
    let started = Instant::now();
    let stored = planner.stored_kinds().await?;
    let governed = policy.governed(&stored);
    let mut rules = Vec::with_capacity(policy.rules.len());
    let batch = |doomed: Doomed| PruneJob {
        doomed,
        exempt: policy.exempt.clone(),
        limit: policy.batch_size,
    };
    for (rule, kinds) in policy.rules.iter().zip(governed) {
        let mut span = Span::default();
        if let Some(age) = rule.max_age {
            let before = now.saturating_sub(age as i64);
            for &kind in &kinds {
                let mut from = i64::MIN;
                loop {
                    if stop() {
                        return Err(StoreError::Closed);
                    }
                    let pruned =
                        paced(store, batch(Doomed::OlderThan { kind, before, from })).await?;
                    span.merge(pruned.span);
                    match pruned.span.newest {
                        Some(newest) if pruned.span.count as usize >= policy.batch_size => {
                            from = newest;
                        }
                        _ => break,
                    }
                }
            }
        }
        if let (Some(keep), false) = (rule.max_per_author, kinds.is_empty()) {
            let authors = planner
                .authors_beyond(&kinds, keep, i64::MIN, &policy.exempt)
                .await?;
            for chunk in authors.chunks(AUTHORS_PER_JOB) {
                loop {
                    if stop() {
                        return Err(StoreError::Closed);
                    }
                    let job = batch(Doomed::BeyondNewest {
                        authors: chunk.to_vec(),
                        kinds: kinds.clone(),
                        keep,
                    });
                    let pruned = paced(store, job).await?;
                    span.merge(pruned.span);
                    if (pruned.span.count as usize) < policy.batch_size {
                        break;
                    }
                }
            }
        }
        rules.push((rule.clone(), span));
    }
    let size_cap = if policy.size_cap > 0 {
        let used_before = planner.used_bytes().await?;
        let mut report = CapReport {
            cap: policy.size_cap,
            used_before,
            used_after: used_before,
            evicted: Span::default(),
            nothing_left: false,
        };
        let mut from = i64::MIN;
        while report.used_after > policy.size_cap {
            if stop() {
                return Err(StoreError::Closed);
            }
            let pruned = paced(store, batch(Doomed::Oldest { from })).await?;
            report.evicted.merge(pruned.span);
            report.used_after = pruned.used_bytes;
            match pruned.span.newest {
                Some(newest) => from = newest,
                None => {
                    report.nothing_left = true;
                    break;
                }
            }
        }
        Some(report)
    } else {
        None
    };
    Ok(Report {
        dry_run: false,
        rules,
        size_cap,
        elapsed: started.elapsed(),
    })
}

/// Runs one batch on the writer, then waits as long as it took: a pass
/// takes at most about half of the writer's time, so that a client's
/// EVENT waits behind one batch at worst, never behind a whole pass.
async fn paced(store: &Store, job: PruneJob) -> Result<sql::Pruned, StoreError> {
    let started = Instant::now();
    let pruned = store.prune(job).await?;
    tokio::time::sleep(started.elapsed().min(Duration::from_secs(1))).await;
    Ok(pruned)
}

/// What a pass would delete, counted by the planner without deleting
/// anything. Exact for the rules (on a database nobody writes to
/// meanwhile); the size cap's part is an estimate from the average size of
/// an event, since the pages an event frees are only known once it is
/// deleted.
async fn dry_run(planner: &Planner, policy: &Policy, now: i64) -> Result<Report, StoreError> {
    let started = Instant::now();
    let stored = planner.stored_kinds().await?;
    let governed = policy.governed(&stored);
    let mut rules = Vec::with_capacity(policy.rules.len());
    // JSON bytes of what the rules take: the size cap's starting point.
    let mut ruled_json = 0;
    for (rule, kinds) in policy.rules.iter().zip(governed) {
        let mut span = Span::default();
        // The age pass runs first: the per-author pass then only sees
        // events at or after the age cut.
        let since = match rule.max_age {
            Some(age) => {
                let before = now.saturating_sub(age as i64);
                for &kind in &kinds {
                    let (aged, json) = planner.older_than(kind, before, &policy.exempt).await?;
                    span.merge(aged);
                    ruled_json += json;
                }
                before
            }
            None => i64::MIN,
        };
        if let (Some(keep), false) = (rule.max_per_author, kinds.is_empty()) {
            for author in planner
                .authors_beyond(&kinds, keep, since, &policy.exempt)
                .await?
            {
                let (surplus, json) = planner
                    .beyond_newest_of(author, &kinds, keep, since)
                    .await?;
                span.merge(surplus);
                ruled_json += json;
            }
        }
        rules.push((rule.clone(), span));
    }
    let size_cap = if policy.size_cap > 0 {
        Some(planner.estimate_eviction(policy, now, ruled_json).await?)
    } else {
        None
    };
    Ok(Report {
        dry_run: true,
        rules,
        size_cap,
        elapsed: started.elapsed(),
    })
}

/// The size cap's part of a dry run on SQLite. Each event is taken to hold
/// its JSON's share of the pages in use (indexes, tags and search entries
/// grow with the text too), so that a follow list of 300 keys weighs what
/// it does, not an average.
fn estimate_eviction(
    conn: &Connection,
    policy: &Policy,
    now: i64,
    ruled_json: u64,
) -> rusqlite::Result<CapReport> {
    let used = sql::used_bytes(conn)?;
    let page_bytes_per_json_byte = used as f64 / sql::json_bytes(conn)?.max(1) as f64;
    let estimate = Estimate::new(policy, used, page_bytes_per_json_byte, ruled_json);
    let (evicted, json_taken) = if estimate.json_wanted > 0 {
        sql::oldest_evictable(
            conn,
            estimate.json_wanted,
            &policy.exempt,
            aged_by_rules(policy, now),
        )?
    } else {
        (Span::default(), 0)
    };
    Ok(estimate.report(policy, evicted, json_taken))
}

/// A dry run's arithmetic of the size cap, on either backend: how much
/// JSON must go for the bytes used to come under the cap.
struct Estimate {
    /// Bytes used once the rules have taken their share.
    used_before: u64,
    /// Bytes used per byte of JSON (1 where the measure is the JSON).
    bytes_per_json_byte: f64,
    /// JSON bytes the oldest evictable events must add up to.
    json_wanted: u64,
}

impl Estimate {
    fn new(policy: &Policy, used: u64, bytes_per_json_byte: f64, ruled_json: u64) -> Estimate {
        let used_before = used.saturating_sub((ruled_json as f64 * bytes_per_json_byte) as u64);
        let excess = used_before.saturating_sub(policy.size_cap);
        Estimate {
            used_before,
            bytes_per_json_byte,
            json_wanted: (excess as f64 / bytes_per_json_byte).ceil() as u64,
        }
    }

    fn report(&self, policy: &Policy, evicted: Span, json_taken: u64) -> CapReport {
        let freed = (json_taken as f64 * self.bytes_per_json_byte) as u64;
        CapReport {
            cap: policy.size_cap,
            used_before: self.used_before,
            used_after: self.used_before.saturating_sub(freed),
            evicted,
            nothing_left: json_taken < self.json_wanted,
        }
    }
}

/// Whether an age rule takes an event of `kind` created at `created_at`:
/// such events are not counted twice by the size cap's estimate
/// (per-author rules are not simulated here: this is an estimate).
fn aged_by_rules(policy: &Policy, now: i64) -> impl Fn(u16, i64) -> bool + '_ {
    move |kind, created_at| {
        policy.rule_for(kind).is_some_and(|index| {
            policy.rules[index]
                .max_age
                .is_some_and(|age| created_at < now.saturating_sub(age as i64))
        })
    }
}

/// Starts the background task when `[retention]` has anything to do: a
/// pass every `interval_seconds` (the first a minute after start, or one
/// interval if shorter), until `shutdown`.
pub fn spawn(
    store: Arc<Store>,
    config: &Config,
    mut shutdown: Shutdown,
) -> Option<tokio::task::JoinHandle<()>> {
    let policy = match Policy::from_config(&config.retention, config.storage.max_database_bytes) {
        Ok(policy) if policy.is_active() => policy,
        Ok(_) => return None,
        Err(error) => {
            // Config::validate has refused this already.
            tracing::error!(%error, "retention disabled");
            return None;
        }
    };
    let database = config.database.clone();
    let durability = config.storage.durability;
    Some(tokio::spawn(async move {
        let planner = if store.postgres().is_some() {
            Planner::Postgres(store.clone())
        } else {
            let opened = tokio::task::spawn_blocking(move || {
                store::open_connection(&database, durability, true)
            })
            .await;
            match opened {
                Ok(Ok(conn)) => Planner::sqlite(conn),
                Ok(Err(error)) => {
                    tracing::error!(%error, "retention disabled: cannot open a read connection");
                    return;
                }
                Err(_) => return,
            }
        };
        let period = policy.interval;
        // The first pass soon after start (a relay restarted more often
        // than interval_seconds would otherwise never prune), but not in
        // the middle of start-up.
        let first = tokio::time::Instant::now() + period.min(FIRST_PASS_AFTER);
        let mut ticker = tokio::time::interval_at(first, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.recv() => return,
                _ = ticker.tick() => {}
            }
            let stopping = shutdown.clone();
            let stop = move || stopping.is_shutdown();
            match apply(&store, &planner, &policy, unix_now(), &stop).await {
                Ok(report) => log_pass(&report),
                Err(StoreError::Closed) => return,
                Err(error) => tracing::warn!(%error, "retention pass failed"),
            }
        }
    }))
}

/// One line per pass that deleted something; passes with nothing to do
/// are quiet (debug).
fn log_pass(report: &Report) {
    let pruned: u64 = report.rules.iter().map(|(_, span)| span.count).sum();
    let evicted = report.size_cap.map_or(0, |cap| cap.evicted.count);
    let ms = report.elapsed.as_millis() as u64;
    if pruned + evicted > 0 {
        tracing::info!(pruned, evicted, ms, "retention pass");
    } else {
        tracing::debug!(ms, "retention pass: nothing to prune");
    }
    if report.size_cap.is_some_and(|cap| cap.nothing_left) {
        tracing::warn!(
            "retention.max_database_mb: still above the cap, and only protected kinds and \
             exempt pubkeys are left"
        );
    }
}

/// `nostr-relayd prune [--dry-run]`: one pass on the configured database,
/// beside a running relay or not; returns the report to print.
pub fn prune_command(config: &Config, dry_run: bool) -> Result<String, String> {
    let policy = Policy::from_config(&config.retention, config.storage.max_database_bytes)?;
    if !policy.is_active() {
        return Ok(
            "[retention] has no rules and no size cap (max_database_mb = 0): nothing to prune\n"
                .into(),
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    if config.storage.backend == Backend::Postgres {
        return runtime.block_on(prune_postgres(config, &policy, dry_run));
    }
    let database = &config.database;
    let cannot_open = |e: StoreError| format!("cannot open database {}: {e}", database.display());
    if !database.is_file() {
        return Err(format!("no database at {}", database.display()));
    }
    let read =
        store::open_connection(database, config.storage.durability, true).map_err(cannot_open)?;
    let planner = Planner::sqlite(read);
    if dry_run {
        return runtime
            .block_on(dry_run_report(&planner, &policy))
            .map(|report| report.to_string());
    }
    let options = StoreOptions {
        durability: config.storage.durability,
        max_database_bytes: config.storage.max_database_bytes,
        reader_threads: 1,
        max_write_batch: config.storage.max_write_batch,
        query_timeout: Duration::from_millis(config.storage.query_timeout_ms),
    };
    let store = Store::open(database, &options, Box::new(|_| {})).map_err(cannot_open)?;
    let outcome = runtime.block_on(apply(&store, &planner, &policy, unix_now(), &|| false));
    store.close();
    outcome
        .map(|report| report.to_string())
        .map_err(|e| format!("prune failed: {e}"))
}

/// [`prune_command`] on PostgreSQL: the store's pool plans, a batch at a
/// time deletes, beside the running nodes.
async fn prune_postgres(config: &Config, policy: &Policy, dry_run: bool) -> Result<String, String> {
    let store = Store::open_postgres(&store::postgres_options(config), Box::new(|_| {}))
        .await
        .map_err(|e| format!("cannot open the PostgreSQL database: {e}"))?;
    let store = Arc::new(store);
    let planner = Planner::Postgres(store.clone());
    let outcome = if dry_run {
        dry_run_report(&planner, policy).await
    } else {
        apply(&store, &planner, policy, unix_now(), &|| false)
            .await
            .map_err(|e| format!("prune failed: {e}"))
    };
    store.shutdown().await;
    outcome.map(|report| report.to_string())
}

async fn dry_run_report(planner: &Planner, policy: &Policy) -> Result<Report, String> {
    let failed = |e: StoreError| format!("dry run failed: {e}");
    // SQLite: one read transaction, every figure from the same snapshot.
    planner.execute("BEGIN").await.map_err(failed)?;
    let report = dry_run(planner, policy, unix_now()).await.map_err(failed);
    let _ = planner.execute("COMMIT").await;
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetentionRule;

    fn rule(kinds: Vec<KindSelector>, max_age: &str, max_per_author: u64) -> RetentionRule {
        RetentionRule {
            kinds,
            max_age: max_age.into(),
            max_per_author,
        }
    }

    fn section(rules: Vec<RetentionRule>) -> config::Retention {
        config::Retention {
            rules,
            ..config::Retention::default()
        }
    }

    #[test]
    fn ages_read_with_units() {
        assert_eq!(parse_age("90d"), Some(90 * 86_400));
        assert_eq!(parse_age("1y"), Some(365 * 86_400));
        assert_eq!(parse_age("2w"), Some(14 * 86_400));
        assert_eq!(parse_age("12h"), Some(12 * 3600));
        assert_eq!(parse_age("30s"), Some(30));
        for bad in [
            "",
            "90",
            "d",
            "0d",
            "6m",
            "1.5y",
            "-1d",
            "99999999999999999999y",
        ] {
            assert_eq!(parse_age(bad), None, "{bad:?}");
        }
        assert_eq!(format_age(365 * 86_400), "1y");
        assert_eq!(format_age(90 * 86_400), "90d");
        assert_eq!(format_age(14 * 86_400), "2w");
        assert_eq!(format_age(61), "61s");
    }

    #[test]
    fn kinds_are_numbers_or_ranges() {
        assert_eq!(parse_kind_range("7"), Some(7..=7));
        assert_eq!(parse_kind_range("30000-39999"), Some(30_000..=39_999));
        assert_eq!(parse_kind_range(" 1 - 3 "), Some(1..=3));
        for bad in ["", "a", "3-1", "1-", "70000", "1-2-3"] {
            assert_eq!(parse_kind_range(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_first_rule_naming_a_kind_governs_it_and_none_governs_62() {
        let policy = Policy::from_config(
            &section(vec![
                rule(vec![KindSelector::Kind(7)], "90d", 0),
                rule(vec![KindSelector::Text("0-65535".into())], "1y", 0),
            ]),
            0,
        )
        .unwrap();
        assert_eq!(policy.rule_for(7), Some(0));
        assert_eq!(policy.rule_for(1), Some(1));
        assert_eq!(policy.rule_for(62), None);
        assert_eq!(
            policy.governed(&[0, 1, 7, 62, 30023]),
            vec![vec![7], vec![0, 1, 30023]]
        );
        assert_eq!(
            policy.rules[0].to_string(),
            "kinds 7; max_age 90d",
            "reports name rules as written"
        );
    }

    #[test]
    fn the_shipped_default_keeps_everything() {
        let policy = Policy::from_config(&config::Retention::default(), 0).unwrap();
        assert!(!policy.is_active());
    }

    #[test]
    fn a_rules_list_reads_as_inline_tables_or_tables() {
        let inline = Config::from_toml(
            "[retention]\nexempt_pubkeys = [\"npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg\"]\n\
             rules = [{ kinds = [1, \"30000-39999\"], max_age = \"1y\" }]\n",
        )
        .unwrap();
        let tables = Config::from_toml(
            "[retention]\nexempt_pubkeys = [\"7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e\"]\n\
             [[retention.rules]]\nkinds = [1, \"30000-39999\"]\nmax_age = \"1y\"\n",
        )
        .unwrap();
        let a = Policy::from_config(&inline.retention, 0).unwrap();
        let b = Policy::from_config(&tables.retention, 0).unwrap();
        assert_eq!(a, b, "npub and hex name the same key");
        assert_eq!(a.rules[0].kinds, vec![1..=1, 30_000..=39_999]);
    }

    #[test]
    fn errors_name_the_key() {
        let error_of = |retention: config::Retention, hard_cap: u64| {
            Policy::from_config(&retention, hard_cap).unwrap_err()
        };
        let bad_key = config::Retention {
            exempt_pubkeys: vec!["nope".into()],
            ..config::Retention::default()
        };
        assert!(error_of(bad_key, 0).starts_with("retention.exempt_pubkeys:"));
        let e = error_of(section(vec![rule(vec![KindSelector::Kind(1)], "", 0)]), 0);
        assert!(
            e.starts_with("retention.rules (rule 1): needs max_age"),
            "{e}"
        );
        let e = error_of(
            section(vec![
                rule(vec![KindSelector::Kind(1)], "1y", 0),
                rule(vec![KindSelector::Kind(7)], "6m", 0),
            ]),
            0,
        );
        assert!(e.starts_with("retention.rules (rule 2): max_age:"), "{e}");
        let e = error_of(section(vec![rule(vec![], "1y", 0)]), 0);
        assert!(e.starts_with("retention.rules (rule 1): kinds:"), "{e}");
        let e = error_of(
            section(vec![rule(vec![KindSelector::Text("x-y".into())], "1y", 0)]),
            0,
        );
        assert!(e.contains("kinds: \"x-y\""), "{e}");
        let e = error_of(
            section(vec![rule(vec![KindSelector::Kind(62)], "1y", 0)]),
            0,
        );
        assert!(e.contains("kind 62"), "{e}");
        let capped = config::Retention {
            max_database_mb: 100,
            ..config::Retention::default()
        };
        let e = error_of(capped, 50 << 20);
        assert!(e.starts_with("retention.max_database_mb:"), "{e}");
        let mut config = Config::default();
        config.retention.batch_size = 0;
        assert!(
            config
                .validate()
                .unwrap_err()
                .0
                .starts_with("retention.batch_size:")
        );
    }

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14");
        assert_eq!(utc_date(-86_400), "1969-12-31");
    }
}
