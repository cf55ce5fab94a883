//! Canonical source keys: two spellings of one physical source share a key,
//! different sources do not.
//!
//! The rules (and why) are in `evolution/ECP-0124-source-key-rules.md`:
//! - HDHomeRun stream URLs (`http://<host>:5004/{auto,tunerN}/{v<ch>,ch<freq>[-<prog>]}`)
//!   key on device host + channel: the tuner path segment and the query
//!   (`duration`, `transcode`) do not change which channel is read.
//! - Other URLs: scheme and host lower-cased, default ports dropped, userinfo
//!   and fragment dropped, dot-segments resolved, secret query parameters
//!   dropped, the rest sorted.
//! - Absolute paths (`/dev/video0`, `/dev/v4l/by-id/…`) resolve to the node.
//! - `--key` overrides derivation verbatim.
//!
//! A key never contains a credential: it is printed by `key` and recorded in
//! the lock file. The lock file *name* is a readable label plus a SHA-256
//! prefix of the key; SHA-256 rather than `DefaultHasher` because two
//! versions of `ec-launch` on one node during a deploy must agree on names.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use url::Url;

use crate::redact::is_sensitive_param;

/// The port HDHomeRun devices serve streams on.
const HDHOMERUN_STREAM_PORT: u16 = 5004;
/// How many bytes of the label a lock file name keeps.
const LABEL_MAX: usize = 48;
/// How many hex digits of the SHA-256 a lock file name keeps (64 bits).
const HASH_HEX_DIGITS: usize = 16;

/// Why a source cannot be turned into a key. Messages never quote the source:
/// it may hold a credential.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the source is empty; pass a stream URL or device path")]
    Empty,
    #[error("the source is not a valid URL ({0}); pass e.g. http://10.0.0.5:5004/auto/v5.1")]
    NotAUrl(String),
    #[error(
        "the source URL has no host; pass a network URL such as http://<ip>:5004/auto/v<channel>, or an absolute device path"
    )]
    NoHost,
    #[error("the source path {path:?} cannot be resolved ({reason}); check the device exists")]
    PathUnresolvable { path: PathBuf, reason: String },
    #[error("the --key value is empty or contains control characters; pass a printable key")]
    BadOverride,
}

/// The identity of one physical source. Equal keys share one lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceKey {
    canonical: String,
    label: String,
}

impl SourceKey {
    /// Derives the key of a source given as a URL or an absolute path.
    ///
    /// # Errors
    /// [`KeyError`] when the source is empty, not a URL with a host, or a
    /// path that does not resolve.
    pub fn from_source(source: &str) -> Result<Self, KeyError> {
        let source = source.trim();
        if source.is_empty() {
            return Err(KeyError::Empty);
        }
        if source.starts_with('/') {
            return Self::from_path(Path::new(source));
        }
        let url = Url::parse(source).map_err(|e| KeyError::NotAUrl(e.to_string()))?;
        if url.scheme() == "file" {
            return Self::from_path(Path::new(url.path()));
        }
        Self::from_url(&url)
    }

    /// Uses an operator-chosen key as it is.
    ///
    /// # Errors
    /// [`KeyError::BadOverride`] for an empty key or one with control characters.
    pub fn from_override(key: &str) -> Result<Self, KeyError> {
        let key = key.trim();
        if key.is_empty() || key.chars().any(char::is_control) {
            return Err(KeyError::BadOverride);
        }
        Ok(Self {
            canonical: key.to_owned(),
            label: sanitize_label(key),
        })
    }

