//! NIP-50 search over real sockets: words and phrases, relevance order and
//! `limit` after ranking, the other filter fields, kind-0 profiles, the
//! index kept in step with replacement, deletion and expiry, query syntax
//! that must stay text, extensions, non-indexed kinds, live events, private
//! kinds, and configuration changes (migration 5 of the SQLite file:
//! search_sqlite.rs).
//! Events are built and signed with the independent `nostr` crate.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use nostr::prelude::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const QUIET: Duration = Duration::from_millis(400);

fn pk(keys: &Keys) -> String {
    keys.public_key().to_hex()
}

/// Publishes every event, each must be accepted.
async fn publish_all(client: &mut Client, events: &[&Event]) {
    for event in events {
        assert_eq!(
            client.publish(event).await,
            (true, String::new()),
            "{}",
            event.as_json()
        );
    }
}

/// The ids a REQ returns, in the order it sent them.
async fn ids(client: &mut Client, filters: Vec<Value>) -> Vec<String> {
    client
        .query("s", filters)
        .await
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn search_ids(client: &mut Client, filter: Value) -> Vec<String> {
    ids(client, vec![filter]).await
}

fn id(event: &Event) -> String {
    event.id.to_hex()
}

/// Sorted ids, for comparing sets.
fn set(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// Events the search index (not the event table) finds for the word
/// `word`: what the writer left in the index, on either backend (SQLite's
/// FTS5 table; PostgreSQL's `search` tsvector column, 'simple' config).
fn index_hits(relay: &TestRelay, word: &str) -> i64 {
    let db = relay.stored();
    match db {
        StoredDb::Sqlite(_) => db.integer(&format!(
            "SELECT count(*) FROM event_search WHERE event_search MATCH '{word}'"
        )),
        StoredDb::Postgres(_) => db.integer(&format!(
            "SELECT count(*) FROM event WHERE search @@ to_tsquery('simple', '{word}')"
        )),
    }
}

/// Events that have entries in the search index at all.
fn indexed_events(relay: &TestRelay) -> i64 {
    let db = relay.stored();
    match db {
        StoredDb::Sqlite(_) => db.integer("SELECT count(*) FROM event_search"),
        StoredDb::Postgres(_) => db.integer("SELECT count(*) FROM event WHERE search IS NOT NULL"),
    }
}

async fn nip11(relay: &TestRelay) -> Value {
    let mut stream = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nAccept: application/nostr+json\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

fn nips(info: &Value) -> Vec<u64> {
    info["supported_nips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn words_and_phrases_are_found() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let coffee = note(&keys, "I love good coffee in the morning");
    let greeting = note(&keys, "Good morning, Nostr!");
    let reversed = note(&keys, "the morning is good");
    let tea = note(&keys, "tea, not coffee; café culture");
    publish_all(&mut c, &[&coffee, &greeting, &reversed, &tea]).await;

    assert_eq!(
        set(search_ids(&mut c, json!({"search": "coffee"})).await),
        set(vec![id(&coffee), id(&tea)])
    );
    // Case and diacritics do not matter.
    assert_eq!(
        search_ids(&mut c, json!({"search": "CAFE"})).await,
        vec![id(&tea)]
    );
    // Bare words: all of them, anywhere.
    assert_eq!(
        set(search_ids(&mut c, json!({"search": "good morning"})).await),
        set(vec![id(&coffee), id(&greeting), id(&reversed)])
    );
    // A quoted phrase: those words in that order.
    assert_eq!(
        search_ids(&mut c, json!({"search": "\"good morning\""})).await,
        vec![id(&greeting)]
    );
    assert_eq!(
        search_ids(&mut c, json!({"search": "\"good morning\" coffee"})).await,
        Vec::<String>::new()
    );
    assert_eq!(
        search_ids(&mut c, json!({"search": "nothingmatchesthis"})).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn results_come_by_relevance_and_limit_applies_after_ranking() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let t = now();
    // Comparable lengths (eight words); the most relevant is the oldest.
    let thrice = event(
        &keys,
        1,
        "zebra crossing zebra stripes and zebra herds run",
        &[],
        t - 300,
    );
    let twice = event(
        &keys,
        1,
        "a zebra grazes near another zebra by water",
        &[],
        t - 200,
    );
    let once = event(
        &keys,
        1,
        "one zebra stood alone on the dusty plain",
        &[],
        t - 100,
    );
    publish_all(&mut c, &[&once, &thrice, &twice]).await;

    assert_eq!(
        search_ids(&mut c, json!({"search": "zebra"})).await,
        vec![id(&thrice), id(&twice), id(&once)]
    );
    // The limit keeps the best, not the newest.
    assert_eq!(
        search_ids(&mut c, json!({"search": "zebra", "limit": 1})).await,
        vec![id(&thrice)]
    );
    assert_eq!(
        search_ids(&mut c, json!({"search": "zebra", "limit": 2})).await,
        vec![id(&thrice), id(&twice)]
    );
    // Without search, the same events come newest first.
    assert_eq!(
        ids(&mut c, vec![json!({"authors": [pk(&keys)]})]).await,
        vec![id(&once), id(&twice), id(&thrice)]
    );
}

#[tokio::test]
async fn a_req_mixing_search_and_other_filters_sends_the_search_results_first() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let (a, b) = (Keys::generate(), Keys::generate());
    let t = now();
    let best = event(&a, 1, "quokka quokka quokka smiles", &[], t - 300);
    let worse = event(&a, 1, "a quokka at the beach today", &[], t - 200);
    let other_old = event(&b, 1, "unrelated words here", &[], t - 250);
    let other_new = event(&b, 1, "more unrelated words", &[], t - 50);
    publish_all(&mut c, &[&best, &worse, &other_old, &other_new]).await;
    // Search results by relevance, then the other filter's newest first,
    // an event found by both only once (at its search position).
    assert_eq!(
        ids(
            &mut c,
            vec![
                json!({"search": "quokka"}),
                json!({"kinds": [1], "limit": 3}),
            ]
        )
        .await,
        vec![id(&best), id(&worse), id(&other_new), id(&other_old)]
    );
}

#[tokio::test]
async fn search_combines_with_every_other_field() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let (a, b) = (Keys::generate(), Keys::generate());
    let t = now();
    let a_old = event(&a, 1, "pelican spotted", &[&["t", "birds"]], t - 1000);
    let a_new = event(&a, 1, "pelican again", &[&["t", "coast"]], t - 10);
    let b_note = event(&b, 1, "pelican by b", &[&["t", "birds"]], t - 500);
    let b_article = event(
        &b,
        30023,
        "# Pelicans\n\nA pelican article",
        &[&["d", "pelicans"], &["t", "birds"]],
        t - 400,
    );
    publish_all(&mut c, &[&a_old, &a_new, &b_note, &b_article]).await;

    let search = |extra: Value| {
        let mut filter = json!({"search": "pelican"});
        for (k, v) in extra.as_object().unwrap() {
            filter[k] = v.clone();
        }
        filter
    };
    assert_eq!(search_ids(&mut c, search(json!({}))).await.len(), 4);
    assert_eq!(
        set(search_ids(&mut c, search(json!({"authors": [pk(&a)]}))).await),
        set(vec![id(&a_old), id(&a_new)])
    );
    assert_eq!(
        search_ids(&mut c, search(json!({"kinds": [30023]}))).await,
        vec![id(&b_article)]
    );
    assert_eq!(
        set(search_ids(&mut c, search(json!({"#t": ["birds"]}))).await),
        set(vec![id(&a_old), id(&b_note), id(&b_article)])
    );
    assert_eq!(
        set(search_ids(&mut c, search(json!({"since": t - 450}))).await),
        set(vec![id(&a_new), id(&b_article)])
    );
    assert_eq!(
        set(search_ids(&mut c, search(json!({"until": t - 450}))).await),
        set(vec![id(&a_old), id(&b_note)])
    );
    assert_eq!(
        search_ids(
            &mut c,
            search(json!({"ids": [id(&b_note), id(&a_new)], "kinds": [1], "authors": [pk(&b)]}))
        )
        .await,
        vec![id(&b_note)]
    );
    assert_eq!(
        search_ids(
            &mut c,
            search(json!({"authors": [pk(&a)], "#t": ["birds"], "since": t - 2000}))
        )
        .await,
        vec![id(&a_old)]
    );
}

#[tokio::test]
async fn profiles_are_found_by_their_fields_not_their_other_keys() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let profile = json!({
        "name": "satoshi",
        "display_name": "Satoshi Nakamoto",
        "about": "Inventor of a peer-to-peer electronic cash system",
        "nip05": "satoshi@bitcoin.example",
        "website": "https://hiddenword.example",
        "picture": "https://example.com/avatarword.png",
        "lud16": "tipword@example.com",
    });
    let kind0 = event(&keys, 0, &profile.to_string(), &[], now());
    publish_all(&mut c, &[&kind0]).await;
    for search in [
        "nakamoto",
        "satoshi",
        "inventor electronic cash",
        "\"peer to peer\"",
        "bitcoin.example",
        "satoshi@bitcoin.example",
    ] {
        assert_eq!(
            search_ids(&mut c, json!({"search": search})).await,
            vec![id(&kind0)],
            "{search}"
        );
    }
    for search in [
        "hiddenword",
        "avatarword",
        "tipword",
        "website",
        "picture",
        "display_name",
    ] {
        assert_eq!(
            search_ids(&mut c, json!({"search": search})).await,
            Vec::<String>::new(),
            "{search}"
        );
    }
}

#[tokio::test]
async fn a_replaced_profile_is_no_longer_found_by_its_old_name() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let t = now();
    let old = event(&keys, 0, r#"{"name":"oldmoniker"}"#, &[], t - 100);
    let new = event(&keys, 0, r#"{"name":"newmoniker"}"#, &[], t - 10);
    publish_all(&mut c, &[&old]).await;
    assert_eq!(
        search_ids(&mut c, json!({"search": "oldmoniker"})).await,
        vec![id(&old)]
    );
    publish_all(&mut c, &[&new]).await;
    assert_eq!(
        search_ids(&mut c, json!({"search": "oldmoniker"})).await,
        Vec::<String>::new()
    );
    assert_eq!(
        search_ids(&mut c, json!({"search": "newmoniker"})).await,
        vec![id(&new)]
    );
    // Not merely hidden by the join with the event table: gone from the index.
    assert_eq!(index_hits(&relay, "oldmoniker"), 0);
    assert_eq!(index_hits(&relay, "newmoniker"), 1);
    // An addressable article replaced likewise.
    let v1 = event(&keys, 30023, "first draft wombat", &[&["d", "a"]], t - 50);
    let v2 = event(&keys, 30023, "final text", &[&["d", "a"]], t - 5);
    publish_all(&mut c, &[&v1, &v2]).await;
    assert_eq!(
        search_ids(&mut c, json!({"search": "wombat"})).await,
        Vec::<String>::new()
    );
    assert_eq!(index_hits(&relay, "wombat"), 0);
}

#[tokio::test]
async fn deleted_and_expired_events_leave_the_index() {
    let relay = TestRelay::start_with(|c| c.storage.expiration_sweep_seconds = 1).await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let doomed = note(&keys, "ocelot to be deleted");
    let kept = note(&keys, "ocelot that stays");
    let expiring = event(
        &keys,
        1,
        "ocelot that expires soon",
        &[&["expiration", &(now() + 2).to_string()]],
        now(),
    );
    publish_all(&mut c, &[&doomed, &kept, &expiring]).await;
    assert_eq!(
        search_ids(&mut c, json!({"search": "ocelot"})).await.len(),
        3
    );
    assert_eq!(index_hits(&relay, "ocelot"), 3);

    // NIP-09.
    let deletion = event(&keys, 5, "", &[&["e", &id(&doomed)]], now());
    publish_all(&mut c, &[&deletion]).await;
    assert_eq!(index_hits(&relay, "deleted"), 0);

    // NIP-40: hidden once expired, then swept out of the index too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let found = search_ids(&mut c, json!({"search": "ocelot"})).await;
        if found == vec![id(&kept)] && index_hits(&relay, "expires") == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still found: {found:?}, index: {}",
            index_hits(&relay, "expires")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(index_hits(&relay, "ocelot"), 1);
}

#[tokio::test]
async fn a_request_to_vanish_empties_the_authors_part_of_the_index() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let (leaving, staying) = (Keys::generate(), Keys::generate());
    let t = now();
    let gone = event(&leaving, 1, "axolotl by a leaver", &[], t - 10);
    let kept = event(&staying, 1, "axolotl by a stayer", &[], t - 10);
    publish_all(&mut c, &[&gone, &kept]).await;
    let vanish = event(&leaving, 62, "", &[&["relay", "ALL_RELAYS"]], t);
    publish_all(&mut c, &[&vanish]).await;
    assert_eq!(
        search_ids(&mut c, json!({"search": "axolotl"})).await,
        vec![id(&kept)]
    );
    assert_eq!(index_hits(&relay, "leaver"), 0);
}

#[tokio::test]
async fn query_syntax_is_treated_as_text_and_never_errors() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let apple = note(&keys, "apple");
    let banana = note(&keys, "banana");
    let both_or = note(&keys, "apple or banana");
    let near = note(&keys, "near apple and banana");
    let appl = note(&keys, "appl is not a word");
    let pie = note(&keys, "apple pie, not banana");
    publish_all(&mut c, &[&apple, &banana, &both_or, &near, &appl, &pie]).await;

    let cases: Vec<(&str, Vec<&Event>)> = vec![
        // OR is a word, not an operator (else: apple, banana, …).
        ("apple OR banana", vec![&both_or]),
        // AND is a word too: only the note with "and" in it.
        ("apple AND banana", vec![&near]),
        // NOT is a word: only notes with "not", "apple" and "banana".
        ("apple NOT banana", vec![&pie]),
        // A prefix query would find "apple"; as text it finds "appl".
        ("appl*", vec![&appl]),
        // NEAR(…) is text: the phrase "near apple", and "banana".
        ("NEAR(apple banana)", vec![&near]),
        // "-banana" is not a column filter or a negation.
        ("apple -banana", vec![&both_or, &near, &pie]),
        ("^apple", vec![&apple, &both_or, &near, &pie]),
        ("(apple)", vec![&apple, &both_or, &near, &pie]),
        ("{text}: apple", vec![]),
        ("text : apple", vec![]),
        // col:value is an extension, ignored: only "banana" remains.
        ("text:apple banana", vec![&banana, &both_or, &near, &pie]),
        // Unbalanced quotes: the phrase runs to the end.
        ("\"apple or", vec![&both_or]),
        ("apple \"or banana", vec![&both_or]),
        ("\"", vec![]),
        ("\"\"\"", vec![]),
        ("a\"b\"c", vec![]),
        ("\"apple\" \"\" *", vec![&apple, &both_or, &near, &pie]),
        ("' OR 1=1 --", vec![]),
        ("apple'); DROP TABLE event; --", vec![]),
        ("\u{0}apple", vec![&apple, &both_or, &near, &pie]),
    ];
    for (search, expected) in cases {
        let found = search_ids(&mut c, json!({"search": search})).await;
        assert_eq!(
            set(found),
            set(expected.iter().map(|e| id(e)).collect()),
            "search {search:?}"
        );
    }
    // A 10 KB query of words and FTS5 operators: an answer, no error.
    let long: String = (0..2000)
        .map(|i| ["apple ", "OR ", "NEAR( ", "* ", "\"x ", "-y "][i % 6])
        .collect::<String>()
        + &"z".repeat(5000);
    assert!(long.len() > 10_000);
    assert_eq!(
        search_ids(&mut c, json!({"search": long})).await,
        Vec::<String>::new()
    );
    let long_phrase = format!("\"{}\"", "apple ".repeat(2000));
    assert_eq!(
        search_ids(&mut c, json!({"search": long_phrase})).await,
        Vec::<String>::new()
    );
    // The event table is still there.
    c.assert_healthy().await;
}

#[tokio::test]
async fn extensions_are_ignored_and_an_empty_search_finds_nothing() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let t = now();
    let older = event(&keys, 1, "lemur facts", &[], t - 20);
    let newer = event(&keys, 1, "lemur jokes", &[], t - 10);
    let reaction = event(&keys, 7, "lemur", &[&["e", &id(&older)]], t - 5);
    publish_all(&mut c, &[&older, &newer, &reaction]).await;
    assert_eq!(
        set(search_ids(&mut c, json!({"search": "include:spam language:en lemur"})).await),
        set(vec![id(&older), id(&newer)])
    );
    assert_eq!(
        search_ids(&mut c, json!({"search": "lemur nsfw:false facts"})).await,
        vec![id(&older)]
    );
    // Only extensions: no condition on the text; the indexed kinds the
    // other fields allow, newest first.
    assert_eq!(
        search_ids(
            &mut c,
            json!({"search": "language:en", "authors": [pk(&keys)]})
        )
        .await,
        vec![id(&newer), id(&older)]
    );
    // Nothing to look for: nothing found (an EOSE, not an error).
    for search in ["", "   ", "\"\"", "*", "-", "!!!"] {
        assert_eq!(
            search_ids(&mut c, json!({"search": search})).await,
            Vec::<String>::new(),
            "{search:?}"
        );
    }
    // Not a string: refused as invalid.
    let reason = c.req_closed("bad", vec![json!({"search": 5})]).await;
    assert!(reason.starts_with("invalid:"), "{reason}");
}

