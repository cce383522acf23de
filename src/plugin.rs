//! The write-policy plugin: an external program that decides on each event
//! that passed every other check, speaking strfry's plugin protocol so that
//! existing strfry plugins run unchanged.
//!
//! Protocol (strfry's `docs/plugins.md`): the relay writes one JSON object a
//! line on the plugin's stdin, `{"type":"new","event":{…},"receivedAt":<unix
//! seconds>,"sourceType":"IP4"|"IP6"|"Import","sourceInfo":"<address>"}`;
//! the plugin answers one line per request on its stdout, `{"id":"<event
//! id>","action":"accept"|"reject"|"shadowReject","msg":"<text>"}`.
//!
//! strfry talks to its plugin in lockstep, so one slow answer stalls every
//! writer. Here the conversation is pipelined: requests from every
//! connection go down the one stdin as they come (a writer task drains a
//! bounded channel), answers are matched to their requests by event id, and
//! each request has its own timeout. A plugin that crashes or hangs is
//! restarted with back-off while `plugin.on_failure` answers in its place,
//! and when one of the plugin's files changes a new process takes the new
//! requests while the old one finishes its own.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::config::{self, OnFailure};
use crate::ingest::Origin;

/// The plugin's decision on one event, as the ingester applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginDecision {
    /// Store (or, if ephemeral, broadcast) the event.
    Accept,
    /// `OK false` with this reason, which always starts with a NIP-01
    /// machine-readable prefix.
    Reject(String),
    /// `OK true` to the client, yet the event is neither stored nor
    /// broadcast: a spammer is not told that it was caught.
    ShadowReject,
}

/// The `OK false` reason given in the plugin's place under
/// `on_failure = "reject"`.
pub const UNAVAILABLE: &str = "error: the write policy plugin is unavailable";

/// Requests waiting for an answer, over all processes. Past it, events get
/// the failure answer at once: a plugin that cannot keep up must not hold
/// an unbounded queue of events (and their connections' permits).
pub const MAX_PENDING: usize = 1024;

/// Longest answer line kept; the rest of a longer line is skipped, so that
/// a plugin printing without newlines cannot make the relay buffer without
/// bound. Real answers are a few hundred bytes.
const MAX_LINE: usize = 64 * 1024;

/// Restart back-off: the first delay, doubled after each quick crash up to
/// the last. A process that ran this long counts as healthy and resets it.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How often the plugin's files are checked for changes.
const POLL: Duration = Duration::from_secs(1);

/// After the process exits, how long answers it wrote just before are
/// still read from the pipe (a grandchild may hold it open forever).
const EXIT_DRAIN: Duration = Duration::from_millis(200);

/// Prefixes NIP-01 defines for OK reasons; a plugin's `msg` without one
/// gets `blocked: ` in front, so clients can always read the refusal.
const PREFIXES: &[&str] = &[
    "blocked:",
    "invalid:",
    "rate-limited:",
    "restricted:",
    "pow:",
    "error:",
    "mute:",
    "auth-required:",
    "duplicate:",
];

/// The running plugin: the process that answers new requests, the ones
/// being retired, and the supervisor that restarts and reloads them.
/// Dropping it kills every process it started.
pub struct WritePlugin {
    inner: Arc<Inner>,
    supervisor: JoinHandle<()>,
    /// Never sent on: when it is dropped (with the plugin), every process
    /// driver sees its receiver close and kills its child.
    _alive: watch::Sender<()>,
}

/// What the supervisor and the requests share.
struct Inner {
    /// The program's file name, for log lines.
    name: Arc<str>,
    argv: Vec<String>,
    /// Words of the command that name files: a change to any of them
    /// reloads the plugin (the program, or the script an interpreter runs).
    watched: Vec<PathBuf>,
    timeout: Duration,
    /// The answer given in the plugin's place.
    failure: PluginDecision,
    /// The process new requests go to; `None` while restarting.
    current: Mutex<Option<Arc<Process>>>,
    /// Requests waiting for an answer, bounded by [`MAX_PENDING`].
    pending: AtomicUsize,
}

/// One plugin process as requests see it. When the last handle is dropped
/// (the process was replaced and its requests are done), the request
/// channel closes and the plugin reads end-of-file on its stdin.
struct Process {
    lines: mpsc::Sender<String>,
    talk: Arc<Conversation>,
}

