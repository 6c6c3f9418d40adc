//! Unit tests of the pure parts of the serial source: the firmware session (every rule in
//! its module header), the line framer and session, and the simulator's line maker.

use time::macros::datetime;
use time::{Duration, OffsetDateTime, UtcOffset};
use vitalbridge_firmware::frame::MAX_FRAME_LEN;
use vitalbridge_firmware::gateway::encode_to_vec;
use vitalbridge_firmware::message::{
    self as fw, Ack, Component as FwComponent, DeviceTime, Heartbeat, Hello, Message, Nack,
    NackReason, Readings, SeqList, Special, Status, TimeRequest, TimeResponse,
};

use super::lines::{Line, LineFramer, LineSession};
use super::session::{Session, CLOCK_TOLERANCE};
use super::simulator::{firmware_reading, line_templates, simulated_line};
use super::{Action, CommitOutcome};
use crate::ingest::Bindings;
use crate::model::{
    AbsentReason, Decimal, DeviceId, DeviceRef, Measured, PatientRef, StatusFlag, Value,
};
use crate::profile::line::{Decoded, Registry};
use crate::profile::FrameContext;

const NOW: OffsetDateTime = datetime!(2023-11-14 22:13:30 UTC);
/// 2023-11-14T22:13:20.250Z, the README's SpO2 example time.
const T: u64 = 1_700_000_000_250;

fn bytes(message: impl Into<Message>) -> Vec<u8> {
    encode_to_vec(&message.into()).unwrap()
}

fn hello() -> Hello {
    Hello {
        system_id: Some([0x11, 0x22, 0x33, 0xff, 0xfe, 0x44, 0x55, 0x66]),
        serial: "SN0042".try_into().unwrap(),
        manufacturer: "Acme".try_into().unwrap(),
        model: "OX-1".try_into().unwrap(),
        firmware: "1.0.3".try_into().unwrap(),
        profile: "acme-ox1".try_into().unwrap(),
    }
}

fn spo2(seq: u32, time: DeviceTime, value: i32) -> fw::Reading {
    let mut r = fw::Reading::new(
        time,
        150_456,
        fw::Value::decimal(value, 0),
        "%".try_into().unwrap(),
    );
    r.seq = seq;
    r
}

fn readings(list: &[fw::Reading]) -> Readings {
    Readings {
        readings: list.iter().cloned().collect(),
    }
}

fn seqs(list: &[u32]) -> SeqList {
    SeqList::from_slice(list).unwrap()
}

fn bound() -> Bindings {
    Bindings::new([(
        "112233FFFE445566".to_owned(),
        None,
        PatientRef::identifier("urn:oid:1.2.3", "p-9"),
    )])
}

/// A session that has seen the Hello.
fn identified() -> Session {
    let mut s = Session::new(bound());
    assert_eq!(s.receive(&bytes(hello()), NOW), []);
    s
}

/// The single Commit in `actions`: (batch, readings).
fn the_commit(actions: &[Action]) -> (u64, Vec<crate::model::Reading>) {
    match actions {
        [Action::Commit {
            batch,
            readings,
            hold: false,
        }] => (*batch, readings.clone()),
        other => panic!("expected one commit, got {other:?}"),
    }
}

#[test]
fn readings_before_a_hello_are_refused_as_unidentified() {
    let mut s = Session::new(bound());
    let frame = readings(&[spo2(7, DeviceTime::UnixMillis(T), 97)]);
    assert_eq!(
        s.receive(&bytes(frame.clone()), NOW),
        [Action::send(Nack {
            seqs: seqs(&[7]),
            reason: NackReason::Unidentified
        })]
    );
    assert_eq!(s.stats().unidentified, 1);
    // After the Hello the same frame is taken.
    s.receive(&bytes(hello()), NOW);
    the_commit(&s.receive(&bytes(frame), NOW));
}