#[tokio::test]
async fn a_search_over_kinds_that_are_not_indexed_returns_just_eose() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let text = note(&keys, "capybara");
    let reaction = event(&keys, 7, "capybara", &[&["e", &id(&text)]], now());
    let listing = event(&keys, 30402, "capybara for sale", &[&["d", "x"]], now());
    publish_all(&mut c, &[&text, &reaction, &listing]).await;
    assert_eq!(
        search_ids(&mut c, json!({"search": "capybara"})).await,
        vec![id(&text)]
    );
    for kinds in [json!([7]), json!([7, 30402]), json!([3, 5])] {
        c.send_json(json!(["REQ", "k", {"search": "capybara", "kinds": kinds}]))
            .await;
        assert_eq!(c.recv().await, json!(["EOSE", "k"]));
        c.send_json(json!(["CLOSE", "k"])).await;
    }
    assert_eq!(index_hits(&relay, "capybara"), 1);
    assert_eq!(index_hits(&relay, "sale"), 0);
}

#[tokio::test]
async fn live_events_are_not_matched_against_search() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let mut publisher = relay.client().await;
    let keys = Keys::generate();
    c.send_json(json!(["REQ", "live", {"search": "meerkat"}]))
        .await;
    assert_eq!(c.recv().await, json!(["EOSE", "live"]));
    let first = note(&keys, "meerkat on watch");
    publish_all(&mut publisher, &[&first]).await;
    c.expect_silence(QUIET).await;
    // It is stored and found by a new search.
    assert_eq!(
        search_ids(&mut c, json!({"search": "meerkat"})).await,
        vec![id(&first)]
    );
    // In a REQ mixing both, the other filter still gets live events.
    c.send_json(json!([
        "REQ", "mixed", {"search": "meerkat"}, {"authors": [pk(&keys)], "limit": 0}
    ]))
    .await;
    let answer = c.recv().await;
    assert_eq!(answer[0], "EVENT", "{answer}");
    assert_eq!(answer[2]["id"], id(&first));
    assert_eq!(c.recv().await, json!(["EOSE", "mixed"]));
    let second = note(&keys, "another meerkat");
    publish_all(&mut publisher, &[&second]).await;
    let live = c.recv().await;
    assert_eq!(live[0], "EVENT");
    assert_eq!(live[1], "mixed");
    assert_eq!(live[2]["id"], id(&second));
    c.expect_silence(QUIET).await;
}

