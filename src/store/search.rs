//! NIP-50 search: a filter's `search` answered from an SQLite FTS5 index.
//!
//! `event_search` (migration 5) is a contentless FTS5 table whose rowid is
//! the event's `seq`: the writer adds the text of each event of an indexed
//! kind when it stores it, and every deletion (replacement, NIP-09, NIP-40
//! expiry, NIP-62, NIP-86 ban) removes it by seq in `writer::delete_event`.
//! `search_kind` records which kinds the index holds; [`configure`]
//! rebuilds the index at start when relay.toml asks for other kinds.
//!
//! Besides the text, each row carries its event's kind and author (hex) as
//! one token each, in columns of their own: a filter's `kinds` and
//! `authors` become part of the MATCH (`kind : (…) AND author : (…)`), so
//! FTS5 intersects posting lists instead of the join testing every match.
//! A profile search (`kinds: [0]`) for a word in most notes reads the
//! thousand profiles that have it, not the half million notes.
//!
//! A user's query never reaches FTS5's query syntax: it is split into words
//! and quoted phrases, `key:value` extensions are dropped (NIP-50: ignore
//! unsupported ones), and each remaining term becomes an FTS5 string
//! literal, so `*`, `NEAR`, `AND`, `OR`, `NOT`, `-`, `^`, `:` and
//! parentheses are just text. The terms are ANDed, and confined to the
//! text column (`text : (…)`): a search for "1" must not find every note
//! by its kind.
//!
//! Ranking is FTS5's bm25 among the newest [`WINDOW`] events that match
//! the text and every other condition of the filter: exact for all but
//! the most common words, whose cost it bounds (ranking every one of
//! 700,000 matches takes half a second; see `benches/README.md`).

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::LazyLock;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, TransactionBehavior, params, params_from_iter};

use super::query::{Candidate, Covered, Sql, residual_conditions};
use crate::nostr::{Event, Filter};
use crate::privacy::Readers;

/// The indexed text of a kind-0 profile, as SQL over its content `c`: the
/// string values of name, display_name, about and nip05, one per line;
/// NULL when the content is not a JSON object. Migration 5 holds a copy
/// (a migration never changes); a test checks that both index alike.
pub(super) const PROFILE_TEXT: &str = "CASE WHEN json_valid(c) THEN \
     CASE WHEN json_type(c) = 'object' THEN concat_ws(char(10), \
     CASE WHEN json_type(c, '$.name') = 'text' THEN json_extract(c, '$.name') END, \
     CASE WHEN json_type(c, '$.display_name') = 'text' THEN json_extract(c, '$.display_name') END, \
     CASE WHEN json_type(c, '$.about') = 'text' THEN json_extract(c, '$.about') END, \
     CASE WHEN json_type(c, '$.nip05') = 'text' THEN json_extract(c, '$.nip05') END) END END";

/// Ranking considers at most this many matching events, the newest (or
/// the filter's limit, if larger).
pub const WINDOW: u64 = 10_000;

/// What a user's `search` string asks of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchQuery {
    /// No word to look for (an empty string, only punctuation or empty
    /// quotes): nothing matches.
    Nothing,
    /// Only `key:value` extensions, all ignored: no condition on the text,
    /// so every indexed event the other fields allow, newest first.
    Unconditional,
    /// An FTS5 MATCH expression: every term a string literal, ANDed.
    Match(String),
}

/// The terms of a NIP-50 `search` string, for any backend's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchTerms {
    /// No word to look for: nothing matches.
    Nothing,
    /// Only `key:value` extensions, all ignored: no condition on the text.
    Unconditional,
    /// Words and phrases, each to be found (ANDed), in order, no duplicates.
    Terms(Vec<String>),
}

/// Translates a NIP-50 `search` string into an FTS5 query that cannot
/// carry FTS5 syntax: each of [`search_terms`] becomes a string literal.
pub fn parse_query(search: &str) -> SearchQuery {
    let terms = match search_terms(search) {
        SearchTerms::Nothing => return SearchQuery::Nothing,
        SearchTerms::Unconditional => return SearchQuery::Unconditional,
        SearchTerms::Terms(terms) => terms,
    };
    let literals: Vec<String> = terms
        .iter()
        .map(|term| format!("\"{}\"", term.replace('"', "\"\"")))
        .collect();
    SearchQuery::Match(literals.join(" "))
}

