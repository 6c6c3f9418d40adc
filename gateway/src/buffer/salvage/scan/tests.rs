//! Tests of the raw scanner: real databases made by SQLite (through sqlx), damaged copies of
//! them, hand-made pages, and random bytes.
//!
//! Damage tests compare against two truths: what SQL says is in the table (every live row
//! must be found in an undamaged file), and which pages each row's cell and overflow chain
//! were found on in the undamaged file (every row whose pages the damage left alone must be
//! found again, with exact values). Run with `--nocapture` to see the figures per case.

#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::single_range_in_vec_init
)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Cursor;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use super::*;

// ---------------------------------------------------------------------------------------
// The test database

/// A row of the test table (shaped like the buffer's `readings`), as inserted.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    identifier: String,
    device_key: String,
    received_ms: i64,
    body: Vec<u8>,
}

impl Row {
    /// Row `id`: bodies of 40–440 bytes, every 40th over 5,000 (spills past a 4 KiB page),
    /// every 500th over 70,000 (spills past a 64 KiB page); integers of every width.
    fn new(id: i64) -> Row {
        let len = if id % 500 == 0 {
            70_000 + (id % 3000) as usize
        } else if id % 40 == 0 {
            5_000 + (id % 1000) as usize
        } else {
            40 + (id * 37 % 400) as usize
        };
        let mut body = vec![0u8; len];
        StdRng::seed_from_u64(id as u64).fill(&mut body[..]);
        let received_ms = match id % 6 {
            0 => 0,
            1 => 1,
            2 => -id,
            3 => id * 1000,
            4 => i64::MIN + id,
            _ => 1_780_000_000_000 + id,
        };
        Row {
            identifier: format!("urn:test:{id:08}"),
            device_key: format!("ble:A1B2C3D4E5{:02X}", id % 7),
            received_ms,
            body,
        }
    }

    /// The record SQLite stores: `id` (INTEGER PRIMARY KEY) is NULL, its value the rowid.
    fn values(&self) -> Vec<SqlValue> {
        vec![
            SqlValue::Null,
            SqlValue::Text(self.identifier.clone().into_bytes()),
            SqlValue::Text(self.device_key.clone().into_bytes()),
            SqlValue::Integer(self.received_ms),
            SqlValue::Blob(self.body.clone()),
        ]
    }
}

/// A record of the `readings` shape (5 columns: NULL, text, text, integer, blob).
fn is_reading(values: &[SqlValue]) -> bool {
    matches!(
        values,
        [
            SqlValue::Null,
            SqlValue::Text(_),
            SqlValue::Text(_),
            SqlValue::Integer(_),
            SqlValue::Blob(_)
        ]
    )
}

/// How to build a test database.
#[derive(Debug, Clone, Copy)]
struct Spec {
    page_size: u32,
    /// Rows inserted first.
    first: i64,
    /// Then rows `1..=acked` deleted (as the uplink's acks do).
    acked: i64,
    /// Then more rows, reusing the freed pages; then a checkpoint.
    second: i64,
    /// Then rows committed only to the WAL (copied while the connection is open).
    wal_only: i64,
}

/// The `extra` table's rows: reals, extreme integers, empty and NULL values, and a blob that
/// spills past 512- and 1024-byte pages.
const EXTRA_SQL: &str = "INSERT INTO extra (k, r, n, b) VALUES \
    ('pi', 3.141592653589793, -9223372036854775808, NULL), \
    ('neg', -0.5, 9223372036854775807, x''), \
    ('big', 1e300, 255, x'00ff'), \
    ('tiny', 5e-324, -129, x'01'), \
    ('long', 0.0, 0, zeroblob(1200))";

fn extra_values() -> Vec<Vec<SqlValue>> {
    use SqlValue::*;
    vec![
        vec![
            Text(b"pi".to_vec()),
            Real(std::f64::consts::PI),
            Integer(i64::MIN),
            Null,
        ],
        vec![
            Text(b"neg".to_vec()),
            Real(-0.5),
            Integer(i64::MAX),
            Blob(vec![]),
        ],
        vec![
            Text(b"big".to_vec()),
            Real(1e300),
            Integer(255),
            Blob(vec![0, 0xff]),
        ],
        vec![
            Text(b"tiny".to_vec()),
            Real(5e-324),
            Integer(-129),
            Blob(vec![1]),
        ],
        // A whole-number REAL is stored as an integer (SQLite converts it back when read).
        vec![
            Text(b"long".to_vec()),
            Integer(0),
            Integer(0),
            Blob(vec![0; 1200]),
        ],
    ]
}

/// A database built by SQLite, its bytes, and the truth about it.
struct Built {
    spec: Spec,
    db: Vec<u8>,
    /// The WAL, when rows were committed only to it.
    wal: Option<Vec<u8>>,
    /// Every row ever inserted, by id.
    rows: BTreeMap<i64, Row>,
    /// Ids of the rows in the table at the end (SQL's answer).
    live: BTreeSet<i64>,
    /// Ids of the rows that are only in the WAL.
    wal_rows: BTreeSet<i64>,
}

