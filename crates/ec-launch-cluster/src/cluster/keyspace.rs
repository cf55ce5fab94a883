//! Where the cluster's locks live in etcd's flat key space (ECP-0134).
//!
//! One prefix per major version of the layout, so a future layout can run
//! beside this one during a rollout instead of misreading it. Source keys
//! and device keys are operator-visible text (`hdhomerun://10.0.0.5/v5.1`):
//! they are percent-escaped so a `/` inside one is not a path separator
//! (a prefix range over `devices/<a>/` must never match `devices/<a>/b/`),
//! and control bytes cannot reach `etcdctl` output.

use std::fmt::Write as _;

/// Everything `ec-launch` keeps in etcd lives under this prefix.
pub const PREFIX: &str = "/every-channel/ec-launch/v1";

/// The key that stands for one source, cluster-wide.
#[must_use]
pub fn source(key: &str) -> String {
    format!("{PREFIX}/sources/{}", escape(key))
}

/// The prefix under which one device's slots live, ending in `/`.
#[must_use]
pub fn device_slots(device: &str) -> String {
    format!("{PREFIX}/devices/{}/", escape(device))
}

/// Slot `index` of a device, under [`device_slots`] (the claim appends
/// `slot-<i>` to the prefix itself; this pins the shape `parse` reads).
#[cfg(test)]
fn slot(device: &str, index: u32) -> String {
    format!("{}slot-{index}", device_slots(device))
}

/// The key, under a device's prefix `under` (ending in `/`), of slot
/// `index`.
#[must_use]
pub fn slot_under(under: &[u8], index: u32) -> Vec<u8> {
    let mut key = under.to_vec();
    key.extend_from_slice(format!("slot-{index}").as_bytes());
    key
}

/// The key, under a device's prefix `under` (ending in `/`), by which the
/// launcher holding `lease` says it waits for one of the device's slots
/// and how many tuners it declares (ECP-0135 section 5). It lives under
/// that lease, so it goes when the waiter does.
#[must_use]
pub fn waiting_under(under: &[u8], lease: i64) -> Vec<u8> {
    let mut key = under.to_vec();
    key.extend_from_slice(format!("waiting/{lease:x}").as_bytes());
    key
}

/// The key, under a device's prefix `under` (ending in `/`), by which a
/// launcher of higher priority asks the holder of slot `index` to let go
/// (ECP-0139 section 7): under the asker's lease, watched by the holder.
#[must_use]
pub fn preempt_under(under: &[u8], index: u32) -> Vec<u8> {
    let mut key = under.to_vec();
    key.extend_from_slice(format!("preempt-{index}").as_bytes());
    key
}

/// The key by which the spread launcher holding `lease` says it wants
/// `source` (ECP-0140): under that lease, kept while it holds the source.
#[must_use]
pub fn wanted(source: &str, lease: i64) -> String {
    format!("{PREFIX}/wanted/{}/{lease:x}", escape(source))
}

/// A node's claim turn (ECP-0140): every spread claim of the node writes
/// it in the txn that takes the source, and compares it unchanged since
/// its look, so the node's launchers never all count it below its share.
#[must_use]
pub fn turn(node: &str) -> String {
    format!("{PREFIX}/nodes/{}/turn", escape(node))
}

/// Everything under [`PREFIX`], for `status --etcd`.
#[must_use]
pub fn everything() -> String {
    format!("{PREFIX}/")
}

/// What a key under [`PREFIX`] names, for `status --etcd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    Source(String),
    Slot {
        device: String,
        index: u32,
    },
    /// A launcher waiting for one of the device's slots, by its lease.
    Waiting {
        device: String,
        lease: i64,
    },
    /// A request that the holder of one of the device's slots let go.
    Preempt {
        device: String,
        index: u32,
    },
    /// A spread launcher that wants (waits for or holds) a source.
    Wanted {
        source: String,
        lease: i64,
    },
    /// A node's claim turn.
    Turn {
        node: String,
    },
}

/// Exactly what `{lease:x}` writes: lowercase hex of a positive ID.
fn parse_lease(text: &str) -> Option<i64> {
    let lease = i64::from_str_radix(text, 16).ok().filter(|l| *l > 0)?;
    (text == format!("{lease:x}")).then_some(lease)
}

