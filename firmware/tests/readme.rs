//! The worked examples in `README.md` are the truth: each `<!-- example: NAME body -->` and
//! `<!-- example: NAME frame -->` block there is parsed and compared byte for byte with what
//! the encoder produces for the message this file builds under that name, and decoded back.
//!
//! Block syntax: hex byte pairs separated by whitespace; `#` starts a comment.

use heapless::Vec;
use vitalbridge_firmware::cobs;
use vitalbridge_firmware::crc::crc32;
use vitalbridge_firmware::frame::*;
use vitalbridge_firmware::message::*;

const README: &str = include_str!("../README.md");

/// The hex bytes of the fenced block after `<!-- example: {name} {part} -->`.
fn block(name: &str, part: &str) -> std::vec::Vec<u8> {
    let marker = format!("<!-- example: {name} {part} -->");
    let start = README
        .find(&marker)
        .unwrap_or_else(|| panic!("README has no {marker}"));
    let rest = &README[start + marker.len()..];
    let open = rest.find("```").expect("a fenced block follows the marker");
    let after_open = &rest[open..];
    let body_start = after_open.find('\n').expect("fence line ends") + 1;
    let body = &after_open[body_start..];
    let close = body.find("```").expect("the block is closed");
    let mut bytes = std::vec::Vec::new();
    for line in body[..close].lines() {
        let data = line.split('#').next().unwrap_or("");
        for token in data.split_whitespace() {
            assert_eq!(token.len(), 2, "{marker}: `{token}` is not one hex byte");
            bytes.push(
                u8::from_str_radix(token, 16)
                    .unwrap_or_else(|_| panic!("{marker}: `{token}` is not hex")),
            );
        }
    }
    bytes
}

fn unit(s: &str) -> Unit {
    Unit::try_from(s).unwrap()
}

fn one(reading: Reading) -> Message {
    Message::Readings(Readings {
        readings: Vec::from_slice(&[reading]).unwrap(),
    })
}

/// The messages the README's examples show, by name.
fn examples() -> std::vec::Vec<(&'static str, Message)> {
    let mut spo2 = Reading::new(
        DeviceTime::UnixMillis(1_700_000_000_250),
        150456,
        Value::decimal(97, 0),
        unit("%"),
    );
    spo2.seq = 7;
    let bp = Reading {
        seq: 8,
        time: DeviceTime::UnixMillis(1_700_000_060_000),
        metric: 150020,
        value: None,
        unit: unit("mm[Hg]"),
        components: Vec::from_slice(&[
            Component {
                metric: 150021,
                value: Value::decimal(120, 0),
            },
            Component {
                metric: 150022,
                value: Value::decimal(80, 0),
            },
            Component {
                metric: 150023,
                value: Value::decimal(93, 0),
            },
        ])
        .unwrap(),
        status: Status::IRREGULAR_PULSE,
    };
    let temperature = Reading::new(
        DeviceTime::NoClock,
        150364,
        Value::decimal(365, -1),
        unit("Cel"),
    );
    let seven = SeqList::from_slice(&[7]).unwrap();
    vec![
        (
            "hello",
            Message::Hello(Hello {
                system_id: Some([0x11, 0x22, 0x33, 0xff, 0xfe, 0x44, 0x55, 0x66]),
                serial: "SN0042".try_into().unwrap(),
                manufacturer: "Acme".try_into().unwrap(),
                model: "OX-1".try_into().unwrap(),
                firmware: "1.0.3".try_into().unwrap(),
                profile: "acme-ox1".try_into().unwrap(),
            }),
        ),
        ("spo2", one(spo2)),
        (
            "ack",
            Message::Ack(Ack {
                seqs: seven.clone(),
            }),
        ),
        (
            "nack",
            Message::Nack(Nack {
                seqs: seven,
                reason: NackReason::BufferFull,
            }),
        ),
        ("bp", one(bp)),
        ("temperature", one(temperature)),
        (
            "time-request",
            Message::TimeRequest(TimeRequest {
                token: 5000,
                device_time: DeviceTime::NoClock,
            }),
        ),
        (
            "time-response",
            Message::TimeResponse(TimeResponse {
                token: 5000,
                gateway_unix_millis: 1_700_000_000_000,
            }),
        ),
        (
            "heartbeat",
            Message::Heartbeat(Heartbeat {
                uptime_secs: 3600,
                pending: 2,
                device_time: DeviceTime::UnixMillis(1_700_000_000_000),
            }),
        ),
    ]
}

