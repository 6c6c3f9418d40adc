//! The device outbox: readings leave only when acknowledged, are retransmitted on timeout,
//! and survive a lossy link and gateway restarts.

use proptest::prelude::*;
use std::collections::BTreeSet;
use vitalbridge_firmware::message::*;
use vitalbridge_firmware::outbox::{Outbox, OutboxFull, RetryPolicy};

const POLICY: RetryPolicy = RetryPolicy {
    ack_timeout_ms: 1_000,
    nack_backoff_ms: 5_000,
};

fn reading(mantissa: i32) -> Reading {
    Reading::new(
        DeviceTime::NoClock,
        150456,
        Value::decimal(mantissa, 0),
        Unit::try_from("%").unwrap(),
    )
}

fn seqs(readings: &Readings) -> Vec<u32> {
    readings.readings.iter().map(|r| r.seq).collect()
}

fn ack(list: &[u32]) -> Ack {
    Ack {
        seqs: SeqList::from_slice(list).unwrap(),
    }
}

#[test]
fn push_numbers_readings_from_first_seq() {
    let mut outbox = Outbox::<8>::new(41, POLICY);
    assert_eq!(outbox.push(reading(1)), Ok(41));
    assert_eq!(outbox.push(reading(2)), Ok(42));
    assert_eq!(outbox.next_seq(), 43);
    assert_eq!(outbox.len(), 2);
}

#[test]
fn poll_sends_due_readings_in_batches_then_waits_for_the_timeout() {
    let mut outbox = Outbox::<8>::new(0, POLICY);
    for i in 0..6 {
        outbox.push(reading(i)).unwrap();
    }
    let first = outbox.poll(100).unwrap();
    assert_eq!(seqs(&first), [0, 1, 2, 3]);
    assert_eq!(seqs(&outbox.poll(100).unwrap()), [4, 5]);
    assert_eq!(outbox.poll(100), None);
    assert_eq!(outbox.next_due_ms(), Some(1_100));
    assert_eq!(outbox.poll(1_099), None);
    // No ack came: everything is sent again, in order.
    assert_eq!(seqs(&outbox.poll(1_100).unwrap()), [0, 1, 2, 3]);
}

#[test]
fn ack_removes_only_the_named_readings() {
    let mut outbox = Outbox::<8>::new(0, POLICY);
    for i in 0..3 {
        outbox.push(reading(i)).unwrap();
    }
    let sent = outbox.poll(0).unwrap();
    assert_eq!(outbox.handle_ack(&ack(&[0, 2, 99])), 2);
    assert_eq!(outbox.pending().map(|r| r.seq).collect::<Vec<_>>(), [1]);
    // A duplicate ack changes nothing.
    assert_eq!(outbox.handle_ack(&sent.ack()), 1);
    assert!(outbox.is_empty());
    assert_eq!(outbox.next_due_ms(), None);
}

#[test]
fn nack_keeps_readings_and_backs_off() {
    let mut outbox = Outbox::<8>::new(0, POLICY);
    outbox.push(reading(1)).unwrap();
    let sent = outbox.poll(0).unwrap();
    assert_eq!(
        outbox.handle_nack(&sent.nack(NackReason::BufferFull), 200),
        1
    );
    assert_eq!(outbox.len(), 1);
    assert_eq!(
        outbox.poll(1_000),
        None,
        "the ack timeout no longer applies"
    );
    assert_eq!(outbox.poll(5_199), None);
    assert_eq!(seqs(&outbox.poll(5_200).unwrap()), [0]);
}

#[test]
fn a_full_outbox_refuses_and_hands_the_reading_back() {
    let mut outbox = Outbox::<2>::new(0, POLICY);
    outbox.push(reading(1)).unwrap();
    outbox.push(reading(2)).unwrap();
    assert!(outbox.is_full());
    let refused = outbox.push(reading(3));
    assert_eq!(refused, Err(OutboxFull(reading(3))));
    assert_eq!(outbox.next_seq(), 2, "a refused reading uses no number");
    assert_eq!(outbox.pending().map(|r| r.seq).collect::<Vec<_>>(), [0, 1]);
}