#[test]
fn the_ack_comes_only_after_the_commit_is_durable() {
    let mut s = identified();
    let actions = s.receive(
        &bytes(readings(&[spo2(7, DeviceTime::UnixMillis(T), 97)])),
        NOW,
    );
    let (batch, got) = the_commit(&actions);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Send(_))),
        "nothing is answered before the buffer says Ok"
    );
    let r = &got[0];
    assert_eq!(
        r.device,
        DeviceRef {
            id: DeviceId::Eui64([0x11, 0x22, 0x33, 0xff, 0xfe, 0x44, 0x55, 0x66]),
            profile: "acme-ox1".into(),
            model: Some("OX-1".into()),
            manufacturer: Some("Acme".into()),
        }
    );
    assert_eq!(
        r.patient,
        Some(PatientRef::identifier("urn:oid:1.2.3", "p-9")),
        "bound in config"
    );
    assert_eq!(r.metric, crate::profile::catalog::SPO2);
    assert_eq!(
        r.value,
        Value::Quantity(crate::model::Quantity {
            value: Measured::Value(Decimal::integer(97)),
            unit: "%".into()
        })
    );
    assert_eq!(r.device_time, Some(datetime!(2023-11-14 22:13:20.25 UTC)));
    assert_eq!(r.received_at, NOW);
    assert_eq!(r.sequence, Some(7));
    assert_eq!(r.clock_offset, None, "no clock observation yet");
    assert_eq!(
        r.identifier(),
        "112233FFFE445566-p-9-urn:oid:1.2.3-150456-2023-11-14T22:13:20.25Z-seq7"
    );
    assert_eq!(
        s.committed(batch, CommitOutcome::Stored),
        [Action::send(Ack { seqs: seqs(&[7]) })]
    );
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn a_full_buffer_is_a_nack_and_the_resend_is_committed_again() {
    let mut s = identified();
    let frame = bytes(readings(&[
        spo2(7, DeviceTime::UnixMillis(T), 97),
        spo2(8, DeviceTime::UnixMillis(T + 1000), 96),
    ]));
    let (batch, _) = the_commit(&s.receive(&frame, NOW));
    assert_eq!(
        s.committed(batch, CommitOutcome::Refused),
        [Action::send(Nack {
            seqs: seqs(&[7, 8]),
            reason: NackReason::BufferFull
        })]
    );
    let (again, got) = the_commit(&s.receive(&frame, NOW));
    assert_eq!(got.len(), 2);
    assert_ne!(again, batch);
    assert_eq!(s.stats().refused, 1);
}

#[test]
fn a_retransmission_after_a_lost_ack_is_acked_again_without_a_second_commit() {
    let mut s = identified();
    let frame = bytes(readings(&[spo2(7, DeviceTime::UnixMillis(T), 97)]));
    let (batch, _) = the_commit(&s.receive(&frame, NOW));
    s.committed(batch, CommitOutcome::Stored);
    // The Ack was lost on the cable; the device's outbox resends.
    assert_eq!(
        s.receive(&frame, NOW),
        [Action::send(Ack { seqs: seqs(&[7]) })]
    );
    assert_eq!(s.stats().retransmissions, 1);
    assert_eq!(s.stats().readings, 1, "one commit only");
}

#[test]
fn a_retransmission_while_the_commit_is_in_flight_waits_for_that_commit() {
    let mut s = identified();
    let frame = bytes(readings(&[spo2(7, DeviceTime::UnixMillis(T), 97)]));
    let (batch, _) = the_commit(&s.receive(&frame, NOW));
    assert_eq!(s.receive(&frame, NOW), [], "no second commit, no early ack");
    assert_eq!(
        s.committed(batch, CommitOutcome::Stored),
        [Action::send(Ack { seqs: seqs(&[7]) })]
    );
}

#[test]
fn a_mixed_frame_acks_the_known_readings_and_commits_the_new_ones() {
    let mut s = identified();
    let seven = spo2(7, DeviceTime::UnixMillis(T), 97);
    let (batch, _) = the_commit(&s.receive(&bytes(readings(std::slice::from_ref(&seven))), NOW));
    s.committed(batch, CommitOutcome::Stored);
    let eight = spo2(8, DeviceTime::UnixMillis(T + 1000), 96);
    let actions = s.receive(&bytes(readings(&[seven, eight])), NOW);
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(actions[0], Action::send(Ack { seqs: seqs(&[7]) }));
    let (_, got) = the_commit(&actions[1..]);
    assert_eq!(
        got.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        [Some(8)]
    );
}

#[test]
fn a_reused_sequence_number_with_another_time_is_a_new_reading() {
    let mut s = identified();
    let (batch, _) = the_commit(&s.receive(
        &bytes(readings(&[spo2(1, DeviceTime::UnixMillis(T), 97)])),
        NOW,
    ));
    s.committed(batch, CommitOutcome::Stored);
    // The device rebooted without persisting its counter.
    let (_, got) = the_commit(&s.receive(
        &bytes(readings(&[spo2(1, DeviceTime::UnixMillis(T + 60_000), 95)])),
        NOW,
    ));
    assert_eq!(got[0].sequence, Some(1));
}

