//! Foreign readers: tuners a device reports in use that no slot on this node
//! accounts for, found by comparing the device's own view (`status.json`)
//! with the slots this node holds on it.
//!
//! Pure: the device's answer, this node's address towards it and the number
//! of held slots go in, the foreign readers come out. The comparison leans
//! to reporting: a busy tuner whose target is missing or unreadable is
//! foreign (its reader is not provably ours), and when more tuners stream to
//! this node than it holds slots, the excess is foreign too (a reader here
//! that took no slot: a hand-started `ec-node`, a `curl`, a stale helper).

use std::net::IpAddr;

use serde::Serialize;

use crate::device_http::TunerStatus;

/// Why a busy tuner is not accounted for by this node's slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The device streams to another address (another node, a TV app) or
    /// does not say to whom.
    OtherTarget,
    /// The device streams to this node, but more tuners than it holds slots.
    NoSlotHere,
}

/// One tuner in use by a reader that holds no slot on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForeignReader {
    pub tuner: String,
    pub channel: Option<String>,
    pub target: Option<String>,
    pub reason: Reason,
}

/// The busy tuners of `tuners` that the `slots_held` slots this node holds
/// on the device, with `ours` as this node's address towards it, do not
/// account for.
#[must_use]
pub fn foreign_readers(
    tuners: &[TunerStatus],
    ours: IpAddr,
    slots_held: usize,
) -> Vec<ForeignReader> {
    let ours = ours.to_canonical();
    let is_ours = |tuner: &TunerStatus| {
        tuner
            .target
            .as_deref()
            .and_then(|target| target.trim().parse::<IpAddr>().ok())
            .is_some_and(|target| target.to_canonical() == ours)
    };
    let mut streaming_here = 0_usize;
    let mut found = Vec::new();
    for tuner in tuners.iter().filter(|t| t.busy) {
        let reason = if !is_ours(tuner) {
            Reason::OtherTarget
        } else if streaming_here < slots_held {
            streaming_here += 1;
            continue;
        } else {
            Reason::NoSlotHere
        };
        found.push(ForeignReader {
            tuner: tuner.resource.clone(),
            channel: tuner.channel.clone(),
            target: tuner.target.clone(),
            reason,
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuner(resource: &str, target: Option<&str>) -> TunerStatus {
        TunerStatus {
            resource: resource.into(),
            channel: target.map(|_| "5.1".into()),
            target: target.map(Into::into),
            busy: target.is_some(),
            problem: None,
        }
    }

    fn idle(resource: &str) -> TunerStatus {
        tuner(resource, None)
    }

    const OURS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 20));

    #[test]
    fn tuners_streaming_to_us_within_our_slots_are_not_foreign() {
        let tuners = [
            tuner("tuner0", Some("10.0.0.20")),
            tuner("tuner1", Some("10.0.0.20")),
            idle("tuner2"),
        ];
        assert_eq!(foreign_readers(&tuners, OURS, 2), vec![]);
        assert_eq!(foreign_readers(&tuners, OURS, 3), vec![]);
    }

    #[test]
    fn a_tuner_streaming_to_another_address_is_foreign() {
        let tuners = [
            tuner("tuner0", Some("10.0.0.20")),
            tuner("tuner1", Some("10.0.0.99")),
        ];
        assert_eq!(
            foreign_readers(&tuners, OURS, 1),
            vec![ForeignReader {
                tuner: "tuner1".into(),
                channel: Some("5.1".into()),
                target: Some("10.0.0.99".into()),
                reason: Reason::OtherTarget,
            }]
        );
    }

    #[test]
    fn more_tuners_streaming_to_us_than_slots_held_makes_the_excess_foreign() {
        let tuners = [
            tuner("tuner0", Some("10.0.0.20")),
            tuner("tuner1", Some("10.0.0.20")),
            tuner("tuner2", Some("10.0.0.20")),
        ];
        let found = foreign_readers(&tuners, OURS, 1);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|f| f.reason == Reason::NoSlotHere));
        assert_eq!(foreign_readers(&tuners, OURS, 0).len(), 3);
    }

    #[test]
    fn a_busy_tuner_without_a_readable_target_is_foreign() {
        let mut scanning = idle("tuner0");
        scanning.busy = true;
        scanning.channel = Some("509000000".into());
        let garbled = tuner("tuner1", Some("not-an-address"));
        let found = foreign_readers(&[scanning, garbled], OURS, 4);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|f| f.reason == Reason::OtherTarget));
    }

    #[test]
    fn an_ipv4_mapped_target_is_the_same_address() {
        let tuners = [tuner("tuner0", Some("::ffff:10.0.0.20"))];
        assert_eq!(foreign_readers(&tuners, OURS, 1), vec![]);
    }
}
