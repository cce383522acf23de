//! `nostr-relayd export` and `nostr-relayd import`, run as the real binary
//! against a temporary database: dumps built and signed with the
//! independent `nostr` crate, every rule the writer applies, the stderr
//! report line by line, the summary counts, round trips byte for byte,
//! filters and order, and an import beside a running relay. Runs on both
//! backends (dump_on_postgres.rs); what is about the SQLite file itself is
//! in dump_sqlite.rs.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use common::*;
use nostr::prelude::*;
use serde_json::{Value, json};
use tempfile::TempDir;

/// A relay.toml and a database path in a temporary directory.
struct Database {
    dir: TempDir,
    config: PathBuf,
    db: PathBuf,
}

impl Database {
    fn new(config: &str) -> Database {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, format!("[rate_limit]\nenabled = false\n{config}")).unwrap();
        let db = dir.path().join("relay.sqlite");
        Database {
            dir,
            config: path,
            db,
        }
    }

    fn run(&self, args: &[&str], stdin: &[u8]) -> Run {
        relayd(&self.config, &self.db, args, stdin)
    }

    fn import(&self, dump: &str, flags: &[&str]) -> Run {
        import(&self.config, &self.db, dump, flags)
    }

    fn export(&self, flags: &[&str]) -> Run {
        let mut args = vec!["export"];
        args.extend_from_slice(flags);
        let run = self.run(&args, b"");
        assert!(run.success(), "export {flags:?} failed: {}", run.stderr);
        run
    }
}

/// Runs `nostr-relayd --config <config> <args>` on `db`, with `stdin`
/// piped in, logging at debug (the logs must stay on stderr).
fn relayd(config: &Path, db: &Path, args: &[&str], stdin: &[u8]) -> Run {
    let mut child = common::relayd(config, db)
        .args(args)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nostr-relayd");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // The child may stop reading early (an error); that is its answer.
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Run::from(output)
}

/// `nostr-relayd import <flags>` with `dump` on stdin.
fn import(config: &Path, db: &Path, dump: &str, flags: &[&str]) -> Run {
    let mut args = vec!["import"];
    args.extend_from_slice(flags);
    relayd(config, db, &args, dump.as_bytes())
}

/// What one run of the binary printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
            stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
        }
    }
}

impl Run {
    fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The `line N: reason` reports, in order.
    fn reports(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("line "))
            .collect()
    }

    /// The import summary line.
    fn summary(&self) -> &str {
        self.stderr
            .lines()
            .find(|l| l.starts_with("import: "))
            .unwrap_or_else(|| panic!("no summary in:\n{}", self.stderr))
    }

    /// stdout's lines, each checked to be an event object: nothing else
    /// (no log line) may be on stdout.
    fn events(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| {
                let value: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not JSON on stdout ({e}): {line}"));
                let id = value["id"].as_str().unwrap_or_default();
                assert_eq!(id.len(), 64, "not an event on stdout: {line}");
                value
            })
            .collect()
    }

    fn ids(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// A dump being written: each push returns its line number.
#[derive(Default)]
struct Dump {
    lines: Vec<String>,
}

impl Dump {
    fn line(&mut self, text: impl Into<String>) -> usize {
        self.lines.push(text.into());
        self.lines.len()
    }

    fn event(&mut self, event: &Event) -> usize {
        self.line(event.as_json())
    }

    fn text(&self) -> String {
        self.lines.iter().map(|l| format!("{l}\n")).collect()
    }
}

fn ago(seconds: u64) -> u64 {
    now() - seconds
}

fn id(event: &Event) -> String {
    event.id.to_hex()
}

/// NIP-01 order: newest first, ties by lowest id.
fn newest_first(events: &mut [&Event]) {
    events.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(id(a).cmp(&id(b))));
}

