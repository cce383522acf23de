//! A deterministic corpus of realistic, validly signed events, for the load
//! generator (`relay-bench`), the benchmarks and tests.
//!
//! The same seed always gives the same events (ids, contents, tags, times)
//! and the same query targets, so a `query` run can find what an `ingest` run
//! with that seed stored, on any relay. The mix follows what public relays
//! see: 1,000 authors with a skewed activity (a few post most), 70% kind-1
//! notes of 200–800 bytes carrying 1–4 `e`/`p`/`t` tags (half of the `e`
//! tags point at a hot set of 200 notes), 20% kind-7 reactions, 5% kind-0
//! profiles and 5% kind-3 follow lists of 50–300 `p` tags, spread over the
//! 30 days before `now`.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use secp256k1::{Keypair, schnorr};

use crate::nostr::Event;

/// Seconds in the window `created_at` is spread over.
const SPREAD: i64 = 30 * 24 * 3600;
/// Size of the hot set of notes that half the `e` tags point at.
const HOT_NOTES: usize = 200;

const WORDS: &[&str] = &[
    "nostr",
    "relay",
    "note",
    "zap",
    "bitcoin",
    "freedom",
    "protocol",
    "keys",
    "client",
    "event",
    "the",
    "a",
    "is",
    "of",
    "and",
    "to",
    "in",
    "that",
    "it",
    "for",
    "on",
    "with",
    "as",
    "was",
    "this",
    "good",
    "morning",
    "coffee",
    "build",
    "ship",
    "today",
    "tomorrow",
    "decentralized",
    "signature",
    "schnorr",
    "follow",
    "thread",
    "reply",
    "hashtag",
    "meme",
    "photo",
    "sunset",
];
const SPICE: &[&str] = &[
    "\"quoted\"",
    "back\\slash",
    "\n",
    "\n\n",
    "🤙",
    "⚡️",
    "🫂",
    "日本語",
    "中文字",
    "한국어",
    "ünïcödé",
    "a/b",
    "\t",
];
const HASHTAGS: &[&str] = &[
    "nostr",
    "bitcoin",
    "zap",
    "photography",
    "music",
    "news",
    "dev",
    "art",
];

/// One event of the corpus, signed, with its canonical JSON.
#[derive(Debug, Clone)]
pub struct CorpusEvent {
    pub event: Event,
    pub json: String,
}

/// The generator: authors, the notes written so far, and a seeded RNG.
pub struct Corpus {
    rng: StdRng,
    now: i64,
    authors: Vec<Keypair>,
    pubkeys: Vec<[u8; 32]>,
    /// Ids of kind-1 notes generated so far, in order.
    notes: Vec<[u8; 32]>,
}

/// Query targets that exist in a corpus: what clients really ask for.
#[derive(Debug, Clone)]
pub struct QueryTargets {
    /// For home feeds: 300 followed authors.
    pub follows: Vec<[u8; 32]>,
    /// For threads: notes that many events reference.
    pub hot_notes: Vec<[u8; 32]>,
    /// For notifications and profiles: the authors.
    pub pubkeys: Vec<[u8; 32]>,
    /// For id look-ups: ids of stored notes.
    pub note_ids: Vec<[u8; 32]>,
}

impl Corpus {
    /// A generator of `authors` authors seeded with `seed`; events fall in
    /// the 30 days before `now`.
    pub fn new(seed: u64, authors: usize, now: i64) -> Corpus {
        let mut rng = StdRng::seed_from_u64(seed);
        let authors: Vec<Keypair> = (0..authors.max(1))
            .map(|_| {
                loop {
                    let secret: [u8; 32] = rng.random();
                    if let Ok(keypair) = Keypair::from_secret_bytes(secret) {
                        break keypair;
                    }
                }
            })
            .collect();
        let pubkeys = authors
            .iter()
            .map(|k| k.x_only_public_key().0.to_byte_array())
            .collect();
        Corpus {
            rng,
            now,
            authors,
            pubkeys,
            notes: Vec::new(),
        }
    }

    /// The authors' public keys, most active first.
    pub fn pubkeys(&self) -> &[[u8; 32]] {
        &self.pubkeys
    }

    /// A skewed author index: index 0 is the most active, the tail rarely posts.
    fn pick_author(&mut self) -> usize {
        let u: f64 = self.rng.random();
        ((u * u * u) * self.authors.len() as f64) as usize % self.authors.len()
    }

    fn words(&mut self, min_bytes: usize, max_bytes: usize) -> String {
        let target = self.rng.random_range(min_bytes..=max_bytes);
        let mut text = String::with_capacity(target + 16);
        while text.len() < target {
            if !text.is_empty() {
                text.push(' ');
            }
            if self.rng.random_bool(0.04) {
                text.push_str(SPICE[self.rng.random_range(0..SPICE.len())]);
            } else {
                text.push_str(WORDS[self.rng.random_range(0..WORDS.len())]);
            }
        }
        text
    }

