//! `nostr-relayd sync`: reconciles this relay's database with a remote
//! relay for one filter, down (remote → here), up (here → remote) or both,
//! and optionally mirrors the remote live (`--stream`).
//!
//! - NIP-77 first ([`nip77`]): the local set is `(created_at, id)` of the
//!   local events matching the filter plus the ids refused from this remote
//!   before; NEG-OPEN/NEG-MSG until done; then the ids the remote has are
//!   fetched with `REQ {"ids": …}` in batches and the ids it lacks are
//!   published with `EVENT`.
//! - A remote without NIP-77 (NIP-11 `supported_nips` without 77, or a
//!   NOTICE, NEG-ERR or CLOSED, or silence, answering NEG-OPEN), or
//!   `--no-negentropy`: paginated REQs ([`walk`]), newest first, `until`
//!   walking, ties at a page boundary handled.
//! - Every downloaded event is checked as the relay checks an EVENT (id,
//!   signature, NIP-09/40/62/70, bans) and written through the relay's own
//!   writer ([`local`]); refusals are recorded in `sync_refused` so that they
//!   do not come back as differences on every run.
//! - Progress is kept in `sync_checkpoint` (per remote, filter and
//!   direction): an interrupted run resumes; see README "Back up your notes
//!   from public relays" for what a re-run does.

pub mod local;
pub mod nip77;
pub mod remote;
pub mod stream;
pub mod upload;
pub mod walk;

use std::collections::HashSet;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::config::Config;
use crate::nostr::Filter;
use crate::store::unix_now;
use local::{Accepted, Direction, Item, Local};
use remote::{Remote, RemoteInfo};

/// Which way events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dir {
    /// Remote → this relay.
    Down,
    /// This relay → remote.
    Up,
    /// Both ways: afterwards each side has the union.
    Both,
}

/// `nostr-relayd sync` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SyncArgs {
    /// The remote relay's URL (ws:// or wss://).
    #[arg(value_name = "REMOTE_URL")]
    pub remote: String,
    /// The events to reconcile: one NIP-01 filter as JSON, without limit,
    /// e.g. '{"authors":["<hex pubkey>"]}'.
    #[arg(long, value_name = "JSON")]
    pub filter: String,
    /// down: remote → here; up: here → remote; both.
    #[arg(long, value_enum, default_value = "down")]
    pub dir: Dir,
    /// After the sync, keep a live REQ open to the remote and store what
    /// arrives (a mirror, remote → here, whatever --dir says), reconnecting
    /// with backoff, until Ctrl-C/SIGTERM.
    #[arg(long)]
    pub stream: bool,
    /// Only stream (no sync first).
    #[arg(long)]
    pub stream_only: bool,
    /// Do not try NIP-77: walk the remote with paginated REQs.
    #[arg(long)]
    pub no_negentropy: bool,
    /// Walk everything again instead of resuming from the checkpoint
    /// (REQ walks only: a NIP-77 run always reconciles everything).
    #[arg(long)]
    pub full: bool,
    /// Forget the ids refused from (or by) this remote before, and try them again.
    #[arg(long)]
    pub retry_refused: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the remote's answers.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub timeout: u64,
    /// Stop after this many events transferred (a test aid for resuming).
    #[arg(long, hide = true)]
    pub max_events: Option<u64>,
}

/// What a run did: the final report line, and `--json`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub remote: String,
    pub filter: Value,
    pub direction: String,
    /// "negentropy", "req", or "stream".
    pub method: String,
    /// Why NIP-77 was not used, when it was tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// Every part of the run finished.
    pub complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Local events matching the filter (NIP-77: the set reconciled).
    pub have: u64,
    /// Events the remote has and this relay lacked (NIP-77), or new
    /// events seen (REQ walk).
    pub need: u64,
    /// Events this relay has and the remote lacked.
    pub remote_needs: u64,
    /// Downloaded and stored here.
    pub downloaded: u64,
    /// Downloaded but already here.
    pub already_had: u64,
    /// Downloaded and refused here (recorded).
    pub refused: u64,
    /// Skipped: refused by an earlier run.
    pub refused_before: u64,
    /// Asked for by id but not sent by the remote.
    pub unavailable: u64,
    /// Ephemeral, malformed, or not matching the filter.
    pub ignored: u64,
    /// Stored here, then removed by a later event of this run (replaced,
    /// deleted): recorded as refused.
    pub removed_here: u64,
    /// Published to the remote and accepted.
    pub uploaded: u64,
    /// Published, and the remote already had it.
    pub remote_had: u64,
    /// Published and refused by the remote (recorded).
    pub refused_by_remote: u64,
    /// Not published: private kinds, protected (NIP-70), refused before.
    pub kept_back: u64,
    /// Published without a usable answer (time-out, repeated rate limits).
    pub failed: u64,
    /// REQ pages whose events all shared one timestamp: some events at that
    /// second may have been missed (the remote's page size is too small).
    pub crowded_seconds: u64,
    /// Events stored by `--stream`.
    pub streamed: u64,
    pub seconds: f64,
}