#[test]
fn a_new_connection_must_say_hello_again_but_dedupe_survives() {
    let mut s = identified();
    let frame = bytes(readings(&[spo2(7, DeviceTime::UnixMillis(T), 97)]));
    let (batch, _) = the_commit(&s.receive(&frame, NOW));
    s.reconnected();
    // The commit's answer still counts after the reconnect.
    s.committed(batch, CommitOutcome::Stored);
    let refused = s.receive(&frame, NOW);
    assert!(
        matches!(&refused[..], [Action::Send(m)] if matches!(**m, Message::Nack(Nack {
            reason: NackReason::Unidentified,
            ..
        }))),
        "{refused:?}"
    );
    s.receive(&bytes(hello()), NOW);
    assert_eq!(
        s.receive(&frame, NOW),
        [Action::send(Ack { seqs: seqs(&[7]) })]
    );
}

#[test]
fn a_partial_frame_is_forgotten_on_reconnect() {
    let mut s = identified();
    let frame = bytes(readings(&[spo2(7, DeviceTime::UnixMillis(T), 97)]));
    assert_eq!(s.receive(&frame[..5], NOW), []);
    s.reconnected();
    s.receive(&bytes(hello()), NOW);
    // The tail alone is one bad frame, not a reading.
    assert_eq!(s.receive(&frame[5..], NOW), []);
    assert_eq!(s.stats().bad_frames, 1);
}

#[test]
fn time_requests_are_answered_and_the_clock_offset_is_recorded_on_readings() {
    let mut s = identified();
    assert_eq!(
        s.receive(
            &bytes(TimeRequest {
                token: 5000,
                device_time: DeviceTime::NoClock
            }),
            NOW
        ),
        [Action::send(TimeResponse {
            token: 5000,
            gateway_unix_millis: 1_700_000_010_000
        })]
    );
    // A heartbeat shows the device clock 10 minutes behind.
    let behind = NOW - Duration::minutes(10);
    s.receive(
        &bytes(Heartbeat {
            uptime_secs: 60,
            pending: 1,
            device_time: DeviceTime::UnixMillis((behind.unix_timestamp_nanos() / 1_000_000) as u64),
        }),
        NOW,
    );
    let (_, got) = the_commit(&s.receive(
        &bytes(readings(&[spo2(9, DeviceTime::UnixMillis(T), 97)])),
        NOW,
    ));
    assert_eq!(got[0].clock_offset, Some(Duration::minutes(10)));
    assert_eq!(
        got[0].device_time,
        Some(datetime!(2023-11-14 22:13:20.25 UTC)),
        "the raw device time is kept"
    );
    assert_eq!(
        got[0].effective_time(),
        (
            datetime!(2023-11-14 22:23:20.25 UTC),
            crate::model::TimeSource::DeviceCorrected
        )
    );
    // A clock within the tolerance is recorded as right, not corrected by transport delay.
    let close = NOW - (CLOCK_TOLERANCE - Duration::milliseconds(1));
    s.receive(
        &bytes(TimeRequest {
            token: 1,
            device_time: DeviceTime::UnixMillis((close.unix_timestamp_nanos() / 1_000_000) as u64),
        }),
        NOW,
    );
    let (_, got) = the_commit(&s.receive(
        &bytes(readings(&[spo2(10, DeviceTime::UnixMillis(T), 97)])),
        NOW,
    ));
    assert_eq!(got[0].clock_offset, Some(Duration::ZERO));
    assert_eq!(got[0].effective_time().1, crate::model::TimeSource::Device);
    // A reading without a clock gets the receive time, and no offset.
    let (_, got) =
        the_commit(&s.receive(&bytes(readings(&[spo2(11, DeviceTime::NoClock, 97)])), NOW));
    assert_eq!(got[0].device_time, None);
    assert_eq!(got[0].clock_offset, None);
    assert_eq!(
        got[0].effective_time(),
        (NOW, crate::model::TimeSource::GatewayReceive)
    );
}