impl Built {
    fn page_size(&self) -> u64 {
        u64::from(self.spec.page_size)
    }
}

async fn insert(pool: &SqlitePool, ids: Range<i64>, rows: &mut BTreeMap<i64, Row>) {
    let ids: Vec<i64> = ids.collect();
    for chunk in ids.chunks(100) {
        let mut tx = pool.begin().await.unwrap();
        for &id in chunk {
            let row = Row::new(id);
            let done = sqlx::query(
                "INSERT INTO readings (identifier, device_key, received_ms, body) VALUES (?, ?, ?, ?)",
            )
            .bind(&row.identifier)
            .bind(&row.device_key)
            .bind(row.received_ms)
            .bind(&row.body)
            .execute(&mut *tx)
            .await
            .unwrap();
            assert_eq!(
                done.last_insert_rowid(),
                id,
                "AUTOINCREMENT ids are 1, 2, …"
            );
            rows.insert(id, row);
        }
        tx.commit().await.unwrap();
    }
}

async fn build_in(dir: &Path, spec: Spec) -> Built {
    let path = dir.join("buffer.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .page_size(spec.page_size)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .pragma("wal_autocheckpoint", "0");
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE readings (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            identifier TEXT NOT NULL UNIQUE,
            device_key TEXT NOT NULL,
            received_ms INTEGER NOT NULL,
            body BLOB NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("CREATE TABLE extra (k TEXT PRIMARY KEY, r REAL, n INTEGER, b BLOB)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(EXTRA_SQL).execute(&pool).await.unwrap();

    let mut rows = BTreeMap::new();
    insert(&pool, 1..spec.first + 1, &mut rows).await;
    sqlx::query("DELETE FROM readings WHERE id <= ?")
        .bind(spec.acked)
        .execute(&pool)
        .await
        .unwrap();
    let end = spec.first + spec.second;
    insert(&pool, spec.first + 1..end + 1, &mut rows).await;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await
        .unwrap();
    insert(&pool, end + 1..end + spec.wal_only + 1, &mut rows).await;

    // Copied while the connection is open: closing the last connection would checkpoint.
    let db = std::fs::read(&path).unwrap();
    let wal = std::fs::read(dir.join("buffer.db-wal")).unwrap_or_default();
    let live: BTreeSet<i64> = sqlx::query_scalar::<_, i64>("SELECT id FROM readings")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    pool.close().await;

    assert_eq!(db.len() as u64 % u64::from(spec.page_size), 0);
    let wal = (spec.wal_only > 0).then_some(wal);
    if let Some(wal) = &wal {
        assert!(wal.len() > 32, "rows only in the WAL need a WAL");
    }
    Built {
        spec,
        db,
        wal,
        rows,
        live,
        wal_rows: (end + 1..end + spec.wal_only + 1).collect(),
    }
}

fn build(spec: Spec) -> Built {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(build_in(dir.path(), spec))
}

// ---------------------------------------------------------------------------------------
// Scanning and judging

type Found = Vec<(FoundRecord, Vec<Location>)>;

fn scan_bytes(db: &[u8], wal: Option<&[u8]>) -> (ScanReport, Found) {
    let mut found = Vec::new();
    let mut wal = wal.map(Cursor::new);
    let report = scan_traced(&mut Cursor::new(db), wal.as_mut(), |record, chain| {
        found.push((record, chain.to_vec()))
    })
    .unwrap();
    (report, found)
}

/// Byte ranges of each file that a damage changed or removed.
#[derive(Debug, Default, Clone)]
struct Damage {
    db: Vec<Range<u64>>,
    wal: Vec<Range<u64>>,
}

fn overlaps(ranges: &[Range<u64>], span: Range<u64>) -> bool {
    ranges
        .iter()
        .any(|r| r.start < span.end && span.start < r.end)
}

/// Whether a record's cell and overflow pages all lie outside the damage.
fn intact(record: &FoundRecord, chain: &[Location], damage: &Damage, page_size: u64) -> bool {
    std::iter::once(&record.location)
        .chain(chain)
        .all(|location| match *location {
            Location::Page(p) => {
                let p = u64::from(p);
                !overlaps(&damage.db, (p - 1) * page_size..p * page_size)
            }
            Location::WalFrame { frame, .. } => {
                let start = frame_offset(frame - 1, page_size);
                !overlaps(&damage.wal, start..start + page_size + FRAME_HEADER_LEN)
            }
        })
}

/// What a scan of a damaged copy gave.
#[derive(Debug)]
struct Outcome {
    report: ScanReport,
    /// Live rows found with exact values.
    live_found: usize,
    /// Rows whose pages were intact (so must be found).
    expected: usize,
    /// Readings-shaped records that differ from every row ever inserted (from damaged pages).
    altered: usize,
}

/// Scans a damaged copy of `built` and checks it: every row found in the original on pages
/// the damage left alone is found again, exactly; every record found on intact pages is
/// exact. Returns the figures.
fn judge(
    built: &Built,
    original: &Found,
    db: &[u8],
    wal: Option<&[u8]>,
    damage: &Damage,
) -> Outcome {
    let page_size = built.page_size();
    let (report, found) = scan_bytes(db, wal);
    let mut exact = BTreeSet::new();
    let mut altered = 0;
    for (record, chain) in &found {
        if !is_reading(&record.values) {
            continue;
        }
        let right = built
            .rows
            .get(&record.rowid)
            .is_some_and(|row| row.values() == record.values);
        if right {
            exact.insert(record.rowid);
        } else {
            assert!(
                !intact(record, chain, damage, page_size),
                "a record read from undamaged pages is wrong: rowid {} at {:?} (chain {:?})",
                record.rowid,
                record.location,
                chain
            );
            altered += 1;
        }
    }
    let expected: BTreeSet<i64> = original
        .iter()
        .filter(|(r, chain)| is_reading(&r.values) && intact(r, chain, damage, page_size))
        .map(|(r, _)| r.rowid)
        .collect();
    let missing: Vec<i64> = expected.difference(&exact).copied().collect();
    assert!(
        missing.is_empty(),
        "rows on intact pages not found: {} of them, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    Outcome {
        report,
        live_found: built.live.intersection(&exact).count(),
        expected: expected.len(),
        altered,
    }
}

fn print(case: &str, built: &Built, o: &Outcome) {
    eprintln!(
        "{case}: {}/{} live rows found exact ({} required by intact pages); {} altered; \
         page size {} from {:?}; {} leaf pages, {} unreadable cells; WAL: {} frames, {} committed, {} records, {} unreadable cells",
        o.live_found,
        built.live.len(),
        o.expected,
        o.altered,
        o.report.page_size,
        o.report.page_size_from,
        o.report.leaf_pages,
        o.report.unreadable_cells,
        o.report.wal_frames,
        o.report.wal_committed_frames,
        o.report.wal_records,
        o.report.wal_unreadable_cells,
    );
}

fn scribble(bytes: &mut [u8], range: Range<u64>, rng: &mut StdRng) -> Range<u64> {
    let end = range.end.min(bytes.len() as u64);
    rng.fill(&mut bytes[range.start as usize..end as usize]);
    range.start..end
}

// ---------------------------------------------------------------------------------------
// The database file

const CHECKPOINTED: Spec = Spec {
    page_size: 4096,
    first: 3000,
    acked: 600,
    second: 300,
    wal_only: 0,
};

/// Every live row and every `extra` row is found, exactly; the INTEGER PRIMARY KEY is the
/// rowid with NULL in its column.
fn assert_complete(built: &Built, report: &ScanReport, found: &Found) {
    assert_eq!(report.page_size, built.spec.page_size);
    // Only stale cells (of acked rows, in freed pages) may be unreadable: a spilled one
    // whose overflow pages were reused since.
    let stale_spilled = (1..=built.spec.acked).filter(|id| id % 40 == 0).count() as u64;
    assert!(report.unreadable_cells <= stale_spilled, "{report:?}");
    assert_eq!(report.pages, built.db.len() as u64 / built.page_size());
    let mut by_rowid: HashMap<i64, Vec<&FoundRecord>> = HashMap::new();
    for (record, _) in found {
        by_rowid.entry(record.rowid).or_default().push(record);
    }
    for id in &built.live {
        let copies = by_rowid.get(id).map(Vec::as_slice).unwrap_or(&[]);
        let readings: Vec<_> = copies.iter().filter(|r| is_reading(&r.values)).collect();
        assert!(!readings.is_empty(), "live row {id} not found");
        for r in readings {
            assert_eq!(r.values, built.rows[id].values(), "row {id}");
            assert_eq!(
                r.values[0],
                SqlValue::Null,
                "the INTEGER PRIMARY KEY column is NULL"
            );
        }
    }
    // Deleted rows may be found too (freed pages), but only as they were.
    for (record, _) in found.iter().filter(|(r, _)| is_reading(&r.values)) {
        assert_eq!(record.values, built.rows[&record.rowid].values());
    }
    for extra in extra_values() {
        assert!(
            found.iter().any(|(r, _)| r.values == extra),
            "extra row {extra:?} not found"
        );
    }
}

#[test]
fn an_undamaged_database_gives_every_row_exactly_and_damaged_copies_every_row_on_intact_pages() {
    let built = build(CHECKPOINTED);
    let len = built.db.len() as u64;
    let page = built.page_size();
    let (report, original) = scan_bytes(&built.db, None);
    assert_complete(&built, &report, &original);
    assert_eq!(report.page_size_from, PageSizeFrom::Header);
    assert!(report.header_valid);
    assert_eq!(report.text_encoding, Some(TextEncoding::Utf8));
    assert!(original
        .iter()
        .all(|(r, _)| matches!(r.location, Location::Page(_))));
    let spilled = original
        .iter()
        .filter(|(_, chain)| !chain.is_empty())
        .count();
    let big = built.live.iter().filter(|id| *id % 40 == 0).count();
    assert!(
        spilled >= big,
        "every body over a page is read through its overflow chain"
    );
    eprintln!(
        "undamaged: {} live rows, {} records found ({} readings-shaped, {} through overflow chains), {} pages, {} leaf pages",
        built.live.len(),
        original.len(),
        original.iter().filter(|(r, _)| is_reading(&r.values)).count(),
        spilled,
        report.pages,
        report.leaf_pages
    );

    // Truncated: everything before the cut is intact, nothing found is altered.
    for cut in [50, 3 * page + 1234, len / 2, len - page - 100, len - 1] {
        let damage = Damage {
            db: vec![cut..u64::MAX],
            ..Damage::default()
        };
        let o = judge(&built, &original, &built.db[..cut as usize], None, &damage);
        print(&format!("truncated at {cut} of {len}"), &built, &o);
        assert_eq!(o.altered, 0);
        assert_eq!(
            o.report.page_size, 4096,
            "page size from the header, else guessed"
        );
    }

    // Zeroed header: the page size is guessed; nothing is lost.
    let mut db = built.db.clone();
    db[..100].fill(0);
    let damage = Damage {
        db: vec![0..100],
        ..Damage::default()
    };
    let o = judge(&built, &original, &db, None, &damage);
    print("zeroed first 100 bytes", &built, &o);
    assert_eq!(o.report.page_size_from, PageSizeFrom::Guess);
    assert_eq!(o.report.page_size, 4096);
    assert_eq!(o.live_found, built.live.len());
    assert_eq!(o.altered, 0);

    // Zeroed first page: the schema is gone, the rows are not.
    let mut db = built.db.clone();
    db[..page as usize].fill(0);
    let damage = Damage {
        db: vec![0..page],
        ..Damage::default()
    };
    let o = judge(&built, &original, &db, None, &damage);
    print("zeroed first page", &built, &o);
    assert_eq!(o.report.page_size, 4096);
    assert_eq!(o.live_found, built.live.len());
    assert_eq!(o.altered, 0);

    // Random bytes over ranges: rows elsewhere are exact; damaged ones may be lost or altered.
    let mut rng = StdRng::seed_from_u64(7);
    let scribbles: Vec<(&str, Vec<Range<u64>>)> = vec![
        (
            "scribbled 10,000 bytes in the middle",
            vec![len / 3..len / 3 + 10_000],
        ),
        (
            "scribbled a leaf page's header",
            vec![10 * page..10 * page + 8],
        ),
        ("scribbled the header and page 1", vec![0..page]),
        (
            "scribbled 20 short ranges",
            (0..20)
                .map(|_| {
                    let at = rng.gen_range(0..len);
                    at..at + rng.gen_range(1..200)
                })
                .collect(),
        ),
    ];
    for (case, ranges) in scribbles {
        let mut db = built.db.clone();
        let damage = Damage {
            db: ranges
                .into_iter()
                .map(|r| scribble(&mut db, r, &mut rng))
                .collect(),
            ..Damage::default()
        };
        let o = judge(&built, &original, &db, None, &damage);
        print(case, &built, &o);
        assert_eq!(o.report.page_size, 4096);
    }

    // Nothing left, or nothing but noise: no panic, nothing of the original.
    let (report, found) = scan_bytes(&[], None);
    assert_eq!((report.pages, found.len()), (0, 0));
    assert_eq!(report.page_size_from, PageSizeFrom::Default);
    let mut noise = vec![0u8; built.db.len()];
    rng.fill(&mut noise[..]);
    let (report, found) = scan_bytes(&noise, None);
    eprintln!(
        "pure random ({} bytes): page size {} ({:?}), {} leaf-looking pages, {} records, {} unreadable cells",
        noise.len(),
        report.page_size,
        report.page_size_from,
        report.leaf_pages,
        found.len(),
        report.unreadable_cells
    );
    assert!(found.iter().all(|(r, _)| !is_reading(&r.values)
        || built
            .rows
            .get(&r.rowid)
            .is_none_or(|row| row.values() != r.values)));
}

#[test]
fn the_page_size_of_a_headerless_database_is_guessed_for_every_size() {
    for page_size in [512, 1024, 8192, 65536] {
        let built = build(Spec {
            page_size,
            first: 400,
            acked: 50,
            second: 100,
            wal_only: 0,
        });
        let (report, original) = scan_bytes(&built.db, None);
        assert_complete(&built, &report, &original);
        let mut db = built.db.clone();
        db[..100].fill(0);
        let damage = Damage {
            db: vec![0..100],
            ..Damage::default()
        };
        let o = judge(&built, &original, &db, None, &damage);
        print(&format!("page size {page_size}, zeroed header"), &built, &o);
        assert_eq!(o.report.page_size, page_size);
        assert_eq!(o.report.page_size_from, PageSizeFrom::Guess);
        assert_eq!(o.live_found, built.live.len());
    }
}

// ---------------------------------------------------------------------------------------
// The WAL

const WITH_WAL: Spec = Spec {
    page_size: 4096,
    first: 1000,
    acked: 100,
    second: 0,
    wal_only: 1000,
};

#[test]
fn rows_only_in_the_wal_are_found_in_it_and_a_damaged_wal_gives_its_intact_frames() {
    let built = build(WITH_WAL);
    let wal = built.wal.clone().unwrap();
    let page = built.page_size();
    let frame_len = page + FRAME_HEADER_LEN;

    // Database alone: only what was checkpointed.
    let (report, found) = scan_bytes(&built.db, None);
    let ids: BTreeSet<i64> = found
        .iter()
        .filter(|(r, _)| is_reading(&r.values))
        .map(|(r, _)| r.rowid)
        .collect();
    assert!(ids.is_disjoint(&built.wal_rows));
    assert!(built
        .live
        .difference(&built.wal_rows)
        .all(|id| ids.contains(id)));
    eprintln!(
        "database without its WAL: {} of {} live rows ({} are only in the WAL)",
        built.live.intersection(&ids).count(),
        built.live.len(),
        built.wal_rows.len()
    );
    assert_eq!(report.wal_frames, 0);

    // With the WAL: everything, the WAL's rows from committed frames.
    let (report, original) = scan_bytes(&built.db, Some(&wal));
    assert_complete(&built, &report, &original);
    assert!(report.wal_header_valid);
    assert_eq!(report.wal_frames, (wal.len() as u64 - 32) / frame_len);
    assert_eq!(report.wal_committed_frames, report.wal_frames);
    assert_eq!(report.wal_unreadable_cells, 0);
    for id in &built.wal_rows {
        assert!(original.iter().any(|(r, _)| r.rowid == *id
            && matches!(
                r.location,
                Location::WalFrame {
                    committed: true,
                    ..
                }
            )));
    }
    let wal_spilled = original
        .iter()
        .filter(|(r, chain)| {
            matches!(r.location, Location::WalFrame { .. })
                && chain.iter().any(|l| matches!(l, Location::WalFrame { .. }))
        })
        .count();
    assert!(
        wal_spilled > 0,
        "overflow pages are read from the WAL's frames"
    );
    eprintln!(
        "database + WAL: {} live rows all found; WAL {} frames, {} leaf frames, {} records ({} through overflow frames)",
        built.live.len(),
        report.wal_frames,
        report.wal_leaf_pages,
        report.wal_records,
        wal_spilled
    );

    // Truncated WAL: the frames before the cut, and the committed prefix ends before it.
    let cut = 32 + 40 * frame_len + frame_len / 2;
    let damage = Damage {
        wal: vec![cut..u64::MAX],
        ..Damage::default()
    };
    let o = judge(
        &built,
        &original,
        &built.db,
        Some(&wal[..cut as usize]),
        &damage,
    );
    print("WAL truncated inside frame 41", &built, &o);
    assert_eq!(o.altered, 0);
    assert!(o.report.wal_committed_frames <= 40 && o.report.wal_committed_frames > 0);

    // A frame's page scribbled: the frames after it are no longer committed, but their rows
    // are still found (and say so).
    let mut rng = StdRng::seed_from_u64(11);
    let mut damaged = wal.clone();
    let start = 32 + 30 * frame_len + FRAME_HEADER_LEN + 100;
    let damage = Damage {
        wal: vec![scribble(&mut damaged, start..start + 2000, &mut rng)],
        ..Damage::default()
    };
    let o = judge(&built, &original, &built.db, Some(&damaged), &damage);
    print("WAL frame 31 scribbled", &built, &o);
    assert!(o.report.wal_committed_frames < 31);

    // Zeroed database header: the page size comes from the WAL header.
    let mut db = built.db.clone();
    db[..100].fill(0);
    let damage = Damage {
        db: vec![0..100],
        ..Damage::default()
    };
    let o = judge(&built, &original, &db, Some(&wal), &damage);
    print("database header zeroed, WAL intact", &built, &o);
    assert_eq!(o.report.page_size_from, PageSizeFrom::Wal);
    assert_eq!(o.live_found, built.live.len());

    // Both headers zeroed: guessed from the database; the WAL's frames are still read.
    let mut damaged = wal.clone();
    damaged[..32].fill(0);
    let damage = Damage {
        db: vec![0..100],
        wal: vec![0..32],
    };
    let o = judge(&built, &original, &db, Some(&damaged), &damage);
    print("both headers zeroed", &built, &o);
    assert_eq!(o.report.page_size_from, PageSizeFrom::Guess);
    assert!(!o.report.wal_header_valid);
    assert_eq!(o.report.wal_committed_frames, 0);
    assert_eq!(o.live_found, built.live.len());

    // No database at all, only the WAL (headerless): guessed from the frame layout.
    let o = judge(
        &built,
        &original,
        &[],
        Some(&damaged),
        &Damage {
            db: vec![0..u64::MAX],
            wal: vec![0..32],
        },
    );
    print("empty database, headerless WAL", &built, &o);
    assert_eq!(o.report.page_size_from, PageSizeFrom::Guess);
    assert_eq!(o.report.page_size, 4096);
}

// ---------------------------------------------------------------------------------------
// Hand-made pages

/// A varint as SQLite writes it.
fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v > 0x00ff_ffff_ffff_ffff {
        let mut bytes = Vec::new();
        let mut rest = v >> 8;
        for _ in 0..8 {
            bytes.push(((rest & 0x7f) as u8) | 0x80);
            rest >>= 7;
        }
        bytes.reverse();
        out.extend_from_slice(&bytes);
        out.push(v as u8);
        return;
    }
    let mut groups = vec![(v & 0x7f) as u8];
    let mut rest = v >> 7;
    while rest > 0 {
        groups.push(((rest & 0x7f) as u8) | 0x80);
        rest >>= 7;
    }
    groups.reverse();
    out.extend_from_slice(&groups);
}

/// A record: header of serial types, then the values.
fn record(values: &[SqlValue]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut body = Vec::new();
    for v in values {
        match v {
            SqlValue::Null => put_varint(&mut types, 0),
            SqlValue::Integer(i) => {
                put_varint(&mut types, 6);
                body.extend_from_slice(&i.to_be_bytes());
            }
            SqlValue::Real(f) => {
                put_varint(&mut types, 7);
                body.extend_from_slice(&f.to_bits().to_be_bytes());
            }
            SqlValue::Text(t) => {
                put_varint(&mut types, 13 + 2 * t.len() as u64);
                body.extend_from_slice(t);
            }
            SqlValue::Blob(b) => {
                put_varint(&mut types, 12 + 2 * b.len() as u64);
                body.extend_from_slice(b);
            }
        }
    }
    let mut header_len = types.len() + 1;
    let mut head = Vec::new();
    put_varint(&mut head, header_len as u64);
    if head.len() > 1 {
        header_len = types.len() + head.len();
        head.clear();
        put_varint(&mut head, header_len as u64);
    }
    head.extend_from_slice(&types);
    head.extend_from_slice(&body);
    head
}

/// A headerless "database" of 512-byte pages: page 1 zero, then the given pages.
fn pages(list: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![0u8; 512];
    for p in list {
        let mut p = p.clone();
        p.resize(512, 0);
        out.extend_from_slice(&p);
    }
    out
}

/// Gives a `pages` "database" a header saying 512-byte pages (else a file whose only leaf
/// is broken would leave nothing to guess the size by).
fn with_header(mut db: Vec<u8>) -> Vec<u8> {
    db[..16].copy_from_slice(DB_MAGIC);
    db[16..18].copy_from_slice(&512u16.to_be_bytes());
    db[21..24].copy_from_slice(&[64, 32, 32]);
    db
}

/// A 512-byte table-leaf page holding the given raw cells.
fn leaf(cells: &[Vec<u8>]) -> Vec<u8> {
    let mut page = vec![0u8; 512];
    page[0] = TABLE_LEAF;
    page[3..5].copy_from_slice(&(cells.len() as u16).to_be_bytes());
    let mut end = 512;
    for (i, cell) in cells.iter().enumerate() {
        end -= cell.len();
        page[end..end + cell.len()].copy_from_slice(cell);
        page[8 + 2 * i..10 + 2 * i].copy_from_slice(&(end as u16).to_be_bytes());
    }
    page[5..7].copy_from_slice(&(end as u16).to_be_bytes());
    page
}

fn cell(payload_size: u64, rowid: i64, bytes: &[u8]) -> Vec<u8> {
    let mut c = Vec::new();
    put_varint(&mut c, payload_size);
    put_varint(&mut c, rowid as u64);
    c.extend_from_slice(bytes);
    c
}

fn scan_all(db: &[u8]) -> (ScanReport, Vec<FoundRecord>) {
    let mut found = Vec::new();
    let report = scan(&mut Cursor::new(db), None::<&mut Cursor<&[u8]>>, |r| {
        found.push(r)
    })
    .unwrap();
    (report, found)
}

#[test]
fn varints_decode_as_sqlite_writes_them() {
    assert_eq!(varint(&[0x00]), Some((0, 1)));
    assert_eq!(varint(&[0x7f]), Some((127, 1)));
    assert_eq!(varint(&[0x81, 0x00]), Some((128, 2)));
    assert_eq!(varint(&[0xff; 9]), Some((u64::MAX, 9)));
    assert_eq!(varint(&[0x80; 8]), None, "cut short");
    assert_eq!(varint(&[]), None);
    for v in [
        0,
        1,
        240,
        2287,
        67823,
        1 << 32,
        1 << 56,
        (1 << 56) - 1,
        u64::MAX,
    ] {
        let mut b = Vec::new();
        put_varint(&mut b, v);
        assert_eq!(varint(&b), Some((v, b.len())), "{v}");
    }
}

#[test]
fn every_serial_type_decodes() {
    // header: 12 types; values: NULL, 1..6-byte ints, real, 0, 1, blob "ab", text "c"
    let payload = [
        &[13u8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 15][..],
        &[0xff],
        &[0x01, 0x00],
        &[0xff, 0xff, 0xfe],
        &[0x7f, 0xff, 0xff, 0xff],
        &[0x80, 0, 0, 0, 0, 0],
        &[0xff; 8],
        &1.5f64.to_bits().to_be_bytes(),
        b"ab",
        b"c",
    ]
    .concat();
    use SqlValue::*;
    assert_eq!(
        decode_record(&payload),
        Some(vec![
            Null,
            Integer(-1),
            Integer(256),
            Integer(-2),
            Integer(i32::MAX as i64),
            Integer(-(1 << 47)),
            Integer(-1),
            Real(1.5),
            Integer(0),
            Integer(1),
            Blob(b"ab".to_vec()),
            Text(b"c".to_vec()),
        ])
    );
    assert_eq!(
        decode_record(&payload[..payload.len() - 1]),
        None,
        "sizes must add up"
    );
    assert_eq!(decode_record(&[2, 10]), None, "reserved serial type");
    assert_eq!(
        decode_record(&[0]),
        None,
        "header shorter than its own size"
    );
    assert_eq!(
        decode_record(&[5, 0]),
        None,
        "header longer than the payload"
    );
}

#[test]
fn the_local_part_of_a_spilled_payload_follows_the_file_format() {
    let g = Geometry::new(4096, 0);
    assert_eq!(g.local_payload(4061), 4061, "up to U-35 stays on the page");
    // M = (4084*32/255) - 23 = 489; K = M + (P-M) % (U-4)
    assert_eq!(g.local_payload(5000), 489 + (5000 - 489) % 4092);
    assert_eq!(g.local_payload(4062), 489, "K > U-35: only M stays");
    let g = Geometry::new(512, 32);
    assert_eq!(g.usable, 480);
    assert_eq!(
        Geometry::new(512, 255).usable,
        512,
        "an impossible reserve is ignored"
    );
}

#[test]
fn damaged_cells_are_counted_and_the_rest_of_their_page_still_counts() {
    let good = record(&[SqlValue::Null, SqlValue::Text(b"ok".to_vec())]);
    let page = leaf(&[
        cell(good.len() as u64, 1, &good),
        // claims a payload larger than anything the file holds (refused, not allocated)
        cell(1 << 40, 2, &good),
        // sizes do not add up
        cell(good.len() as u64 + 1, 3, &good),
        cell(good.len() as u64, 4, &good),
    ]);
    let mut bad_pointer = page.clone();
    // a fifth cell pointer into the pointer array itself
    bad_pointer[3..5].copy_from_slice(&5u16.to_be_bytes());
    bad_pointer[16..18].copy_from_slice(&10u16.to_be_bytes());
    let (report, found) = scan_all(&pages(&[page, bad_pointer]));
    assert_eq!(report.page_size, 512);
    assert_eq!(report.page_size_from, PageSizeFrom::Guess);
    assert_eq!(report.leaf_pages, 2);
    assert_eq!(report.unreadable_cells, 2 + 3);
    let ids: Vec<i64> = found.iter().map(|r| r.rowid).collect();
    assert_eq!(ids, [1, 4, 1, 4]);
    assert_eq!(found[0].location, Location::Page(2));
    assert_eq!(found[3].location, Location::Page(3));
}

#[test]
fn overflow_chains_are_followed_exactly_and_never_loop() {
    // U = 512: X = 477, M = (500*32/255) - 23 = 39. A payload of 1200 bytes keeps
    // K = 39 + (1161 % 508) = 184 bytes on the leaf and needs 2 overflow pages of 508.
    let values = vec![SqlValue::Blob(vec![0x5a; 1197])];
    let payload = record(&values);
    assert_eq!(payload.len(), 1200);
    let g = Geometry::new(512, 0);
    assert_eq!(g.local_payload(1200), 184);
    let spilled = |first: u32| {
        let mut c = cell(1200, 9, &payload[..184]);
        c.extend_from_slice(&first.to_be_bytes());
        c
    };
    let overflow = |next: u32, bytes: &[u8]| {
        let mut p = next.to_be_bytes().to_vec();
        p.extend_from_slice(bytes);
        p
    };
    let rest = &payload[184..];
    // page 2: leaf; 3 → 4 → end
    let db = with_header(pages(&[
        leaf(&[spilled(3)]),
        overflow(4, &rest[..508]),
        overflow(0, &rest[508..]),
    ]));
    let (report, found) = scan_all(&db);
    assert_eq!(report.unreadable_cells, 0);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].values, values);

    // a chain that loops (4 → 3), that ends early, that goes on too long, or leaves the file
    for (case, second_next, first) in [
        ("loop", 3, 3),
        ("too long", 2, 3),
        ("past the end", 0, 99),
        ("zero", 0, 0),
    ] {
        let db = with_header(pages(&[
            leaf(&[spilled(first)]),
            overflow(4, &rest[..508]),
            overflow(second_next, &rest[508..]),
        ]));
        let (report, found) = scan_all(&db);
        assert_eq!((report.unreadable_cells, found.len()), (1, 0), "{case}");
    }
    let db = with_header(pages(&[leaf(&[spilled(3)]), overflow(0, &rest[..508])]));
    let (report, found) = scan_all(&db);
    assert_eq!((report.unreadable_cells, found.len()), (1, 0), "ends early");
    // cut inside the last overflow page: refused, not read past the end
    let (report, found) = scan_all(&db[..db.len() - 400]);
    assert_eq!((report.unreadable_cells, found.len()), (1, 0), "truncated");
}