#[test]
fn import_applies_the_relays_rules_and_reports_each_rejected_line() {
    let database = Database::new("");
    let [alice, bob, carol, dave, erin] = [(); 5].map(|_| Keys::generate());
    let mut dump = Dump::default();
    let mut rejected: Vec<(usize, &str)> = Vec::new();

    let a1 = event(&alice, 1, "hello", &[], ago(1000));
    dump.event(&a1);
    dump.event(&a1); // duplicate
    dump.line("");
    rejected.push((dump.line(r#"{"id": "ab", "#), "malformed JSON: "));
    let forged = event(&alice, 1, "forged", &[], ago(990));
    let mut bad_sig = to_value(&forged);
    bad_sig["sig"] = json!(a1.sig.to_string());
    rejected.push((
        dump.line(bad_sig.to_string()),
        "invalid: signature verification failed",
    ));
    let mut bad_id = to_value(&event(&alice, 1, "original", &[], ago(980)));
    bad_id["content"] = json!("tampered");
    rejected.push((
        dump.line(bad_id.to_string()),
        "invalid: event id does not match the hash of its content",
    ));
    let mut wrong_type = to_value(&event(&alice, 1, "typed", &[], ago(970)));
    wrong_type["kind"] = json!("1");
    rejected.push((
        dump.line(wrong_type.to_string()),
        "invalid: kind must be an integer from 0 to 65535",
    ));
    let a2 = event(&alice, 1, "second", &[], ago(900));
    dump.line(format!(r#"["EVENT",{}]"#, a2.as_json()));
    let b1 = event(&bob, 1, "bob here", &[], ago(890));
    dump.line(format!("[\"EVENT\",\"sub1\",{}]\r", b1.as_json())); // CRLF
    rejected.push((dump.line(r#"["OK","x",true,""]"#), "not an event: "));

    // Replaceable and addressable versions, out of order.
    let profile_new = event(&alice, 0, r#"{"name":"alice"}"#, &[], ago(100));
    let profile_old = event(&alice, 0, r#"{"name":"old"}"#, &[], ago(200));
    dump.event(&profile_new);
    dump.event(&profile_old); // superseded
    let follows_old = event(
        &bob,
        3,
        "",
        &[&["p", &carol.public_key().to_hex()]],
        ago(300),
    );
    let follows_new = event(&bob, 3, "", &[&["p", &dave.public_key().to_hex()]], ago(50));
    dump.event(&follows_old);
    dump.event(&follows_new); // replaces
    let relays_new = event(&carol, 10002, "", &[&["r", "wss://a.example"]], ago(400));
    let relays_old = event(&carol, 10002, "", &[&["r", "wss://b.example"]], ago(500));
    dump.event(&relays_new);
    dump.event(&relays_old); // superseded
    let post1_v1 = event(&alice, 30023, "v1", &[&["d", "post1"]], ago(300));
    let post1_v3 = event(&alice, 30023, "v3", &[&["d", "post1"]], ago(100));
    let post2 = event(&alice, 30023, "other", &[&["d", "post2"]], ago(250));
    let post1_v2 = event(&alice, 30023, "v2", &[&["d", "post1"]], ago(200));
    dump.event(&post1_v1);
    dump.event(&post1_v3); // replaces v1
    dump.event(&post2);
    dump.event(&post1_v2); // superseded

    // NIP-09: a deletion before its target, and one after.
    let b2 = event(&bob, 1, "regret", &[], ago(90));
    let delete_b2 = event(&bob, 5, "", &[&["e", &id(&b2)]], ago(80));
    dump.event(&delete_b2);
    dump.event(&b2); // kept out
    let delete_a2 = event(&alice, 5, "", &[&["e", &id(&a2)]], ago(70));
    dump.event(&delete_a2); // removes a2

    // NIP-40.
    let expired = event(
        &carol,
        1,
        "gone",
        &[&["expiration", &ago(10).to_string()]],
        ago(600),
    );
    dump.event(&expired);
    let expiring = event(
        &carol,
        1,
        "soon gone",
        &[&["expiration", &(now() + 3600).to_string()]],
        ago(590),
    );
    dump.event(&expiring);

    // NIP-62: dave vanishes; his older events go, newer ones stay.
    let d1 = event(&dave, 1, "before", &[], ago(200));
    let vanish = event(&dave, 62, "", &[&["relay", "ALL_RELAYS"]], ago(100));
    let d2 = event(&dave, 1, "also before", &[], ago(150));
    let d3 = event(&dave, 1, "after", &[], ago(10));
    dump.event(&d1);
    dump.event(&vanish); // removes d1
    dump.event(&d2); // kept out
    dump.event(&d3);

    rejected.push((
        dump.event(&event(&carol, 20001, "ephemeral", &[], ago(5))),
        "ephemeral: events of kind 20001 are never stored",
    ));
    rejected.push((
        dump.event(&event(
            &carol,
            22242,
            "",
            &[&["relay", "ws://x.example"], &["challenge", "c"]],
            ago(5),
        )),
        "invalid: kind 22242",
    ));
    rejected.push((
        dump.event(&event(
            &erin,
            62,
            "",
            &[&["relay", "wss://other.example/"]],
            ago(5),
        )),
        "invalid: this request to vanish names other relays",
    ));
    // Network policy is not applied by default.
    let future = event(&carol, 1, "from the future", &[], now() + 86_400);
    dump.event(&future);
    let protected = event(&alice, 1, "protected", &[&["-"]], ago(60));
    dump.event(&protected);
    let mut no_tags = to_value(&event(&alice, 1, "no tags", &[], ago(40)));
    no_tags.as_object_mut().unwrap().remove("tags");
    rejected.push((
        dump.line(no_tags.to_string()),
        "invalid: missing field tags",
    ));
    rejected.push((dump.line("42"), "not an event: "));
    let last = event(&carol, 1, "no newline after me", &[], ago(5));
    dump.event(&last);
    let mut text = dump.text();
    text.pop(); // the last line has no line end

    let run = database.import(&text, &[]);
    assert!(run.success(), "{}", run.stderr);
    assert!(
        run.stdout.is_empty(),
        "import printed on stdout: {}",
        run.stdout
    );
    let reports = run.reports();
    assert_eq!(reports.len(), rejected.len(), "{}", run.stderr);
    for (report, (number, reason)) in reports.iter().zip(&rejected) {
        let expected = format!("line {number}: {reason}");
        assert!(
            report.starts_with(&expected),
            "{report:?} is not {expected:?}"
        );
    }
    assert!(
        run.summary().starts_with(
            "import: read 36, stored 19, duplicates 1, replaced 2, superseded 3, deleted 4, \
             expired 1, rejected 10; "
        ),
        "{}",
        run.summary()
    );
    assert!(run.summary().ends_with(" s"), "{}", run.summary());
    // No progress bar when stderr is not a terminal.
    assert!(
        !run.stderr.contains('\r') && !run.stderr.contains('\u{1b}'),
        "{}",
        run.stderr
    );

    let mut kept = vec![
        &a1,
        &b1,
        &profile_new,
        &follows_new,
        &relays_new,
        &post1_v3,
        &post2,
        &delete_b2,
        &delete_a2,
        &expiring,
        &vanish,
        &d3,
        &future,
        &protected,
        &last,
    ];
    newest_first(&mut kept);
    let exported = database.export(&[]);
    let events = exported.events();
    assert_eq!(
        exported.ids(),
        kept.iter().map(|e| id(e)).collect::<Vec<_>>(),
        "what was stored, newest first"
    );
    for (stored, original) in events.iter().zip(&kept) {
        assert_eq!(stored, &to_value(original));
    }

    // A relay started on the imported database serves the same events.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let relay = RelayProcess::spawn(&database.config, &database.db).await;
        let mut client = Client::connect(&relay.url).await;
        let all = client
            .query("all", vec![json!({"limit": 1000})])
            .await
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>();
        assert_eq!(all, exported.ids());
        let profiles = client.query("p", vec![json!({"kinds": [0]})]).await;
        assert_eq!(profiles, vec![to_value(&profile_new)]);
        let posts = client
            .query("a", vec![json!({"kinds": [30023], "#d": ["post1"]})])
            .await;
        assert_eq!(posts, vec![to_value(&post1_v3)]);
        // The deletions and the request to vanish keep their targets out
        // of the relay too.
        for gone in [&a2, &b2, &d1, &d2] {
            let (accepted, reason) = client.publish(gone).await;
            assert!(!accepted, "{} came back: {reason}", gone.content);
        }
    });
}

/// Events with many ties in time, several kinds, tags and authors.
fn varied_events(keys: &[Keys]) -> Vec<Event> {
    let base = ago(10_000);
    let mut events = Vec::new();
    for i in 0..240u64 {
        let author = &keys[(i % keys.len() as u64) as usize];
        let created_at = base + i % 17; // about 14 events per second
        let tag = ["x", "y", "z"][(i % 3) as usize];
        let event = match i % 6 {
            0 => common::event(author, 7, &format!("+{i}"), &[&["t", tag]], created_at),
            1 => common::event(
                author,
                30023,
                &format!("article {i}"),
                &[&["d", &format!("a{i}")], &["t", tag], &["t", "x"]],
                created_at,
            ),
            _ => common::event(
                author,
                1,
                &format!("note {i} \"quoted\" ünïcödé 🤙\n"),
                &[&["t", tag]],
                created_at,
            ),
        };
        events.push(event);
    }
    // Private kinds are exported too: the operator's backup is complete.
    events.push(common::event(
        &keys[0],
        4,
        "secret",
        &[&["p", &keys[1].public_key().to_hex()]],
        base + 3,
    ));
    events
}

fn jsonl(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| format!("{}\n", e.as_json()))
        .collect()
}

#[test]
fn export_then_import_then_export_is_byte_identical() {
    let keys: Vec<Keys> = (0..4).map(|_| Keys::generate()).collect();
    let events = varied_events(&keys);
    let first = Database::new("");
    let run = first.import(&jsonl(&events), &[]);
    assert!(run.success(), "{}", run.stderr);
    assert!(
        run.summary().starts_with(&format!(
            "import: read {n}, stored {n}, duplicates 0, replaced 0, superseded 0, deleted 0, \
             expired 0, rejected 0; ",
            n = events.len()
        )),
        "{}",
        run.summary()
    );
    let export = first.export(&[]);
    assert_eq!(export.events().len(), events.len());
    assert!(
        export
            .stderr
            .contains(&format!("export: {} events", events.len())),
        "{}",
        export.stderr
    );
    // NIP-01 order: created_at descending, ties by lowest id.
    let keys_of = |run: &Run| {
        run.events()
            .iter()
            .map(|e| {
                (
                    e["created_at"].as_i64().unwrap(),
                    e["id"].as_str().unwrap().to_owned(),
                )
            })
            .collect::<Vec<_>>()
    };
    let order = keys_of(&export);
    for pair in order.windows(2) {
        let ((t1, id1), (t2, id2)) = (&pair[0], &pair[1]);
        assert!(t1 > t2 || (t1 == t2 && id1 < id2), "{pair:?}");
    }

    // Into a fresh database from stdin (`-`), and out again.
    let second = Database::new("");
    let run = second.import(&export.stdout, &["-", "--no-verify"]);
    assert!(run.success(), "{}", run.stderr);
    let again = second.export(&[]);
    assert_eq!(again.stdout, export.stdout, "the round trip changed bytes");

    // Oldest first is the exact reverse.
    let oldest = first.export(&["--oldest-first"]);
    let mut reversed: Vec<&str> = export.stdout.lines().collect();
    reversed.reverse();
    assert_eq!(oldest.stdout.lines().collect::<Vec<_>>(), reversed);

    // --output writes the same bytes to a file, and nothing on stdout.
    let file = first.dir.path().join("backup.jsonl");
    let to_file = first.export(&["--output", file.to_str().unwrap()]);
    assert!(to_file.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), export.stdout);

    // Importing the dump again changes nothing.
    let run = second.import(&export.stdout, &[]);
    assert!(
        run.summary().starts_with(&format!(
            "import: read {n}, stored 0, duplicates {n}, ",
            n = events.len()
        )),
        "{}",
        run.summary()
    );
    assert_eq!(second.export(&[]).stdout, export.stdout);
}

#[test]
fn export_filters_are_nip01_filters_in_export_order() {
    let keys: Vec<Keys> = (0..4).map(|_| Keys::generate()).collect();
    let events = varied_events(&keys);
    let database = Database::new("");
    assert!(database.import(&jsonl(&events), &[]).success());
    let all = database.export(&[]).events();
    // Every filtered export is the full export's subsequence that matches.
    let check = |flags: &[&str], matches: &dyn Fn(&Value) -> bool, limit: Option<usize>| {
        let mut expected: Vec<&Value> = all.iter().filter(|e| matches(e)).collect();
        if flags.contains(&"--oldest-first") {
            expected.reverse();
        }
        if let Some(limit) = limit {
            expected.truncate(limit);
        }
        let got = database.export(flags).events();
        assert!(!got.is_empty(), "{flags:?} matched nothing");
        assert_eq!(got.iter().collect::<Vec<_>>(), expected, "{flags:?}");
    };
    let has_tag = |e: &Value, name: &str, values: &[&str]| {
        e["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t[0] == name && values.iter().any(|v| t[1] == *v))
    };
    let author0 = keys[0].public_key().to_hex();
    let author1 = keys[1].public_key().to_hex();
    let base = all
        .iter()
        .map(|e| e["created_at"].as_u64().unwrap())
        .min()
        .unwrap();
    let (since, until) = (base + 3, base + 9);
    let in_window = |e: &Value| (since..=until).contains(&e["created_at"].as_u64().unwrap());

    check(&["--filter", r#"{"kinds":[7]}"#], &|e| e["kind"] == 7, None);
    let authors = format!(r#"{{"authors":["{author0}","{author1}"]}}"#);
    check(
        &["--filter", &authors],
        &|e| e["pubkey"] == author0.as_str() || e["pubkey"] == author1.as_str(),
        None,
    );
    // An event tagged with both values is exported once.
    check(
        &["--filter", r##"{"#t":["x","y"]}"##],
        &|e| has_tag(e, "t", &["x", "y"]),
        None,
    );
    check(
        &[
            "--filter",
            r##"{"#t":["x"],"kinds":[30023]}"##,
            "--oldest-first",
        ],
        &|e| e["kind"] == 30023 && has_tag(e, "t", &["x"]),
        None,
    );
    check(
        &["--since", &since.to_string(), "--until", &until.to_string()],
        &in_window,
        None,
    );
    check(
        &[
            "--filter",
            r#"{"kinds":[1]}"#,
            "--since",
            &since.to_string(),
            "--until",
            &until.to_string(),
        ],
        &|e| e["kind"] == 1 && in_window(e),
        None,
    );
    let ids: Vec<&str> = all
        .iter()
        .step_by(40)
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    check(
        &["--filter", &json!({ "ids": ids }).to_string()],
        &|e| ids.contains(&e["id"].as_str().unwrap()),
        None,
    );
    check(
        &["--filter", r#"{"kinds":[1],"limit":5}"#],
        &|e| e["kind"] == 1,
        Some(5),
    );
    check(
        &["--filter", r#"{"kinds":[1],"limit":5}"#, "--oldest-first"],
        &|e| e["kind"] == 1,
        Some(5),
    );
    // The private kind is there for the operator.
    check(&["--filter", r#"{"kinds":[4]}"#], &|e| e["kind"] == 4, None);

    let bad = database.run(&["export", "--filter", r#"{"kinds":"x"}"#], b"");
    assert!(!bad.success());
    assert!(bad.stderr.contains("--filter"), "{}", bad.stderr);
    assert!(bad.stdout.is_empty());
}

#[test]
fn no_verify_skips_only_the_signature_check() {
    let alice = Keys::generate();
    let good = event(&alice, 1, "good", &[], ago(30));
    let mut bad_sig = to_value(&event(&alice, 1, "unsigned", &[], ago(20)));
    bad_sig["sig"] = json!(good.sig.to_string());
    let mut bad_id = to_value(&event(&alice, 1, "was", &[], ago(10)));
    bad_id["content"] = json!("is");
    let dump = format!("{}\n{bad_sig}\n{bad_id}\n", good.as_json());

    let verified = Database::new("");
    let run = verified.import(&dump, &[]);
    assert_eq!(
        run.reports(),
        [
            "line 2: invalid: signature verification failed",
            "line 3: invalid: event id does not match the hash of its content",
        ]
    );
    assert_eq!(verified.export(&[]).ids(), [id(&good)]);

    let trusting = Database::new("");
    let run = trusting.import(&dump, &["--no-verify"]);
    assert_eq!(
        run.reports(),
        ["line 3: invalid: event id does not match the hash of its content"]
    );
    assert!(run.summary().contains("stored 2,"), "{}", run.summary());
    let ids = trusting.export(&[]).ids();
    assert_eq!(ids, [bad_sig["id"].as_str().unwrap().to_owned(), id(&good)]);
}

#[test]
fn apply_policy_holds_events_to_the_network_rules() {
    let alice = Keys::generate();
    let future = event(&alice, 1, "too early", &[], now() + 86_400);
    let protected = event(&alice, 1, "mine", &[&["-"]], ago(10));
    let big = event(&alice, 1, &"x".repeat(200), &[], ago(20));
    let plain = event(&alice, 1, "fine", &[], ago(30));
    let dump = jsonl(&[
        future.clone(),
        protected.clone(),
        big.clone(),
        plain.clone(),
    ]);
    let config = "[limits]\nmax_content_length = 100\n";

    let lenient = Database::new(config);
    let run = lenient.import(&dump, &[]);
    assert!(run.reports().is_empty(), "{}", run.stderr);
    assert_eq!(lenient.export(&[]).events().len(), 4);

    let strict = Database::new(config);
    let run = strict.import(&dump, &["--apply-policy"]);
    assert!(run.success(), "{}", run.stderr);
    let reports = run.reports();
    assert_eq!(reports.len(), 3, "{}", run.stderr);
    assert!(
        reports[0]
            .starts_with("line 1: invalid: created_at is more than 900 seconds in the future"),
        "{}",
        reports[0]
    );
    assert!(
        reports[1].starts_with("line 2: restricted: "),
        "{}",
        reports[1]
    );
    assert!(
        reports[2].starts_with("line 3: invalid: content is too long"),
        "{}",
        reports[2]
    );
    assert_eq!(strict.export(&[]).ids(), [id(&plain)]);
}

#[test]
fn exit_status_tells_an_import_that_ran_from_one_that_failed() {
    let alice = Keys::generate();
    let dump = format!("{}\nnot json\n", note(&alice, "hi").as_json());
    let database = Database::new("");
    let run = database.import(&dump, &[]);
    assert_eq!(run.code, Some(0), "rejected lines are reported, not fatal");
    assert_eq!(run.reports().len(), 1);

    let run = database.import(&dump, &["--strict"]);
    assert_eq!(run.code, Some(3), "{}", run.stderr);

    let missing = database.dir.path().join("missing.jsonl");
    let run = database.import("", &[missing.to_str().unwrap()]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("cannot open"), "{}", run.stderr);
    // A database that is not one: dump_sqlite.rs (a broken SQLite file).
}

/// Importing beside a running relay: it serves the imported events to new
/// REQs at once, but its live subscribers do not get them (its fan-out
/// only sees its own writes); network writes go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_beside_a_running_relay_is_served_but_not_fanned_out() {
    let database = Database::new("");
    let relay = RelayProcess::spawn(&database.config, &database.db).await;
    let mut live = Client::connect(&relay.url).await;
    assert!(
        live.req("live", vec![json!({"kinds": [1]})])
            .await
            .is_empty()
    );

    let alice = Keys::generate();
    let imported: Vec<Event> = (0..500)
        .map(|i| event(&alice, 1, &format!("imported {i}"), &[], ago(1000 - i)))
        .collect();
    let dump = jsonl(&imported);
    let mut writer = Client::connect(&relay.url).await;
    let publishing = tokio::spawn(async move {
        let bob = Keys::generate();
        for i in 0..20 {
            let (accepted, reason) = writer.publish(&note(&bob, &format!("live {i}"))).await;
            assert!(accepted, "{reason}");
        }
    });
    let (config, db) = (database.config.clone(), database.db.clone());
    let import = tokio::task::spawn_blocking(move || import(&config, &db, &dump, &[]))
        .await
        .unwrap();
    assert!(import.success(), "{}", import.stderr);
    assert!(
        import.summary().contains("stored 500,"),
        "{}",
        import.summary()
    );
    publishing.await.unwrap();

    // The live subscription got the 20 network events, none imported.
    let mut delivered = Vec::new();
    while delivered.len() < 20 {
        let message = live.recv().await;
        assert_eq!(message[0], "EVENT", "{message}");
        delivered.push(message[2]["content"].as_str().unwrap().to_owned());
    }
    assert!(
        delivered.iter().all(|c| c.starts_with("live")),
        "{delivered:?}"
    );
    live.expect_silence(Duration::from_millis(500)).await;

    let mut reader = Client::connect(&relay.url).await;
    let found = reader
        .query(
            "mine",
            vec![json!({"authors": [alice.public_key().to_hex()], "limit": 1000})],
        )
        .await;
    assert_eq!(found.len(), 500);

    // An export beside the running relay reads everything committed.
    let (config, db) = (database.config.clone(), database.db.clone());
    let export = tokio::task::spawn_blocking(move || relayd(&config, &db, &["export"], b""))
        .await
        .unwrap();
    assert!(export.success(), "{}", export.stderr);
    assert_eq!(export.events().len(), 520, "{}", export.stderr);
}

/// A ban promises "never stored again": an import keeps it without
/// --apply-policy too, whether the ban is in relay.toml or made with the
/// admin CLI.
#[test]
fn bans_are_kept_without_apply_policy() {
    let alice = Keys::generate();
    let mallory = Keys::generate();
    let config = format!(
        "[access]\ndenied_pubkeys = [\"{}\"]\n",
        mallory.public_key().to_hex()
    );
    let database = Database::new(&config);
    let banned = event(&alice, 1, "banned later", &[], now() - 20);
    let ham = event(&alice, 1, "ham", &[], now() - 10);
    let spam = event(&mallory, 1, "spam", &[], now() - 10);
    let dump: String = [&spam, &ham, &banned]
        .iter()
        .map(|e| format!("{}\n", e.as_json()))
        .collect();
    let run = database.import(&dump, &[]);
    assert!(run.success(), "{}", run.stderr);
    assert_eq!(
        run.reports(),
        ["line 1: blocked: this pubkey is banned on this relay"]
    );
    assert_eq!(database.export(&[]).ids(), [id(&ham), id(&banned)]);
    let run = database.run(&["admin", "ban-event", &id(&banned)], b"");
    assert!(run.success(), "{}", run.stderr);
    assert_eq!(database.export(&[]).ids(), [id(&ham)]);
    let run = database.import(&dump, &[]);
    assert_eq!(
        run.reports(),
        [
            "line 1: blocked: this pubkey is banned on this relay",
            "line 3: blocked: this event is banned on this relay"
        ]
    );
    assert_eq!(database.export(&[]).ids(), [id(&ham)]);
}