#[test]
fn compound_readings_special_values_and_status_bits_map_onto_the_model() {
    let mut s = identified();
    let mut bp = fw::Reading::new(
        DeviceTime::UnixMillis(T),
        150_020,
        fw::Value::decimal(0, 0),
        "mm[Hg]".try_into().unwrap(),
    );
    bp.seq = 8;
    bp.value = None;
    bp.components = [
        (150_021, fw::Value::decimal(120, 0)),
        (150_022, fw::Value::decimal(80, 0)),
        (150_023, fw::Value::Special(Special::NaN)),
    ]
    .into_iter()
    .map(|(metric, value)| FwComponent { metric, value })
    .collect();
    bp.status = Status::IRREGULAR_PULSE
        .with(Status::DEMO_DATA)
        .with(Status(0x8000));
    let mut temp = fw::Reading::new(
        DeviceTime::UnixMillis(T),
        150_364,
        fw::Value::Special(Special::NRes),
        "Cel".try_into().unwrap(),
    );
    temp.seq = 9;
    let (_, got) = the_commit(&s.receive(&bytes(readings(&[bp, temp])), NOW));
    let Value::Components(parts) = &got[0].value else {
        panic!("{:?}", got[0].value)
    };
    let described: Vec<(u32, Measured, &str)> = parts
        .iter()
        .map(|c| (c.metric.mdc, c.quantity.value, c.quantity.unit.as_str()))
        .collect();
    assert_eq!(
        described,
        [
            (150_021, Measured::Value(Decimal::integer(120)), "mm[Hg]"),
            (150_022, Measured::Value(Decimal::integer(80)), "mm[Hg]"),
            (
                150_023,
                Measured::Absent(AbsentReason::NotANumber),
                "mm[Hg]"
            ),
        ]
    );
    assert_eq!(
        got[0].status,
        [StatusFlag::TestData, StatusFlag::IrregularPulse],
        "demo data is test data; reserved bits are ignored"
    );
    assert_eq!(
        got[1].value,
        Value::Quantity(crate::model::Quantity {
            value: Measured::Absent(AbsentReason::NotAtResolution),
            unit: "Cel".into()
        })
    );
}

#[test]
fn a_frame_that_cannot_be_mapped_is_dead_lettered_then_acknowledged() {
    let mut s = identified();
    let mut odd = spo2(12, DeviceTime::UnixMillis(T), 97);
    odd.metric = 999_999;
    let frame = readings(&[spo2(11, DeviceTime::UnixMillis(T), 97), odd]);
    let actions = s.receive(&bytes(frame.clone()), NOW);
    let [Action::Reject {
        batch,
        reason,
        payload,
        hold: false,
    }] = &actions[..]
    else {
        panic!("{actions:?}")
    };
    assert_eq!(
        reason,
        "firmware frame: readings[1].metric: MDC code not in the catalog"
    );
    assert_eq!(payload, &bytes(frame), "the frame is kept for a technician");
    assert_eq!(
        s.committed(*batch, CommitOutcome::Stored),
        [Action::send(Ack {
            seqs: seqs(&[11, 12])
        })]
    );
    assert_eq!(s.stats().rejected, 1);
}

#[test]
fn during_shutdown_nothing_is_answered() {
    let mut s = identified();
    let (batch, _) = the_commit(&s.receive(
        &bytes(readings(&[spo2(7, DeviceTime::UnixMillis(T), 97)])),
        NOW,
    ));
    assert_eq!(s.committed(batch, CommitOutcome::Closed), []);
}

#[test]
fn a_hello_without_any_id_identifies_nobody_and_serials_are_used_without_an_eui64() {
    let mut s = Session::new(Bindings::default());
    let mut anonymous = hello();
    anonymous.system_id = None;
    anonymous.serial = "".try_into().unwrap();
    s.receive(&bytes(anonymous), NOW);
    assert!(s.device().is_none());
    let mut by_serial = hello();
    by_serial.system_id = None;
    by_serial.profile = "".try_into().unwrap();
    s.receive(&bytes(by_serial), NOW);
    let device = s.device().unwrap();
    assert_eq!(device.id, DeviceId::Serial("SN0042".into()));
    assert_eq!(device.profile, super::session::DEFAULT_PROFILE);
    // Names with control characters are not used; the rest is trimmed.
    let mut odd = hello();
    odd.model = "M-1\u{1b}[2J".try_into().unwrap();
    odd.manufacturer = " Acme ".try_into().unwrap();
    odd.profile = "x\ny".try_into().unwrap();
    s.reconnected();
    s.receive(&bytes(odd), NOW);
    let device = s.device().unwrap();
    assert_eq!(device.model, None);
    assert_eq!(device.manufacturer.as_deref(), Some("Acme"));
    assert_eq!(device.profile, super::session::DEFAULT_PROFILE);
}

