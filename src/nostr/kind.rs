//! Kind classes (NIP-01 "Kinds"): how the relay stores an event depends only
//! on its kind number.

/// NIP-09 deletion request.
pub const DELETION: u16 = 5;
/// NIP-18 repost of a kind-1 note.
pub const REPOST: u16 = 6;
/// NIP-18 repost of any other kind.
pub const GENERIC_REPOST: u16 = 16;
/// NIP-59 seal: only ever inside a gift wrap.
pub const SEAL: u16 = 13;
/// NIP-62 request to vanish.
pub const REQUEST_TO_VANISH: u16 = 62;
/// NIP-56 report: its `e` tags feed NIP-86's moderation queue.
pub const REPORT: u16 = 1984;
/// NIP-59 gift wrap: its `p`-tagged recipient may delete it.
pub const GIFT_WRAP: u16 = 1059;
/// NIP-42 client authentication: never stored nor broadcast.
pub const CLIENT_AUTH: u16 = 22242;

/// What the relay does with an event of a given kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindClass {
    /// Stored as is; every version is kept.
    Regular,
    /// Only the newest per (pubkey, kind) is kept: 0, 3, 10000–19999.
    Replaceable,
    /// Sent to live subscribers and never stored: 20000–29999.
    Ephemeral,
    /// Only the newest per (pubkey, kind, `d` tag) is kept: 30000–39999.
    Addressable,
}

impl KindClass {
    /// The class NIP-01 assigns to `kind`.
    pub fn of(kind: u16) -> KindClass {
        match kind {
            0 | 3 | 10000..=19999 => KindClass::Replaceable,
            20000..=29999 => KindClass::Ephemeral,
            30000..=39999 => KindClass::Addressable,
            _ => KindClass::Regular,
        }
    }

    /// Replaceable and addressable events have an address; a newer version
    /// at the same address replaces an older one.
    pub fn has_address(self) -> bool {
        matches!(self, KindClass::Replaceable | KindClass::Addressable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_nip01_ranges() {
        assert_eq!(KindClass::of(0), KindClass::Replaceable);
        assert_eq!(KindClass::of(1), KindClass::Regular);
        assert_eq!(KindClass::of(2), KindClass::Regular);
        assert_eq!(KindClass::of(3), KindClass::Replaceable);
        assert_eq!(KindClass::of(9999), KindClass::Regular);
        assert_eq!(KindClass::of(10000), KindClass::Replaceable);
        assert_eq!(KindClass::of(19999), KindClass::Replaceable);
        assert_eq!(KindClass::of(20000), KindClass::Ephemeral);
        assert_eq!(KindClass::of(29999), KindClass::Ephemeral);
        assert_eq!(KindClass::of(30000), KindClass::Addressable);
        assert_eq!(KindClass::of(39999), KindClass::Addressable);
        assert_eq!(KindClass::of(40000), KindClass::Regular);
        assert_eq!(KindClass::of(65535), KindClass::Regular);
    }
}
