//! The interop.rs suite on the PostgreSQL backend: the same tests, with every
//! relay on a fresh database of a throwaway PostgreSQL cluster
//! (tests/common/mod.rs picks the backend from this target's name).

#[path = "interop.rs"]
mod suite;