/// One process's side of the conversation, shared by the requests and the
/// task that reads its answers.
struct Conversation {
    name: Arc<str>,
    pid: u32,
    started: Instant,
    failure: PluginDecision,
    waiting: Mutex<Waiting>,
    /// When the last line was read from the plugin's stdout.
    last_read: Mutex<Instant>,
    /// Asks the driver to kill the process (hung, or retired and late).
    kill: Notify,
    /// The hang was reported and the kill asked for; only once.
    killing: AtomicBool,
    /// Garbage (a bad line, an answer nobody waits for) is logged once per
    /// process, not per line: a broken plugin must not flood the log.
    garbage_logged: AtomicBool,
    /// `Some(how it ended)` once the process is gone and every request
    /// waiting on it has had the failure answer.
    exited: watch::Sender<Option<String>>,
}

/// Requests waiting for their answer, by event id. Several requests may
/// name the same event at once (two clients publishing it), so each id has
/// a queue, answered in order.
#[derive(Default)]
struct Waiting {
    /// The process is gone: no request may wait on it any more.
    closed: bool,
    by_id: HashMap<String, VecDeque<oneshot::Sender<PluginDecision>>>,
}

/// One answer line, as strfry plugins write it. Other keys are ignored.
#[derive(Deserialize)]
struct Answer {
    id: String,
    action: String,
    #[serde(default)]
    msg: Option<String>,
}

impl WritePlugin {
    /// Starts the plugin named by `plugin.command`, or returns `None` when
    /// it is empty (no plugin). A plugin that cannot be started is logged
    /// and retried with back-off; the relay starts anyway, with the failure
    /// policy answering meanwhile, as it would after a crash.
    pub fn start(config: &config::Plugin) -> Option<Arc<WritePlugin>> {
        let argv: Vec<String> = config
            .command
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let program = argv.first()?;
        let name: Arc<str> = Path::new(program)
            .file_name()
            .map_or_else(|| program.clone(), |n| n.to_string_lossy().into_owned())
            .into();
        let watched = argv
            .iter()
            .map(PathBuf::from)
            .filter(|path| path.is_file())
            .collect();
        let failure = match config.on_failure {
            OnFailure::Reject => PluginDecision::Reject(UNAVAILABLE.to_owned()),
            OnFailure::Accept => PluginDecision::Accept,
        };
        let inner = Arc::new(Inner {
            name,
            argv,
            watched,
            timeout: Duration::from_millis(config.timeout_ms),
            failure,
            current: Mutex::new(None),
            pending: AtomicUsize::new(0),
        });
        let (alive_sender, alive) = watch::channel(());
        // The first process is started here rather than by the supervisor,
        // so that it is there before the relay accepts its first event.
        if let Err(error) = inner.launch(&alive) {
            tracing::warn!(
                plugin = %inner.name, %error,
                "cannot start the write policy plugin; retrying"
            );
        }
        let supervisor = tokio::spawn(supervise(inner.clone(), alive));
        Some(Arc::new(WritePlugin {
            inner,
            supervisor,
            _alive: alive_sender,
        }))
    }

    /// Asks the plugin about one event and waits for its answer, at most
    /// `timeout_ms`. Never fails: when the plugin cannot answer (timeout,
    /// crash, restart, too many requests waiting), the failure policy
    /// answers in its place. `event_json` is the event as stored (one line,
    /// compact), `received_at` in Unix seconds.
    pub async fn decide(
        &self,
        event_json: &str,
        event_id_hex: &str,
        origin: &Origin,
        received_at: i64,
    ) -> PluginDecision {
        let inner = &*self.inner;
        let Some(process) = inner.current() else {
            return inner.failure.clone();
        };
        let Some(_slot) = Slot::take(&inner.pending) else {
            tracing::debug!(plugin = %inner.name, "too many events wait for the write policy plugin");
            return inner.failure.clone();
        };
        let (answer, answered) = oneshot::channel();
        if !process.talk.register(event_id_hex, answer) {
            return inner.failure.clone();
        }
        // Dropped last (after the receiver): takes our entry out of the
        // queue if no answer came, whether we timed out or were cancelled.
        let _registered = Registered {
            talk: &process.talk,
            id: event_id_hex,
        };
        let line = request_line(event_json, origin, received_at);
        let sent = Instant::now();
        let exchange = async {
            process.lines.send(line).await.ok()?;
            answered.await.ok()
        };
        match tokio::time::timeout(inner.timeout, exchange).await {
            Ok(Some(decision)) => decision,
            Ok(None) => inner.failure.clone(),
            Err(_) => {
                process.talk.timed_out(sent, inner.timeout);
                inner.failure.clone()
            }
        }
    }
}