    fn from_path(path: &Path) -> Result<Self, KeyError> {
        // by-id and by-path links name the same node as /dev/videoN; the
        // node is what a reader opens, so it is what the lock is about.
        let node = path
            .canonicalize()
            .map_err(|e| KeyError::PathUnresolvable {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        let canonical = node.to_string_lossy().into_owned();
        let label = sanitize_label(canonical.trim_start_matches('/'));
        Ok(Self { canonical, label })
    }

    fn from_url(url: &Url) -> Result<Self, KeyError> {
        let host = match url.host() {
            Some(host) => host.to_string().to_ascii_lowercase(),
            None => return Err(KeyError::NoHost),
        };
        if host.is_empty() {
            return Err(KeyError::NoHost);
        }
        let scheme = url.scheme().to_ascii_lowercase();
        let port = url
            .port_or_known_default()
            .or_else(|| extra_default_port(&scheme));
        let channel = (scheme == "http" && port == Some(HDHOMERUN_STREAM_PORT))
            .then(|| hdhomerun_channel(url.path()))
            .flatten();
        if let Some(channel) = channel {
            return Ok(Self {
                label: sanitize_label(&format!("{host}-{channel}")),
                canonical: format!("hdhomerun://{host}/{channel}"),
            });
        }
        let mut canonical = format!("{scheme}://{host}");
        let explicit_port = port.filter(|p| Some(*p) != default_port(&scheme));
        if let Some(port) = explicit_port {
            let _ = write!(canonical, ":{port}");
        }
        canonical.push_str(url.path());
        let mut pairs: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(name, _)| !is_sensitive_param(name))
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect();
        if !pairs.is_empty() {
            pairs.sort();
            let query = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish();
            canonical.push('?');
            canonical.push_str(&query);
        }
        let last_segment = url
            .path_segments()
            .and_then(|mut segments| segments.rfind(|s| !s.is_empty()))
            .unwrap_or("");
        let label = match explicit_port {
            Some(port) => format!("{host}-{port}-{last_segment}"),
            None => format!("{host}-{last_segment}"),
        };
        Ok(Self {
            canonical,
            label: sanitize_label(&label),
        })
    }

    /// The canonical key, as printed by `key` and recorded in lock files.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    /// `<label>-<sha256 prefix>.lock`: readable in `ls`, unique by hash.
    #[must_use]
    pub fn lock_file_name(&self) -> String {
        let digest = Sha256::digest(self.canonical.as_bytes());
        let mut hash = String::with_capacity(HASH_HEX_DIGITS);
        for byte in &digest[..HASH_HEX_DIGITS / 2] {
            let _ = write!(hash, "{byte:02x}");
        }
        format!("{}-{hash}.lock", self.label)
    }

    /// The lock file for this key inside `lock_dir`.
    #[must_use]
    pub fn lock_path(&self, lock_dir: &Path) -> PathBuf {
        lock_dir.join(self.lock_file_name())
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

/// Default ports the `url` crate does not know (it knows the WHATWG special
/// schemes only).
fn extra_default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "rtsp" => Some(554),
        "rtsps" => Some(322),
        _ => None,
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        "ftp" => Some(21),
        _ => extra_default_port(scheme),
    }
}

/// The channel of an HDHomeRun stream path, normalised: `v5.1`, `ch57000000-3`.
/// `None` when the path is not a stream path.
fn hdhomerun_channel(path: &str) -> Option<String> {
    let mut segments = path.trim_matches('/').split('/');
    let tuner = segments.next()?.to_ascii_lowercase();
    let channel = segments.next()?.to_ascii_lowercase();
    if segments.next().is_some() {
        return None;
    }
    let tuner_ok = tuner == "auto"
        || tuner
            .strip_prefix("tuner")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !tuner_ok {
        return None;
    }
    if let Some(virtual_channel) = channel.strip_prefix('v') {
        // v5.1: major[.minor]
        let parts = split_numbers(virtual_channel, '.', 2)?;
        return Some(format!("v{}", parts.join(".")));
    }
    if let Some(frequency) = channel.strip_prefix("ch") {
        // ch<frequency>[-<program>]
        let parts = split_numbers(frequency, '-', 2)?;
        return Some(format!("ch{}", parts.join("-")));
    }
    None
}

/// Splits `text` on `separator` into at most `max` decimal numbers, each with
/// leading zeros dropped (`05` and `5` are one channel).
fn split_numbers(text: &str, separator: char, max: usize) -> Option<Vec<String>> {
    let parts: Vec<&str> = text.split(separator).collect();
    if parts.is_empty() || parts.len() > max {
        return None;
    }
    parts
        .into_iter()
        .map(|part| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let trimmed = part.trim_start_matches('0');
            Some(if trimmed.is_empty() { "0" } else { trimmed }.to_owned())
        })
        .collect()
}