// ---------------------------------------------------------------------------------------
// Random input

/// A reader that counts the bytes it hands out.
struct Counting<'a> {
    inner: Cursor<&'a [u8]>,
    read: &'a std::cell::Cell<u64>,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

impl Seek for Counting<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// Scans `db` (+ `wal`) and checks the work stayed bounded: bytes read at most a small
/// multiple of the input (8 page-size candidates, one pass over the database, two over the
/// WAL, a little for overflow pages).
fn scan_bounded(db: &[u8], wal: Option<&[u8]>) -> ScanReport {
    let read = std::cell::Cell::new(0);
    let mut dbr = Counting {
        inner: Cursor::new(db),
        read: &read,
    };
    let mut walr = wal.map(|w| Counting {
        inner: Cursor::new(w),
        read: &read,
    });
    let mut records = 0u64;
    let report = scan(&mut dbr, walr.as_mut(), |_| records += 1).unwrap();
    let input = (db.len() + wal.map_or(0, <[u8]>::len)) as u64;
    assert!(
        read.get() <= 16 * input + (1 << 20),
        "read {} bytes of {input}",
        read.get()
    );
    assert_eq!(records, report.records + report.wal_records);
    assert_eq!(
        report.pages,
        (db.len() as u64).div_ceil(u64::from(report.page_size))
    );
    report
}

