//! Records are other writers' text: the one way a record reaches output.
//!
//! A lock file's record and a cluster key's value are written by whoever
//! can write the file or the key: an older version that did not redact, a
//! script, an operator with `etcdctl put`, an attacker (ECP-0135, section
//! 6). That we redact what we write does not make what we read redacted.
//! So output never takes a record as read: it takes a [`Shown`] record,
//! which only [`Shown::of`] makes, through the record's [`Redact`]: every
//! text field redacted by its kind (`redact_source` for sources,
//! `redact_text` for names, keys, programs and times). Each `Redact` impl
//! names every field of its record, so a field added later does not
//! compile until someone decides how it is shown; an output that is handed
//! a `Shown` cannot forget to redact it.
//!
//! Numbers need nothing: serde already refused a record with a wrong type,
//! a negative or an overflowing number (the record is then unreadable and
//! reported as such), and what formats a number (a time) must accept any
//! value (`cluster::record::rfc3339`). Escaping stays where text is
//! written (`printable`): `--json` keeps exact text, which `serde_json`
//! escapes itself (ECP-0131).

use std::ops::Deref;

use serde::Serialize;

use crate::redact::redact_text;

/// A value whose text fields are made safe to show by [`Redact::redacted`].
pub trait Redact {
    /// The same value with every field that can carry a credential
    /// redacted.
    #[must_use]
    fn redacted(&self) -> Self;
}

/// Text read from a record or a key, shown as [`redact_text`] shows it.
impl Redact for String {
    fn redacted(&self) -> Self {
        redact_text(self)
    }
}

impl<T: Redact> Redact for Option<T> {
    fn redacted(&self) -> Self {
        self.as_ref().map(Redact::redacted)
    }
}

/// A record (or text) as output may show it; it serializes as the value
/// itself, so a JSON schema is the same with or without it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Shown<T>(T);

impl<T: Redact> Shown<T> {
    /// `value` redacted: the only way to make a `Shown`.
    #[must_use]
    pub fn of(value: &T) -> Self {
        Self(value.redacted())
    }
}

impl<T> Shown<T> {
    /// The redacted value itself.
    #[must_use]
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Shown<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_text_is_redacted_and_serializes_as_the_text() {
        let shown = Shown::of(&"admin:S3CR3T@node-x".to_owned());
        assert_eq!(shown.as_str(), "***@node-x");
        assert_eq!(serde_json::to_string(&shown).unwrap(), "\"***@node-x\"");
        assert_eq!(Shown::of(&None::<String>).as_ref(), None);
    }
}
