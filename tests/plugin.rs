//! The write-policy plugin, end to end: real plugin processes (Python 3
//! scripts written into a temporary directory, and the shipped example)
//! behind a relay on real WebSockets. Covers the three answers, the
//! example whitelist, and the ways a plugin misbehaves: it crashes, hangs,
//! writes garbage, answers for the wrong event, or is replaced on disk.
//! Every misbehaving plugin records its pid, so that the tests can tell a
//! restart from the same process going on.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use nostr::prelude::*;
use nostr_relayd::config::OnFailure;
use nostr_relayd::plugin::UNAVAILABLE;
use serde_json::json;
use tempfile::TempDir;

/// How long a test waits for something that happens on its own (a restart,
/// a reload, a process exit) before failing.
const EVENTUALLY: Duration = Duration::from_secs(15);

/// The start of every test plugin: records its pid in `pids` beside the
/// script, and helpers to read requests and write answers.
const PRELUDE: &str = r#"#!/usr/bin/env python3
import json, os, sys, time
HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "pids"), "a") as f:
    f.write(f"{os.getpid()}\n")

def send(line):
    sys.stdout.write(line if isinstance(line, str) else json.dumps(line))
    sys.stdout.write("\n")
    sys.stdout.flush()

def answer(req, action, msg=""):
    send({"id": req["event"]["id"], "action": action, "msg": msg})

def requests():
    for line in sys.stdin:
        yield json.loads(line)
"#;

/// Writes an executable plugin script in one step (write, then rename), as
/// an operator should: the relay must never start a half-written file.
fn write_plugin(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("plugin.py");
    let temporary = dir.join("plugin.py.new");
    std::fs::write(&temporary, format!("{PRELUDE}\n{body}")).unwrap();
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&temporary, &path).unwrap();
    path
}

/// A relay whose plugin is `script`.
async fn relay_with(script: &Path, timeout_ms: u64, on_failure: OnFailure) -> TestRelay {
    let command = script.display().to_string();
    TestRelay::start_with(move |c| {
        c.plugin.command = command;
        c.plugin.timeout_ms = timeout_ms;
        c.plugin.on_failure = on_failure;
    })
    .await
}

