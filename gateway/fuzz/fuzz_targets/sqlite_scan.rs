//! Fuzzes the salvage scanner (`buffer::salvage::scan`): arbitrary bytes as a damaged
//! `buffer.db`, or split into a database and its `-wal`. First byte even: all the rest is
//! the database; odd: the next four bytes (little-endian) say how many of the rest are the
//! database, the remainder is the WAL.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use vitalbridge::buffer::salvage::scan::{scan, SqlValue};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (db, wal) = if mode % 2 == 0 || rest.len() < 4 {
        (rest, None)
    } else {
        let (len, rest) = rest.split_at(4);
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (db, wal) = rest.split_at(len.min(rest.len()));
        (db, Some(wal))
    };
    let mut wal = wal.map(Cursor::new);
    let mut records = 0u64;
    let report = scan(&mut Cursor::new(db), wal.as_mut(), |record| {
        records += 1;
        // An overflow chain never visits a page twice, so no record holds more bytes than
        // the input.
        let bytes: usize = record
            .values
            .iter()
            .map(|value| match value {
                SqlValue::Text(b) | SqlValue::Blob(b) => b.len(),
                _ => 0,
            })
            .sum();
        assert!(bytes <= data.len());
    })
    .expect("reading from memory does not fail");
    assert_eq!(records, report.records + report.wal_records);
});
