//! The bytes on the wire must not change when the code under them does (a new CRC or COBS
//! implementation, a postcard upgrade). `golden/frames.txt` holds the frames, in hex, of a
//! fixed set of messages, and [`STREAM_DIGEST`] the digest of the frames of many more; both
//! were recorded with the hand-written CRC-32 and COBS of the first protocol version, and
//! every later encoder must reproduce them byte for byte. The decoder must give back each
//! message from its recorded frame.
//!
//! The messages come from a small deterministic generator (not proptest, whose choices may
//! change between versions), plus cases picked by hand: the largest message, and one whose
//! body ends in a full 254-byte COBS group, which is where COBS encoders differ (some write
//! an empty group after it; ours does not).
//!
//! A failure here means the wire format changed. That needs a new `PROTOCOL_VERSION`, not a
//! new golden file. Should a new file ever be right (a new version), `GOLDEN_WRITE=1 cargo
//! test -p vitalbridge-firmware --test golden` rewrites it and prints the new digest.

use heapless::{String, Vec};
use vitalbridge_firmware::frame::{decode_frame, encode_body, encode_frame, MAX_BODY_LEN};
use vitalbridge_firmware::message::*;
use vitalbridge_firmware::MAX_FRAME_LEN;

const GOLDEN: &str = include_str!("golden/frames.txt");

/// FNV-1a (64-bit) of the frames of [`STREAM_MESSAGES`] generated messages, one after the
/// other, as recorded with the first implementation.
const STREAM_DIGEST: u64 = 0x0d2c_bf72_0337_f682;
/// How many generated messages [`STREAM_DIGEST`] covers.
const STREAM_MESSAGES: u64 = 50_000;
/// How many generated messages `golden/frames.txt` holds, after the hand-picked ones.
const FILE_MESSAGES: u64 = 64;

/// xorshift64: a fixed, dependency-free sequence of pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A `u32` of any magnitude (varints of every length).
    fn u32(&mut self) -> u32 {
        (self.next() as u32) >> self.below(33).min(31)
    }

    /// A `u64` of any magnitude.
    fn u64(&mut self) -> u64 {
        self.next() >> self.below(64)
    }

    fn string<const N: usize>(&mut self) -> String<N> {
        let mut s = String::new();
        for _ in 0..self.below(N as u64 + 1) {
            // Printable ASCII, now and then a two-byte character; stop when full.
            let c = if self.below(8) == 0 {
                'é'
            } else {
                char::from(b' ' + self.below(95) as u8)
            };
            if s.push(c).is_err() {
                break;
            }
        }
        s
    }

    fn time(&mut self) -> DeviceTime {
        if self.below(4) == 0 {
            DeviceTime::NoClock
        } else {
            DeviceTime::UnixMillis(self.u64())
        }
    }

    fn value(&mut self) -> Value {
        if self.below(3) == 0 {
            Value::Special(match self.below(4) {
                0 => Special::NaN,
                1 => Special::NRes,
                2 => Special::PositiveInfinity,
                _ => Special::NegativeInfinity,
            })
        } else {
            Value::decimal(self.next() as i32 >> self.below(32), self.next() as i8)
        }
    }

    fn seqs(&mut self) -> SeqList {
        (0..self.below(MAX_READINGS as u64 + 1))
            .map(|_| self.u32())
            .collect()
    }

    fn reading(&mut self) -> Reading {
        Reading {
            seq: self.u32(),
            time: self.time(),
            metric: self.u32(),
            value: (self.below(4) != 0).then(|| self.value()),
            unit: self.string(),
            components: (0..self.below(MAX_COMPONENTS as u64 + 1))
                .map(|_| Component {
                    metric: self.u32(),
                    value: self.value(),
                })
                .collect(),
            status: Status(self.next() as u16),
        }
    }

    /// Message `i` of the sequence: every variant in turn, Readings twice as often.
    fn message(&mut self, i: u64) -> Message {
        match i % 8 {
            0 => Message::Hello(Hello {
                system_id: (self.below(2) == 0).then(|| self.next().to_be_bytes()),
                serial: self.string(),
                manufacturer: self.string(),
                model: self.string(),
                firmware: self.string(),
                profile: self.string(),
            }),
            2 => Message::Ack(Ack { seqs: self.seqs() }),
            3 => Message::Nack(Nack {
                seqs: self.seqs(),
                reason: NackReason::from(self.next() as u8),
            }),
            4 => Message::TimeRequest(TimeRequest {
                token: self.u32(),
                device_time: self.time(),
            }),
            5 => Message::TimeResponse(TimeResponse {
                token: self.u32(),
                gateway_unix_millis: self.u64(),
            }),
            6 => Message::Heartbeat(Heartbeat {
                uptime_secs: self.u32(),
                pending: self.next() as u16,
                device_time: self.time(),
            }),
            _ => Message::Readings(Readings {
                readings: (0..1 + self.below(MAX_READINGS as u64))
                    .map(|_| self.reading())
                    .collect(),
            }),
        }
    }
}

