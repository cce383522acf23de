//! The Nostr protocol as plain data: events, filters, kinds and the messages
//! exchanged with clients. Nothing in here touches a socket or a database, so
//! every rule of NIP-01 can be read (and tested) in isolation.

pub mod event;
pub mod filter;
pub mod hex;
pub mod kind;
pub mod message;
pub mod nip19;
pub mod nip45;
pub mod nip98;
pub mod pow;
pub mod relay_url;

pub use event::{CanonicalEvent, Event, EventError};
pub use filter::{Filter, FilterError};
pub use kind::KindClass;
pub use message::{ClientMessage, Rejection};