impl Drop for WritePlugin {
    fn drop(&mut self) {
        // `_alive` is dropped right after: every driver kills its child.
        self.supervisor.abort();
    }
}

impl Inner {
    fn current(&self) -> Option<Arc<Process>> {
        lock(&self.current).clone()
    }

    fn replace(&self, process: Option<Arc<Process>>) -> Option<Arc<Process>> {
        std::mem::replace(&mut *lock(&self.current), process)
    }

    /// Spawns a process and makes it the one new requests go to; returns
    /// the one it replaces.
    fn launch(&self, alive: &watch::Receiver<()>) -> std::io::Result<Option<Arc<Process>>> {
        let process = self.spawn(alive.clone())?;
        tracing::info!(plugin = %self.name, pid = process.talk.pid, "write policy plugin started");
        Ok(self.replace(Some(process)))
    }

    fn spawn(&self, alive: watch::Receiver<()>) -> std::io::Result<Arc<Process>> {
        let mut child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C meant for the relay must not
            // kill the plugin while the relay drains its in-flight events;
            // the relay kills it when it is done.
            .process_group(0)
            .spawn()?;
        let missing = || std::io::Error::other("a piped stdio handle is missing");
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let stderr = child.stderr.take().ok_or_else(missing)?;
        let pid = child.id().unwrap_or_default();
        let (lines, queue) = mpsc::channel(MAX_PENDING);
        let talk = Arc::new(Conversation {
            name: self.name.clone(),
            pid,
            started: Instant::now(),
            failure: self.failure.clone(),
            waiting: Mutex::new(Waiting::default()),
            last_read: Mutex::new(Instant::now()),
            kill: Notify::new(),
            killing: AtomicBool::new(false),
            garbage_logged: AtomicBool::new(false),
            exited: watch::Sender::new(None),
        });
        tokio::spawn(write_requests(stdin, queue));
        tokio::spawn(log_stderr(stderr, self.name.clone(), pid));
        tokio::spawn(drive(child, stdout, talk.clone(), alive));
        Ok(Arc::new(Process { lines, talk }))
    }
}

/// Restarts the plugin when it stops (with back-off) and reloads it when
/// one of its files changes.
async fn supervise(inner: Arc<Inner>, alive: watch::Receiver<()>) {
    let mut files = Files::new(inner.watched.clone());
    let mut backoff = FIRST_BACKOFF;
    let mut ticker = tokio::time::interval(POLL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let Some(process) = inner.current() else {
            // Stopped: wait out the back-off (a changed file cuts it short,
            // so a fix takes effect at once) and start it again.
            let changed = wait_or_change(backoff, &mut ticker, &mut files).await;
            backoff = if changed {
                FIRST_BACKOFF
            } else {
                (backoff * 2).min(MAX_BACKOFF)
            };
            if let Err(error) = inner.launch(&alive) {
                tracing::warn!(
                    plugin = %inner.name, %error, retry_in_ms = backoff.as_millis() as u64,
                    "cannot start the write policy plugin"
                );
            }
            continue;
        };
        let mut exited = process.talk.exited.subscribe();
        let stopped = tokio::select! {
            how = exited.wait_for(Option::is_some) => {
                Some(how.ok().and_then(|how| how.clone()).unwrap_or_default())
            }
            _ = ticker.tick() => None,
        };
        if let Some(how) = stopped {
            inner.replace(None);
            if process.talk.started.elapsed() >= MAX_BACKOFF {
                backoff = FIRST_BACKOFF;
            }
            tracing::warn!(
                plugin = %inner.name, pid = process.talk.pid, restart_in_ms = backoff.as_millis() as u64,
                "the write policy plugin stopped ({how}); restarting it"
            );
        } else if files.changed() {
            tracing::info!(plugin = %inner.name, "the write policy plugin changed; reloading it");
            backoff = FIRST_BACKOFF;
            match inner.launch(&alive) {
                Ok(old) => {
                    drop(process);
                    if let Some(old) = old {
                        retire(old, inner.timeout);
                    }
                }
                Err(error) => tracing::warn!(
                    plugin = %inner.name, %error,
                    "cannot start the changed write policy plugin; keeping the running one"
                ),
            }
        }
    }
}