/// A file-name-safe, bounded label: `[a-z0-9._-]`, anything else becomes `_`.
fn sanitize_label(text: &str) -> String {
    let mut label: String = text
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    label = label
        .trim_matches(|c| c == '.' || c == '_' || c == '-')
        .to_owned();
    if label.is_empty() {
        label.push_str("source");
    }
    label.truncate(LABEL_MAX);
    label
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(source: &str) -> String {
        SourceKey::from_source(source).unwrap().to_string()
    }

    #[test]
    fn hdhomerun_spellings_of_one_channel_share_a_key() {
        let expected = "hdhomerun://10.0.0.5/v5.1";
        for spelling in [
            "http://10.0.0.5:5004/auto/v5.1",
            "http://10.0.0.5:5004/tuner1/v5.1",
            "http://10.0.0.5:5004/auto/v5.1?duration=600&transcode=mobile",
            "HTTP://10.0.0.5:5004/auto/V05.1",
            "http://10.0.0.5:5004/auto/v5.1/",
            "http://admin:pw@10.0.0.5:5004/./auto/../auto/v5.1#frag",
        ] {
            assert_eq!(key(spelling), expected, "spelling {spelling}");
        }
    }

    #[test]
    fn different_channels_and_hosts_are_different_sources() {
        let a = key("http://10.0.0.5:5004/auto/v5.1");
        assert_ne!(a, key("http://10.0.0.5:5004/auto/v4.1"));
        assert_ne!(a, key("http://10.0.0.6:5004/auto/v5.1"));
        assert_ne!(a, key("http://10.0.0.5:5004/auto/v5"));
    }

    #[test]
    fn frequency_channels_keep_their_program() {
        assert_eq!(
            key("http://10.0.0.5:5004/tuner0/ch573000000-3"),
            "hdhomerun://10.0.0.5/ch573000000-3"
        );
        assert_ne!(
            key("http://10.0.0.5:5004/auto/ch573000000-3"),
            key("http://10.0.0.5:5004/auto/ch573000000-4")
        );
    }

    #[test]
    fn generic_urls_are_normalised() {
        assert_eq!(
            key("HTTP://Example.COM:80/a/./b/../live.ts?b=2&a=1&token=s3cret#x"),
            "http://example.com/a/live.ts?a=1&b=2"
        );
        assert_eq!(
            key("rtsp://CAM.local:554/stream1"),
            "rtsp://cam.local/stream1"
        );
        assert_eq!(
            key("rtsp://cam.local:8554/stream1"),
            "rtsp://cam.local:8554/stream1"
        );
        assert_eq!(
            key("https://user:pw@cdn.example:443/x"),
            "https://cdn.example/x"
        );
    }

    #[test]
    fn port_5004_without_a_stream_path_is_a_plain_url() {
        assert_eq!(
            key("http://10.0.0.5:5004/discover.json"),
            "http://10.0.0.5:5004/discover.json"
        );
    }

    #[test]
    fn device_paths_resolve_to_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("by-id-null");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        assert_eq!(key(link.to_str().unwrap()), "/dev/null");
        assert_eq!(key("/dev/null"), "/dev/null");
        assert!(matches!(
            SourceKey::from_source("/dev/does-not-exist-ec"),
            Err(KeyError::PathUnresolvable { .. })
        ));
    }

    #[test]
    fn bad_sources_are_rejected() {
        assert_eq!(SourceKey::from_source("  "), Err(KeyError::Empty));
        assert!(matches!(
            SourceKey::from_source("not a url"),
            Err(KeyError::NotAUrl(_))
        ));
        assert_eq!(
            SourceKey::from_source("mailto:x@y.z"),
            Err(KeyError::NoHost)
        );
        assert_eq!(SourceKey::from_override("a\nb"), Err(KeyError::BadOverride));
    }

    #[test]
    fn lock_file_names_are_readable_and_stable() {
        let k = SourceKey::from_source("http://10.0.0.5:5004/auto/v5.1").unwrap();
        // Pinned: a change here renames every lock file on a fleet, which
        // breaks mutual exclusion between old and new versions mid-deploy.
        assert_eq!(k.lock_file_name(), "10.0.0.5-v5.1-c2d4c137cb6e4fc8.lock");
        let o = SourceKey::from_override("Studio A / Camera 2").unwrap();
        assert!(o.lock_file_name().starts_with("studio_a___camera_2-"));
    }
}
