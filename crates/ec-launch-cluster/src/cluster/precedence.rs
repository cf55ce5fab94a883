//! Who goes first for a device's cluster slots (ECP-0139 section 7): the
//! order of its waiting keys, and the holder a launcher of strictly higher
//! priority may ask to let go.
//!
//! Both are decided on one look at the device's keys ([`DeviceView`]) and
//! acted on by a txn that fails if anything under the device was written
//! since, so no launcher acts on an old order. Records are hints, used only
//! to choose: a waiting value that does not parse still waits (at the
//! default priority), and a slot value that does not parse is never a
//! victim (what cannot be placed is not preempted). What frees a slot is
//! its holder's own release, never another launcher's write.

use std::cmp::Reverse;

use super::claim::DeviceView;
use super::etcd::KeyValue;
use super::keyspace;
use super::record::{ClusterRecord, EtcdValue, PreemptRequest, WaitingRecord};
use crate::priority::Priority;

/// A waiter's place in line: priority descending, then arrival (the
/// waiting key's create revision: etcd's revision is the cluster's order
/// of arrival), then lease.
fn place(kv: &KeyValue) -> (Reverse<Priority>, i64, i64) {
    (
        Reverse(WaitingRecord::priority_of(&kv.value)),
        kv.create_revision,
        kv.lease,
    )
}

impl DeviceView {
    /// The waiters that go before a launcher of `priority` under `lease`,
    /// first first: once registered, those whose place sorts before its
    /// own; before that (a newcomer), every waiter of its priority or
    /// above, since it would sort after them.
    #[must_use]
    pub fn ahead_of(&self, lease: i64, priority: Priority) -> Vec<&KeyValue> {
        let own = self.waiters.iter().find(|kv| kv.lease == lease).map(place);
        let mut ahead: Vec<&KeyValue> = self
            .waiters
            .iter()
            .filter(|kv| kv.lease != lease)
            .filter(|kv| match own {
                Some(own) => place(kv) < own,
                None => WaitingRecord::priority_of(&kv.value) >= priority,
            })
            .collect();
        ahead.sort_by_key(|kv| place(kv));
        ahead
    }

    /// The slot `index`'s key, when held.
    fn slot(&self, index: u32) -> Option<&KeyValue> {
        self.slots
            .iter()
            .find(|(held, _)| *held == index)
            .map(|(_, kv)| kv)
    }

    /// The requests under the device that still ask a holder of their
    /// slot (a request whose holder let go, or that does not parse, asks
    /// nobody).
    fn live_requests(&self) -> impl Iterator<Item = (u32, &KeyValue)> {
        self.preempts.iter().filter_map(|(index, kv)| {
            let request = PreemptRequest::from_json(&kv.value)?;
            let holder = self.slot(*index)?;
            request.asks(holder).then_some((*index, kv))
        })
    }

    /// The slot whose holder `lease` has asked to let go, while that
    /// holder still holds it.
    #[must_use]
    pub fn asking(&self, lease: i64) -> Option<u32> {
        self.live_requests()
            .find(|(_, kv)| kv.lease == lease)
            .map(|(index, _)| index)
    }

    /// The keys of the requests made under `lease`: a take deletes them in
    /// its txn, and a new request replaces them.
    #[must_use]
    pub fn requests_of(&self, lease: i64) -> Vec<Vec<u8>> {
        self.preempts
            .iter()
            .filter(|(_, kv)| kv.lease == lease)
            .map(|(_, kv)| kv.key.clone())
            .collect()
    }

    /// The holder a launcher of `priority` under `lease` may ask to let
    /// go: of the slots whose record reads and that no other launcher asks
    /// already, the one of lowest priority strictly below `priority`;
    /// ties: the most recently taken (it loses the least), then the higher
    /// index. `None`: nobody may be preempted.
    #[must_use]
    pub fn victim(
        &self,
        lease: i64,
        priority: Priority,
    ) -> Option<(u32, &KeyValue, ClusterRecord)> {
        let asked: Vec<u32> = self
            .live_requests()
            .filter(|(_, kv)| kv.lease != lease)
            .map(|(index, _)| index)
            .collect();
        self.slots
            .iter()
            .filter(|(index, kv)| !asked.contains(index) && kv.lease != lease)
            .filter_map(|(index, kv)| Some((*index, kv, ClusterRecord::from_json(&kv.value)?)))
            .filter(|(_, _, record)| record.priority() < priority)
            .min_by_key(|(index, _, record)| {
                (record.priority(), Reverse(record.since), Reverse(*index))
            })
    }
}

