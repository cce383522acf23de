//! The sync.rs suite on the PostgreSQL backend: the same tests, with every
//! relay, and the sync command run against it, on a fresh database of a
//! throwaway PostgreSQL cluster (tests/common/mod.rs picks the backend from
//! this target's name).

#[path = "sync.rs"]
mod suite;