/// Reads a key written by [`source`], [`slot_under`] or [`waiting_under`];
/// `None` for anything else under the prefix (a newer layout, an
/// operator's own key).
#[must_use]
pub fn parse(key: &[u8]) -> Option<Named> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix(PREFIX)?.strip_prefix('/')?;
    if let Some(source) = rest.strip_prefix("sources/") {
        return Some(Named::Source(unescape(source)?));
    }
    if let Some(wanted) = rest.strip_prefix("wanted/") {
        let (source, lease) = wanted.split_once('/')?;
        return Some(Named::Wanted {
            source: unescape(source)?,
            lease: parse_lease(lease)?,
        });
    }
    if let Some(node) = rest.strip_prefix("nodes/") {
        let node = node.strip_suffix("/turn")?;
        if node.contains('/') {
            return None;
        }
        return Some(Named::Turn {
            node: unescape(node)?,
        });
    }
    let (device, below) = rest.strip_prefix("devices/")?.split_once('/')?;
    if let Some(lease) = below.strip_prefix("waiting/") {
        let lease = parse_lease(lease)?;
        return Some(Named::Waiting {
            device: unescape(device)?,
            lease,
        });
    }
    if let Some(index) = below.strip_prefix("preempt-") {
        return Some(Named::Preempt {
            device: unescape(device)?,
            index: parse_index(index)?,
        });
    }
    Some(Named::Slot {
        device: unescape(device)?,
        index: parse_index(below.strip_prefix("slot-")?)?,
    })
}

/// Exactly what `{index}` writes: decimal digits.
fn parse_index(text: &str) -> Option<u32> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A key read from etcd as output may show it: anyone with write access may
/// have put a key under the prefix, named with a credential. A key of our
/// layout is shown rebuilt from its name redacted like free text
/// (`redact_text`: a real source or device key is shown as it is);
/// anything else after the prefix is redacted as one piece of text. Bytes
/// that are not UTF-8 are replaced.
#[must_use]
pub fn shown(key: &[u8]) -> String {
    use crate::redact::redact_text;
    match parse(key) {
        Some(Named::Source(name)) => source(&redact_text(&name)),
        Some(Named::Slot { device, index }) => {
            format!("{}slot-{index}", device_slots(&redact_text(&device)))
        }
        Some(Named::Preempt { device, index }) => {
            format!("{}preempt-{index}", device_slots(&redact_text(&device)))
        }
        Some(Named::Waiting { device, lease }) => String::from_utf8_lossy(&waiting_under(
            device_slots(&redact_text(&device)).as_bytes(),
            lease,
        ))
        .into_owned(),
        Some(Named::Wanted { source, lease }) => wanted(&redact_text(&source), lease),
        Some(Named::Turn { node }) => turn(&redact_text(&node)),
        None => {
            let text = String::from_utf8_lossy(key);
            match text.strip_prefix(&everything()) {
                Some(rest) => format!("{}{}", everything(), redact_text(rest)),
                None => redact_text(&text),
            }
        }
    }
}

/// Percent-escapes `/`, `%` and every byte outside printable ASCII.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_graphic() && byte != b'/' && byte != b'%' {
            escaped.push(char::from(byte));
        } else {
            let _ = write!(escaped, "%{byte:02X}");
        }
    }
    escaped
}