/// Lets a replaced process answer what it was asked: once its last request
/// is done its stdin closes, and a strfry-style plugin exits at end of
/// input. One that is still there when every request has timed out is
/// killed.
fn retire(old: Arc<Process>, timeout: Duration) {
    let talk = old.talk.clone();
    drop(old);
    tokio::spawn(async move {
        tokio::time::sleep(timeout + Duration::from_secs(1)).await;
        talk.kill.notify_one();
    });
}

/// Sleeps `delay`, or less if one of the files changes; true if one did.
async fn wait_or_change(delay: Duration, ticker: &mut Interval, files: &mut Files) -> bool {
    let wake = tokio::time::sleep(delay);
    tokio::pin!(wake);
    loop {
        tokio::select! {
            () = &mut wake => return false,
            _ = ticker.tick() => if files.changed() {
                return true;
            },
        }
    }
}

/// The plugin's files and what they looked like when last checked.
struct Files {
    paths: Vec<PathBuf>,
    seen: Vec<Option<(SystemTime, u64)>>,
}

impl Files {
    fn new(paths: Vec<PathBuf>) -> Files {
        let seen = paths.iter().map(|p| fingerprint(p)).collect();
        Files { paths, seen }
    }

    /// Whether any file's modification time or size changed since the
    /// last call (a file replaced by rename counts too).
    fn changed(&mut self) -> bool {
        let now: Vec<_> = self.paths.iter().map(|p| fingerprint(p)).collect();
        let changed = now != self.seen;
        self.seen = now;
        changed
    }
}

fn fingerprint(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// Reads the plugin's answers until it stops (end of its stdout, exit, a
/// kill for hanging, the relay shutting down), then kills and reaps it and
/// gives every request still waiting on it the failure answer at once.
async fn drive(
    mut child: Child,
    stdout: ChildStdout,
    talk: Arc<Conversation>,
    mut alive: watch::Receiver<()>,
) {
    let mut stdout = BufReader::new(stdout);
    let mut line = Vec::new();
    let mut exited = false;
    let mut drain_until = Instant::now();
    let how = loop {
        tokio::select! {
            read = read_line(&mut stdout, &mut line) => match read {
                Ok(true) => {
                    talk.answer(&line);
                    line.clear();
                }
                Ok(false) => break "closed its stdout".to_owned(),
                Err(error) => break format!("cannot read its stdout: {error}"),
            },
            _ = child.wait(), if !exited => {
                exited = true;
                drain_until = Instant::now() + EXIT_DRAIN;
            }
            () = tokio::time::sleep_until(drain_until), if exited => {
                break "exited".to_owned();
            }
            () = talk.kill.notified() => break "killed".to_owned(),
            _ = alive.changed() => break "the relay stopped".to_owned(),
        }
    };
    let _ = child.start_kill();
    let how = match child.wait().await {
        Ok(status) => format!("{how}, {status}"),
        Err(error) => format!("{how}, {error}"),
    };
    talk.close();
    tracing::debug!(plugin = %talk.name, pid = talk.pid, "write policy plugin process ended: {how}");
    talk.exited.send_replace(Some(how));
}

/// Writes requests to the plugin's stdin as they come, each batch in one
/// write. Ends when the plugin stops reading (broken pipe) or when the
/// process is replaced and its last request is done: dropping stdin is the
/// end-of-input that tells the plugin to exit.
async fn write_requests(stdin: ChildStdin, mut queue: mpsc::Receiver<String>) {
    let mut stdin = BufWriter::new(stdin);
    while let Some(line) = queue.recv().await {
        if stdin.write_all(line.as_bytes()).await.is_err() {
            return;
        }
        while let Ok(line) = queue.try_recv() {
            if stdin.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
        if stdin.flush().await.is_err() {
            return;
        }
    }
}

/// Copies the plugin's stderr into the relay's log, a line per record,
/// tagged with the plugin's name and pid: operators read one log, and a
/// line there says which program wrote it and when (inherited, it would
/// land untagged in the middle of the relay's structured lines).
async fn log_stderr(stderr: ChildStderr, name: Arc<str>, pid: u32) {
    let mut stderr = BufReader::new(stderr);
    let mut line = Vec::new();
    while let Ok(true) = read_line(&mut stderr, &mut line).await {
        let text = String::from_utf8_lossy(&line);
        tracing::info!(plugin = %name, pid, "{}", text.trim_end());
        line.clear();
    }
}

/// Reads the rest of one line (without its newline) into `line`, keeping
/// at most [`MAX_LINE`] bytes of it; `Ok(false)` at end of input. Cancel
/// safe: a partial line stays in `line` (the caller clears it after use).
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<bool> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            // A last line without its newline still counts.
            return Ok(!line.is_empty());
        }
        let (chunk, used, complete) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (&available[..end], end + 1, true),
            None => (available, available.len(), false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        reader.consume(used);
        if complete {
            return Ok(true);
        }
    }
}