/// A small real database, with rows in its WAL, for mutation.
fn small() -> &'static Built {
    static SMALL: OnceLock<Built> = OnceLock::new();
    SMALL.get_or_init(|| {
        build(Spec {
            page_size: 512,
            first: 30,
            acked: 5,
            second: 0,
            wal_only: 12,
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..20_000),
        split in any::<Option<proptest::sample::Index>>(),
    ) {
        match split {
            None => { scan_bounded(&bytes, None); }
            Some(at) => {
                let (db, wal) = bytes.split_at(at.index(bytes.len() + 1));
                scan_bounded(db, Some(wal));
            }
        }
    }

    #[test]
    fn a_mutated_real_database_never_panics(
        edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..40),
        in_wal in any::<bool>(),
        cut in any::<Option<proptest::sample::Index>>(),
    ) {
        let built = small();
        let mut db = built.db.clone();
        let mut wal = built.wal.clone().unwrap();
        let target = if in_wal { &mut wal } else { &mut db };
        for (at, byte) in edits {
            let i = at.index(target.len());
            target[i] = byte;
        }
        if let Some(cut) = cut {
            let n = cut.index(target.len());
            target.truncate(n);
        }
        scan_bounded(&db, Some(&wal));
    }
}

/// The fuzz target's seeds (`gateway/fuzz/seeds/sqlite_scan/`, made from a database like
/// the ones these tests build: 512-byte pages, six rows, one deleted, two only in the WAL)
/// are real databases the scanner reads, so fuzzing starts from inputs that reach deep.
/// Input format of the target: mode byte 0 = all database; 1 = the database's length (u32
/// LE), the database, then the WAL.
#[test]
fn the_fuzz_seeds_are_real_databases_the_scanner_reads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/sqlite_scan");
    let db_only = std::fs::read(dir.join("db.bin")).unwrap();
    assert_eq!(db_only[0], 0);
    let (report, found) = scan_bytes(&db_only[1..], None);
    assert_eq!(report.page_size, 512);
    assert!(found.len() >= 5, "{} records", found.len());

    let split = std::fs::read(dir.join("db-wal.bin")).unwrap();
    assert_eq!(split[0], 1);
    let n = u32::from_le_bytes(split[1..5].try_into().unwrap()) as usize;
    let (db, wal) = split[5..].split_at(n);
    let (report, found_with_wal) = scan_bytes(db, Some(wal));
    assert!(report.wal_frames > 0);
    assert!(found_with_wal.len() > found.len() - 1, "the WAL adds rows");
}