fn unit(s: &str) -> Unit {
    Unit::try_from(s).unwrap()
}

fn nres(metric: u32) -> Component {
    Component {
        metric,
        value: Value::Special(Special::NRes),
    }
}

fn nres_reading(seq: u32, millis: u64, metric: u32, units: &str, parts: &[u32]) -> Reading {
    Reading {
        seq,
        time: DeviceTime::UnixMillis(millis),
        metric,
        value: Some(Value::Special(Special::NRes)),
        unit: unit(units),
        components: parts.iter().map(|&m| nres(m)).collect(),
        status: Status(0),
    }
}

/// Four readings without a single `00` byte in their encoding (varints of non-zero numbers,
/// `NRes` values, long units) in a body of exactly 254 bytes: one full COBS group.
fn full_final_group() -> Message {
    let mut readings: Vec<Reading, MAX_READINGS> = Vec::new();
    let mut push = |mut r: Reading, status: u16| {
        r.status = Status(status);
        readings.push(r).unwrap();
    };
    push(
        nres_reading(
            310_617_129,
            5_186_762_989,
            3_876_828_829,
            "aaaaaaaaaaaaaaaa",
            &[1_602_507_675, 1_436_868_093, 3_473_500_999],
        ),
        38577,
    );
    push(
        nres_reading(
            74651,
            721_641,
            492_994_853,
            "aaaaaaaaaaaaa",
            &[2_168_355_815, 1_904_090_833, 3_021_690_605, 2_910_550_785],
        ),
        36135,
    );
    push(
        nres_reading(
            341_007,
            1_196_051_615_569,
            927_113_311,
            "aaaaaaaaaaaaaa",
            &[2_814_626_979, 3_902_612_411, 940_283_709, 3_395_145_491],
        ),
        62111,
    );
    push(
        nres_reading(
            1,
            777_936_501_854_721_431,
            3_360_654_297,
            "aaaaaaaaa",
            &[161_905_273, 4_076_767_437, 3_835_225_757, 421_130_321],
        ),
        60127,
    );
    Message::Readings(Readings { readings })
}

/// The largest message: every field at its longest encoding.
fn largest() -> Message {
    let full = || -> Unit { core::iter::repeat_n('x', MAX_UNIT_LEN).collect() };
    let reading = Reading {
        seq: u32::MAX,
        time: DeviceTime::UnixMillis(u64::MAX),
        metric: u32::MAX,
        value: Some(Value::decimal(i32::MIN, i8::MIN)),
        unit: full(),
        components: core::iter::repeat_n(
            Component {
                metric: u32::MAX,
                value: Value::decimal(i32::MIN, i8::MIN),
            },
            MAX_COMPONENTS,
        )
        .collect(),
        status: Status(u16::MAX),
    };
    Message::Readings(Readings {
        readings: core::iter::repeat_n(reading, MAX_READINGS).collect(),
    })
}

