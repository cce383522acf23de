//! `nostr-relayd sync` end to end: two real relay processes on loopback,
//! the sync command run as the real binary against the local relay's
//! database while that relay is running, and every result checked with REQs
//! on both relays. Events are signed with the `nostr` crate. Runs on both
//! backends (sync_on_postgres.rs: relays and the sync command on
//! PostgreSQL); sync's own tables are read through `StoredDb`.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use nostr::prelude::*;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// One relay: its configuration file, its database, the running process.
struct Side {
    _dir: TempDir,
    config: PathBuf,
    db: PathBuf,
    relay: RelayProcess,
}

impl Side {
    /// A relay with `extra` appended to a test configuration (rate limits
    /// off; everything else default).
    async fn start(extra: &str) -> Side {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("relay.toml");
        let db = dir.path().join("relay.sqlite");
        std::fs::write(&config, format!("[rate_limit]\nenabled = false\n{extra}")).unwrap();
        let relay = RelayProcess::spawn(&config, &db).await;
        Side {
            _dir: dir,
            config,
            db,
            relay,
        }
    }

    fn url(&self) -> &str {
        &self.relay.url
    }

    async fn publish(&self, events: &[Event]) {
        let mut client = Client::connect(self.url()).await;
        for event in events {
            let (accepted, reason) = client.publish(event).await;
            assert!(accepted, "{reason}");
        }
    }

    /// The ids of every event REQs with `filter` return, paged with
    /// `until` (some test relays have small pages; no second in these tests
    /// holds a page of events).
    async fn ids(&self, filter: Value) -> BTreeSet<String> {
        let mut client = Client::connect(self.url()).await;
        let mut ids = BTreeSet::new();
        let mut until: Option<u64> = None;
        loop {
            let mut page_filter = filter.clone();
            if let Some(until) = until {
                page_filter["until"] = json!(until);
            }
            let page = client.query("ids", vec![page_filter]).await;
            let before = ids.len();
            for event in &page {
                ids.insert(event["id"].as_str().unwrap().to_owned());
            }
            if ids.len() == before {
                return ids;
            }
            until = page.iter().filter_map(|e| e["created_at"].as_u64()).min();
        }
    }

    /// `nostr-relayd --config <this relay's config> <args…>` on its
    /// database, on this test binary's backend.
    fn command(&self) -> tokio::process::Command {
        tokio::process::Command::from(relayd(&self.config, &self.db))
    }

    /// This relay's database, read directly (SQLite file or PostgreSQL).
    fn stored(&self) -> StoredDb {
        stored_db(&self.db)
    }

    /// Rows of `sync_refused` (id, direction, reason), by reason.
    fn refused(&self) -> Vec<(String, String, String)> {
        let db = self.stored();
        let hex_id = match db {
            StoredDb::Sqlite(_) => "lower(hex(id))",
            StoredDb::Postgres(_) => "encode(id, 'hex')",
        };
        let rows = db.integer("SELECT count(*) FROM sync_refused");
        (0..rows)
            .map(|row| {
                let column = |name: &str| {
                    db.value(&format!(
                        "SELECT {name} FROM sync_refused ORDER BY reason, id LIMIT 1 OFFSET {row}"
                    ))
                };
                (column(hex_id), column("direction"), column("reason"))
            })
            .collect()
    }
}

/// The database of a relay started on the file `db`, on this binary's
/// backend (on PostgreSQL, the database standing for that file).
fn stored_db(db: &std::path::Path) -> StoredDb {
    if on_postgres() {
        StoredDb::Postgres(postgres_url_for(db))
    } else {
        StoredDb::Sqlite(rusqlite::Connection::open(db).unwrap())
    }
}

/// What a sync run printed and returned.
#[derive(Debug)]
struct Run {
    code: i32,
    report: Value,
    stderr: String,
}