#[tokio::test]
async fn private_kinds_are_not_leaked_through_search() {
    // An operator who indexes DMs too (kind 4 is private by default).
    let relay = TestRelay::start_with(|c| c.search.kinds = vec![1, 4]).await;
    let (alice, bob, eve) = (Keys::generate(), Keys::generate(), Keys::generate());
    let mut publisher = relay.client().await;
    let dm = event(
        &alice,
        4,
        "the narwhal password",
        &[&["p", &pk(&bob)]],
        now(),
    );
    let public = note(&alice, "a public narwhal");
    publish_all(&mut publisher, &[&dm, &public]).await;
    assert_eq!(index_hits(&relay, "password"), 1);

    let mut anonymous = relay.client().await;
    assert_eq!(
        search_ids(&mut anonymous, json!({"search": "narwhal"})).await,
        vec![id(&public)]
    );
    assert_eq!(
        search_ids(
            &mut anonymous,
            json!({"search": "narwhal password", "kinds": [1, 4]})
        )
        .await,
        Vec::<String>::new()
    );
    let reason = anonymous
        .req_closed("dm", vec![json!({"search": "narwhal", "kinds": [4]})])
        .await;
    assert!(reason.starts_with("auth-required:"), "{reason}");

    let mut stranger = relay.client().await;
    assert_eq!(
        stranger.authenticate(&eve, &relay.url).await,
        (true, String::new())
    );
    assert_eq!(
        search_ids(&mut stranger, json!({"search": "narwhal"})).await,
        vec![id(&public)]
    );
    assert_eq!(
        search_ids(
            &mut stranger,
            json!({"search": "password", "authors": [pk(&alice)]})
        )
        .await,
        Vec::<String>::new()
    );

    let mut recipient = relay.client().await;
    assert_eq!(
        recipient.authenticate(&bob, &relay.url).await,
        (true, String::new())
    );
    assert_eq!(
        set(search_ids(&mut recipient, json!({"search": "narwhal"})).await),
        set(vec![id(&dm), id(&public)])
    );
    assert_eq!(
        search_ids(&mut recipient, json!({"search": "password", "kinds": [4]})).await,
        vec![id(&dm)]
    );
}

