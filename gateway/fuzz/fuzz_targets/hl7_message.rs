//! Fuzzes the HL7 v2 parser and the PCD-01 mapping (`hl7::v2`, `hl7::pcd`): arbitrary bytes
//! as a frame (a message or a batch), each message parsed and mapped as the listener does,
//! answered with an ACK that must parse back, and its readings written as an ORU^R01 that
//! must parse back too. Also arbitrary bytes as an engine's ACK (`hl7::ack::parse`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;
use vitalbridge::hl7::{self, ack, oru, v2, Settings};

fuzz_target!(|data: &[u8]| {
    let settings = Settings::utc();
    let now = OffsetDateTime::UNIX_EPOCH;
    for part in v2::split_batch(data) {
        let p = hl7::process(part, &settings, now, &|_| None);
        let (code, error) = match &p.outcome {
            Ok(_) => (hl7::pcd::AckCode::Accept, None),
            Err(r) => (r.ack, Some(&r.error)),
        };
        let reply = ack::build(&p.header, p.charset, code, error, now, "ACK1");
        let answer = ack::parse(&reply).expect("our ACK parses");
        assert_eq!(answer.code, code.as_str());
        if let Ok(m) = &p.outcome {
            let readings: Vec<_> = m.readings.iter().collect();
            let text = oru::write(&readings, &oru::Parties::default(), "C1", now);
            v2::Message::parse(text.as_bytes()).expect("our ORU^R01 parses");
        }
    }
    let _ = ack::parse(data);
});
