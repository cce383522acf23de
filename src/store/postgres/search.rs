//! NIP-50 search on PostgreSQL: a filter's `search` answered from the
//! `search` tsvector column and its GIN index, with the SQLite backend's
//! query syntax (`store::search::search_terms`: words and quoted phrases,
//! ANDed; `key:value` extensions dropped) and the same rules: kinds cut to
//! the indexed ones, a search with no word matches nothing, one with only
//! extensions is the same filter without `search`.
//!
//! Both sides use the `simple` text search configuration: the writer's
//! `to_tsvector('simple', text)` (postgres/writer.rs) and the query's
//! `websearch_to_tsquery('simple', …)`, fed each term as a quoted phrase so
//! that nothing a user types is an operator (`or`, `-`, quotes). `simple`
//! lower-cases and splits but keeps diacritics, where SQLite's tokenizer
//! removes them: "cafe" does not find "café" here.
//!
//! Ranking, as in SQLite, is among the newest [`WINDOW`] events that match
//! the text and every other condition (by `seq`, the insertion order):
//! `ts_rank` with length normalization (the nearest to bm25 PostgreSQL has
//! built in), best first, then newest.

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

/// The user's terms as a `websearch_to_tsquery` input: each a quoted
/// phrase (a term never holds a quote: `search_terms` splits on them).
fn websearch_text(terms: &[String]) -> String {
    let quoted: Vec<String> = terms
        .iter()
        .map(|term| format!("\"{}\"", term.replace('"', " ")))
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
        assert_eq!(terms("a OR b"), r#""a" "OR" "b""#);
        assert_eq!(terms(r#"-x "good morning""#), r#""-x" "good morning""#);
    }
}