impl Report {
    fn transferred(&self) -> u64 {
        self.downloaded + self.uploaded
    }

    fn progress_line(&self) -> String {
        format!(
            "have {} · need {} · remote needs {} · transferred {} (↓{} ↑{}) · refused {}",
            self.have,
            self.need,
            self.remote_needs,
            self.transferred(),
            self.downloaded,
            self.uploaded,
            self.refused + self.refused_by_remote,
        )
    }

    /// The one line printed on stderr at the end.
    pub fn summary(&self) -> String {
        let state = match (&self.error, self.complete) {
            (Some(error), _) => format!("FAILED ({error})"),
            (None, true) => "complete".to_owned(),
            (None, false) => "stopped before the end (run it again to resume)".to_owned(),
        };
        let via = if self.method.is_empty() {
            String::new()
        } else {
            format!(" via {}", self.method)
        };
        let mut line = format!(
            "sync {} {} [{}{via}]: {state}; have {}, need {}; down: {} stored, {} already here, \
             {} refused ({} refused before), {} unavailable",
            self.remote,
            self.filter,
            self.direction,
            self.have,
            self.need,
            self.downloaded,
            self.already_had,
            self.refused + self.removed_here,
            self.refused_before,
            self.unavailable,
        );
        if self.direction != "down" {
            line.push_str(&format!(
                "; up: {} sent, {} already there, {} refused by the remote, {} kept back, {} failed",
                self.uploaded, self.remote_had, self.refused_by_remote, self.kept_back, self.failed
            ));
        }
        if self.streamed > 0 {
            line.push_str(&format!("; streamed {}", self.streamed));
        }
        if self.crowded_seconds > 0 {
            line.push_str(&format!(
                "; {} crowded second(s): events at those timestamps may be incomplete",
                self.crowded_seconds
            ));
        }
        line.push_str(&format!("; {:.1} s", self.seconds));
        line
    }
}

/// Why a run stopped early.
#[derive(Debug)]
pub enum Stop {
    /// `--max-events` reached.
    Limit,
    /// SIGINT or SIGTERM.
    Interrupted,
    Failed(String),
}

impl From<String> for Stop {
    fn from(error: String) -> Self {
        Stop::Failed(error)
    }
}

