//! NIP-50 search on PostgreSQL: a filter's `search` answered from the
//! `search` tsvector column and its GIN index, with the SQLite backend's
//! query syntax (`store::search::search_terms`: words and quoted phrases,
//! ANDed; `key:value` extensions dropped) and the same rules: kinds cut to
//! the indexed ones, a search with no word matches nothing, one with only
//! extensions is the same filter without `search`.
//!
//! Both sides fold their text with [`search_words`] first (diacritics
//! removed, lower case, anything but letters and digits a space: what
//! SQLite's `unicode61 remove_diacritics 2` tokenizer does), so that
//! PostgreSQL's parser sees plain words only (no e-mail, host or URL
//! tokens), then use the `simple` configuration: the writer's
//! `to_tsvector('simple', …)` (postgres/writer.rs) and the query's
//! `websearch_to_tsquery('simple', …)`, fed each term as a quoted phrase so
//! that nothing a user types is an operator (`or`, `-`, quotes).
//!
//! Ranking, as in SQLite, is among the newest [`WINDOW`] events that match
//! the text and every other condition (by `seq`, the insertion order):
//! `ts_rank` with length normalization (the nearest to bm25 PostgreSQL has
//! built in), best first, then newest.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use super::PgStore;
use super::query::{Covered, Sql, residual_conditions};
use crate::nostr::Filter;
use crate::privacy::Readers;
use crate::store::StoreError;
use crate::store::search::{SearchTerms, WINDOW, search_terms};

/// How a search filter is answered.
pub(super) enum Search {
    /// One statement: `(id, json)` rows, best first.
    Ranked(Sql),
    /// Only extensions: this filter without `search`, kinds cut to the
    /// indexed ones, answered as any other.
    Unranked(Filter),
    /// Nothing can match: no word, or no indexed kind asked for.
    Nothing,
}

/// Text as the search index holds it, and as queries look for it: letters
/// and digits only, lower case, without diacritics ("Café, naïve!" is
/// "cafe  naive "), every other character a space. The writer folds the
/// indexed text with it, the reader each term: both tokenize alike, as
/// SQLite's unicode61 tokenizer with remove_diacritics does.
pub fn search_words(text: &str) -> String {
    let mut words = String::with_capacity(text.len());
    for c in text.nfd() {
        if is_combining_mark(c) {
            continue;
        }
        if c.is_alphanumeric() {
            words.extend(c.to_lowercase());
        } else {
            words.push(' ');
        }
    }
    words
}

/// The user's terms as a `websearch_to_tsquery` input: each folded by
/// [`search_words`] (so it holds no quote or operator) and quoted as a
/// phrase.
fn websearch_text(terms: &[String]) -> String {
    let quoted: Vec<String> = terms
        .iter()
        .map(|term| format!("\"{}\"", search_words(term)))
        .collect();
    quoted.join(" ")
}

/// The statement for one search filter over `indexed` kinds.
pub(super) fn search_sql(
    filter: &Filter,
    indexed: &[u16],
    readers: &Readers,
    limit: u64,
    now: i64,
) -> Search {
    let Some(search) = &filter.search else {
        return Search::Nothing;
    };
    let kinds: Vec<u16> = match &filter.kinds {
        Some(kinds) => kinds
            .iter()
            .copied()
            .filter(|k| indexed.binary_search(k).is_ok())
            .collect(),
        None => indexed.to_vec(),
    };
    if kinds.is_empty() {
        return Search::Nothing;
    }
    let terms = match search_terms(search) {
        SearchTerms::Nothing => return Search::Nothing,
        SearchTerms::Unconditional => {
            return Search::Unranked(Filter {
                search: None,
                kinds: Some(kinds),
                ..filter.clone()
            });
        }
        SearchTerms::Terms(terms) => terms,
    };
    let filter = Filter {
        search: None,
        kinds: filter.kinds.as_ref().map(|_| kinds),
        ..filter.clone()
    };
    let mut sql = Sql::new();
    let query = sql.param(websearch_text(&terms));
    let query = format!("websearch_to_tsquery('simple', {query})");
    let window = sql.param(i64::try_from(WINDOW.max(limit)).unwrap_or(i64::MAX));
    let mut parts = Vec::new();
    for part in readers.restrict(&filter) {
        if part.is_unsatisfiable() {
            continue;
        }
        let mut conditions = vec![format!("e.search @@ {query}")];
        conditions.extend(residual_conditions(
            &mut sql,
            &part,
            Covered::default(),
            now,
            "e",
            "e.created_at",
        ));
        parts.push(format!(
            "(SELECT e.seq, e.created_at, ts_rank(e.search, {query}, 1) AS rank FROM event e \
             WHERE {} ORDER BY e.seq DESC LIMIT {window})",
            conditions.join(" AND ")
        ));
    }
    if parts.is_empty() {
        return Search::Nothing;
    }
    let limit = sql.param(i64::try_from(limit).unwrap_or(i64::MAX));
    sql.text = format!(
        "SELECT e.id, e.json FROM (SELECT s.seq, s.created_at, max(s.rank) AS rank \
         FROM ({}) s GROUP BY s.seq, s.created_at \
         ORDER BY rank DESC, s.created_at DESC, s.seq DESC LIMIT {limit}) r \
         JOIN event e ON e.seq = r.seq ORDER BY r.rank DESC, r.created_at DESC, r.seq DESC",
        parts.join(" UNION ALL ")
    );
    Search::Ranked(sql)
}

impl PgStore {
    /// How to answer one search filter: reads the indexed kinds on `client`.
    pub(super) async fn search_statement(
        &self,
        client: &deadpool_postgres::Client,
        filter: &Filter,
        readers: &Readers,
        limit: u64,
        now: i64,
    ) -> Result<Search, StoreError> {
        let statement = client
            .prepare_cached("SELECT kind FROM search_kind ORDER BY kind")
            .await?;
        let indexed = client
            .query(&statement, &[])
            .await?
            .iter()
            .map(|row| row.try_get::<_, i32>(0))
            .collect::<Result<Vec<i32>, _>>()?;
        let indexed: Vec<u16> = indexed
            .into_iter()
            .filter_map(|k| u16::try_from(k).ok())
            .collect();
        Ok(search_sql(filter, &indexed, readers, limit, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_quoted_phrases() {
        let terms = |s: &str| match search_terms(s) {
            SearchTerms::Terms(terms) => websearch_text(&terms),
            other => panic!("{other:?}"),
        };
        assert_eq!(terms("a OR b"), r#""a" "or" "b""#);
        assert_eq!(terms(r#"-x "good morning""#), r#"" x" "good morning""#);
        assert_eq!(terms("bitcoin.example"), r#""bitcoin example""#);
    }

    #[test]
    fn words_are_folded_as_unicode61_folds_them() {
        assert_eq!(search_words("Café, naïve!"), "cafe  naive ");
        assert_eq!(search_words("ÜNÏCÖDÉ"), "unicode");
        assert_eq!(
            search_words("satoshi@bitcoin.example"),
            "satoshi bitcoin example"
        );
        assert_eq!(search_words("10:30 a_b"), "10 30 a b");
        assert_eq!(search_words("日本語 テスト"), "日本語 テスト");
        assert_eq!(
            search_words("\"quoted\" -x | y & !z <-> (w)"),
            " quoted   x   y    z      w "
        );
    }
}