#[test]
fn messages_meant_for_devices_are_ignored() {
    let mut s = identified();
    for m in [
        Message::from(Ack { seqs: seqs(&[1]) }),
        Message::from(TimeResponse {
            token: 1,
            gateway_unix_millis: 1,
        }),
    ] {
        assert_eq!(s.receive(&bytes(m), NOW), []);
    }
    assert_eq!(s.stats().frames, 3);
}

#[test]
fn noise_between_frames_is_counted_by_kind_and_costs_only_itself() {
    let mut s = identified();
    let good = |seq| {
        bytes(readings(&[spo2(
            seq,
            DeviceTime::UnixMillis(T + u64::from(seq)),
            97,
        )]))
    };
    let mut stream = Vec::new();
    stream.extend(good(1));
    stream.extend([0x13, 0x37, 0x42, 0x00]); // garbage: bad COBS/CRC
    stream.extend(good(2));
    let truncated = good(99);
    stream.extend(&truncated[..truncated.len() / 2]);
    stream.push(0);
    stream.extend(good(3));
    let mut flipped = good(98);
    flipped[6] ^= 0x10;
    assert_ne!(flipped[6], 0);
    stream.extend(flipped);
    stream.extend(good(4));
    stream.extend(vec![0x55; MAX_FRAME_LEN + 10]); // oversize
    stream.push(0);
    stream.extend([0x00, 0x00]); // empty frames are not errors
    stream.extend(bytes(Message::from(Ack { seqs: seqs(&[1]) }))); // fine, ignored
    stream.extend(good(5));
    // Feed in awkward chunks.
    let mut commits = Vec::new();
    for chunk in stream.chunks(7) {
        for a in s.receive(chunk, NOW) {
            if let Action::Commit { readings, .. } = a {
                commits.extend(readings.into_iter().map(|r| r.sequence.unwrap()));
            }
        }
    }
    assert_eq!(commits, [1, 2, 3, 4, 5], "every valid frame, once");
    let st = s.stats();
    assert_eq!(st.bad_frames, 4);
    assert_eq!(st.oversize, 1);
    assert_eq!(st.bad_crc + st.cobs + st.too_short, 3, "{st:?}");
    assert_eq!(
        s.take_last_error(),
        Some("oversize"),
        "the latest bad frame's kind"
    );
    assert_eq!(s.take_last_error(), None);
}

#[test]
fn a_frame_of_a_newer_protocol_version_is_counted_as_such() {
    let mut s = identified();
    // The README's version-2 example frame.
    s.receive(
        &[
            0x03, 0x02, 0x06, 0x01, 0x01, 0x05, 0xa1, 0xfb, 0x89, 0x99, 0x00,
        ],
        NOW,
    );
    assert_eq!(s.stats().unsupported_version, 1);
}

#[test]
fn lines_end_at_cr_or_lf_and_overlong_ones_are_cut_once() {
    let mut f = LineFramer::new(8);
    assert_eq!(f.push(b"abc\r\nde"), [Line::Text(b"abc".to_vec())]);
    assert_eq!(
        f.push(b"f\n\ng\rh"),
        [Line::Text(b"def".to_vec()), Line::Text(b"g".to_vec())]
    );
    assert_eq!(
        f.push(b"123456789012\r\nok\n"),
        [
            Line::TooLong(b"h1234567".to_vec()),
            Line::Text(b"ok".to_vec())
        ]
    );
    f.push(b"partial");
    f.reset();
    assert_eq!(f.push(b"x\n"), [Line::Text(b"x".to_vec())]);
}

fn nonin_session() -> LineSession {
    let profile = Registry::built_in()
        .unwrap()
        .get("line-nonin-ascii")
        .unwrap()
        .clone();
    LineSession::new(
        profile,
        DeviceRef {
            id: DeviceId::Serial("502123456".into()),
            profile: "line-nonin-ascii".into(),
            model: None,
            manufacturer: None,
        },
        UtcOffset::UTC,
        Bindings::new([(
            "502123456".to_owned(),
            None,
            PatientRef::identifier("urn:oid:1.2.3", "p-2"),
        )]),
    )
}