/// A spinner on stderr with the running counts, when stderr is a terminal.
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(visible: bool) -> Progress {
        let bar = visible.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]")
            {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress { bar }
    }

    fn phase(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.set_prefix(text.to_owned()),
            None => tracing::debug!("{text}"),
        }
    }

    fn update(&self, report: &Report) {
        if let Some(bar) = &self.bar {
            bar.set_message(report.progress_line());
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// One run: the local database, the filter, the counters.
pub struct Sync {
    args: SyncArgs,
    filter: Filter,
    /// The filter as sent to the remote (canonical JSON).
    filter_value: Value,
    /// Its text: the checkpoint key.
    filter_key: String,
    local: Local,
    report: Report,
    progress: Progress,
    timeout: Duration,
    /// REQ page size: the remote's max_limit (NIP-11), else 500.
    page_size: u64,
    /// Ids per `REQ {"ids": …}`.
    id_batch: usize,
    /// Largest negentropy message we send (bytes before hex).
    frame_size_limit: u64,
    /// Items stored or found here this run, checked at the end: one gone
    /// since was replaced or deleted here, and is recorded as refused.
    touched: Vec<Item>,
}

/// A REQ walk stops this far below the newest created_at it reconciled
/// before: events reach relays late (clock skew, slow clients, relays
/// syncing each other), and the overlap picks them up.
pub const OVERLAP_SECONDS: i64 = 3600;

/// Runs `nostr-relayd sync`; prints the summary; returns the exit status:
/// 0 done, 1 failed, 3 stopped before the end (resumable).
pub fn run(config: &Config, args: &SyncArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run_async(config, args))
}

async fn run_async(config: &Config, args: &SyncArgs) -> ExitCode {
    remote::install_crypto_provider();
    let started = Instant::now();
    let (filter, filter_value) = match parse_filter(&args.filter) {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("error: --filter: {error}");
            return ExitCode::from(2);
        }
    };
    let remote_key = match remote::normalize_url(&args.remote) {
        Ok(url) => url,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let local = match Local::open(config, &remote_key).await {
        Ok(local) => local,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let report = Report {
        remote: args.remote.clone(),
        filter: filter_value.clone(),
        direction: match args.dir {
            Dir::Down => "down",
            Dir::Up => "up",
            Dir::Both => "both",
        }
        .to_owned(),
        method: String::new(),
        ..Report::default()
    };
    let mut sync = Sync {
        args: args.clone(),
        filter_key: filter_value.to_string(),
        filter,
        filter_value,
        local,
        report,
        progress: Progress::new(std::io::stderr().is_terminal()),
        timeout: Duration::from_secs(args.timeout.max(1)),
        page_size: 500,
        id_batch: 500,
        frame_size_limit: 60_000,
        touched: Vec::new(),
    };
    let result = {
        let work = sync.run();
        tokio::pin!(work);
        tokio::select! {
            result = &mut work => result,
            _ = wait_for_signal() => Err(Stop::Interrupted),
        }
    };
    let settled = sync.settle().await;
    sync.progress.finish();
    sync.local.close();
    let streaming = args.stream || args.stream_only;
    let code = match (result, settled) {
        (Ok(()), Ok(())) => {
            sync.report.complete = true;
            ExitCode::SUCCESS
        }
        // Ctrl-C is how a stream ends.
        (Err(Stop::Interrupted), Ok(())) if streaming && sync.report.error.is_none() => {
            sync.report.complete = true;
            ExitCode::SUCCESS
        }
        (Err(Stop::Limit | Stop::Interrupted), Ok(())) => ExitCode::from(3),
        (Err(Stop::Failed(error)), _) | (_, Err(error)) => {
            sync.report.error = Some(error);
            ExitCode::FAILURE
        }
    };
    sync.report.seconds = started.elapsed().as_secs_f64();
    eprintln!("{}", sync.report.summary());
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&sync.report).unwrap_or_default()
        );
    }
    code
}

impl Sync {
    async fn run(&mut self) -> Result<(), Stop> {
        if self.args.retry_refused {
            let removed = self.local.clear_refused().await?;
            tracing::info!(removed, "forgot the refusals recorded for this remote");
        }
        let stream_since = unix_now() - stream::OVERLAP_SECONDS;
        if !self.args.stream_only {
            self.sync_once().await?;
        }
        if self.args.stream || self.args.stream_only {
            self.report.method = if self.report.method.is_empty() {
                "stream".to_owned()
            } else {
                format!("{}+stream", self.report.method)
            };
            stream::run(self, stream_since).await?;
        }
        Ok(())
    }

    /// One reconciliation: NIP-77 when the remote speaks it, else REQ walks.
    async fn sync_once(&mut self) -> Result<(), Stop> {
        self.progress.phase("NIP-11");
        let info = match remote::fetch_info(&self.args.remote, Duration::from_secs(5)).await {
            Ok(info) => info,
            Err(error) => {
                tracing::info!(%error, "no NIP-11 document; assuming defaults");
                RemoteInfo::default()
            }
        };
        self.page_size = info.max_limit.unwrap_or(500).clamp(1, 5000);
        self.id_batch = self.page_size.min(500) as usize;
        self.frame_size_limit = info
            .max_message_length
            .map_or(60_000, |max| (max / 2).saturating_sub(1024))
            .clamp(4096, 500_000);
        self.progress.phase("connecting");
        let mut remote = Remote::connect(&self.args.remote, self.timeout).await?;
        let result = self.sync_on(&mut remote, &info).await;
        remote.close().await;
        result
    }