impl Conversation {
    /// Queues a request's answer slot; false if the process is gone.
    fn register(&self, id: &str, answer: oneshot::Sender<PluginDecision>) -> bool {
        let mut waiting = lock(&self.waiting);
        if waiting.closed {
            return false;
        }
        waiting
            .by_id
            .entry(id.to_owned())
            .or_default()
            .push_back(answer);
        true
    }

    /// Drops the slots of `id` whose requests have gone (timed out, or the
    /// client left), so that a plugin that never answers cannot fill the
    /// map. A late answer then goes to the next request for the same event,
    /// if any, which is a decision about the same event.
    fn forget(&self, id: &str) {
        let mut waiting = lock(&self.waiting);
        if let Some(queue) = waiting.by_id.get_mut(id) {
            queue.retain(|answer| !answer.is_closed());
            if queue.is_empty() {
                waiting.by_id.remove(id);
            }
        }
    }

    /// The process is gone: every request still waiting gets the failure
    /// answer now rather than at its timeout, and later ones are refused.
    fn close(&self) {
        let waiting = {
            let mut waiting = lock(&self.waiting);
            waiting.closed = true;
            std::mem::take(&mut waiting.by_id)
        };
        for answer in waiting.into_values().flatten() {
            let _ = answer.send(self.failure.clone());
        }
    }

    /// Handles one line from the plugin's stdout.
    fn answer(&self, line: &[u8]) {
        *lock(&self.last_read) = Instant::now();
        if line.trim_ascii().is_empty() {
            return;
        }
        let Ok(answer) = serde_json::from_slice::<Answer>(line) else {
            return self.garbage("a line that is not an answer", line);
        };
        let decision = match answer.action.as_str() {
            "accept" => PluginDecision::Accept,
            "reject" => PluginDecision::Reject(reject_reason(answer.msg.as_deref())),
            "shadowReject" => PluginDecision::ShadowReject,
            _ => return self.garbage("an answer with an unknown action", line),
        };
        let waiter = {
            let mut waiting = lock(&self.waiting);
            let queue = waiting.by_id.get_mut(&answer.id);
            let waiter = queue.and_then(VecDeque::pop_front);
            if waiting
                .by_id
                .get(&answer.id)
                .is_some_and(VecDeque::is_empty)
            {
                waiting.by_id.remove(&answer.id);
            }
            waiter
        };
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(decision);
            }
            None => self.garbage("an answer for an event nobody is waiting for", line),
        }
    }

    /// Logs the first piece of garbage this process writes; the line itself
    /// is ignored (its request, if any, times out).
    fn garbage(&self, what: &str, line: &[u8]) {
        if !self.garbage_logged.swap(true, Ordering::Relaxed) {
            let text = String::from_utf8_lossy(&line[..line.len().min(200)]);
            tracing::warn!(
                plugin = %self.name, pid = self.pid, line = %text,
                "the write policy plugin wrote {what}; ignoring it \
                 (further ones from this process are not logged)"
            );
        }
    }

    /// A request sent at `sent` got no answer in time. If nothing at all
    /// was read since, the plugin is hung: kill it (it is restarted).
    fn timed_out(&self, sent: Instant, timeout: Duration) {
        let silent = *lock(&self.last_read) < sent;
        if silent && !self.killing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                plugin = %self.name, pid = self.pid, timeout_ms = timeout.as_millis() as u64,
                "the write policy plugin answered nothing in time; killing it"
            );
            self.kill.notify_one();
        }
    }
}