/// Splits a NIP-50 `search` string into terms. Bare words and `"quoted
/// phrases"` (an unclosed quote runs to the end) are terms; `key:value`
/// extensions are dropped; terms without a letter or digit are dropped;
/// duplicates too. Control characters become spaces.
pub fn search_terms(search: &str) -> SearchTerms {
    let mut terms: Vec<String> = Vec::new();
    let mut extensions = false;
    let mut rest = search;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let term;
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            term = &quoted[..end];
            rest = quoted.get(end + 1..).unwrap_or("");
        } else {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '"')
                .unwrap_or(rest.len());
            term = &rest[..end];
            rest = &rest[end..];
            if is_extension(term) {
                extensions = true;
                continue;
            }
        }
        // Control characters (NUL above all) are separators to the
        // tokenizer anyway; FTS5's parser must never see them.
        let term: String = term
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if term.chars().any(char::is_alphanumeric) && !terms.contains(&term) {
            terms.push(term);
        }
    }
    if terms.is_empty() {
        return if extensions {
            SearchTerms::Unconditional
        } else {
            SearchTerms::Nothing
        };
    }
    SearchTerms::Terms(terms)
}

/// A NIP-50 extension: `key:value`, the key a letter then letters, digits,
/// `_` or `-`. Not extensions: URLs (`https://…`, the value starts with
/// `/`), NIP-21 URIs (`nostr:npub1…`), times (`10:30`).
fn is_extension(word: &str) -> bool {
    let Some((key, value)) = word.split_once(':') else {
        return false;
    };
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !value.is_empty()
        && !value.starts_with('/')
        && !key.eq_ignore_ascii_case("nostr")
}

/// The kinds the index holds, sorted.
pub fn indexed_kinds(conn: &Connection) -> rusqlite::Result<Vec<u16>> {
    conn.prepare_cached("SELECT kind FROM search_kind ORDER BY kind")?
        .query_map([], |row| row.get(0))?
        .collect()
}

/// Adds a just-stored event to the index (the writer calls this only for
/// indexed kinds). Empty text adds nothing.
pub(super) fn index_event(tx: &Connection, seq: i64, event: &Event) -> rusqlite::Result<()> {
    let author = hex::encode(event.pubkey);
    if event.kind == 0 {
        static PROFILE: LazyLock<String> = LazyLock::new(|| {
            format!(
                "INSERT INTO event_search (rowid, text, kind, author) SELECT ?1, t, 0, ?3 FROM \
                 (SELECT {PROFILE_TEXT} AS t FROM (SELECT ?2 AS c)) WHERE t != ''"
            )
        });
        tx.prepare_cached(&PROFILE)?
            .execute(params![seq, event.content, author])?;
    } else if !event.content.is_empty() {
        tx.prepare_cached(
            "INSERT INTO event_search (rowid, text, kind, author) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![seq, event.content, event.kind, author])?;
    }
    Ok(())
}

/// Removes an event from the index; a seq it does not hold is a no-op
/// (contentless_delete looks the row up first), so every deletion calls it.
pub(super) fn unindex(conn: &Connection, seq: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM event_search WHERE rowid = ?1")?
        .execute([seq])?;
    Ok(())
}

/// Makes the index hold exactly `kinds` (sorted; empty: search is off):
/// when `search_kind` says otherwise, empties the index and indexes every
/// stored event of those kinds again, in one transaction. Returns how many
/// events were indexed, or None when nothing had to change.
pub fn configure(conn: &mut Connection, kinds: &[u16]) -> rusqlite::Result<Option<usize>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if indexed_kinds(&tx)? == kinds {
        return Ok(None);
    }
    tracing::info!(?kinds, "rebuilding the search index");
    let started = std::time::Instant::now();
    tx.execute(
        "INSERT INTO event_search (event_search) VALUES ('delete-all')",
        [],
    )?;
    tx.execute("DELETE FROM search_kind", [])?;
    for kind in kinds {
        tx.execute("INSERT INTO search_kind (kind) VALUES (?1)", [kind])?;
    }
    let list: Vec<SqlValue> = kinds
        .iter()
        .map(|k| SqlValue::Integer(i64::from(*k)))
        .collect();
    let indexed = tx.execute(
        &format!(
            "INSERT INTO event_search (rowid, text, kind, author)
             SELECT seq, text, kind, lower(hex(pubkey)) FROM (
                 SELECT seq, kind, pubkey,
                        CASE WHEN kind = 0 THEN {PROFILE_TEXT} ELSE c END AS text
                 FROM (SELECT seq, kind, pubkey, json_extract(json, '$.content') AS c
                       FROM event WHERE kind IN rarray(?1)))
             WHERE text != ''"
        ),
        [Rc::new(list)],
    )?;
    tx.commit()?;
    tracing::info!(
        ?kinds,
        events = indexed,
        seconds = started.elapsed().as_secs_f64(),
        "search index rebuilt"
    );
    Ok(Some(indexed))
}

