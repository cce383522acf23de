//! `nostr-relayd export` and `nostr-relayd import`: the database as JSON
//! lines (one event per line, the format `strfry export` writes), for
//! backups, restores and migrations between relays.
//!
//! - [`export`] streams the stored events a NIP-01 filter matches, newest
//!   first (or oldest first), byte for byte as stored, from one read
//!   transaction, in constant memory (`store::export`).
//! - [`import`] reads such lines (and relay-message captures), checks each
//!   event (id, Schnorr, validity), and writes it through the relay's own
//!   writer, so that replacement, NIP-09 deletion, NIP-40 expiry and NIP-62
//!   vanish follow the very code network writes go through; many events per
//!   transaction. Network policy applies only on request.
//!
//! Both open the database directly and may run beside the relay (WAL).

pub mod export;
pub mod import;

pub use export::ExportArgs;
pub use import::ImportArgs;

use std::time::Duration;

/// Events per second, for the summaries.
fn rate(events: u64, elapsed: Duration) -> u64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        (events as f64 / seconds) as u64
    } else {
        0
    }
}