/// A request's place in [`Inner::pending`].
struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    fn take(count: &'a AtomicUsize) -> Option<Slot<'a>> {
        if count.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING {
            count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(count))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request's answer slot in a [`Conversation`], removed when the request
/// ends without an answer.
struct Registered<'a> {
    talk: &'a Conversation,
    id: &'a str,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.talk.forget(self.id);
    }
}

/// One request line: strfry's input message for a new event.
fn request_line(event_json: &str, origin: &Origin, received_at: i64) -> String {
    let address = origin.address.map(|address| match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    });
    let (source_type, source_info) = match address {
        Some(IpAddr::V4(v4)) => ("IP4", v4.to_string()),
        Some(IpAddr::V6(v6)) => ("IP6", v6.to_string()),
        None => ("Import", String::new()),
    };
    let source_info = serde_json::Value::String(source_info);
    format!(
        r#"{{"type":"new","event":{event_json},"receivedAt":{received_at},"sourceType":"{source_type}","sourceInfo":{source_info}}}"#
    ) + "\n"
}

/// The OK reason for a plugin's `reject`: its `msg`, behind `blocked: `
/// unless it already starts with a NIP-01 prefix.
fn reject_reason(msg: Option<&str>) -> String {
    match msg.map(str::trim).filter(|m| !m.is_empty()) {
        None => "blocked: rejected by the relay's write policy".to_owned(),
        Some(msg) if PREFIXES.iter().any(|p| msg.starts_with(p)) => msg.to_owned(),
        Some(msg) => format!("blocked: {msg}"),
    }
}

/// Locks a mutex even if a panic poisoned it: every critical section here
/// leaves the data consistent, so the lock is still good.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_reasons_keep_or_add_a_prefix() {
        assert_eq!(
            reject_reason(Some("rate-limited: slow down")),
            "rate-limited: slow down"
        );
        assert_eq!(reject_reason(Some("no spam")), "blocked: no spam");
        assert_eq!(reject_reason(Some("blocked:x")), "blocked:x");
        assert_eq!(
            reject_reason(None),
            "blocked: rejected by the relay's write policy"
        );
        assert_eq!(reject_reason(Some("  ")), reject_reason(None));
    }

    #[test]
    fn request_lines_name_the_source() {
        let event = r#"{"id":"ab"}"#;
        let v4 = Origin {
            address: Some("1.2.3.4".parse().unwrap()),
            ..Origin::default()
        };
        let mapped = Origin {
            address: Some("::ffff:1.2.3.4".parse().unwrap()),
            ..Origin::default()
        };
        let v6 = Origin {
            address: Some("2001:db8::1".parse().unwrap()),
            ..Origin::default()
        };
        let line = request_line(event, &v4, 7);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"type": "new", "event": {"id": "ab"}, "receivedAt": 7,
                "sourceType": "IP4", "sourceInfo": "1.2.3.4"})
        );
        assert_eq!(request_line(event, &mapped, 7), line);
        let parsed: serde_json::Value = serde_json::from_str(&request_line(event, &v6, 7)).unwrap();
        assert_eq!(parsed["sourceType"], "IP6");
        assert_eq!(parsed["sourceInfo"], "2001:db8::1");
        let parsed: serde_json::Value =
            serde_json::from_str(&request_line(event, &Origin::default(), 7)).unwrap();
        assert_eq!(parsed["sourceType"], "Import");
        assert_eq!(parsed["sourceInfo"], "");
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_partial_lines_kept() {
        let mut input = vec![b'x'; MAX_LINE + 10];
        input.extend(b"\nshort\nlast");
        let mut reader = BufReader::with_capacity(1000, &input[..]);
        let mut line = Vec::new();
        assert!(read_line(&mut reader, &mut line).await.unwrap());
        assert_eq!(line.len(), MAX_LINE);
        line.clear();
        assert!(read_line(&mut reader, &mut line).await.unwrap());
        assert_eq!(line, b"short");
        line.clear();
        assert!(read_line(&mut reader, &mut line).await.unwrap());
        assert_eq!(line, b"last");
        line.clear();
        assert!(!read_line(&mut reader, &mut line).await.unwrap());
    }
}
