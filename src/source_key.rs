//! Canonical source keys: two spellings of one physical source share a key,
//! different sources do not.
//!
//! The rules (and why) are in `evolution/ECP-0124-source-key-rules.md` and
//! `evolution/ECP-0130-key-normalisation-and-secret-parameters.md`:
//! - A source with whitespace or control characters is refused: the URL
//!   parser would silently drop some of them, keying a cleaned string while
//!   the program gets the raw one.
//! - HDHomeRun stream URLs (`http://<host>:5004/{auto,tunerN}/{v<ch>,ch<freq>[-<prog>]}`)
//!   key on device host + channel: the tuner path segment and the query
//!   (`duration`, `transcode`) do not change which channel is read.
//! - Other URLs, for every scheme: RFC 3986 normalisation (scheme and host
//!   lower-cased, unreserved characters percent-decoded in host and path,
//!   other escapes upper-cased, dot-segments removed), every IPv4 spelling
//!   (decimal, hex, octal, short forms, IPv4-mapped IPv6) written as a
//!   dotted quad, a trailing dot dropped from host names, default ports
//!   dropped, the trailing-slash rule of the scheme, userinfo and fragment
//!   dropped, credential parameters (`secret_params`) dropped, the rest
//!   sorted. An `@` after the host is refused: it is a password with a `/`
//!   in it as often as it is a path.
//! - Devices key on what the kernel knows them by, their device number
//!   (`/dev/char/81:0`), so links, `mknod` copies and bind mounts of one
//!   device share a lock; other paths resolve to their real path.
//! - `--key` overrides derivation verbatim.
//!
//! A key never contains a credential: it is printed by `key` and recorded in
//! the lock file. The lock file *name* is a readable label plus a SHA-256
//! prefix of the key; SHA-256 rather than `DefaultHasher` because two
//! versions of `ec-launch` on one node during a deploy must agree on names.

use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use url::{Host, Url};

use crate::redact::{decode, redact_source};
use crate::secret_params::ParamNames;

/// The port HDHomeRun devices serve streams on.
pub const HDHOMERUN_STREAM_PORT: u16 = 5004;
/// How many bytes of the label a lock file name keeps.
const LABEL_MAX: usize = 48;
/// How many hex digits of the SHA-256 a lock file name keeps (64 bits).
const HASH_HEX_DIGITS: usize = 16;

/// Why a source cannot be turned into a key. Messages never quote the source
/// raw: it may hold a credential. They say what is wrong only; what to do
/// depends on where the source came from and is `Error::hint`'s.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the source is empty")]
    Empty,
    #[error("the source contains whitespace or a control character")]
    Whitespace,
    #[error("the source is not a valid URL ({0})")]
    NotAUrl(String),
    #[error("the source URL has no host")]
    NoHost,
    #[error("the source has an `@` after its host")]
    AtAfterHost,
    #[error("the source path {path} cannot be resolved ({reason})")]
    PathUnresolvable { path: String, reason: String },
    #[error("the --key value is empty or contains control characters")]
    BadOverride,
}

/// The identity of one physical source. Equal keys share one lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceKey {
    canonical: String,
    label: String,
    /// The source's host as canonicalised in the key (`10.0.0.5`,
    /// `cam.example`, `[::1]`); `None` for devices, paths and `--key`.
    host: Option<String>,
}