/// How `store::query` answers one filter.
pub(super) enum Answer {
    /// No `search`: the usual index ranges.
    NotSearch,
    /// The search's events, best first, at most the filter's limit.
    Ranked(Vec<Candidate>),
    /// Only extensions: this filter (no `search`, kinds cut to the indexed
    /// ones), answered as any other, newest first.
    Unranked(Filter),
}

/// Answers a filter with `search`, inside the REQ's read transaction. Each
/// part of the privacy split (`Readers::restrict`) is searched with every
/// other condition of the filter; their matches are merged by score (the
/// same terms over the same snapshot score alike: the kind and author
/// tokens that differ between parts weigh nothing) and cut to `limit`.
pub(super) fn answer(
    conn: &Connection,
    filter: &Filter,
    readers: &Readers,
    limit: u64,
    now: i64,
) -> rusqlite::Result<Answer> {
    let Some(search) = &filter.search else {
        return Ok(Answer::NotSearch);
    };
    let indexed = indexed_kinds(conn)?;
    let kinds: Vec<u16> = match &filter.kinds {
        Some(kinds) => kinds
            .iter()
            .copied()
            .filter(|k| indexed.binary_search(k).is_ok())
            .collect(),
        None => indexed.clone(),
    };
    if kinds.is_empty() {
        return Ok(Answer::Ranked(Vec::new())); // no indexed kind asked for
    }
    let expression = match parse_query(search) {
        SearchQuery::Nothing => return Ok(Answer::Ranked(Vec::new())),
        SearchQuery::Unconditional => {
            return Ok(Answer::Unranked(Filter {
                search: None,
                kinds: Some(kinds),
                ..filter.clone()
            }));
        }
        SearchQuery::Match(expression) => expression,
    };
    let filter = Filter {
        kinds: filter.kinds.as_ref().map(|_| kinds),
        ..filter.clone()
    };
    let mut found: HashMap<i64, (Candidate, f64)> = HashMap::new();
    for part in readers.restrict(&filter) {
        if part.is_unsatisfiable() {
            continue;
        }
        let expression = part_expression(&expression, &part, &indexed);
        for (candidate, score) in search_part(conn, &part, &expression, limit, now)? {
            found.insert(candidate.seq, (candidate, score));
        }
    }
    let mut found: Vec<(Candidate, f64)> = found.into_values().collect();
    found.sort_unstable_by(|(a, a_score), (b, b_score)| {
        a_score
            .total_cmp(b_score)
            .then(b.created_at.cmp(&a.created_at))
            .then(b.seq.cmp(&a.seq))
    });
    found.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(Answer::Ranked(found.into_iter().map(|(c, _)| c).collect()))
}

/// The MATCH expression of one part of a search: the user's terms in the
/// text column, and the part's kinds (unless they are every indexed kind)
/// and authors as tokens of their columns. The SQL conditions check them
/// again; these let FTS5 skip what they exclude.
fn part_expression(terms: &str, part: &Filter, indexed: &[u16]) -> String {
    let any = |values: Vec<String>| -> String {
        let quoted: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
        quoted.join(" OR ")
    };
    let mut expression = format!("text : ({terms})");
    if let Some(kinds) = part.kinds.as_ref().filter(|k| k.as_slice() != indexed) {
        let kinds = any(kinds.iter().map(u16::to_string).collect());
        expression.push_str(&format!(" AND kind : ({kinds})"));
    }
    if let Some(authors) = &part.authors {
        let authors = any(authors.iter().map(hex::encode).collect());
        expression.push_str(&format!(" AND author : ({authors})"));
    }
    expression
}

