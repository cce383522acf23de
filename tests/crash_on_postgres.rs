//! The crash.rs suite on the PostgreSQL backend: SIGKILL the relay mid-ingest,
//! restart it, and nothing acknowledged is lost, with every relay on a
//! database of a throwaway PostgreSQL cluster (tests/common/mod.rs picks the
//! backend from this target's name).

#[path = "crash.rs"]
mod suite;