impl SourceKey {
    /// Derives the key of a source given as a URL or an absolute path.
    ///
    /// # Errors
    /// [`KeyError`] when the source is empty, has whitespace or control
    /// characters, is not a URL with a host, or is a path that does not
    /// resolve.
    pub fn from_source(source: &str) -> Result<Self, KeyError> {
        ensure_source_text(source)?;
        if let Some(key) = Self::from_device_key(source) {
            return Ok(key);
        }
        if source.starts_with('/') {
            return Self::from_path(Path::new(source));
        }
        let url = Url::parse(source).map_err(|e| KeyError::NotAUrl(e.to_string()))?;
        if url.scheme() == "file" {
            let path = url
                .to_file_path()
                .map_err(|()| KeyError::PathUnresolvable {
                    path: redact_source(source),
                    reason: "not a local file URL".into(),
                })?;
            return Self::from_path(&path);
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
            host: None,
        })
    }

    /// A device key as printed (`/dev/char/81:0`, `/dev/block/8:0`): the
    /// kernel's (and udev's) name for a device number, taken as it is so a
    /// key from a log finds its lock even where `/dev/char` does not exist.
    fn from_device_key(source: &str) -> Option<Self> {
        let (kind, numbers) = source
            .strip_prefix("/dev/char/")
            .map(|n| ("char", n))
            .or_else(|| source.strip_prefix("/dev/block/").map(|n| ("block", n)))?;
        let (major, minor) = numbers.split_once(':')?;
        let major: u64 = major.parse().ok()?;
        let minor: u64 = minor.parse().ok()?;
        Some(Self::device(kind, major, minor))
    }

    fn device(kind: &str, major: u64, minor: u64) -> Self {
        let canonical = format!("/dev/{kind}/{major}:{minor}");
        Self {
            label: sanitize_label(canonical.trim_start_matches('/')),
            canonical,
            host: None,
        }
    }

    fn from_path(path: &Path) -> Result<Self, KeyError> {
        let unresolvable = |e: std::io::Error| KeyError::PathUnresolvable {
            path: redact_source(&path.to_string_lossy()),
            reason: e.to_string(),
        };
        // A device is what the kernel calls it: its number. Links, mknod
        // copies, bind mounts and by-id names of one device all stat to it.
        let metadata = path.metadata().map_err(unresolvable)?;
        let file_type = metadata.file_type();
        if file_type.is_char_device() || file_type.is_block_device() {
            let rdev = metadata.rdev();
            let kind = if file_type.is_char_device() {
                "char"
            } else {
                "block"
            };
            return Ok(Self::device(
                kind,
                nix::sys::stat::major(rdev),
                nix::sys::stat::minor(rdev),
            ));
        }
        let node = path.canonicalize().map_err(unresolvable)?;
        let canonical = node.to_string_lossy().into_owned();
        let label = sanitize_label(canonical.trim_start_matches('/'));
        Ok(Self {
            canonical,
            label,
            host: None,
        })
    }

    fn from_url(url: &Url) -> Result<Self, KeyError> {
        let host = url.host().as_ref().map(canonical_host).unwrap_or_default();
        if host.is_empty() {
            return Err(KeyError::NoHost);
        }
        if url.path().contains('@') {
            return Err(KeyError::AtAfterHost);
        }
        let scheme = url.scheme().to_ascii_lowercase();
        let port = url
            .port_or_known_default()
            .or_else(|| extra_default_port(&scheme));
        let (path, path_params) = split_path_params(url.path());
        let path = normalise_path(&path, &scheme);
        let channel = (scheme == "http" && port == Some(HDHOMERUN_STREAM_PORT))
            .then(|| hdhomerun_channel(&path))
            .flatten();
        if let Some(channel) = channel {
            return Ok(Self {
                label: sanitize_label(&format!("{host}-{channel}")),
                canonical: format!("hdhomerun://{host}/{channel}"),
                host: Some(host),
            });
        }
        let mut canonical = format!("{scheme}://{host}");
        let explicit_port = port.filter(|p| Some(*p) != default_port(&scheme));
        if let Some(port) = explicit_port {
            let _ = write!(canonical, ":{port}");
        }
        let query_items: Vec<&str> = url
            .query()
            .map(|q| q.split(['&', ';']).filter(|i| !i.is_empty()).collect())
            .unwrap_or_default();
        let names: Vec<String> = path_params
            .iter()
            .flatten()
            .map(|(name, _)| name.clone())
            .chain(
                query_items
                    .iter()
                    .filter_map(|i| i.split_once('=').map(|(n, _)| decode(n))),
            )
            .collect();
        let names = ParamNames::new(names.iter().map(String::as_str));
        canonical.push_str(&join_path(&path, &path_params, &names));
        // A parameter without `=` may be a bare secret (`?S3CR3T`): dropped.
        let mut pairs: Vec<(String, String)> = query_items
            .iter()
            .filter(|item| item.contains('='))
            .flat_map(|item| url::form_urlencoded::parse(item.as_bytes()))
            .filter(|(name, _)| !names.is_credential(name))
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
        let last_segment = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
        let label = match explicit_port {
            Some(port) => format!("{host}-{port}-{last_segment}"),
            None => format!("{host}-{last_segment}"),
        };
        Ok(Self {
            canonical,
            label: sanitize_label(&label),
            host: Some(host),
        })
    }

    /// The canonical key, as printed by `key` and recorded in lock files.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    /// The source's host as canonicalised for the key: what names its
    /// tuner device when no `--device` is given (ECP-0132). `None` for a
    /// device path, a file and an operator-named key.
    #[must_use]
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// `<label>-<sha256 prefix>.lock`: readable in `ls`, unique by hash.
    #[must_use]
    pub fn lock_file_name(&self) -> String {
        format!(
            "{}.lock",
            hashed_name(&self.label, self.canonical.as_bytes())
        )
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

/// Refuses an empty source, and whitespace and control characters anywhere
/// in one: the URL parser drops some of them silently, and a source is
/// passed to the program exactly as it was keyed.
///
/// # Errors
/// [`KeyError::Empty`] or [`KeyError::Whitespace`].
pub fn ensure_source_text(source: &str) -> Result<(), KeyError> {
    if source.trim().is_empty() {
        return Err(KeyError::Empty);
    }
    if source.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(KeyError::Whitespace);
    }
    Ok(())
}

