//! Every message survives encode → decode, alone and inside a frame, and the size bounds
//! the crate advertises hold.

mod common;

use common::*;
use proptest::prelude::*;
use vitalbridge_firmware::frame::{
    decode_body, decode_frame, encode_body, encode_frame, FrameError, MAX_BODY_LEN, MAX_FRAME_LEN,
};
use vitalbridge_firmware::message::*;

fn payload(message: &Message) -> std::vec::Vec<u8> {
    let mut buf = [0u8; MAX_PAYLOAD_LEN];
    message.encode(&mut buf).expect("fits").to_vec()
}

fn frame(message: &Message) -> std::vec::Vec<u8> {
    let mut out = [0u8; MAX_FRAME_LEN];
    let n = encode_frame(message, &mut out).expect("fits");
    out[..n].to_vec()
}

fn check_round_trip(message: &Message) -> Result<(), TestCaseError> {
    let bytes = payload(message);
    prop_assert_eq!(&Message::decode(&bytes), &Ok(message.clone()));
    let mut wire = frame(message);
    prop_assert!(wire.len() <= MAX_FRAME_LEN);
    prop_assert_eq!(wire.pop(), Some(0x00));
    prop_assert!(!wire.contains(&0));
    prop_assert_eq!(decode_frame(&mut wire), Ok(message.clone()));
    Ok(())
}

proptest! {
    #[test]
    fn any_message_round_trips(message in arb_message()) {
        check_round_trip(&message)?;
    }

    #[test]
    fn hello_round_trips(hello in arb_hello()) {
        check_round_trip(&Message::Hello(hello))?;
    }

    #[test]
    fn readings_round_trip(readings in arb_vec::<_, MAX_READINGS>(arb_reading())) {
        check_round_trip(&Message::Readings(Readings { readings }))?;
    }

    #[test]
    fn ack_and_nack_round_trip(seqs in arb_seqs(), code in any::<u8>()) {
        check_round_trip(&Message::Ack(Ack { seqs: seqs.clone() }))?;
        check_round_trip(&Message::Nack(Nack { seqs, reason: NackReason::from(code) }))?;
    }

    #[test]
    fn time_sync_and_heartbeat_round_trip(token in any::<u32>(), millis in any::<u64>(), time in arb_device_time(), up in any::<u32>(), pending in any::<u16>()) {
        check_round_trip(&Message::TimeRequest(TimeRequest { token, device_time: time }))?;
        check_round_trip(&Message::TimeResponse(TimeResponse { token, gateway_unix_millis: millis }))?;
        check_round_trip(&Message::Heartbeat(Heartbeat { uptime_secs: up, pending, device_time: time }))?;
    }

    #[test]
    fn nack_reason_codes_round_trip_as_bytes(code in any::<u8>()) {
        prop_assert_eq!(u8::from(NackReason::from(code)), code);
    }

    #[test]
    fn decoding_arbitrary_payloads_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..500)) {
        let _ = Message::decode(&bytes);
        let _ = decode_body(&bytes);
        let mut copy = bytes.clone();
        let _ = decode_frame(&mut copy);
    }
}

#[test]
fn the_largest_message_is_exactly_max_payload_len() {
    let message = largest_message();
    assert_eq!(payload(&message).len(), MAX_PAYLOAD_LEN);

    let mut body = [0u8; MAX_BODY_LEN];
    assert_eq!(encode_body(&message, &mut body), Ok(MAX_BODY_LEN));
    assert!(frame(&message).len() <= MAX_FRAME_LEN);
}

#[test]
fn every_other_message_is_smaller_than_max_payload_len() {
    let hello = Hello {
        system_id: Some([0xFF; 8]),
        serial: full_string(),
        manufacturer: full_string(),
        model: full_string(),
        firmware: full_string(),
        profile: full_string(),
    };
    let seqs: SeqList = core::iter::repeat_n(u32::MAX, MAX_READINGS).collect();
    let time = DeviceTime::UnixMillis(u64::MAX);
    for message in [
        Message::Hello(hello),
        Message::Ack(Ack { seqs: seqs.clone() }),
        Message::Nack(Nack {
            seqs,
            reason: NackReason::Other(255),
        }),
        Message::TimeRequest(TimeRequest {
            token: u32::MAX,
            device_time: time,
        }),
        Message::TimeResponse(TimeResponse {
            token: u32::MAX,
            gateway_unix_millis: u64::MAX,
        }),
        Message::Heartbeat(Heartbeat {
            uptime_secs: u32::MAX,
            pending: u16::MAX,
            device_time: time,
        }),
    ] {
        assert!(payload(&message).len() < MAX_PAYLOAD_LEN, "{message:?}");
    }
}

#[test]
fn a_too_small_output_buffer_is_an_error() {
    let message = Message::Ack(Ack {
        seqs: SeqList::from_slice(&[1, 2, 3]).unwrap(),
    });
    let needed = frame(&message).len();
    for size in 0..needed {
        let mut out = std::vec![0u8; size];
        assert!(encode_frame(&message, &mut out).is_err(), "size {size}");
    }
}

#[test]
fn malformed_payloads_are_rejected() {
    // Ack whose list claims 5 entries, one more than MAX_READINGS.
    assert!(Message::decode(&[0x02, 0x05, 1, 2, 3, 4, 5]).is_err());
    // Heartbeat with trailing garbage.
    assert!(Message::decode(&[0x06, 0x01, 0x00, 0x00, 0xAA]).is_err());
    // Unknown variant.
    assert!(Message::decode(&[0x07]).is_err());
    assert_eq!(decode_body(&[1, 2, 3]), Err(FrameError::TooShort));
}