impl Run {
    fn count(&self, key: &str) -> u64 {
        self.report[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no {key} in {}", self.report))
    }
}

/// Runs `nostr-relayd sync <remote> --filter <filter> <args…> --json` on
/// `local`'s database (its relay keeps running).
async fn sync(local: &Side, remote: &str, filter: &Value, args: &[&str]) -> Run {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        local
            .command()
            .arg("sync")
            .arg(remote)
            .arg("--filter")
            .arg(filter.to_string())
            .args(args)
            .arg("--json")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("sync finished within 2 minutes")
    .expect("sync ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no JSON report; stdout {stdout:?}; stderr {stderr}"));
    Run {
        code: output.status.code().unwrap_or(-1),
        report,
        stderr,
    }
}

/// `n` notes by `keys`, one second apart, ending `age` seconds ago.
fn notes(keys: &Keys, n: u64, age: u64, label: &str) -> Vec<Event> {
    let end = now() - age;
    (0..n)
        .map(|i| event(keys, 1, &format!("{label} {i}"), &[], end - n + i))
        .collect()
}

fn ids_of<'a>(events: impl IntoIterator<Item = &'a Event>) -> BTreeSet<String> {
    events.into_iter().map(|e| e.id.to_hex()).collect()
}

fn authors(keys: &Keys) -> Value {
    json!({"authors": [keys.public_key().to_hex()]})
}

/// How a test reaches the remote.
#[derive(Clone, Copy, Debug)]
enum Method {
    /// NIP-77.
    Negentropy,
    /// `--no-negentropy`: REQ pages although the remote speaks NIP-77.
    ForcedReq,
    /// A remote with `[negentropy] enabled = false`.
    RemoteWithoutNip77,
}

impl Method {
    fn remote_config(self) -> &'static str {
        match self {
            Method::RemoteWithoutNip77 => "[negentropy]\nenabled = false\n",
            // Small pages: the walks take several.
            _ => "[limits]\nmax_limit = 7\ndefault_limit = 7\n",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Method::ForcedReq => &["--no-negentropy"],
            _ => &[],
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Method::Negentropy => "negentropy",
            _ => "req",
        }
    }
}

/// Both ways; afterwards each relay has the union, and a second run
/// transfers nothing.
async fn both_ways(method: Method, overlap: bool) {
    let remote = Side::start(method.remote_config()).await;
    let local = Side::start("").await;
    let keys = Keys::generate();
    let only_remote = notes(&keys, 12, 100, "remote");
    let only_local = notes(&keys, 9, 50, "local");
    let shared = if overlap {
        notes(&keys, 10, 1000, "shared")
    } else {
        Vec::new()
    };
    remote.publish(&only_remote).await;
    remote.publish(&shared).await;
    local.publish(&only_local).await;
    local.publish(&shared).await;
    // Another author's notes stay where they are.
    let other = notes(&Keys::generate(), 5, 10, "other");
    remote.publish(&other).await;

    let filter = authors(&keys);
    let run = sync(
        &local,
        remote.url(),
        &filter,
        &[&["--dir", "both"], method.args()].concat(),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.report["method"], method.expected(), "{}", run.report);
    assert_eq!(run.count("downloaded"), 12, "{}", run.report);
    assert_eq!(run.count("uploaded"), 9, "{}", run.report);
    let union = ids_of(only_remote.iter().chain(&only_local).chain(&shared));
    assert_eq!(local.ids(filter.clone()).await, union);
    assert_eq!(remote.ids(filter.clone()).await, union);
    assert!(local.ids(authors_of(&other)).await.is_empty());

    let again = sync(
        &local,
        remote.url(),
        &filter,
        &[&["--dir", "both"], method.args()].concat(),
    )
    .await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        (again.count("downloaded"), again.count("uploaded")),
        (0, 0),
        "{}",
        again.report
    );
}

fn authors_of(events: &[Event]) -> Value {
    json!({"authors": [events[0].pubkey.to_hex()]})
}

#[tokio::test]
async fn both_ways_disjoint_with_negentropy() {
    both_ways(Method::Negentropy, false).await;
}

#[tokio::test]
async fn both_ways_overlapping_with_negentropy() {
    both_ways(Method::Negentropy, true).await;
}

#[tokio::test]
async fn both_ways_overlapping_with_req_pages() {
    both_ways(Method::ForcedReq, true).await;
}