/// The statement searching one filter: the newest `WINDOW` events that
/// match `expression` and every field of `filter`, with their bm25 score
/// over the text column (lower is better). Parameters: the expression
/// first, the window last.
fn search_sql(filter: &Filter, now: i64) -> Sql {
    let mut sql = Sql::new();
    let expression = sql.param(String::new());
    let mut conditions = vec![format!("event_search MATCH {expression}")];
    if let Some(ids) = &filter.ids {
        let list: Vec<SqlValue> = ids.iter().map(|id| SqlValue::Blob(id.to_vec())).collect();
        conditions.push(format!("e.id IN rarray({})", sql.param(Rc::new(list))));
    }
    conditions.extend(residual_conditions(
        &mut sql,
        filter,
        Covered::default(),
        now,
        "e",
        "seq",
    ));
    let window = sql.param(0i64);
    sql.text = format!(
        "SELECT e.seq, e.created_at, bm25(event_search, 1.0, 0.0, 0.0) FROM event_search \
         JOIN event e ON e.seq = event_search.rowid WHERE {} \
         ORDER BY event_search.rowid DESC LIMIT {window}",
        conditions.join(" AND ")
    );
    sql
}

fn search_part(
    conn: &Connection,
    filter: &Filter,
    expression: &str,
    limit: u64,
    now: i64,
) -> rusqlite::Result<Vec<(Candidate, f64)>> {
    let mut sql = search_sql(filter, now);
    sql.params[0] = Box::new(expression.to_owned());
    let last = sql.params.len() - 1;
    sql.params[last] = Box::new(i64::try_from(WINDOW.max(limit)).unwrap_or(i64::MAX));
    let mut stmt = conn.prepare_cached(&sql.text)?;
    stmt.query_map(params_from_iter(sql.params.iter()), |row| {
        Ok((
            Candidate {
                seq: row.get(0)?,
                created_at: row.get(1)?,
            },
            row.get(2)?,
        ))
    })?
    .collect()
}