    fn referenced_note(&mut self) -> Option<[u8; 32]> {
        if self.notes.is_empty() {
            return None;
        }
        let hot = self.notes.len().min(HOT_NOTES);
        let index = if self.rng.random_bool(0.5) {
            self.rng.random_range(0..hot)
        } else {
            self.rng.random_range(0..self.notes.len())
        };
        Some(self.notes[index])
    }

    fn random_pubkey(&mut self) -> [u8; 32] {
        let index = self.pick_author();
        self.pubkeys[index]
    }

    /// The next event, unsigned (its `sig` is zero) but with its real id.
    /// Signing is separate so that it can run on several threads.
    pub fn next_unsigned(&mut self) -> (usize, Event) {
        let author = self.pick_author();
        let created_at = self.now - self.rng.random_range(0..SPREAD);
        let roll = self.rng.random_range(0..100);
        let (kind, content, tags) = if roll < 70 {
            let content = self.words(200, 800);
            let mut tags = Vec::new();
            for _ in 0..self.rng.random_range(1..=4) {
                match self.rng.random_range(0..3) {
                    0 => {
                        if let Some(note) = self.referenced_note() {
                            tags.push(vec!["e".into(), hex::encode(note)]);
                        }
                    }
                    1 => {
                        let p = self.random_pubkey();
                        tags.push(vec!["p".into(), hex::encode(p)]);
                    }
                    _ => {
                        let t = HASHTAGS[self.rng.random_range(0..HASHTAGS.len())];
                        tags.push(vec!["t".into(), t.into()]);
                    }
                }
            }
            (1, content, tags)
        } else if roll < 90 {
            let mut tags = Vec::new();
            if let Some(note) = self.referenced_note() {
                tags.push(vec!["e".into(), hex::encode(note)]);
            }
            let p = self.random_pubkey();
            tags.push(vec!["p".into(), hex::encode(p)]);
            let content = if self.rng.random_bool(0.7) {
                "+"
            } else {
                "🤙"
            };
            (7, content.to_owned(), tags)
        } else if roll < 95 {
            let about = self.words(20, 120);
            let content = serde_json::json!({
                "name": format!("user{author}"),
                "about": about,
                "picture": format!("https://example.com/avatar/{author}.png"),
            })
            .to_string();
            (0, content, Vec::new())
        } else {
            let count = self.rng.random_range(50..=300);
            let tags = (0..count)
                .map(|_| vec!["p".into(), hex::encode(self.random_pubkey())])
                .collect();
            (3, String::new(), tags)
        };
        let mut event = Event {
            id: [0; 32],
            pubkey: self.pubkeys[author],
            created_at,
            kind,
            tags,
            content,
            sig: [0; 64],
        };
        event.id = event.compute_id();
        if kind == 1 {
            self.notes.push(event.id);
        }
        (author, event)
    }

    /// Signs an event made by [`Corpus::next_unsigned`] for `author`.
    pub fn sign(&self, author: usize, mut event: Event) -> CorpusEvent {
        event.sig = schnorr::sign_no_aux_rand(&event.id, &self.authors[author]).to_byte_array();
        let json = event.to_canonical_json();
        CorpusEvent { event, json }
    }

    /// `count` signed events, signed on `threads` threads.
    pub fn generate(&mut self, count: usize, threads: usize) -> Vec<CorpusEvent> {
        let unsigned: Vec<(usize, Event)> = (0..count).map(|_| self.next_unsigned()).collect();
        let threads = threads.max(1);
        let chunk = unsigned.len().div_ceil(threads).max(1);
        let corpus = &*self;
        std::thread::scope(|scope| {
            let handles: Vec<_> = unsigned
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|(author, event)| corpus.sign(*author, event.clone()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                // A signing thread cannot panic: signing plain bytes is total.
                .flat_map(|h| h.join().expect("signing thread"))
                .collect()
        })
    }

    /// What queries can look for in the events generated so far.
    pub fn query_targets(&mut self) -> QueryTargets {
        let follows = (0..300.min(self.pubkeys.len()))
            .map(|_| self.random_pubkey())
            .collect();
        QueryTargets {
            follows,
            hot_notes: self.notes.iter().take(HOT_NOTES).copied().collect(),
            pubkeys: self.pubkeys.clone(),
            note_ids: self.notes.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_valid_events() {
        let a = Corpus::new(7, 50, 1_700_000_000).generate(200, 2);
        let b = Corpus::new(7, 50, 1_700_000_000).generate(200, 1);
        assert_eq!(a.len(), 200);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.json, y.json);
            x.event.verify_id().unwrap();
            x.event.verify_signature().unwrap();
        }
        let kinds: Vec<u16> = a.iter().map(|e| e.event.kind).collect();
        assert!(kinds.iter().filter(|k| **k == 1).count() > 100);
        assert!(kinds.contains(&7));
    }
}