    async fn sync_on(&mut self, remote: &mut Remote, info: &RemoteInfo) -> Result<(), Stop> {
        if self.args.no_negentropy {
            self.report.fallback_reason = Some("--no-negentropy".into());
        } else if !info.may_support_nip77() {
            self.report.fallback_reason = Some("its NIP-11 supported_nips does not list 77".into());
        } else {
            match nip77::run(self, remote).await? {
                nip77::Outcome::Done => {
                    self.report.method = "negentropy".into();
                    return Ok(());
                }
                nip77::Outcome::Unsupported(why) => {
                    self.report.fallback_reason = Some(why);
                }
            }
        }
        if let Some(why) = &self.report.fallback_reason {
            tracing::info!(remote = %self.args.remote, reason = %why, "NIP-77 not used: paginated REQs");
        }
        self.report.method = "req".into();
        if self.down() {
            walk::down(self, remote).await?;
        }
        if self.up() {
            walk::up(self, remote).await?;
        }
        Ok(())
    }

    fn down(&self) -> bool {
        matches!(self.args.dir, Dir::Down | Dir::Both)
    }

    fn up(&self) -> bool {
        matches!(self.args.dir, Dir::Up | Dir::Both)
    }

    /// How many more events may be transferred (`--max-events`).
    fn budget(&self) -> u64 {
        self.args.max_events.map_or(u64::MAX, |max| {
            max.saturating_sub(self.report.transferred())
        })
    }

    fn check_budget(&self) -> Result<(), Stop> {
        if self.budget() == 0 {
            Err(Stop::Limit)
        } else {
            Ok(())
        }
    }

    /// Counts what became of downloaded events.
    fn tally(&mut self, answers: Vec<(Item, Accepted)>) {
        for (item, answer) in answers {
            match answer {
                Accepted::Stored => {
                    self.report.downloaded += 1;
                    self.touched.push(item);
                }
                Accepted::Had => {
                    self.report.already_had += 1;
                    self.touched.push(item);
                }
                Accepted::Refused(reason) => {
                    tracing::debug!(id = %hex::encode(item.id), %reason, "refused");
                    self.report.refused += 1;
                }
                Accepted::RefusedBefore => self.report.refused_before += 1,
                Accepted::Ignored => self.report.ignored += 1,
            }
        }
        self.progress.update(&self.report);
    }

    /// The end of a run: an event stored or found here this run and gone
    /// now was replaced or deleted here by another event (of this run, or
    /// of the relay's clients): recorded as refused, since the relay would
    /// refuse it now, so that it is not a difference next time.
    async fn settle(&mut self) -> Result<(), String> {
        let touched = std::mem::take(&mut self.touched);
        if touched.is_empty() {
            return Ok(());
        }
        let ids: Vec<[u8; 32]> = touched.iter().map(|item| item.id).collect();
        let existing = self.local.existing(&ids).await?;
        let mut recorded = HashSet::new();
        for item in &touched {
            if existing.contains(&item.id)
                || self.local.is_refused(&item.id, Direction::Down)
                || !recorded.insert(item.id)
            {
                continue;
            }
            self.local
                .record_refused(
                    item,
                    Direction::Down,
                    "blocked: removed here after it was stored (replaced, deleted or expired)",
                )
                .await?;
            self.report.removed_here += 1;
        }
        Ok(())
    }
}

/// Reads `--filter`: one NIP-01 filter, without `limit` or `search`;
/// returns it and its canonical JSON (keys sorted, lists sorted).
pub fn parse_filter(text: &str) -> Result<(Filter, Value), String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let filter = Filter::from_value(&value).map_err(|e| e.to_string())?;
    if filter.limit.is_some() {
        return Err("limit has no meaning for a sync, which takes every matching event".into());
    }
    if filter.search.is_some() {
        return Err("search (NIP-50) cannot be synced: relays rank its results differently".into());
    }
    if filter.is_unsatisfiable() {
        return Err("this filter matches no event (an empty list, or since after until)".into());
    }
    let canonical = filter_json(&filter);
    Ok((filter, canonical))
}

