//! Fuzzes the firmware-protocol session (`ingest::serial::session`): arbitrary bytes, in
//! chunks whose size the first byte chooses, after a valid `Hello`; every commit it asks for
//! is answered (alternately stored and refused) so the acknowledgement paths run too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use time::macros::datetime;
use vitalbridge::ingest::serial::session::Session;
use vitalbridge::ingest::serial::{Action, CommitOutcome};
use vitalbridge::ingest::Bindings;
use vitalbridge_firmware::gateway::encode_to_vec;
use vitalbridge_firmware::message::{Hello, Message};

fuzz_target!(|data: &[u8]| {
    let now = datetime!(2026-01-01 00:00:00 UTC);
    let mut session = Session::new(Bindings::default());
    let hello = Hello {
        system_id: Some([1, 2, 3, 4, 5, 6, 7, 8]),
        serial: Default::default(),
        manufacturer: Default::default(),
        model: Default::default(),
        firmware: Default::default(),
        profile: Default::default(),
    };
    let _ = session.receive(
        &encode_to_vec(&Message::Hello(hello)).expect("encodes"),
        now,
    );
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let mut stored = true;
    for piece in stream.chunks(usize::from(chunk).max(1)) {
        for action in session.receive(piece, now) {
            if let Action::Commit { batch, .. } | Action::Reject { batch, .. } = action {
                let outcome = if stored {
                    CommitOutcome::Stored
                } else {
                    CommitOutcome::Refused
                };
                stored = !stored;
                let _ = session.committed(batch, outcome);
            }
        }
    }
});