#[test]
fn resend_all_makes_everything_due_now() {
    let mut outbox = Outbox::<4>::new(0, POLICY);
    outbox.push(reading(1)).unwrap();
    outbox.poll(0).unwrap();
    assert_eq!(outbox.poll(10), None);
    outbox.resend_all();
    assert_eq!(seqs(&outbox.poll(10).unwrap()), [0]);
}

/// What happens in one step of the simulation.
#[derive(Debug, Clone)]
enum Step {
    /// The device measures something.
    Measure,
    /// Time passes.
    Wait(u64),
    /// The link drops (frames in both directions are lost) or comes back.
    Link(bool),
    /// The gateway restarts: it forgets nothing it stored, but loses frames in flight.
    GatewayRestart,
    /// The gateway's buffer fills up or drains.
    GatewayFull(bool),
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Measure),
        3 => (0u64..3_000).prop_map(Step::Wait),
        1 => any::<bool>().prop_map(Step::Link),
        1 => Just(Step::GatewayRestart),
        1 => any::<bool>().prop_map(Step::GatewayFull),
    ]
}

/// One round of the simulated link: the device takes in the gateway's replies, then sends
/// everything due; the gateway stores and acknowledges, or refuses when full.
fn exchange<const N: usize>(
    outbox: &mut Outbox<N>,
    now: u64,
    link_up: bool,
    gateway_full: bool,
    stored: &mut BTreeSet<u32>,
    to_device: &mut Vec<Message>,
) {
    for reply in to_device.drain(..) {
        match reply {
            Message::Ack(a) => {
                outbox.handle_ack(&a);
            }
            Message::Nack(n) => {
                outbox.handle_nack(&n, now);
            }
            _ => unreachable!("the simulated gateway sends only acks and nacks"),
        }
    }
    while let Some(batch) = outbox.poll(now) {
        if !link_up {
            continue;
        }
        if gateway_full {
            to_device.push(Message::Nack(batch.nack(NackReason::BufferFull)));
        } else {
            stored.extend(batch.readings.iter().map(|r| r.seq));
            to_device.push(Message::Ack(batch.ack()));
        }
    }
}

proptest! {
    /// A device, a link that drops, and a gateway that restarts and fills up: every reading
    /// the outbox accepted reaches the gateway's storage, and the outbox is empty once the
    /// link is healthy for long enough.
    #[test]
    fn accepted_readings_always_reach_the_gateway(steps in proptest::collection::vec(arb_step(), 0..120)) {
        const CAP: usize = 6;
        let mut outbox = Outbox::<CAP>::new(1000, POLICY);
        let mut now = 0u64;
        let mut link_up = true;
        let mut gateway_full = false;
        let mut accepted = BTreeSet::new();
        let mut stored = BTreeSet::new();
        // Replies in flight to the device.
        let mut to_device: Vec<Message> = Vec::new();


        for step in steps {
            match step {
                Step::Measure => {
                    let before = outbox.len();
                    match outbox.push(reading(0)) {
                        Ok(seq) => { accepted.insert(seq); }
                        Err(_) => prop_assert_eq!(before, CAP, "refused while not full"),
                    }
                }
                Step::Wait(ms) => now += ms,
                Step::Link(up) => {
                    link_up = up;
                    if !up { to_device.clear(); }
                }
                Step::GatewayRestart => to_device.clear(),
                Step::GatewayFull(full) => gateway_full = full,
            }
            exchange(&mut outbox, now, link_up, gateway_full, &mut stored, &mut to_device);
            // Nothing unacknowledged has left the outbox.
            let held: BTreeSet<u32> = outbox.pending().map(|r| r.seq).collect();
            let acked: BTreeSet<u32> = accepted.difference(&held).copied().collect();
            prop_assert!(acked.is_subset(&stored), "removed before being stored");
        }

        // Heal everything and let time pass.
        for _ in 0..10 {
            now += u64::from(POLICY.nack_backoff_ms);
            exchange(&mut outbox, now, true, false, &mut stored, &mut to_device);
        }
        prop_assert!(outbox.is_empty());
        prop_assert_eq!(stored, accepted);
    }
}