#[tokio::test]
async fn count_and_negentropy_refuse_search_rather_than_ignore_it() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    c.send_json(json!(["COUNT", "n", {"search": "x"}])).await;
    let answer = c.recv().await;
    assert_eq!(answer[0], "CLOSED", "{answer}");
    assert!(
        answer[2].as_str().unwrap().starts_with("unsupported:"),
        "{answer}"
    );
    c.send_json(json!(["NEG-OPEN", "g", {"search": "x"}, "6100000200"]))
        .await;
    let answer = c.recv().await;
    assert_eq!(answer[0], "NEG-ERR", "{answer}");
    assert!(
        answer[2].as_str().unwrap().starts_with("unsupported:"),
        "{answer}"
    );
}

#[tokio::test]
async fn nip11_lists_nip50_only_when_search_is_on() {
    let on = TestRelay::start().await;
    assert!(nips(&nip11(&on).await).contains(&50));
    let off = TestRelay::start_with(|c| c.search.enabled = false).await;
    assert!(!nips(&nip11(&off).await).contains(&50));
    let mut c = off.client().await;
    let reason = c.req_closed("s", vec![json!({"search": "x"})]).await;
    assert!(reason.starts_with("unsupported:"), "{reason}");
    // Other filters of such a REQ are not served either; plain REQs are.
    let reason = c
        .req_closed("s", vec![json!({"kinds": [1]}), json!({"search": "x"})])
        .await;
    assert!(reason.starts_with("unsupported:"), "{reason}");
    c.assert_healthy().await;
}