/// A filter as JSON, canonical: keys in order, lists sorted and without
/// duplicates (as `Filter` keeps them).
pub fn filter_json(filter: &Filter) -> Value {
    let mut map = Map::new();
    let hex_list =
        |list: &[[u8; 32]]| Value::from(list.iter().map(hex::encode).collect::<Vec<_>>());
    if let Some(ids) = &filter.ids {
        map.insert("ids".into(), hex_list(ids));
    }
    if let Some(authors) = &filter.authors {
        map.insert("authors".into(), hex_list(authors));
    }
    if let Some(kinds) = &filter.kinds {
        map.insert("kinds".into(), json!(kinds));
    }
    for condition in &filter.tags {
        map.insert(format!("#{}", condition.letter), json!(condition.values));
    }
    if let Some(since) = filter.since {
        map.insert("since".into(), json!(since));
    }
    if let Some(until) = filter.until {
        map.insert("until".into(), json!(until));
    }
    if let Some(limit) = filter.limit {
        map.insert("limit".into(), json!(limit));
    }
    Value::Object(map)
}

/// Resolves on SIGINT or SIGTERM.
async fn wait_for_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_canonical() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let (_, one) = parse_filter(&format!(
            r##"{{"kinds":[1,0,1],"authors":["{b}","{a}"],"#t":["y","x"]}}"##
        ))
        .unwrap();
        let (_, two) = parse_filter(&format!(
            r##"{{"#t":["x","y"],"authors":["{a}","{b}"],"kinds":[0,1]}}"##
        ))
        .unwrap();
        assert_eq!(one.to_string(), two.to_string());
        assert_eq!(
            one.to_string(),
            format!(r##"{{"#t":["x","y"],"authors":["{a}","{b}"],"kinds":[0,1]}}"##)
        );
    }

    fn args(filter: &str) -> SyncArgs {
        SyncArgs {
            remote: "ws://remote.example".into(),
            filter: filter.into(),
            dir: Dir::Down,
            stream: false,
            stream_only: false,
            no_negentropy: false,
            full: false,
            retry_refused: false,
            json: false,
            timeout: 5,
            max_events: None,
        }
    }

    /// A replaceable event stored by a run and replaced later in the same
    /// run (the need ids come in no particular order) is recorded as
    /// refused, so it is not a difference next time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_replaced_during_the_run_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            database: dir.path().join("sync.sqlite"),
            ..Config::default()
        };
        let local = Local::open(&config, "ws://remote.example").await.unwrap();
        let mut corpus = crate::corpus::Corpus::new(7, 1, unix_now());
        let mut version = |created_at: i64| {
            let (author, mut event) = corpus.next_unsigned();
            event.kind = 0;
            event.tags.clear();
            event.content = format!("{{\"name\":\"v{created_at}\"}}");
            event.created_at = created_at;
            event.id = event.compute_id();
            corpus.sign(author, event).event
        };
        let (v1, v2) = (version(1000), version(2000));
        let (filter, filter_value) = parse_filter("{}").unwrap();
        let mut sync = Sync {
            args: args("{}"),
            filter_key: filter_value.to_string(),
            filter,
            filter_value,
            local,
            report: Report::default(),
            progress: Progress::new(false),
            timeout: Duration::from_secs(5),
            page_size: 500,
            id_batch: 500,
            frame_size_limit: 60_000,
            touched: Vec::new(),
        };
        let answers = sync.local.accept(vec![v1.clone()]).await.unwrap();
        assert_eq!(answers[0].1, Accepted::Stored);
        sync.tally(answers);
        let answers = sync.local.accept(vec![v2.clone()]).await.unwrap();
        assert_eq!(answers[0].1, Accepted::Stored);
        sync.tally(answers);
        sync.settle().await.unwrap();
        assert_eq!(sync.report.removed_here, 1);
        assert!(sync.local.is_refused(&v1.id, Direction::Down));
        assert!(!sync.local.is_refused(&v2.id, Direction::Down));
        let refused = sync.local.refused_items(&sync.filter).await.unwrap();
        assert_eq!(refused.len(), 1);
        assert_eq!((refused[0].id, refused[0].created_at), (v1.id, 1000));
        // Offered again, it is skipped without a look.
        let answers = sync.local.accept(vec![v1]).await.unwrap();
        assert_eq!(answers[0].1, Accepted::RefusedBefore);
        sync.local.close();
    }

    #[test]
    fn filters_sync_cannot_honour_are_refused() {
        assert!(
            parse_filter(r#"{"limit":10}"#)
                .unwrap_err()
                .contains("limit")
        );
        assert!(parse_filter(r#"{"kinds":[]}"#).is_err());
        assert!(parse_filter(r#"{"bogus":1}"#).is_err());
        assert!(parse_filter("[]").is_err());
        assert!(parse_filter("{}").is_ok());
    }
}
