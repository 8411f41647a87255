//! Newtypes for the identifiers that cross module boundaries.
//!
//! Ids are opaque strings on the wire. Generated ids are ULIDs (a 48-bit
//! millisecond time and 80 random bits), optionally behind a kind prefix
//! (`sess_<ULID>`): the spec's examples use ULIDs and the official SDKs
//! refuse envelope ids that are not a ULID, a UUIDv7 or `prefix_<ULID>`.
//! Ids name things; they are never credentials (every request is also
//! authenticated and checked against its principal). Ids that arrive from
//! clients are only compared, never trusted to have been generated here.

use std::fmt;
use std::sync::Arc;

use serde::{Serialize, Serializer};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        ///
        /// Cloning is cheap (a shared string), so log entries and job
        /// records can carry ids freely.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// A fresh id: this kind's prefix, then a new ULID.
            pub fn generate() -> Self {
                Self(Arc::from(format!(concat!($prefix, "{}"), ulid::Ulid::new())))
            }

            /// Wraps an id that arrived from a client or from storage.
            pub fn from_client(value: &str) -> Self {
                Self(Arc::from(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(formatter, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

string_id!(
    /// A session, as in `session.welcome.session_id` (§6.2).
    SessionId,
    "sess_"
);
string_id!(
    /// A job, as in `job.accepted.payload.job_id` (§7.1).
    JobId,
    "job_"
);
string_id!(
    /// An envelope's own `id` (§5): a bare ULID, as in the spec's examples.
    MessageId,
    ""
);

/// The authenticated identity behind an api token. Principals own sessions and
/// jobs; nothing crosses from one principal to another.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Principal(String);

impl Principal {
    pub fn new(name: &str) -> Self {
        Self(name.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Principal({})", self.0)
    }
}

/// A position in a session's event sequence (§8.3). `0` means "before the
/// first event"; the first event of every session has sequence `1`.
pub type EventSeq = u64;

/// The longest cursor text accepted: `u64::MAX` has 20 digits.
pub const MAX_CURSOR_DIGITS: usize = 20;

/// Parses a cursor sent as text (`Last-Event-ID`, `last_event_seq`, the
/// digits of a listing cursor): ASCII digits only, 1 to
/// [`MAX_CURSOR_DIGITS`] of them, within `u64`. No sign, no whitespace, no
/// other notation, so one cursor has one spelling (leading zeros aside).
pub fn parse_cursor(text: &str) -> Option<u64> {
    if text.is_empty()
        || text.len() > MAX_CURSOR_DIGITS
        || !text.bytes().all(|byte| byte.is_ascii_digit())
    {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cursors_are_digits_only() {
        assert_eq!(parse_cursor("0"), Some(0));
        assert_eq!(parse_cursor("0042"), Some(42));
        assert_eq!(parse_cursor("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "+1",
            "-1",
            " 1",
            "1 ",
            "1\t",
            "0x1",
            "1e3",
            "1.0",
            "\u{661}",
            "18446744073709551616",
            "000000000000000000001",
        ] {
            assert_eq!(parse_cursor(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn any_text_is_parsed_or_refused_without_panic(text in "\\PC{0,24}") {
            if let Some(value) = parse_cursor(&text) {
                prop_assert!(text.bytes().all(|b| b.is_ascii_digit()));
                prop_assert_eq!(text.trim_start_matches('0').parse::<u64>().unwrap_or(0), value);
            }
        }

        #[test]
        fn every_u64_round_trips(value in any::<u64>()) {
            prop_assert_eq!(parse_cursor(&value.to_string()), Some(value));
        }
    }

    /// What the official SDKs accept (`arcp/_envelope.py`): a ULID in
    /// Crockford base32, or `lowercase-prefix_<ULID>`.
    fn is_ulid(text: &str) -> bool {
        text.len() == 26
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b.is_ascii_uppercase() && !b"ILOU".contains(&b)))
    }

    #[test]
    fn generated_ids_are_ulids_behind_their_prefix() {
        let message = MessageId::generate();
        assert!(is_ulid(message.as_str()), "{message:?}");
        let session = SessionId::generate();
        assert!(session.as_str().strip_prefix("sess_").is_some_and(is_ulid));
        let job = JobId::generate();
        assert!(job.as_str().strip_prefix("job_").is_some_and(is_ulid));
        assert_ne!(MessageId::generate(), MessageId::generate());
    }
}