/// A relay on `db`, with `adjust` applied to the test configuration.
async fn relay_on(db: &Path, adjust: impl FnOnce(&mut nostr_relayd::Config)) -> TestRelay {
    let db = db.to_owned();
    TestRelay::start_with(move |c| {
        c.database = db;
        adjust(c);
    })
    .await
}

#[tokio::test]
async fn changing_the_indexed_kinds_rebuilds_the_index_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.sqlite");
    let keys = Keys::generate();
    let text = note(&keys, "pangolin note");
    let article = event(&keys, 30023, "pangolin article", &[&["d", "p"]], now());

    let mut relay = relay_on(&db, |c| c.search.kinds = vec![1]).await;
    let mut c = relay.client().await;
    publish_all(&mut c, &[&text, &article]).await;
    assert_eq!(
        search_ids(&mut c, json!({"search": "pangolin"})).await,
        vec![id(&text)]
    );
    relay.stop().await;

    let mut relay = relay_on(&db, |c| c.search.kinds = vec![1, 30023]).await;
    let mut c = relay.client().await;
    assert_eq!(
        set(search_ids(&mut c, json!({"search": "pangolin"})).await),
        set(vec![id(&text), id(&article)])
    );
    relay.stop().await;

    // Off: refused, and the index is emptied (nothing to maintain).
    let mut relay = relay_on(&db, |c| c.search.enabled = false).await;
    let mut c = relay.client().await;
    let reason = c.req_closed("s", vec![json!({"search": "pangolin"})]).await;
    assert!(reason.starts_with("unsupported:"), "{reason}");
    assert_eq!(indexed_events(&relay), 0);
    let later = note(&keys, "pangolin while off");
    publish_all(&mut c, &[&later]).await;
    assert_eq!(indexed_events(&relay), 0);
    relay.stop().await;

    // On again with the defaults: everything is indexed again.
    let relay = relay_on(&db, |_| {}).await;
    let mut c = relay.client().await;
    assert_eq!(
        set(search_ids(&mut c, json!({"search": "pangolin"})).await),
        set(vec![id(&text), id(&article), id(&later)])
    );
}