/// Default ports the `url` crate does not know (it knows the WHATWG special
/// schemes only). `srt`, `udp` and `rtp` have none: the port is required.
fn extra_default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "rtsp" => Some(554),
        "rtsps" => Some(322),
        "rtmp" | "rtmpe" => Some(1935),
        "rtmps" | "rtmpts" => Some(443),
        "rtmpt" | "rtmpte" => Some(80),
        _ => None,
    }
}

/// The port a URL of `scheme` means when it names none (`None`: it must).
pub fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        "ftp" => Some(21),
        _ => extra_default_port(scheme),
    }
}

/// Schemes whose trailing slash names a different resource (RFC 9110: the
/// server decides); for every other scheme `/stream1/` is `/stream1`.
fn trailing_slash_matters(scheme: &str) -> bool {
    matches!(scheme, "http" | "https" | "ws" | "wss" | "ftp")
}

/// A URL's host as a key writes it: a name as [`normalise_domain`] makes
/// it, IPv4 as a dotted quad, IPv6 compressed in brackets (an IPv4-mapped
/// one as its dotted quad).
fn canonical_host(host: &Host<&str>) -> String {
    match *host {
        Host::Domain(domain) => normalise_domain(domain),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => match ip.to_ipv4_mapped() {
            Some(ip) => ip.to_string(),
            None => format!("[{ip}]"),
        },
    }
}

/// A device named by hand (`--device`) as a source's host names it
/// (issue #16 item 7): a text that is a host alone (a name, an IPv4
/// address in any `inet_aton` spelling, an IPv6 address with or without
/// brackets) gets exactly the host rules of a source's key, so
/// `TUNER.lan`, `tuner.lan.` and `http://tuner.lan:5004/…` name one device,
/// as do `0x7f0000b4` and `127.0.0.180`, or `fd00::5` and `[FD00::5]`.
/// Anything else (a name with a port, or characters no host has) is a
/// name of the operator's, taken as it is.
#[must_use]
pub fn canonical_device_name(text: &str) -> String {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    if let Ok(ip) = bare.parse::<std::net::Ipv6Addr>() {
        return canonical_host(&Host::Ipv6(ip));
    }
    // Only what can be a host on its own: no port, path, userinfo, query.
    let host_only = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b) || b >= 0x80);
    if !host_only {
        return text.to_owned();
    }
    match Url::parse(&format!("http://{text}/")) {
        Ok(url) if url.path() == "/" && url.port().is_none() && url.username().is_empty() => url
            .host()
            .as_ref()
            .map_or_else(|| text.to_owned(), canonical_host),
        _ => text.to_owned(),
    }
}