/// The messages of `golden/frames.txt`, in order.
fn file_messages() -> std::vec::Vec<Message> {
    let mut rng = Rng(0x005E_ED0F_F1E5);
    let mut all = vec![full_final_group(), largest()];
    all.extend((0..FILE_MESSAGES).map(|i| rng.message(i)));
    all
}

fn frame(message: &Message) -> std::vec::Vec<u8> {
    let mut out = [0u8; MAX_FRAME_LEN];
    let n = encode_frame(message, &mut out).expect("every message fits MAX_FRAME_LEN");
    out[..n].to_vec()
}

fn hex(bytes: &[u8]) -> std::string::String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(line: &str) -> std::vec::Vec<u8> {
    (0..line.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&line[i..i + 2], 16).expect("hex"))
        .collect()
}

/// FNV-1a, 64-bit.
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

fn stream_digest() -> u64 {
    let mut rng = Rng(0xD1CE_5EED);
    (0..STREAM_MESSAGES).fold(0xCBF2_9CE4_8422_2325, |h, i| {
        fnv1a(h, &frame(&rng.message(i)))
    })
}

#[test]
fn frames_are_byte_for_byte_the_recorded_ones() {
    let messages = file_messages();
    let lines: std::vec::Vec<std::string::String> =
        messages.iter().map(|m| hex(&frame(m))).collect();
    if std::env::var_os("GOLDEN_WRITE").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/frames.txt");
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
        println!("STREAM_DIGEST = {:#018x}", stream_digest());
        return;
    }
    let recorded: std::vec::Vec<&str> = GOLDEN.lines().collect();
    assert_eq!(
        recorded.len(),
        messages.len(),
        "golden/frames.txt has one line per message"
    );
    for (i, (message, line)) in messages.iter().zip(recorded).enumerate() {
        assert_eq!(
            hex(&frame(message)),
            line,
            "frame {i} of golden/frames.txt: {message:?}"
        );
    }
}

#[test]
fn recorded_frames_decode_to_their_messages() {
    for (i, (message, line)) in file_messages().iter().zip(GOLDEN.lines()).enumerate() {
        let wire = unhex(line);
        let (&delimiter, cobs) = wire.split_last().unwrap();
        assert_eq!(delimiter, 0);
        assert!(!cobs.contains(&0), "frame {i} has a 00 before its end");
        let mut copy = cobs.to_vec();
        assert_eq!(decode_frame(&mut copy).as_ref(), Ok(message), "frame {i}");
    }
}

#[test]
fn many_more_frames_hash_to_the_recorded_digest() {
    if std::env::var_os("GOLDEN_WRITE").is_some() {
        return;
    }
    assert_eq!(stream_digest(), STREAM_DIGEST);
}

#[test]
fn the_hand_picked_cases_are_what_they_claim() {
    let mut body = [0u8; MAX_BODY_LEN];
    let n = encode_body(&full_final_group(), &mut body).unwrap();
    let body = &body[..n];
    // The body ends in a run of exactly 254 non-zero bytes.
    let run = body.iter().rev().take_while(|&&b| b != 0).count();
    assert_eq!(run, 254);
    // COBS: one code byte per group before it (every group before is short), FF, the 254
    // bytes, and no empty group after them: just the delimiter.
    let wire = frame(&full_final_group());
    assert_eq!(wire[wire.len() - 256], 0xFF);
    assert_ne!(
        &wire[wire.len() - 2..],
        &[0x01, 0x00],
        "no empty group before the delimiter"
    );
    assert!(frame(&largest()).len() <= MAX_FRAME_LEN);
}

#[test]
fn the_generator_covers_every_variant() {
    let mut rng = Rng(1);
    let mut seen = [false; 7];
    for i in 0..64 {
        let index = match rng.message(i) {
            Message::Hello(_) => 0,
            Message::Readings(_) => 1,
            Message::Ack(_) => 2,
            Message::Nack(_) => 3,
            Message::TimeRequest(_) => 4,
            Message::TimeResponse(_) => 5,
            Message::Heartbeat(_) => 6,
        };
        seen[index] = true;
    }
    assert_eq!(seen, [true; 7]);
}