#[test]
fn every_example_in_the_readme_is_checked_here() {
    let mut names: std::vec::Vec<&str> = examples().iter().map(|(n, _)| *n).collect();
    names.push("version-2");
    for marker in README.match_indices("<!-- example: ") {
        let rest = &README[marker.0 + marker.1.len()..];
        let name = rest.split_whitespace().next().unwrap();
        assert!(
            names.contains(&name),
            "README example `{name}` is not tested"
        );
    }
}

#[test]
fn readme_bodies_are_what_the_encoder_writes() {
    for (name, message) in examples() {
        let mut body = [0u8; MAX_BODY_LEN];
        let n = encode_body(&message, &mut body).unwrap();
        assert_eq!(block(name, "body"), &body[..n], "body of `{name}`");
        assert_eq!(decode_body(&body[..n]), Ok(message), "decoding `{name}`");
    }
}

#[test]
fn readme_frames_are_what_the_encoder_writes_and_decode_back() {
    for (name, message) in examples() {
        let mut out = [0u8; MAX_FRAME_LEN];
        let n = encode_frame(&message, &mut out).unwrap();
        let documented = block(name, "frame");
        assert_eq!(documented, &out[..n], "frame of `{name}`");

        let (delimiter, cobs_bytes) = documented.split_last().unwrap();
        assert_eq!(*delimiter, 0);
        let mut decoded = cobs_bytes.to_vec();
        let len = cobs::decode_in_place(&mut decoded).unwrap();
        assert_eq!(&decoded[..len], block(name, "body"), "COBS of `{name}`");
        let mut copy = cobs_bytes.to_vec();
        assert_eq!(decode_frame(&mut copy), Ok(message), "decoding `{name}`");
    }
}

#[test]
fn readme_crc_annotations_match() {
    // Every body ends with its CRC, little-endian, over everything before it.
    for (name, _) in examples() {
        let body = block(name, "body");
        let (covered, crc) = body.split_at(body.len() - 4);
        assert_eq!(
            crc32(covered).to_le_bytes(),
            crc,
            "CRC annotation of `{name}`"
        );
        let comment = format!("CRC-32 0x{:08x}", crc32(covered));
        assert!(README.contains(&comment), "README states `{comment}`");
    }
}

#[test]
fn readme_version_2_frame_is_refused_as_unsupported() {
    let body = block("version-2", "body");
    assert_eq!(decode_body(&body), Err(FrameError::UnsupportedVersion(2)));
    let frame = block("version-2", "frame");
    let (_, cobs_bytes) = frame.split_last().unwrap();
    let mut copy = cobs_bytes.to_vec();
    assert_eq!(
        decode_frame(&mut copy),
        Err(FrameError::UnsupportedVersion(2))
    );
    // Through the accumulator too, with the frame that follows still decoded.
    let mut stream = frame.clone();
    stream.extend(block("ack", "frame"));
    let mut acc = vitalbridge_firmware::accumulator::FrameAccumulator::new();
    let results: std::vec::Vec<_> = acc.frames(&stream).collect();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0], Err(FrameError::UnsupportedVersion(2)));
    assert!(matches!(results[1], Ok(Message::Ack(_))));
}

#[test]
fn readme_sizes_and_crc_parameters_match_the_code() {
    assert_eq!(
        (MAX_PAYLOAD_LEN, MAX_BODY_LEN, MAX_FRAME_LEN),
        (394, 399, 402)
    );
    assert!(README.contains(&format!(
        "A body is at most {MAX_BODY_LEN} bytes (1 + {MAX_PAYLOAD_LEN} + 4)"
    )));
    assert!(README.contains(&format!("most {MAX_FRAME_LEN} bytes")));
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert!(README.contains("| check (`\"123456789\"`) | `CBF43926` |"));
    assert_eq!(PROTOCOL_VERSION, 1);
}

#[test]
fn readme_cobs_table_matches_the_encoder() {
    let cases: [(&[u8], &[u8]); 4] = [
        (&[], &[0x01]),
        (&[0x00], &[0x01, 0x01]),
        (&[0x11, 0x22, 0x00, 0x33], &[0x03, 0x11, 0x22, 0x02, 0x33]),
        (&[0x11, 0x00, 0x00], &[0x02, 0x11, 0x01, 0x01]),
    ];
    for (body, encoded) in cases {
        let hex = |b: &[u8]| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<std::vec::Vec<_>>()
                .join(" ")
        };
        let shown_body = if body.is_empty() {
            "(empty)".to_string()
        } else {
            format!("`{}`", hex(body))
        };
        let row = format!("| {shown_body} | `{}` |", hex(encoded));
        assert!(README.contains(&row), "README COBS table row {row}");
        let mut out = [0u8; 8];
        let n = cobs::encode(body, &mut out).unwrap();
        assert_eq!(&out[..n], encoded);
    }
}