/// A host name as the resolver sees it: lower-case, unreserved escapes
/// decoded, no trailing dot, and an IPv4 address in any `inet_aton`
/// spelling as a dotted quad (the `url` crate does this for http and https
/// only; for other schemes the host is opaque to it).
fn normalise_domain(domain: &str) -> String {
    // Decode first (`%43` is `C`, then `c`), then upper-case what stays escaped.
    let lower = percent_normalise(&percent_normalise(domain).to_ascii_lowercase());
    let name = lower
        .strip_suffix('.')
        .filter(|n| !n.is_empty())
        .unwrap_or(&lower);
    match parse_ipv4(name) {
        Some(ip) => ip.to_string(),
        None => name.to_owned(),
    }
}

/// IPv4 in the forms `inet_aton(3)` and the WHATWG URL standard accept:
/// one to four parts, each decimal, `0x` hex or `0` octal, the last part
/// filling the remaining bytes (`10.5` is `10.0.0.5`).
fn parse_ipv4(text: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let numbers: Vec<u64> = parts
        .iter()
        .map(|part| {
            if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
                if hex.is_empty() {
                    return Some(0);
                }
                u64::from_str_radix(hex, 16).ok()
            } else if part.len() > 1 && part.starts_with('0') {
                u64::from_str_radix(&part[1..], 8).ok()
            } else if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                part.parse().ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()?;
    let (last, leading) = numbers.split_last()?;
    if leading.iter().any(|n| *n > 255) {
        return None;
    }
    // The last part fills the bytes the leading parts leave.
    let mut value = 0u64;
    let mut shift = 24;
    for n in leading {
        value |= n << shift;
        shift -= 8;
    }
    if *last >= 1u64 << (shift + 8) {
        return None;
    }
    value |= last;
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

/// RFC 3986 6.2.2.1-2: escapes of unreserved characters decoded, every
/// other escape with upper-case hex digits.
fn percent_normalise(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 3)
            .filter(|hex| bytes[i] == b'%' && hex.iter().all(u8::is_ascii_hexdigit));
        if let Some(hex) = escape {
            let byte = hex_value(hex[0]) << 4 | hex_value(hex[1]);
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                out.push(byte);
            } else {
                out.extend([
                    b'%',
                    hex[0].to_ascii_uppercase(),
                    hex[1].to_ascii_uppercase(),
                ]);
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    // Only ASCII sequences were replaced by ASCII: still UTF-8.
    String::from_utf8(out).unwrap_or_else(|_| text.to_owned())
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

/// The path without its `;name=value` parameters, and each segment's
/// parameters as decoded (name, raw item) pairs.
type PathParams = Vec<Vec<(String, String)>>;

fn split_path_params(path: &str) -> (String, PathParams) {
    let mut params = Vec::new();
    let bare: Vec<&str> = path
        .split('/')
        .map(|segment| {
            let mut parts = segment.split(';');
            let head = parts.next().unwrap_or_default();
            params.push(
                parts
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        (
                            decode(p.split('=').next().unwrap_or_default()),
                            p.to_owned(),
                        )
                    })
                    .collect(),
            );
            head
        })
        .collect();
    (bare.join("/"), params)
}

/// The normalised path with the non-credential parameters put back on the
/// segments they came from (only where the segment count did not change).
fn join_path(path: &str, params: &PathParams, names: &ParamNames) -> String {
    if params.iter().all(Vec::is_empty) {
        return path.to_owned();
    }
    let segments: Vec<&str> = path.split('/').collect();
    if segments.len() != params.len() {
        return path.to_owned();
    }
    let mut out: Vec<String> = Vec::with_capacity(segments.len());
    for (segment, params) in segments.iter().zip(params) {
        let mut segment = (*segment).to_owned();
        for (name, item) in params {
            if item.contains('=') && !names.is_credential(name) {
                segment.push(';');
                segment.push_str(&percent_normalise(item));
            }
        }
        out.push(segment);
    }
    out.join("/")
}

/// Escapes normalised, dot-segments removed (RFC 3986 5.2.4), and the
/// scheme's trailing-slash rule: for http-like schemes an empty path is
/// `/`; for the others a trailing `/` is dropped and the root is empty.
fn normalise_path(path: &str, scheme: &str) -> String {
    let decoded = percent_normalise(path);
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut normal = if decoded.starts_with('/') || !out.is_empty() {
        format!("/{}", out.join("/"))
    } else {
        String::new()
    };
    if trailing_slash_matters(scheme) {
        if normal.is_empty() {
            normal.push('/');
        }
    } else {
        while normal.ends_with('/') {
            normal.pop();
        }
    }
    normal
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
/// `<label>-<first 16 hex digits of SHA-256(identity)>`: the stem of lock
/// and slot file names, the same for every `ec-launch` version.
#[must_use]
pub fn hashed_name(label: &str, identity: &[u8]) -> String {
    let digest = Sha256::digest(identity);
    let mut hash = String::with_capacity(HASH_HEX_DIGITS);
    for byte in &digest[..HASH_HEX_DIGITS / 2] {
        let _ = write!(hash, "{byte:02x}");
    }
    format!("{label}-{hash}")
}

/// A file name label: lower-case letters, digits, `.`, `-` and `_`, other
/// characters `_`, at most [`LABEL_MAX`] bytes.
#[must_use]
pub fn sanitize_label(text: &str) -> String {
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
    fn devices_key_on_their_device_number() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("by-id-null");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        // /dev/null is character device 1:3 on every Linux.
        assert_eq!(key(link.to_str().unwrap()), "/dev/char/1:3");
        assert_eq!(key("/dev/null"), "/dev/char/1:3");
        assert_eq!(key("file:///dev/null"), "/dev/char/1:3");
        assert_eq!(key("/dev/char/1:3"), "/dev/char/1:3");
        let name = SourceKey::from_source("/dev/null")
            .unwrap()
            .lock_file_name();
        assert!(name.starts_with("dev_char_1_3-"), "{name}");
        let file = dir.path().join("media.ts");
        std::fs::write(&file, "").unwrap();
        assert_eq!(
            key(file.to_str().unwrap()),
            file.canonicalize().unwrap().to_str().unwrap()
        );
        assert!(matches!(
            SourceKey::from_source("/dev/does-not-exist-ec"),
            Err(KeyError::PathUnresolvable { .. })
        ));
    }

    #[test]
    fn bad_sources_are_rejected() {
        assert_eq!(SourceKey::from_source("  "), Err(KeyError::Empty));
        assert!(matches!(
            SourceKey::from_source("not-a-url"),
            Err(KeyError::NotAUrl(_))
        ));
        assert_eq!(
            SourceKey::from_source("not a url"),
            Err(KeyError::Whitespace)
        );
        assert_eq!(
            SourceKey::from_source("rtsp://S3/CR3T@cam/s"),
            Err(KeyError::AtAfterHost)
        );
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
        // Keys the rules of ECP-0124 already got right keep their names
        // under ECP-0130 (names as the old rules computed them).
        for (source, name) in [
            (
                "rtsp://cam.local:8554/stream1",
                "cam.local-8554-stream1-f1173574cc733569.lock",
            ),
            (
                "https://user:pw@cdn.example:443/x",
                "cdn.example-x-f834094c4b0b3190.lock",
            ),
            (
                "HTTP://Example.COM:80/a/./b/../live.ts?b=2&a=1&token=s3cret#x",
                "example.com-live.ts-1c00a3e6fd55e186.lock",
            ),
        ] {
            let k = SourceKey::from_source(source).unwrap();
            assert_eq!(k.lock_file_name(), name, "{source}");
        }
        let o = SourceKey::from_override("Studio A / Camera 2").unwrap();
        assert!(o.lock_file_name().starts_with("studio_a___camera_2-"));
    }

    #[test]
    fn a_device_named_by_hand_is_canonical_like_a_sources_host() {
        let host_of = |source: &str| {
            SourceKey::from_source(source)
                .unwrap()
                .host()
                .unwrap()
                .to_owned()
        };
        for (spelling, source) in [
            ("TUNER.lan", "http://tuner.lan:5004/auto/v5.1"),
            ("tuner.lan.", "http://tuner.lan:5004/auto/v5.1"),
            ("Tuner.Lan", "rtsp://TUNER.LAN./s"),
            ("0x7f0000b4", "http://127.0.0.180:5004/auto/v5.1"),
            ("0177.0.0.0264", "rtsp://127.0.0.180/s"),
            ("10.5", "http://10.0.0.5:5004/auto/v5.1"),
            ("fd00::5", "http://[fd00::5]:5004/auto/v5.1"),
            ("[FD00::5]", "http://[fd00:0::5]:5004/auto/v5.1"),
            ("[::ffff:10.0.0.5]", "http://10.0.0.5/"),
            ("t%55ner.lan", "http://tuner.lan/"),
        ] {
            assert_eq!(
                canonical_device_name(spelling),
                host_of(source),
                "{spelling}"
            );
        }
        // Names of the operator's that no host spells stay as they are.
        for name in ["host:5004", "den/box", "[not-an-address]", "a:b:c"] {
            assert_eq!(canonical_device_name(name), name);
        }
        assert_eq!(canonical_device_name("Den-Box"), "den-box");
    }

    #[test]
    fn every_spelling_of_an_ipv4_address_is_one_host_for_every_scheme() {
        for scheme in ["rtsp", "rtmp", "srt", "udp", "rtp", "http", "https"] {
            let expected = key(&format!("{scheme}://10.0.0.5:1234/s"));
            for host in [
                "0x0a000005",
                "167772165",
                "012.0.0.5",
                "0x0a.0.0.5",
                "10.5",
                "10.0.5",
                "[::ffff:10.0.0.5]",
                "[::ffff:a00:5]",
                "10.0.0.5.",
            ] {
                assert_eq!(
                    key(&format!("{scheme}://{host}:1234/s")),
                    expected,
                    "{scheme} host {host}"
                );
            }
        }
        assert_eq!(
            key("http://[::ffff:10.0.0.5]:5004/auto/v5.1"),
            "hdhomerun://10.0.0.5/v5.1"
        );
    }

    #[test]
    fn rfc_3986_equivalent_spellings_share_a_key() {
        for (a, b) in [
            ("rtsp://%63am.local/%73tream1", "rtsp://cam.local/stream1"),
            ("rtsp://%43AM.local/s", "rtsp://cam.local/s"),
            ("rtsp://caf%c3%a9.local/s", "rtsp://caf%C3%A9.local/s"),
            ("rtsp://cam.local./stream1", "rtsp://cam.local/stream1"),
            ("http://cam.example./x", "http://cam.example/x"),
            ("rtsp://cam.local/stream1/", "rtsp://cam.local/stream1"),
            ("rtsp://cam.local/", "rtsp://cam.local"),
            ("rtsp://cam.local/a%2fb", "rtsp://cam.local/a%2Fb"),
            ("rtmp://h:1935/live/x", "rtmp://h/live/x"),
            ("rtmps://h:443/live/x", "rtmps://h/live/x"),
            ("http://h/%7Euser/x", "http://h/~user/x"),
            ("http://h", "http://h/"),
        ] {
            assert_eq!(key(a), key(b), "{a} and {b}");
        }
        // Different resources by RFC 3986: not merged.
        assert_ne!(key("http://h/live/"), key("http://h/live"));
    }

    #[test]
    fn sources_differing_in_a_non_secret_parameter_do_not_share_a_key() {
        assert_ne!(
            key("http://h/x?channel_key=5"),
            key("http://h/x?channel_key=6")
        );
        assert_ne!(key("http://h/x?keyframe=1"), key("http://h/x?keyframe=2"));
        assert_eq!(key("http://h/x?a=1;token=s"), key("http://h/x?a=1"));
    }

    #[test]
    fn sources_with_whitespace_or_control_characters_are_rejected() {
        for source in [
            "http://10.0.0.5:5004/auto/v5.1 ",
            " http://10.0.0.5:5004/auto/v5.1",
            "http://10.0.0.5:5004/au\tto/v5.1",
            "http://10.0.0.5:5004/auto/v5.1\n",
            "/dev/nu\nll",
            "rtsp://cam/a\u{7f}",
        ] {
            assert_eq!(
                SourceKey::from_source(source),
                Err(KeyError::Whitespace),
                "{source:?}"
            );
        }
    }
}