/// `EXPLAIN QUERY PLAN` of the statement searching `filter`.
pub fn explain(conn: &Connection, filter: &Filter, now: i64) -> rusqlite::Result<Vec<String>> {
    let mut sql = search_sql(filter, now);
    sql.params[0] = Box::new("\"x\"".to_owned());
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {}", sql.text))?;
    stmt.query_map(params_from_iter(sql.params.iter()), |row| row.get(3))?
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use proptest::prelude::*;
    use serde_json::json;

    fn matched(search: &str) -> String {
        match parse_query(search) {
            SearchQuery::Match(expression) => expression,
            other => panic!("{search:?} gave {other:?}"),
        }
    }

    #[test]
    fn words_and_phrases_become_string_literals() {
        assert_eq!(matched("nostr"), r#""nostr""#);
        assert_eq!(matched("  best   nostr apps "), r#""best" "nostr" "apps""#);
        assert_eq!(
            matched(r#"relay "good morning" coffee"#),
            r#""relay" "good morning" "coffee""#
        );
        // An unclosed quote runs to the end.
        assert_eq!(matched(r#"a "b c"#), r#""a" "b c""#);
        // A quote inside a word starts a phrase.
        assert_eq!(matched(r#"ab"cd ef"gh"#), r#""ab" "cd ef" "gh""#);
        // Duplicates go.
        assert_eq!(matched("zap Zap zap"), r#""zap" "Zap""#);
    }

    #[test]
    fn fts5_syntax_is_text() {
        for (search, expected) in [
            ("a OR b", r#""a" "OR" "b""#),
            ("a AND b", r#""a" "AND" "b""#),
            ("NOT a", r#""NOT" "a""#),
            ("NEAR(a b)", r#""NEAR(a" "b)""#),
            ("appl*", r#""appl*""#),
            ("-x y", r#""-x" "y""#),
            ("^start", r#""^start""#),
            ("(a)", r#""(a)""#),
            ("{text}: a", r#""{text}:" "a""#),
            ("text : a", r#""text" "a""#),
            ("a + b", r#""a" "b""#),
        ] {
            assert_eq!(matched(search), expected, "{search}");
        }
    }

    #[test]
    fn extensions_are_dropped_but_urls_and_nostr_uris_are_text() {
        assert_eq!(matched("include:spam nostr"), r#""nostr""#);
        assert_eq!(
            matched("language:en domain:example.com nsfw:false sentiment:positive zap"),
            r#""zap""#
        );
        assert_eq!(matched("col:value x"), r#""x""#);
        assert_eq!(
            matched("https://example.com/a"),
            r#""https://example.com/a""#
        );
        assert_eq!(matched("nostr:npub1abc"), r#""nostr:npub1abc""#);
        assert_eq!(matched("at 10:30"), r#""at" "10:30""#);
        assert_eq!(matched("key: value"), r#""key:" "value""#);
        // Quoted, it is a phrase.
        assert_eq!(matched(r#""language:en""#), r#""language:en""#);
    }

    #[test]
    fn empty_queries_match_nothing_and_only_extensions_everything() {
        for search in ["", "   ", "\"\"", "\"", "* - ()", "\"!!!\"", "\u{0}"] {
            assert_eq!(parse_query(search), SearchQuery::Nothing, "{search:?}");
        }
        for search in ["include:spam", "language:en nsfw:true", "language:en !!!"] {
            assert_eq!(
                parse_query(search),
                SearchQuery::Unconditional,
                "{search:?}"
            );
        }
    }

    #[test]
    fn control_characters_never_reach_the_parser() {
        assert_eq!(matched("a\u{0}b"), r#""a b""#);
        assert_eq!(matched("\"x\u{0}\" y"), r#""x " "y""#);
    }

    /// An in-memory index with a few documents, as migration 5 makes it.
    fn index() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE VIRTUAL TABLE event_search USING fts5(text, kind, author, content = '', \
             contentless_delete = 1, tokenize = 'unicode61 remove_diacritics 2');",
        )
        .unwrap();
        for (rowid, text, kind) in [
            (1, "apple banana", 1),
            (2, "near apple and banana", 1),
            (3, "apple or banana", 0),
            (4, "Ünïcödé café", 1),
            (5, "apple pie", 30023),
            (6, "the number 30023", 1),
        ] {
            conn.execute(
                "INSERT INTO event_search (rowid, text, kind, author) VALUES (?1, ?2, ?3, ?4)",
                params![rowid, text, kind, hex::encode([rowid as u8; 32])],
            )
            .unwrap();
        }
        conn
    }

    fn search(conn: &Connection, query: &str) -> rusqlite::Result<Vec<i64>> {
        search_in(conn, query, &Filter::default())
    }

    /// What the index finds for `query` in the kinds and authors of `part`.
    fn search_in(conn: &Connection, query: &str, part: &Filter) -> rusqlite::Result<Vec<i64>> {
        let SearchQuery::Match(terms) = parse_query(query) else {
            return Ok(Vec::new());
        };
        let expression = part_expression(&terms, part, &[0, 1, 30023]);
        let mut rows: Vec<i64> = conn
            .prepare("SELECT rowid FROM event_search WHERE event_search MATCH ?1")?
            .query_map([expression], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        rows.sort_unstable();
        Ok(rows)
    }

    #[test]
    fn the_index_reads_operators_as_words() {
        let conn = index();
        assert_eq!(search(&conn, "apple OR banana").unwrap(), vec![3]);
        assert_eq!(search(&conn, "NEAR(apple banana)").unwrap(), vec![2]);
        assert_eq!(search(&conn, "appl*").unwrap(), Vec::<i64>::new());
        assert_eq!(search(&conn, "apple -banana").unwrap(), vec![1, 2, 3]);
        assert_eq!(
            search(&conn, "apple NOT banana").unwrap(),
            Vec::<i64>::new()
        );
        assert_eq!(search(&conn, "\"apple banana\"").unwrap(), vec![1]);
        assert_eq!(search(&conn, "text:apple pie").unwrap(), vec![5]);
        assert_eq!(search(&conn, "unicode CAFE").unwrap(), vec![4]);
        // The kind and author columns are not searched as text.
        assert_eq!(search(&conn, "30023").unwrap(), vec![6]);
        assert_eq!(
            search(&conn, &hex::encode([5u8; 32])).unwrap(),
            Vec::<i64>::new()
        );
        // Raw, the same strings are FTS5 syntax (or errors): the test above
        // would fail without the translation.
        let raw = |q: &str| -> rusqlite::Result<Vec<i64>> {
            conn.prepare("SELECT rowid FROM event_search WHERE event_search MATCH ?1")?
                .query_map([q], |row| row.get(0))?
                .collect()
        };
        assert_eq!(raw("apple OR banana").unwrap().len(), 4);
        assert!(raw("apple -banana").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever a client sends, the MATCH expression parses.
        #[test]
        fn any_search_string_is_a_valid_fts5_query(text in ".{0,80}") {
            let conn = index();
            prop_assert!(search(&conn, &text).is_ok(), "{text:?}");
        }

        #[test]
        fn operator_soup_is_a_valid_fts5_query(
            words in proptest::collection::vec(
                prop_oneof![
                    Just("\""), Just("*"), Just("NEAR("), Just(")"), Just("-"), Just("^"),
                    Just(":"), Just("AND"), Just("OR"), Just("NOT"), Just("{"), Just("}"),
                    Just("+"), Just("apple"), Just("x:y"), Just(" "), Just("\u{0}"),
                ],
                0..30,
            )
        ) {
            let conn = index();
            let text = words.concat();
            prop_assert!(search(&conn, &text).is_ok(), "{text:?}");
        }
    }

    #[test]
    fn kinds_and_authors_restrict_the_match() {
        let conn = index();
        let part = |filter: serde_json::Value| Filter::from_value(&filter).unwrap();
        assert_eq!(
            search_in(&conn, "apple", &part(json!({"kinds": [1]}))).unwrap(),
            vec![1, 2]
        );
        assert_eq!(
            search_in(&conn, "apple", &part(json!({"kinds": [0, 30023]}))).unwrap(),
            vec![3, 5]
        );
        // Every indexed kind: no kind term at all.
        assert_eq!(
            part_expression(
                "\"a\"",
                &part(json!({"kinds": [0, 1, 30023]})),
                &[0, 1, 30023]
            ),
            "text : (\"a\")"
        );
        let authors = json!({"authors": [hex::encode([2u8; 32]), hex::encode([5u8; 32])]});
        assert_eq!(
            search_in(&conn, "apple", &part(authors.clone())).unwrap(),
            vec![2, 5]
        );
        let both =
            json!({"authors": [hex::encode([2u8; 32]), hex::encode([5u8; 32])], "kinds": [30023]});
        assert_eq!(search_in(&conn, "apple", &part(both)).unwrap(), vec![5]);
        // A thousand authors (limits.max_filter_values) parse.
        let many = Filter {
            authors: Some(
                (0..1000u32)
                    .map(|i| {
                        let mut key = [0u8; 32];
                        key[..4].copy_from_slice(&i.to_be_bytes());
                        key
                    })
                    .collect(),
            ),
            ..Filter::default()
        };
        assert!(search_in(&conn, "apple", &many).is_ok());
    }

    #[test]
    fn long_queries_parse() {
        let conn = index();
        let words: String = (0..2000).map(|i| format!("w{i} ")).collect();
        assert_eq!(search(&conn, &words).unwrap(), Vec::<i64>::new());
        let phrase = format!("\"{words}\"");
        assert_eq!(search(&conn, &phrase).unwrap(), Vec::<i64>::new());
        let apples = "apple ".repeat(5000);
        assert_eq!(search(&conn, &apples).unwrap(), vec![1, 2, 3, 5]);
    }

    fn database() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("search.sqlite");
        let mut conn = super::super::open_connection(&path, Durability::Normal, false).unwrap();
        super::super::schema::migrate(&mut conn, &path).unwrap();
        (dir, conn)
    }

    #[test]
    fn a_search_reads_the_index_newest_first_then_the_event_by_seq() {
        let (_dir, conn) = database();
        let hex = |c: &str| c.repeat(64);
        for filter in [
            json!({"search": "x"}),
            json!({"search": "x", "kinds": [1], "authors": [hex("a")], "#t": ["nostr"],
                   "since": 5, "until": 10}),
            json!({"search": "x", "ids": [hex("b")]}),
        ] {
            let filter = Filter::from_value(&filter).unwrap();
            let plan = explain(&conn, &filter, 1_700_000_000).unwrap().join("\n");
            assert!(plan.contains("SCAN event_search VIRTUAL TABLE"), "{plan}");
            assert!(
                plan.contains("SEARCH e USING INTEGER PRIMARY KEY (rowid=?)"),
                "{plan}"
            );
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
    }

    /// The rows of the index, as (seq, term, offset) triples, by fts5vocab.
    fn instances(conn: &Connection) -> Vec<(i64, String, i64)> {
        conn.execute_batch(
            "CREATE VIRTUAL TABLE IF NOT EXISTS temp.vocab USING fts5vocab(main, event_search, instance)",
        )
        .unwrap();
        conn.prepare("SELECT doc, term, offset FROM temp.vocab ORDER BY doc, offset, term")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Profiles with every oddity: the three ways of indexing one event (the
    /// writer, migration 5, a rebuild) must agree.
    #[test]
    fn the_writer_the_migration_and_a_rebuild_index_alike() {
        let (_dir, mut conn) = database();
        let contents = [
            (0, json!({"name": "Alice Liddell", "about": "Down the rabbit hole, Ünïcödé", "nip05": "alice@wonder.land", "picture": "https://hidden.example/pic.png", "website": "secretword"}).to_string()),
            (0, json!({"display_name": "Bob", "name": 5, "about": ["not", "text"]}).to_string()),
            (0, "not json at all".to_owned()),
            (0, "[\"an\", \"array\"]".to_owned()),
            (0, "{\"name\": \"first\", \"name\": \"second\"}".to_owned()),
            (0, String::new()),
            (1, "a plain note about coffee".to_owned()),
            (1, String::new()),
            (30023, "# Long form\n\nWith *markdown*".to_owned()),
            (7, "+".to_owned()),
        ];
        for (seq, (kind, content)) in contents.iter().enumerate() {
            let event = Event::from_value(&json!({
                "id": format!("{:064x}", seq), "pubkey": "b".repeat(64), "created_at": 1,
                "kind": kind, "tags": [], "content": content, "sig": "c".repeat(128)
            }))
            .unwrap();
            let json = serde_json::to_string(&json!({"content": content})).unwrap();
            conn.execute(
                "INSERT INTO event (seq, id, pubkey, created_at, kind, json) VALUES (?1, ?2, ?3, 1, ?4, ?5)",
                params![seq as i64 + 1, event.id.to_vec(), event.pubkey.to_vec(), kind, json],
            )
            .unwrap();
            if indexed_kinds(&conn).unwrap().binary_search(kind).is_ok() {
                index_event(&conn, seq as i64 + 1, &event).unwrap();
            }
        }
        let by_writer = instances(&conn);
        let terms: Vec<&str> = by_writer.iter().map(|(_, t, _)| t.as_str()).collect();
        for word in [
            "alice", "rabbit", "wonder", "bob", "unicode", "coffee", "markdown",
        ] {
            assert!(terms.contains(&word), "{word} not indexed: {terms:?}");
        }
        for word in [
            "hidden",
            "secretword",
            "picture",
            "name",
            "json",
            "array",
            "not",
        ] {
            assert!(!terms.contains(&word), "{word} indexed: {terms:?}");
        }
        // Migration 5 again, on the same events.
        conn.execute_batch(
            "DROP TABLE event_search; DROP TABLE search_kind; PRAGMA user_version = 4;",
        )
        .unwrap();
        let path = conn.path().unwrap().to_owned();
        super::super::schema::migrate(&mut conn, std::path::Path::new(&path)).unwrap();
        assert_eq!(instances(&conn), by_writer);
        // A rebuild after a change of kinds, and back.
        assert_eq!(configure(&mut conn, &[1]).unwrap(), Some(1));
        assert_eq!(configure(&mut conn, &[1]).unwrap(), None);
        assert_eq!(configure(&mut conn, &[0, 1, 30023]).unwrap(), Some(5));
        assert_eq!(instances(&conn), by_writer);
        // Off: nothing is left.
        assert_eq!(configure(&mut conn, &[]).unwrap(), Some(0));
        assert!(instances(&conn).is_empty());
    }

    #[test]
    fn removing_a_row_the_index_does_not_hold_changes_nothing() {
        let (_dir, conn) = database();
        conn.execute(
            "INSERT INTO event_search (rowid, text) VALUES (1, 'apple')",
            [],
        )
        .unwrap();
        let state = |conn: &Connection| -> (i64, Vec<u8>) {
            conn.query_row(
                "SELECT (SELECT count(*) FROM event_search_docsize), \
                 (SELECT block FROM event_search_data WHERE id = 1)",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap()
        };
        let before = state(&conn);
        unindex(&conn, 99).unwrap();
        assert_eq!(state(&conn), before);
        unindex(&conn, 1).unwrap();
        assert_eq!(state(&conn).0, 0);
    }
}