#[tokio::test]
async fn both_ways_with_a_remote_without_nip77() {
    both_ways(Method::RemoteWithoutNip77, true).await;
    both_ways(Method::RemoteWithoutNip77, false).await;
}

#[tokio::test]
async fn down_into_an_empty_relay_then_nothing_more() {
    let remote = Side::start("").await;
    let local = Side::start("").await;
    let keys = Keys::generate();
    let events = notes(&keys, 40, 10, "note");
    remote.publish(&events).await;
    let filter = authors(&keys);
    let run = sync(&local, remote.url(), &filter, &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.report["method"], "negentropy");
    assert_eq!((run.count("need"), run.count("downloaded")), (40, 40));
    assert_eq!(local.ids(filter.clone()).await, ids_of(&events));
    // The final line on stderr says what happened.
    assert!(run.stderr.contains("complete"), "{}", run.stderr);
    assert!(run.stderr.contains("40 stored"), "{}", run.stderr);

    let again = sync(&local, remote.url(), &filter, &[]).await;
    assert_eq!(
        (
            again.count("have"),
            again.count("need"),
            again.count("downloaded")
        ),
        (40, 0, 0)
    );
}

#[tokio::test]
async fn up_leaves_private_and_protected_events_here() {
    let remote = Side::start("").await;
    let local = Side::start("").await;
    let keys = Keys::generate();
    let mut events = notes(&keys, 6, 10, "up");
    local.publish(&events).await;
    // A NIP-04 DM (a private kind) goes through the local relay as usual.
    let dm = event(&keys, 4, "secret", &[&["p", &"a".repeat(64)]], now() - 5);
    local.publish(std::slice::from_ref(&dm)).await;
    // A protected event (NIP-70), published here by its author.
    let protected = event(&keys, 1, "only here", &[&["-"]], now() - 4);
    let mut author = Client::connect(local.url()).await;
    assert!(author.authenticate(&keys, local.url()).await.0);
    assert_eq!(author.publish(&protected).await, (true, String::new()));
    let filter = authors(&keys);
    let run = sync(&local, remote.url(), &filter, &["--dir", "up"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.count("uploaded"), 6, "{}", run.report);
    assert_eq!(run.count("kept_back"), 2, "{}", run.report);
    assert_eq!(run.count("downloaded"), 0);
    assert_eq!(remote.ids(filter.clone()).await, ids_of(&events));
    let dms = remote
        .stored()
        .integer("SELECT count(*) FROM event WHERE kind = 4");
    assert_eq!(dms, 0, "a private kind left the relay");

    // Up by REQ pages: only what was committed since is offered.
    let more = notes(&keys, 3, 1, "later");
    local.publish(&more).await;
    let run = sync(
        &local,
        remote.url(),
        &filter,
        &["--dir", "up", "--no-negentropy"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.count("uploaded"), 3, "{}", run.report);
    events.extend(more);
    assert_eq!(remote.ids(filter.clone()).await, ids_of(&events));
    let run = sync(
        &local,
        remote.url(),
        &filter,
        &["--dir", "up", "--no-negentropy"],
    )
    .await;
    assert_eq!(
        (run.count("uploaded"), run.count("have")),
        (0, 0),
        "{}",
        run.report
    );
}

/// The remote keeps an older version of a replaceable event than this
/// relay: it is refused here, recorded, and not transferred again.
#[tokio::test]
async fn a_stale_replaceable_version_is_refused_once() {
    for args in [&[][..], &["--no-negentropy"][..]] {
        let remote = Side::start("").await;
        let local = Side::start("").await;
        let keys = Keys::generate();
        let old = event(&keys, 0, r#"{"name":"old"}"#, &[], now() - 100);
        let new = event(&keys, 0, r#"{"name":"new"}"#, &[], now() - 50);
        remote.publish(std::slice::from_ref(&old)).await;
        local.publish(std::slice::from_ref(&new)).await;
        let filter = json!({"authors": [keys.public_key().to_hex()], "kinds": [0]});
        let run = sync(&local, remote.url(), &filter, args).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(
            (run.count("downloaded"), run.count("refused")),
            (0, 1),
            "{}",
            run.report
        );
        let refused = local.refused();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, old.id.to_hex());
        assert_eq!(refused[0].1, "down");
        assert!(refused[0].2.contains("newer version"), "{refused:?}");
        assert_eq!(local.ids(filter.clone()).await, ids_of([&new]));

        let again = sync(&local, remote.url(), &filter, args).await;
        assert_eq!(again.code, 0, "{}", again.stderr);
        assert_eq!(
            (again.count("downloaded"), again.count("refused")),
            (0, 0),
            "{}",
            again.report
        );
        if args.is_empty() {
            // The refused id is in the negentropy set: no difference at all.
            assert_eq!(again.count("need"), 0, "{}", again.report);
        } else {
            assert_eq!(again.count("refused_before"), 1, "{}", again.report);
        }
        // --retry-refused looks at it again (and refuses it again).
        let retry = sync(
            &local,
            remote.url(),
            &filter,
            &[args, &["--retry-refused"]].concat(),
        )
        .await;
        assert_eq!(retry.count("refused"), 1, "{}", retry.report);
    }
}

/// A version downloaded from one remote and replaced here by a newer one
/// from another is refused once when the first remote offers it again, and
/// is no difference after that.
#[tokio::test]
async fn a_version_replaced_here_is_refused_once() {
    let remote = Side::start("").await;
    let middle = Side::start("").await;
    let local = Side::start("").await;
    let keys = Keys::generate();
    // The remote has v1; `middle` has v2 (newer). Down from both: v1,
    // stored first, is replaced by v2 here.
    let v1 = event(&keys, 10002, "", &[&["r", "wss://a.example"]], now() - 100);
    let v2 = event(&keys, 10002, "", &[&["r", "wss://b.example"]], now() - 50);
    remote.publish(std::slice::from_ref(&v1)).await;
    middle.publish(std::slice::from_ref(&v2)).await;
    let filter = authors(&keys);
    assert_eq!(
        sync(&local, remote.url(), &filter, &[])
            .await
            .count("downloaded"),
        1
    );
    assert_eq!(
        sync(&local, middle.url(), &filter, &[])
            .await
            .count("downloaded"),
        1
    );
    assert_eq!(local.ids(filter.clone()).await, ids_of([&v2]));
    // v1 was removed here by v2: the next run with the remote refuses it
    // (once), and the one after that finds no difference.
    let run = sync(&local, remote.url(), &filter, &[]).await;
    assert_eq!(
        (run.count("downloaded"), run.count("refused")),
        (0, 1),
        "{}",
        run.report
    );
    let run = sync(&local, remote.url(), &filter, &[]).await;
    assert_eq!(
        (
            run.count("need"),
            run.count("downloaded"),
            run.count("refused")
        ),
        (0, 0, 0),
        "{}",
        run.report
    );
}

/// An event deleted here (NIP-09) does not come back from a remote that
/// still has it, and a deletion on the remote removes it here.
#[tokio::test]
async fn deleted_events_are_not_resurrected() {
    let remote = Side::start("").await;
    let local = Side::start("").await;
    let keys = Keys::generate();
    let a = event(&keys, 1, "deleted here", &[], now() - 300);
    let b = event(&keys, 1, "deleted there", &[], now() - 200);
    let delete_a = event(&keys, 5, "", &[&["e", &a.id.to_hex()]], now() - 100);
    let delete_b = event(&keys, 5, "", &[&["e", &b.id.to_hex()]], now() - 90);
    remote
        .publish(&[a.clone(), b.clone(), delete_b.clone()])
        .await;
    local
        .publish(&[a.clone(), delete_a.clone(), b.clone()])
        .await;
    let filter = json!({"authors": [keys.public_key().to_hex()], "kinds": [1]});
    let all_kinds = authors(&keys);
    let run = sync(&local, remote.url(), &all_kinds, &["--dir", "both"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(local.ids(filter.clone()).await.is_empty(), "{}", run.report);
    assert!(
        remote.ids(filter.clone()).await.is_empty(),
        "{}",
        run.report
    );
    assert_eq!(
        local.ids(json!({"kinds": [5]})).await,
        ids_of([&delete_a, &delete_b])
    );
    // Nothing left to do, either way.
    let again = sync(&local, remote.url(), &all_kinds, &["--dir", "both"]).await;
    assert_eq!(
        (
            again.count("downloaded"),
            again.count("uploaded"),
            again.count("refused")
        ),
        (0, 0, 0),
        "{}",
        again.report
    );
    assert!(local.ids(filter.clone()).await.is_empty());
}

/// An interrupted run (here: `--max-events`) resumes, by NIP-77 and by
/// REQ pages (the walk's cursor is kept).
#[tokio::test]
async fn an_interrupted_sync_resumes() {
    for args in [&[][..], &["--no-negentropy"][..]] {
        let remote = Side::start("[limits]\nmax_limit = 25\ndefault_limit = 25\n").await;
        let local = Side::start("").await;
        let keys = Keys::generate();
        let events = notes(&keys, 120, 10, "many");
        remote.publish(&events).await;
        let filter = authors(&keys);
        let first = sync(
            &local,
            remote.url(),
            &filter,
            &[args, &["--max-events", "50"]].concat(),
        )
        .await;
        assert_eq!(first.code, 3, "{}", first.stderr);
        assert_eq!(first.report["complete"], false);
        assert_eq!(first.count("downloaded"), 50, "{}", first.report);
        assert!(
            first.stderr.contains("run it again to resume"),
            "{}",
            first.stderr
        );
        assert_eq!(local.ids(filter.clone()).await.len(), 50);
        if !args.is_empty() {
            // The walk's place was kept.
            let db = local.stored();
            let column = |name: &str| {
                db.value(&format!(
                    "SELECT {name} FROM sync_checkpoint WHERE direction = 'down'"
                ))
            };
            let (top, cursor) = (column("walk_top"), column("walk_cursor"));
            assert!(!top.is_empty() && !cursor.is_empty(), "{top:?} {cursor:?}");
        }
        let second = sync(&local, remote.url(), &filter, args).await;
        assert_eq!(second.code, 0, "{}", second.stderr);
        assert_eq!(second.count("downloaded"), 70, "{}", second.report);
        assert_eq!(local.ids(filter.clone()).await, ids_of(&events));
    }
}

/// REQ pages that end inside a second lose nothing; a page that is all one
/// second ends the walk's stay there instead of looping.
#[tokio::test]
async fn req_pages_handle_ties_at_the_boundary() {
    let remote = Side::start("[limits]\nmax_limit = 10\ndefault_limit = 10\n").await;
    let local = Side::start("").await;
    let keys = Keys::generate();
    let base = now() - 1000;
    let mut events = Vec::new();
    for second in [base, base + 1, base + 2] {
        for i in 0..8 {
            events.push(event(&keys, 1, &format!("tie {second} {i}"), &[], second));
        }
    }
    remote.publish(&events).await;
    let filter = authors(&keys);
    let run = sync(&local, remote.url(), &filter, &["--no-negentropy"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.count("downloaded"), 24, "{}", run.report);
    assert_eq!(run.count("crowded_seconds"), 0);
    assert_eq!(local.ids(filter.clone()).await, ids_of(&events));

    // 12 events in one second, pages of 10: the walk ends, and says so.
    let crowd_keys = Keys::generate();
    let crowd: Vec<Event> = (0..12)
        .map(|i| event(&crowd_keys, 1, &format!("crowd {i}"), &[], base))
        .collect();
    remote.publish(&crowd).await;
    let filter = authors(&crowd_keys);
    let run = sync(&local, remote.url(), &filter, &["--no-negentropy"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.count("downloaded"), 10, "{}", run.report);
    assert_eq!(run.count("crowded_seconds"), 1, "{}", run.report);
    assert!(run.stderr.contains("crowded"), "{}", run.stderr);
    // NIP-77 has no such limit.
    let run = sync(&local, remote.url(), &filter, &[]).await;
    assert_eq!(run.count("downloaded"), 2, "{}", run.report);
}

/// A remote that lists 77 but refuses this NEG-OPEN (here: more records
/// than its `max_records`) is walked with REQs instead.
#[tokio::test]
async fn a_neg_err_falls_back_to_req_pages() {
    let remote = Side::start("[negentropy]\nmax_records = 5\n").await;
    let local = Side::start("").await;
    let keys = Keys::generate();
    let events = notes(&keys, 20, 10, "big");
    remote.publish(&events).await;
    let filter = authors(&keys);
    let run = sync(&local, remote.url(), &filter, &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.report["method"], "req");
    let reason = run.report["fallback_reason"].as_str().unwrap();
    assert!(reason.starts_with("NEG-ERR blocked"), "{reason}");
    assert_eq!(local.ids(filter).await, ids_of(&events));
}

/// How the fake relay answers NEG-OPEN.
#[derive(Clone, Copy)]
enum FakeAnswer {
    Notice,
    Silence,
}

/// A relay that knows no NIP-77 and serves `events` to REQs (ids, authors,
/// since, until, limit), with no NIP-11 document.
async fn fake_relay(answer: FakeAnswer, events: Vec<Event>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let events = events.clone();
            tokio::spawn(async move {
                // A plain GET (the NIP-11 request) fails the handshake.
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(Message::Text(text))) = ws.next().await {
                    let message: Value = serde_json::from_str(text.as_str()).unwrap();
                    let replies = match message[0].as_str() {
                        Some("NEG-OPEN") => match answer {
                            FakeAnswer::Notice => {
                                vec![json!(["NOTICE", "error: unknown message type NEG-OPEN"])]
                            }
                            FakeAnswer::Silence => vec![],
                        },
                        Some("REQ") => {
                            let f = &message[2];
                            let mut found: Vec<&Event> = events
                                .iter()
                                .filter(|e| {
                                    let id = e.id.to_hex();
                                    let ts = e.created_at.as_secs();
                                    f["ids"]
                                        .as_array()
                                        .is_none_or(|l| l.iter().any(|v| v == &id))
                                        && f["authors"].as_array().is_none_or(|l| {
                                            l.iter().any(|v| v == &e.pubkey.to_hex())
                                        })
                                        && f["since"].as_u64().is_none_or(|s| ts >= s)
                                        && f["until"].as_u64().is_none_or(|u| ts <= u)
                                })
                                .collect();
                            found.sort_by_key(|e| std::cmp::Reverse(e.created_at));
                            found.truncate(f["limit"].as_u64().unwrap_or(100) as usize);
                            let mut replies: Vec<Value> = found
                                .iter()
                                .map(|e| json!(["EVENT", message[1], to_value(e)]))
                                .collect();
                            replies.push(json!(["EOSE", message[1]]));
                            replies
                        }
                        _ => vec![],
                    };
                    for reply in replies {
                        if ws.send(Message::text(reply.to_string())).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn a_remote_answering_neg_open_with_a_notice_or_silence_is_walked() {
    let keys = Keys::generate();
    let events = notes(&keys, 15, 10, "fake");
    let filter = authors(&keys);
    for (answer, expected, args) in [
        (FakeAnswer::Notice, "NOTICE", &[][..]),
        (
            FakeAnswer::Silence,
            "no answer to NEG-OPEN",
            &["--timeout", "2"][..],
        ),
    ] {
        let url = fake_relay(answer, events.clone()).await;
        let local = Side::start("").await;
        let run = sync(&local, &url, &filter, args).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(run.report["method"], "req");
        let reason = run.report["fallback_reason"].as_str().unwrap();
        assert!(reason.starts_with(expected), "{reason}");
        assert_eq!(run.count("downloaded"), 15, "{}", run.report);
        assert_eq!(local.ids(filter.clone()).await, ids_of(&events));
    }
}

/// Forged events from a remote are refused and recorded, never stored.
#[tokio::test]
async fn every_downloaded_event_is_verified() {
    let keys = Keys::generate();
    let good = notes(&keys, 3, 10, "good");
    // The fake serves a forged one too (a real relay would refuse it).
    let mut served = good.clone();
    let bad_sig = {
        let other = note(&keys, "bad signature");
        let mut value = to_value(&other);
        value["sig"] = json!("0".repeat(128));
        serde_json::from_value::<Event>(value).unwrap()
    };
    served.push(bad_sig.clone());
    let url = fake_relay(FakeAnswer::Notice, served).await;
    let local = Side::start("").await;
    let filter = authors(&keys);
    let run = sync(&local, &url, &filter, &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        (run.count("downloaded"), run.count("refused")),
        (3, 1),
        "{}",
        run.report
    );
    assert_eq!(local.ids(filter.clone()).await, ids_of(&good));
    let refused = local.refused();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0, bad_sig.id.to_hex());
    assert!(
        refused[0].2.starts_with("invalid: signature"),
        "{refused:?}"
    );
}

/// `--stream`: events published to the remote arrive here within seconds,
/// across a restart of the remote; SIGTERM ends it cleanly.
#[tokio::test]
async fn stream_mirrors_the_remote_and_reconnects() {
    let remote_dir = tempfile::tempdir().unwrap();
    let remote_config = remote_dir.path().join("relay.toml");
    let remote_db = remote_dir.path().join("relay.sqlite");
    std::fs::write(&remote_config, "[rate_limit]\nenabled = false\n").unwrap();
    let mut remote = RelayProcess::spawn(&remote_config, &remote_db).await;
    let local = Side::start("").await;
    let keys = Keys::generate();
    let filter = authors(&keys);
    let child = local
        .command()
        .arg("sync")
        .arg(&remote.url)
        .arg("--filter")
        .arg(filter.to_string())
        .arg("--stream")
        .arg("--json")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let arrives = |event: Event| {
        let url = local.url().to_owned();
        async move {
            let id = event.id.to_hex();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            loop {
                let mut client = Client::connect(&url).await;
                if !client
                    .query("s", vec![json!({"ids": [id]})])
                    .await
                    .is_empty()
                {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the event did not arrive here"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // Published after the stream started (give it a moment to subscribe).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = note(&keys, "live one");
    let mut client = Client::connect(&remote.url).await;
    assert!(client.publish(&first).await.0);
    arrives(first).await;

    // The remote goes away and comes back on the same address.
    let addr = remote.addr;
    remote.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _back = restart(&remote_config, &remote_db, addr).await;
    let second = note(&keys, "after the restart");
    let mut client = Client::connect(&format!("ws://{addr}/")).await;
    assert!(client.publish(&second).await.0);
    arrives(second).await;

    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("sync --stream ends on SIGTERM")
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let report: Value =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).unwrap();
    assert_eq!(report["streamed"], 2, "{report}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("reconnecting"), "{stderr}");
}

/// The relay binary on a given address (a restart of a remote).
async fn restart(
    config: &std::path::Path,
    db: &std::path::Path,
    addr: std::net::SocketAddr,
) -> Restarted {
    let child = relayd(config, db)
        .env("NOSTR_RELAYD_LISTEN", addr.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay did not restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Restarted(child)
}

struct Restarted(std::process::Child);

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn bad_arguments_are_refused_clearly() {
    let local = Side::start("").await;
    for (filter, expected) in [(r#"{"limit":5}"#, "limit"), ("not json", "not JSON")] {
        let output = local
            .command()
            .args(["sync", local.url(), "--filter", filter])
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
    let output = local
        .command()
        .args(["sync", "https://example.com", "--filter", "{}"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

/// wss:// goes through TLS (rustls, ring): against a plain ws:// relay the
/// handshake fails cleanly, with a message and status 1, no panic.
#[tokio::test]
async fn wss_is_spoken_with_tls() {
    let local = Side::start("").await;
    let remote = Side::start("").await;
    let url = remote.url().replace("ws://", "wss://");
    let output = local
        .command()
        .args(["sync", &url, "--filter", "{}", "--timeout", "5"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect to wss://"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