#[test]
fn a_line_session_commits_readings_dead_letters_bad_lines_and_skips_the_rest() {
    let mut s = nonin_session();
    let actions = s.receive(
        b"NONIN 7500\r\nSPO2=097 HR=072\r\nSPO2=--- HR=---\r\nSPO2=09? HR=072\r\nSPO2=0",
        NOW,
    );
    assert_eq!(actions.len(), 2, "{actions:?}");
    let Action::Commit {
        readings,
        hold: true,
        ..
    } = &actions[0]
    else {
        panic!("{actions:?}")
    };
    assert_eq!(readings.len(), 2);
    assert_eq!(
        readings[0].patient,
        Some(PatientRef::identifier("urn:oid:1.2.3", "p-2"))
    );
    assert_eq!(readings[0].received_at, NOW);
    let Action::Reject {
        reason,
        payload,
        hold: true,
        ..
    } = &actions[1]
    else {
        panic!("{actions:?}")
    };
    assert_eq!(
        reason,
        "line-nonin-ascii: line does not match the profile's pattern"
    );
    assert_eq!(payload, b"SPO2=09? HR=072");
    assert_eq!(s.take_last_error(), Some("no_match"));
    // The rest of the partial line arrives later.
    let actions = s.receive(b"96 HR=070\n", NOW);
    assert!(matches!(&actions[..], [Action::Commit { .. }]));
    let st = s.stats();
    assert_eq!(
        (st.lines, st.ignored, st.bad_lines, st.readings),
        (5, 1, 1, 4)
    );
    assert_eq!(
        s.committed(0, CommitOutcome::Stored),
        [],
        "line devices get no answer"
    );
}

#[test]
fn an_overlong_line_is_dead_lettered_with_its_head() {
    let mut s = nonin_session();
    let mut long = vec![b'S'; 100];
    long.extend(b"\r\n");
    let actions = s.receive(&long, NOW);
    let [Action::Reject {
        reason, payload, ..
    }] = &actions[..]
    else {
        panic!("{actions:?}")
    };
    assert_eq!(reason, "line-nonin-ascii: line longer than 64 bytes");
    assert_eq!(payload.len(), 64);
}

#[test]
fn simulated_lines_decode_with_the_simulated_clock() {
    let registry = Registry::built_in().unwrap();
    for id in ["line-masimo-rad8", "line-nonin-ascii"] {
        let profile = registry.get(id).unwrap();
        let templates = line_templates(profile);
        assert!(!templates.is_empty(), "{id}");
        let t = datetime!(2026-03-04 05:06:07 UTC);
        for i in 0..6 {
            let line = simulated_line(profile, &templates[i % templates.len()], i, t);
            let ctx = FrameContext {
                device: DeviceRef {
                    id: DeviceId::Other("x".into()),
                    profile: id.into(),
                    model: None,
                    manufacturer: None,
                },
                patient: None,
                received_at: NOW,
                clock_offset: None,
                time_sync: None,
            };
            let Ok(Decoded::Readings(readings)) =
                profile.decode(line.as_bytes(), &ctx, UtcOffset::UTC)
            else {
                panic!("{id}: {line:?} does not decode")
            };
            assert!(!readings.is_empty(), "{line:?}");
            if profile.time_fields().is_some() {
                assert_eq!(readings[0].device_time, Some(t), "{line:?}");
            }
        }
    }
}

#[test]
fn the_simulated_firmware_readings_follow_the_documented_table() {
    let t = DeviceTime::UnixMillis(T);
    let cases = [
        (20, 150_456, Some(fw::Value::decimal(90, 0)), "%"),
        (21, 149_530, Some(fw::Value::decimal(81, 0)), "/min"),
        (22, 150_364, Some(fw::Value::decimal(362, -1)), "Cel"),
        (23, 150_020, None, "mm[Hg]"),
    ];
    for (seq, metric, value, unit) in cases {
        let r = firmware_reading(seq, t);
        assert_eq!(
            (r.metric, r.value, r.unit.as_str()),
            (metric, value, unit),
            "{seq}"
        );
        assert!(r.status.contains(Status::TEST_DATA));
    }
    let bp = firmware_reading(23, t);
    let parts: Vec<(u32, fw::Value)> = bp.components.iter().map(|c| (c.metric, c.value)).collect();
    // 110 + 23 % 30 = 133, 70 + 23 % 20 = 73, (133 + 146) / 3 = 93.
    assert_eq!(
        parts,
        [
            (150_021, fw::Value::decimal(133, 0)),
            (150_022, fw::Value::decimal(73, 0)),
            (150_023, fw::Value::decimal(93, 0)),
        ]
    );
}