/// The request key for slot `index` under the device prefix `under`.
#[must_use]
pub fn request_key(under: &[u8], index: u32) -> Vec<u8> {
    keyspace::preempt_under(under, index)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNDER: &[u8] = b"/every-channel/ec-launch/v1/devices/d/";

    fn kv(key: Vec<u8>, value: &str, revision: i64, lease: i64) -> KeyValue {
        KeyValue::created(key, value.as_bytes().to_vec(), revision, lease)
    }

    fn slot(index: u32, priority: Option<u32>, since: u64, lease: i64) -> KeyValue {
        let mut record = ClusterRecord::for_this_launch("n", None, "http://h/v1");
        record.priority = priority;
        record.since = since;
        let value = String::from_utf8(record.to_json()).unwrap();
        kv(keyspace::slot_under(UNDER, index), &value, lease, lease)
    }

    fn waiter(priority: Option<u32>, revision: i64, lease: i64) -> KeyValue {
        let value = match priority {
            Some(p) => {
                format!(r#"{{"node":"n","unit":null,"pid":1,"tuners":2,"since":1,"priority":{p}}}"#)
            }
            None => r#"{"node":"n","unit":null,"pid":1,"tuners":2,"since":1}"#.to_owned(),
        };
        kv(
            keyspace::waiting_under(UNDER, lease),
            &value,
            revision,
            lease,
        )
    }

    fn view(keys: Vec<KeyValue>) -> DeviceView {
        DeviceView::from_keys(keys, 100)
    }

    fn p(n: u16) -> Priority {
        Priority::parse(&n.to_string()).unwrap()
    }

    #[test]
    fn waiters_go_by_priority_then_arrival_and_a_newcomer_after_its_equals() {
        let view = view(vec![
            waiter(Some(10), 5, 1),
            waiter(Some(300), 6, 2),
            waiter(None, 7, 3),
            waiter(Some(100), 8, 4),
        ]);
        let leases = |ahead: Vec<&KeyValue>| ahead.iter().map(|kv| kv.lease).collect::<Vec<_>>();
        assert_eq!(leases(view.ahead_of(2, p(300))), Vec::<i64>::new());
        // An older version's waiter counts as 100, and came first.
        assert_eq!(leases(view.ahead_of(4, p(100))), vec![2, 3]);
        assert_eq!(leases(view.ahead_of(1, p(10))), vec![2, 3, 4]);
        // Newcomers: after every waiter of their priority or above.
        assert_eq!(leases(view.ahead_of(9, p(100))), vec![2, 3, 4]);
        assert_eq!(leases(view.ahead_of(9, p(301))), Vec::<i64>::new());
    }

    #[test]
    fn the_victim_is_the_lowest_strictly_below_and_the_newest_among_equals() {
        let view = view(vec![
            slot(0, Some(100), 1000, 1),
            slot(1, None, 2000, 2),
            slot(2, Some(300), 500, 3),
        ]);
        let (index, _, _) = view.victim(9, p(300)).expect("a victim");
        assert_eq!(index, 1, "the newest of the two at 100");
        assert!(view.victim(9, p(100)).is_none(), "equal is never preempted");
        // An unreadable slot record is never a victim.
        let unreadable = DeviceView::from_keys(
            vec![kv(keyspace::slot_under(UNDER, 0), "not ours", 1, 1)],
            9,
        );
        assert!(unreadable.victim(9, p(1000)).is_none());
    }

    #[test]
    fn a_slot_another_launcher_asks_already_is_not_chosen_again_and_a_stale_request_asks_nobody() {
        let held = slot(1, Some(10), 2000, 2);
        let request = |victim: &KeyValue, lease: i64| {
            let request = PreemptRequest {
                node: "c".into(),
                unit: None,
                pid: 1,
                source: "s".into(),
                priority: 300,
                grace_ms: 5000,
                victim_lease: victim.lease,
                victim_revision: victim.create_revision,
                since: 1,
            };
            let value = String::from_utf8(request.to_json()).unwrap();
            kv(request_key(UNDER, 1), &value, 50, lease)
        };
        let view = view(vec![
            slot(0, Some(100), 1000, 1),
            held.clone(),
            request(&held, 7),
        ]);
        assert_eq!(view.asking(7), Some(1));
        assert_eq!(view.victim(8, p(300)).map(|(i, ..)| i), Some(0));
        assert_eq!(view.victim(7, p(300)).map(|(i, ..)| i), Some(1));
        assert_eq!(view.requests_of(7), vec![request_key(UNDER, 1)]);
        // The holder asked let go, and another took slot 1.
        let later = slot(1, Some(10), 3000, 3);
        let view = DeviceView::from_keys(vec![later, request(&held, 7)], 100);
        assert_eq!(view.asking(7), None);
        assert_eq!(view.victim(8, p(300)).map(|(i, ..)| i), Some(1));
    }
}