fn unescape(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_key_is_one_path_segment_under_the_prefix() {
        assert_eq!(
            source("hdhomerun://10.0.0.5/v5.1"),
            "/every-channel/ec-launch/v1/sources/hdhomerun:%2F%2F10.0.0.5%2Fv5.1"
        );
        assert_eq!(
            slot("10.0.0.5", 1),
            "/every-channel/ec-launch/v1/devices/10.0.0.5/slot-1"
        );
    }

    #[test]
    fn a_device_named_like_another_devices_prefix_stays_apart() {
        // `a` and `a/b` must not share the prefix a wait watches.
        assert!(!slot("a/b", 0).starts_with(&device_slots("a")));
    }

    #[test]
    fn keys_read_back_as_what_they_name() {
        for key in [
            "hdhomerun://10.0.0.5/v5.1",
            "/dev/char/1:3",
            "odd key%2F\u{1}é",
        ] {
            assert_eq!(
                parse(source(key).as_bytes()),
                Some(Named::Source(key.into()))
            );
        }
        assert_eq!(
            parse(slot("host:5004", 3).as_bytes()),
            Some(Named::Slot {
                device: "host:5004".into(),
                index: 3
            })
        );
        let waiting = waiting_under(device_slots("host:5004").as_bytes(), 0x694d_7a3b_1c2d);
        assert_eq!(
            waiting,
            b"/every-channel/ec-launch/v1/devices/host:5004/waiting/694d7a3b1c2d"
        );
        assert_eq!(
            parse(&waiting),
            Some(Named::Waiting {
                device: "host:5004".into(),
                lease: 0x694d_7a3b_1c2d
            })
        );
        // A waiter is never a slot, and nothing else under a device is either.
        for other in [
            "devices/x/waiting/",
            "devices/x/waiting/zz",
            "devices/x/waiting/0",
            "devices/x/waiting/ABC",
            "devices/x/waiting/1/2",
            "devices/x/slot-",
            "devices/x/slot-+1",
            "devices/x/slot-1/waiting/2",
            "devices/x/preempt-",
            "devices/x/preempt-a",
        ] {
            assert_eq!(
                parse(format!("/every-channel/ec-launch/v1/{other}").as_bytes()),
                None,
                "{other}"
            );
        }
        assert_eq!(
            slot_under(device_slots("d").as_bytes(), 2),
            slot("d", 2).into_bytes()
        );
        assert_eq!(
            parse(&preempt_under(device_slots("host:5004").as_bytes(), 1)),
            Some(Named::Preempt {
                device: "host:5004".into(),
                index: 1
            })
        );
        let want = wanted("hdhomerun://10.0.0.5/v5.1", 0x694d);
        assert_eq!(
            want,
            "/every-channel/ec-launch/v1/wanted/hdhomerun:%2F%2F10.0.0.5%2Fv5.1/694d"
        );
        assert_eq!(
            parse(want.as_bytes()),
            Some(Named::Wanted {
                source: "hdhomerun://10.0.0.5/v5.1".into(),
                lease: 0x694d
            })
        );
        assert_eq!(
            parse(turn("node/a").as_bytes()),
            Some(Named::Turn {
                node: "node/a".into()
            })
        );
        for other in [
            "wanted/x",
            "wanted/x/0",
            "wanted/x/ABC",
            "wanted/x/1/2",
            "nodes/a/b/turn",
            "nodes/a/other",
        ] {
            assert_eq!(
                parse(format!("/every-channel/ec-launch/v1/{other}").as_bytes()),
                None,
                "{other}"
            );
        }
        assert_eq!(parse(b"/every-channel/ec-launch/v2/sources/x"), None);
        assert_eq!(parse(b"/every-channel/ec-launch/v1/devices/x/lease"), None);
    }

    #[test]
    fn a_key_is_shown_as_it_is_unless_a_segment_holds_a_credential() {
        let ours = source("hdhomerun://10.0.0.5/v5.1");
        assert_eq!(shown(ours.as_bytes()), ours);
        let query = source("http://cam.example/live?a=1&b=2");
        assert_eq!(shown(query.as_bytes()), query);
        assert_eq!(
            shown(format!("{PREFIX}/devices/token=S3CR3T/slot-0").as_bytes()),
            format!("{PREFIX}/devices/***/slot-0")
        );
        for hostile in [
            source("http://a:S3CR3T@h/x?token=S3CR3T"),
            format!("{PREFIX}/sources/rtsp://u:S3CR3T/x@h/s"),
            format!("{PREFIX}/other/token=S3CR3T"),
            format!("{PREFIX}/other/udp://S3CR3T@h/x"),
            "rtsp://u:S3CR3T@h/s".to_owned(),
        ] {
            let shown = shown(hostile.as_bytes());
            assert!(!shown.contains("S3CR3T"), "{hostile} shown as {shown}");
        }
    }

    #[test]
    fn control_bytes_never_reach_a_key() {
        assert!(
            source("a\u{1b}[31m\nb")
                .bytes()
                .all(|b| b.is_ascii_graphic())
        );
    }
}
