//! How much a launch matters when tuners are short (ECP-0139).
//!
//! A priority is an integer from 0 to 1000, default 100 (Tvheadend's scale:
//! background jobs 1-7, viewers from 10, recordings 100-500). It orders the
//! waiters of a device and lets a launcher preempt a slot whose holder's
//! priority is *strictly* below its own. It is parsed here, not by clap, so
//! a bad value is the launcher's bad-argument status (64), like every other
//! argument the launcher cannot use.

use std::fmt;

/// `--priority`'s environment variable.
pub const PRIORITY_ENV: &str = "EC_LAUNCH_PRIORITY";
/// The highest priority.
pub const MAX_PRIORITY: u16 = 1000;
/// `--preempt-grace`'s default, in seconds.
pub const DEFAULT_PREEMPT_GRACE: &str = "5";

/// A launch's priority, 0 to [`MAX_PRIORITY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u16);

impl Default for Priority {
    /// 100: what a launch without `--priority` has, and what a record
    /// without a priority (an older version's) counts as.
    fn default() -> Self {
        Self(100)
    }
}

impl Priority {
    /// Parses `--priority` or `EC_LAUNCH_PRIORITY`: decimal digits only
    /// (no sign, no spaces), 0 to 1000.
    ///
    /// # Errors
    /// The text, for the error message, when it is not such a number.
    pub fn parse(text: &str) -> Result<Self, String> {
        let valid = !text.is_empty() && text.len() <= 4 && text.bytes().all(|b| b.is_ascii_digit());
        match text.parse::<u16>() {
            Ok(n) if valid && n <= MAX_PRIORITY => Ok(Self(n)),
            _ => Err(text.to_owned()),
        }
    }

    /// A priority read from a record: out-of-range values are clamped (a
    /// record is a hint, never an error).
    #[must_use]
    pub fn from_record(value: Option<u32>) -> Self {
        value.map_or_else(Self::default, |n| {
            Self(u16::try_from(n.min(u32::from(MAX_PRIORITY))).unwrap_or(MAX_PRIORITY))
        })
    }

    #[must_use]
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The module reads its bounds and defaults from `nixos/priority.json`.
    #[test]
    fn the_modules_priority_file_holds_the_launchers_defaults() {
        let file: serde_json::Value =
            serde_json::from_str(include_str!("../nixos/priority.json")).unwrap();
        assert_eq!(file["default"], u64::from(Priority::default().get()));
        assert_eq!(file["max"], u64::from(MAX_PRIORITY));
        assert_eq!(
            file["preemptGrace"].to_string(),
            DEFAULT_PREEMPT_GRACE,
            "src/cli.rs's --preempt-grace default"
        );
    }

    #[test]
    fn priorities_are_zero_to_a_thousand_in_plain_digits() {
        assert_eq!(Priority::parse("0").map(Priority::get), Ok(0));
        assert_eq!(Priority::parse("100").map(Priority::get), Ok(100));
        assert_eq!(Priority::parse("1000").map(Priority::get), Ok(1000));
        assert_eq!(Priority::parse("0300").map(Priority::get), Ok(300));
        for bad in [
            "", "1001", "-1", "+5", " 5", "5 ", "2.5", "abc", "65536", "00001",
        ] {
            assert!(Priority::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Priority::default().get(), 100);
        assert_eq!(Priority::from_record(None).get(), 100);
        assert_eq!(Priority::from_record(Some(9999)).get(), 1000);
    }
}