/// The pids the test plugins in `dir` recorded, in start order.
fn pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits until process `pid` is gone (killed or exited, and reaped).
async fn wait_gone(pid: u32, what: &str) {
    let deadline = Instant::now() + EVENTUALLY;
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "{what}: process {pid} still runs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes fresh notes until one gets `wanted`; every other answer must
/// be one of `meanwhile` (what the relay may say while the plugin is being
/// restarted or reloaded).
async fn publish_until(
    client: &mut Client,
    keys: &Keys,
    wanted: (bool, &str),
    meanwhile: &[(bool, &str)],
) {
    let deadline = Instant::now() + EVENTUALLY;
    for i in 0.. {
        let event = note(keys, &format!("probe {i}"));
        let (accepted, reason) = client.publish(&event).await;
        if (accepted, reason.as_str()) == wanted {
            return;
        }
        assert!(
            meanwhile.contains(&(accepted, reason.as_str())),
            "unexpected answer while waiting for {wanted:?}: ({accepted}, {reason:?})"
        );
        assert!(
            Instant::now() < deadline,
            "never got {wanted:?}; last ({accepted}, {reason:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether an event with this id is stored.
async fn stored(client: &mut Client, event: &Event) -> bool {
    let found = client
        .query("stored?", vec![json!({"ids": [event.id.to_hex()]})])
        .await;
    !found.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_and_rejects_with_the_plugins_reason() {
    let dir = TempDir::new().unwrap();
    // The plugin also checks the request itself: anything off is refused
    // with a reason naming it.
    let script = write_plugin(
        dir.path(),
        r#"
FIELDS = {"id", "pubkey", "created_at", "kind", "tags", "content", "sig"}
for req in requests():
    event = req["event"]
    well_formed = (
        req.get("type") == "new"
        and isinstance(req.get("receivedAt"), int)
        and abs(req["receivedAt"] - time.time()) < 60
        and req.get("sourceType") == "IP4"
        and req.get("sourceInfo") == "127.0.0.1"
        and set(event) == FIELDS
    )
    if not well_formed:
        answer(req, "reject", "invalid: malformed request " + json.dumps(req))
    elif event["content"].startswith("spam"):
        answer(req, "reject", "no spam here")
    elif event["content"] == "slow":
        answer(req, "reject", "rate-limited: slow down")
    else:
        answer(req, "accept")
"#,
    );
    let mut relay = relay_with(&script, 5000, OnFailure::Reject).await;
    let mut client = relay.client().await;
    let keys = Keys::generate();

    let good = note(&keys, "hello");
    assert_eq!(client.publish(&good).await, (true, String::new()));
    assert!(stored(&mut client, &good).await);

    let spam = note(&keys, "spam spam");
    assert_eq!(
        client.publish(&spam).await,
        (false, "blocked: no spam here".to_owned()),
        "a msg without a NIP-01 prefix gets blocked: in front"
    );
    assert!(!stored(&mut client, &spam).await);

    let slow = note(&keys, "slow");
    assert_eq!(
        client.publish(&slow).await,
        (false, "rate-limited: slow down".to_owned()),
        "a msg with a NIP-01 prefix is kept as it is"
    );

    // The plugin only sees valid events: a bad signature is refused
    // before it is asked (it would have accepted this content).
    let mut forged = to_value(&note(&keys, "forged"));
    forged["sig"] = json!("00".repeat(64));
    let (accepted, reason) = client.publish_raw(&forged).await;
    assert!(!accepted && reason.starts_with("invalid:"), "{reason}");

    // The relay kills its plugin when it shuts down.
    let pid = pids(dir.path())[0];
    assert!(alive(pid));
    relay.stop().await;
    wait_gone(pid, "after the relay stopped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_reject_says_ok_but_stores_and_broadcasts_nothing() {
    let dir = TempDir::new().unwrap();
    let script = write_plugin(
        dir.path(),
        r#"
for req in requests():
    answer(req, "accept" if req["event"]["content"] == "keep" else "shadowReject")
"#,
    );
    let relay = relay_with(&script, 5000, OnFailure::Reject).await;
    let keys = Keys::generate();
    let mut subscriber = relay.client().await;
    let live = subscriber
        .req(
            "live",
            vec![json!({"authors": [keys.public_key().to_hex()]})],
        )
        .await;
    assert!(live.is_empty());
    let mut publisher = relay.client().await;

    let hidden = note(&keys, "spam");
    assert_eq!(publisher.publish(&hidden).await, (true, String::new()));
    assert!(!stored(&mut publisher, &hidden).await);

    // The subscriber gets the next accepted event, and not the hidden one
    // before it.
    let kept = note(&keys, "keep");
    assert_eq!(publisher.publish(&kept).await, (true, String::new()));
    let delivered = subscriber.recv().await;
    assert_eq!(delivered[0], "EVENT");
    assert_eq!(delivered[2]["id"], kept.id.to_hex());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_whitelist_plugin() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plugins/whitelist.py");
    let mode = std::fs::metadata(&example).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "the example is executable");
    let source = std::fs::read_to_string(&example).unwrap();
    let placeholder = "003ba9b2c5bd8afeed41a4ce362a8b7fc3ab59c25b6a1359cae9093f296dac01";
    assert!(source.contains(placeholder));
    let friend = Keys::generate();
    let dir = TempDir::new().unwrap();
    let script = dir.path().join("whitelist.py");
    std::fs::write(
        &script,
        source.replace(placeholder, &friend.public_key().to_hex()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let relay = relay_with(&script, 5000, OnFailure::Reject).await;
    let mut client = relay.client().await;
    let welcome = note(&friend, "I am on the list");
    assert_eq!(client.publish(&welcome).await, (true, String::new()));
    assert!(stored(&mut client, &welcome).await);
    let stranger = note(&Keys::generate(), "let me in");
    assert_eq!(
        client.publish(&stranger).await,
        (false, "blocked: not on the whitelist".to_owned())
    );
    assert!(!stored(&mut client, &stranger).await);
}

/// A plugin that dies, without answering, on the note "crash", and
/// rejects everything else with its own reason.
const CRASHES: &str = r#"
for req in requests():
    if req["event"]["content"] == "crash":
        os._exit(3)
    answer(req, "reject", "blocked: decided by the plugin")
"#;

const PLUGIN_SAYS: (bool, &str) = (false, "blocked: decided by the plugin");

/// The crash test for one failure policy: the request the plugin died on
/// gets the failure answer at once (the timeout is a minute), the plugin is
/// restarted, and later events are decided by it again.
async fn crash_and_restart(on_failure: OnFailure, failure: (bool, &str)) {
    let dir = TempDir::new().unwrap();
    let script = write_plugin(dir.path(), CRASHES);
    let relay = relay_with(&script, 60_000, on_failure).await;
    let mut client = relay.client().await;
    let keys = Keys::generate();
    let (accepted, reason) = client.publish(&note(&keys, "before")).await;
    assert_eq!((accepted, reason.as_str()), PLUGIN_SAYS);

    let crash = note(&keys, "crash");
    let (accepted, reason) = client.publish(&crash).await;
    assert_eq!((accepted, reason.as_str()), failure);
    assert_eq!(stored(&mut client, &crash).await, failure.0);

    publish_until(&mut client, &keys, PLUGIN_SAYS, &[failure]).await;
    let pids = pids(dir.path());
    assert_eq!(pids.len(), 2, "restarted once: {pids:?}");
    assert!(!alive(pids[0]));
    assert!(alive(pids[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_plugin_is_restarted_failing_closed_meanwhile() {
    crash_and_restart(OnFailure::Reject, (false, UNAVAILABLE)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_plugin_is_restarted_failing_open_meanwhile() {
    crash_and_restart(OnFailure::Accept, (true, "")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_plugin_times_out_and_is_killed_and_restarted() {
    let dir = TempDir::new().unwrap();
    let script = write_plugin(
        dir.path(),
        r#"
for req in requests():
    if req["event"]["content"] == "hang":
        time.sleep(3600)
    answer(req, "accept")
# Deaf to the end of its input: only a kill stops it.
time.sleep(3600)
"#,
    );
    let timeout = Duration::from_millis(2000);
    let mut relay = relay_with(&script, timeout.as_millis() as u64, OnFailure::Reject).await;
    let keys = Keys::generate();
    let mut writer = relay.client().await;
    assert_eq!(
        writer.publish(&note(&keys, "first")).await,
        (true, String::new())
    );

    let hang = note(&keys, "hang");
    let sent = Instant::now();
    writer
        .send_text(format!(r#"["EVENT",{}]"#, hang.as_json()))
        .await;
    // Meanwhile the relay serves everyone else.
    let mut reader = relay.client().await;
    let found = reader
        .query(
            "meanwhile",
            vec![json!({"authors": [keys.public_key().to_hex()]})],
        )
        .await;
    assert_eq!(found.len(), 1);
    let query_done = sent.elapsed();

    let (accepted, reason) = writer.ok_for(&hang.id.to_hex()).await;
    let answered = sent.elapsed();
    assert_eq!((accepted, reason.as_str()), (false, UNAVAILABLE));
    assert!(
        query_done < answered,
        "the REQ ({query_done:?}) was answered while the plugin hung ({answered:?})"
    );
    assert!(
        answered >= timeout,
        "answered after the timeout: {answered:?}"
    );
    assert!(
        answered < timeout * 4,
        "answered soon after the timeout: {answered:?}"
    );

    publish_until(&mut writer, &keys, (true, ""), &[(false, UNAVAILABLE)]).await;
    let pids = pids(dir.path());
    assert_eq!(pids.len(), 2, "restarted once: {pids:?}");
    wait_gone(pids[0], "the hung plugin is killed").await;

    // It ignores the end of its input, so the relay must kill it when it
    // shuts down.
    relay.stop().await;
    wait_gone(pids[1], "after the relay stopped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_answers_are_ignored() {
    let dir = TempDir::new().unwrap();
    let script = write_plugin(
        dir.path(),
        r#"
for req in requests():
    event_id = req["event"]["id"]
    send("hello, relay")
    send("{}")
    send("[1, 2, 3]")
    send('{"id": 5, "action": "accept"}')
    send({"id": event_id, "action": "maybe"})
    send({"id": event_id})
    send({"id": "ff" * 32, "action": "accept"})
    send("x" * 200000)
    send("")
    if req["event"]["content"] == "no":
        answer(req, "reject", "blocked: the real answer")
    else:
        answer(req, "accept")
"#,
    );
    let relay = relay_with(&script, 5000, OnFailure::Reject).await;
    let mut client = relay.client().await;
    let keys = Keys::generate();
    let refused = note(&keys, "no");
    assert_eq!(
        client.publish(&refused).await,
        (false, "blocked: the real answer".to_owned())
    );
    for i in 0..3 {
        let event = note(&keys, &format!("yes {i}"));
        assert_eq!(client.publish(&event).await, (true, String::new()));
        assert!(stored(&mut client, &event).await);
    }
    assert_eq!(pids(dir.path()).len(), 1, "garbage does not restart it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_for_the_wrong_event_is_ignored() {
    let dir = TempDir::new().unwrap();
    let script = write_plugin(
        dir.path(),
        r#"
for req in requests():
    if req["event"]["content"] == "wrong":
        send({"id": "00" * 32, "action": "accept", "msg": ""})
    else:
        answer(req, "reject", "blocked: the right id")
"#,
    );
    let relay = relay_with(&script, 500, OnFailure::Reject).await;
    let mut client = relay.client().await;
    let keys = Keys::generate();
    let wrong = note(&keys, "wrong");
    // The stray "accept" must not count for it: it times out.
    assert_eq!(
        client.publish(&wrong).await,
        (false, UNAVAILABLE.to_owned())
    );
    assert!(!stored(&mut client, &wrong).await);
    // The plugin still talks, so it is not taken for hung.
    assert_eq!(
        client.publish(&note(&keys, "right")).await,
        (false, "blocked: the right id".to_owned())
    );
    assert_eq!(pids(dir.path()).len(), 1, "not restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_is_reloaded_when_its_file_changes() {
    let dir = TempDir::new().unwrap();
    let script = write_plugin(
        dir.path(),
        r#"
for req in requests():
    answer(req, "accept")
# Deaf to the end of its input: only a kill stops it.
time.sleep(3600)
"#,
    );
    let relay = relay_with(&script, 1000, OnFailure::Reject).await;
    let mut client = relay.client().await;
    let keys = Keys::generate();
    assert_eq!(
        client.publish(&note(&keys, "old rules")).await,
        (true, String::new())
    );
    write_plugin(
        dir.path(),
        r#"
for req in requests():
    answer(req, "reject", "blocked: new rules")
"#,
    );
    publish_until(
        &mut client,
        &keys,
        (false, "blocked: new rules"),
        &[(true, "")],
    )
    .await;
    let pids = pids(dir.path());
    assert_eq!(pids.len(), 2, "one new process: {pids:?}");
    // The old process reads the end of its input once its requests are
    // done; this one ignores it, so it is killed once they all timed out.
    wait_gone(pids[0], "the replaced plugin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_pipelined() {
    const DELAY_MS: u64 = 50;
    const CONNECTIONS: usize = 4;
    const EACH: usize = 50;
    let dir = TempDir::new().unwrap();
    // Each answer comes DELAY_MS after its request, in order: a plugin with
    // latency (a look-up elsewhere) that can have many requests in hand.
    let script = write_plugin(
        dir.path(),
        &format!(
            r#"
import queue, threading
pending = queue.Queue()
def answer_in_order():
    while True:
        due, req = pending.get()
        time.sleep(max(0.0, due - time.monotonic()))
        answer(req, "accept")
threading.Thread(target=answer_in_order, daemon=True).start()
for req in requests():
    pending.put((time.monotonic() + {DELAY_MS} / 1000, req))
"#
        ),
    );
    let relay = relay_with(&script, 60_000, OnFailure::Reject).await;
    // The same event from every connection at once: each copy must get
    // its own answer.
    let shared = note(&Keys::generate(), "everyone sends this");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let mut client = relay.client().await;
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let keys = Keys::generate();
            let events: Vec<Event> = (0..EACH)
                .map(|i| note(&keys, &format!("connection {c} event {i}")))
                .collect();
            for event in events.iter().chain([&shared]) {
                client
                    .send_text(format!(r#"["EVENT",{}]"#, event.as_json()))
                    .await;
            }
            // OKs come in the order events finish, not the order sent.
            let mut answers = HashMap::new();
            while answers.len() < events.len() + 1 {
                let message = client.recv().await;
                assert_eq!(message[0], "OK", "{message}");
                let id = message[1].as_str().unwrap().to_owned();
                let answer = (
                    message[2].as_bool().unwrap(),
                    message[3].as_str().unwrap().to_owned(),
                );
                assert!(answers.insert(id, answer).is_none(), "one OK per event");
            }
            for event in &events {
                assert_eq!(answers[&event.id.to_hex()], (true, String::new()));
            }
            let (accepted, reason) = &answers[&shared.id.to_hex()];
            assert!(
                *accepted && (reason.is_empty() || reason.starts_with("duplicate:")),
                "({accepted}, {reason:?})"
            );
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let lockstep = Duration::from_millis(DELAY_MS) * (CONNECTIONS * EACH) as u32;
    assert!(
        elapsed < lockstep / 2,
        "{} events took {elapsed:?}; one at a time would take {lockstep:?}",
        CONNECTIONS * EACH
    );
}
