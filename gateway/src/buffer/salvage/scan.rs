//! A raw reader of SQLite database and WAL files, for salvaging rows from a damaged buffer.
//!
//! SQLite refuses a database whose header, schema or b-trees are damaged. This module does
//! not use SQLite: it reads the on-disk format itself (as described in SQLite's "Database
//! File Format" document), page by page, and hands every row it can decode to a callback.
//!
//! # What it reads
//! - **The database file**, one page at a time (never the whole file). Every page whose
//!   b-tree header says *table leaf* (type `0x0D`; on page 1 the header sits after the
//!   100-byte database header) is parsed: the cell-pointer array, each cell's payload-size
//!   and rowid varints, and the record (header of serial types, then the values). A payload
//!   that spills to overflow pages is followed along its overflow chain. Interior pages,
//!   index pages, freelist trunks and overflow pages themselves yield nothing. The b-tree
//!   structure (root pages, interior pages, the schema) is *not* used: a leaf is found by
//!   what it looks like, so rows survive when the pages that lead to them are gone.
//! - **The WAL file** (`-wal`), when given, frame by frame: every frame's page is parsed in
//!   the same way. Overflow pages of a row found in a frame are looked up in the WAL first
//!   (the latest frame of that page, of the same WAL generation, up to the end of the
//!   frame's transaction), then in the database file. Each frame is told `committed` when it
//!   lies in the WAL's checksum-valid prefix, up to that prefix's last commit frame: the
//!   frames SQLite itself would have read.
//! - **The page size** comes from the database header (bytes 16–17; 1 means 65536) when the
//!   header is readable (its magic string and the fixed payload fractions at 21–23 intact);
//!   else from the WAL header; else it is guessed: each power of two from 512 to 65536 is
//!   tried on the database file (then, if that finds nothing, on the WAL's frame layout) and
//!   the one under which the most sampled pages parse as table-leaf pages with at least one
//!   decodable cell wins (ties: more such cells, then the smaller size). A size twice the
//!   true one sees only every other true page as a leaf (its cells all lie in the first
//!   half), a size half the true one sees almost none (a leaf's cells are packed from the
//!   end of the page), so the true size scores highest. At most [`GUESS_SAMPLE_BYTES`] are
//!   read per candidate, as pages spread evenly over the file. When nothing parses under
//!   any size, 4096 (SQLite's default) is used.
//!
//! # What it trusts
//! Nothing. Every length, offset, count, page number and varint is bounds-checked against
//! the page and the file; bad input yields counts in the [`ScanReport`], never a panic.
//! Work and memory are bounded: a payload claimed larger than [`MAX_PAYLOAD`], or needing
//! more overflow pages than the files hold, is refused; an overflow chain is walked for
//! exactly the number of pages its payload needs and must end there (no loops); a record
//! may have at most 32,767 columns. A cell whose payload-size, rowid, record header or
//! overflow chain does not add up is skipped and counted in `unreadable_cells`; the other
//! cells of its page are still read.
//!
//! SQLite pages carry no checksum, so **a cell whose bytes were altered in place but still
//! add up is returned with the altered values**. The caller must authenticate what it finds
//! (the buffer's bodies are AEAD-sealed) and may check a record's shape (number and types
//! of columns) to tell the table it came from: the scanner does not know which table a
//! leaf page belongs to. WAL frames do carry checksums: `committed: false` on a frame means
//! it may be torn, damaged, or an older generation's.
//!
//! # Limits
//! - Old versions of rows may be found too: leaf pages on the freelist keep their cells
//!   (SQLite does not clear freed pages), and a WAL keeps superseded frames and frames of
//!   older generations past its valid end. The same row may therefore be found several
//!   times, in the database and in WAL frames; the caller dedupes (by rowid or by a unique
//!   column).
//! - Nothing is carved: a leaf page is recognised by its 8-byte b-tree header and its cells
//!   are found through its cell-pointer array, so a leaf whose header or pointer array is
//!   damaged loses its cells, and rows deleted from a page still in use (free blocks inside
//!   a live page) are not found.
//! - An `INTEGER PRIMARY KEY` column (such as the buffer's `id`) is not stored in the
//!   record: its column holds NULL and its value is the [`FoundRecord::rowid`].
//! - Values come back as stored: SQLite stores a whole-number value of a REAL column as an
//!   integer (and converts it back when it reads it), so it comes back as
//!   [`SqlValue::Integer`]. Text comes back as the stored bytes, in the encoding
//!   [`ScanReport::text_encoding`] names when the database header was readable.
//! - A read error on one page counts it in `unreadable_pages` and the scan goes on.

#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable
)]

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};

/// The largest record payload the scanner assembles (64 MiB); a cell claiming more is
/// counted unreadable. The buffer's rows are a few hundred bytes to a few hundred KiB.
pub const MAX_PAYLOAD: u64 = 64 << 20;

/// At most this many bytes are read per candidate page size when the size is guessed.
pub const GUESS_SAMPLE_BYTES: u64 = 8 << 20;

/// SQLite's hard limit on the number of columns of a table.
const MAX_COLUMNS: usize = 32_767;
const MIN_PAGE_SIZE: u32 = 512;
const MAX_PAGE_SIZE: u32 = 65_536;
const DEFAULT_PAGE_SIZE: u32 = 4096;
/// The smallest usable page size SQLite allows (page size less reserved bytes).
const MIN_USABLE: usize = 480;
const DB_MAGIC: &[u8; 16] = b"SQLite format 3\0";
const DB_HEADER_LEN: usize = 100;
const WAL_HEADER_LEN: u64 = 32;
const FRAME_HEADER_LEN: u64 = 24;
/// WAL magic numbers: the low bit says the checksums use big-endian words.
const WAL_MAGIC_LE: u32 = 0x377f_0682;
const WAL_MAGIC_BE: u32 = 0x377f_0683;
const TABLE_LEAF: u8 = 0x0D;
const LEAF_HEADER_LEN: usize = 8;

/// A value of a SQLite record.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// NULL (also what an `INTEGER PRIMARY KEY` column holds: see [`FoundRecord::rowid`]).
    Null,
    /// An integer (serial types 1–6, 8, 9).
    Integer(i64),
    /// A 64-bit IEEE float (serial type 7).
    Real(f64),
    /// Text, as stored (see [`ScanReport::text_encoding`]).
    Text(Vec<u8>),
    /// A blob.
    Blob(Vec<u8>),
}

/// Where a record was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// A page of the database file (page numbers start at 1).
    Page(u32),
    /// A frame of the WAL (frame numbers start at 1) holding a version of `page`.
    WalFrame {
        /// The frame's number in the WAL file.
        frame: u32,
        /// The database page the frame says it holds.
        page: u32,
        /// The frame lies in the WAL's checksum-valid prefix, at or before its last commit
        /// frame: SQLite would read it. `false`: uncommitted, torn, damaged, or from an
        /// older WAL generation.
        committed: bool,
    },
}

/// A row found in a table b-tree leaf page.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundRecord {
    /// The rowid; also the value of an `INTEGER PRIMARY KEY` column, whose place in
    /// `values` holds [`SqlValue::Null`].
    pub rowid: i64,
    /// The record's values, in column order.
    pub values: Vec<SqlValue>,
    /// Where the cell was found (its overflow pages, if any, are not listed).
    pub location: Location,
}

/// Where the page size came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PageSizeFrom {
    /// The database header.
    Header,
    /// The WAL header (the database header was unreadable).
    Wal,
    /// Guessed from which size makes the most pages parse as table leaves.
    Guess,
    /// Nothing to go by: SQLite's default, 4096.
    #[default]
    Default,
}

/// The text encoding named by the database header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoding {
    /// UTF-8 (what the buffer uses).
    Utf8,
    /// UTF-16, little-endian.
    Utf16Le,
    /// UTF-16, big-endian.
    Utf16Be,
}

/// What a scan read and found. Counts of the database file are unprefixed, the WAL's start
/// with `wal_`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// The page size used for both files.
    pub page_size: u32,
    /// Where it came from.
    pub page_size_from: PageSizeFrom,
    /// The database header was readable (magic string, a valid page size, the fixed payload
    /// fractions).
    pub header_valid: bool,
    /// The text encoding the readable header names.
    pub text_encoding: Option<TextEncoding>,
    /// Size of the database file in bytes.
    pub db_bytes: u64,
    /// Pages of the database file (a final partial page counts).
    pub pages: u64,
    /// Pages that could not be read (I/O error).
    pub unreadable_pages: u64,
    /// Pages parsed as table-leaf pages.
    pub leaf_pages: u64,
    /// Records handed to the callback from the database file.
    pub records: u64,
    /// Cells of leaf pages that could not be decoded (bad pointer, varint, record header,
    /// size, or overflow chain), skipped.
    pub unreadable_cells: u64,
    /// Size of the WAL file in bytes (0 without one).
    pub wal_bytes: u64,
    /// The WAL header was readable (magic, page size, checksum).
    pub wal_header_valid: bool,
    /// Frames in the WAL (a final partial frame counts).
    pub wal_frames: u64,
    /// Frames SQLite would read (see [`Location::WalFrame`]).
    pub wal_committed_frames: u64,
    /// Frames that could not be read (I/O error).
    pub wal_unreadable_frames: u64,
    /// Frames whose page parsed as a table-leaf page.
    pub wal_leaf_pages: u64,
    /// Records handed to the callback from the WAL.
    pub wal_records: u64,
    /// Cells of WAL leaf pages that could not be decoded, skipped.
    pub wal_unreadable_cells: u64,
}

/// Scans a database file and, optionally, its WAL, handing every row decodable from a
/// table-leaf page to `on_record` (database pages first, in page order, then WAL frames,
/// in frame order). See the module documentation for what is read and trusted.
///
/// Errors only when a file's size cannot be found (seeking to its end fails); read errors
/// of single pages are counted in the report.
///
/// Without a WAL, name a type for the `None`: `scan(&mut db, None::<&mut std::fs::File>, …)`.
pub fn scan<D, W>(
    db: &mut D,
    wal: Option<&mut W>,
    mut on_record: impl FnMut(FoundRecord),
) -> io::Result<ScanReport>
where
    D: Read + Seek,
    W: Read + Seek,
{
    scan_traced(db, wal, |record, _chain| on_record(record))
}

/// [`scan`], also telling the callback every page (or frame) the record's overflow chain
/// was read from. The tests use it to know which records depend on a damaged page.
fn scan_traced<D, W>(
    db: &mut D,
    mut wal: Option<&mut W>,
    mut on_record: impl FnMut(FoundRecord, &[Location]),
) -> io::Result<ScanReport>
where
    D: Read + Seek,
    W: Read + Seek,
{
    let mut report = ScanReport::default();
    let db_len = db.seek(SeekFrom::End(0))?;
    report.db_bytes = db_len;
    let wal_len = match wal.as_deref_mut() {
        Some(w) => w.seek(SeekFrom::End(0))?,
        None => 0,
    };
    report.wal_bytes = wal_len;

    // The database header, if readable.
    let mut head = [0u8; DB_HEADER_LEN];
    let got = read_at(db, 0, &mut head).unwrap_or(0);
    let header = parse_db_header(head.get(..got).unwrap_or(&[]));
    let mut wal_header = None;
    if let Some(w) = wal.as_deref_mut() {
        let mut buf = [0u8; WAL_HEADER_LEN as usize];
        let got = read_at(w, 0, &mut buf).unwrap_or(0);
        wal_header = parse_wal_header(buf.get(..got).unwrap_or(&[]));
    }
    report.header_valid = header.is_some();
    report.text_encoding = header.and_then(|h| h.encoding);
    report.wal_header_valid = wal_header.is_some_and(|h| h.checksum_ok);

    // The page size: header, WAL header, guess on the database, guess on the WAL, default.
    let (page_size, from) = if let Some(h) = header {
        (h.page_size, PageSizeFrom::Header)
    } else if let Some(h) = wal_header {
        (h.page_size, PageSizeFrom::Wal)
    } else if let Some(size) = guess_page_size(db, db_len, Layout::Database) {
        (size, PageSizeFrom::Guess)
    } else if let Some(size) = wal
        .as_deref_mut()
        .and_then(|w| guess_page_size(w, wal_len, Layout::Wal))
    {
        (size, PageSizeFrom::Guess)
    } else {
        (DEFAULT_PAGE_SIZE, PageSizeFrom::Default)
    };
    report.page_size = page_size;
    report.page_size_from = from;
    let geometry = Geometry::new(page_size, header.map_or(0, |h| h.reserved));

    let page_len = u64::from(page_size);
    report.pages = db_len.div_ceil(page_len);
    let frame_len = page_len.saturating_add(FRAME_HEADER_LEN);
    report.wal_frames = wal_len.saturating_sub(WAL_HEADER_LEN).div_ceil(frame_len);

    // The WAL's frame index first: a WAL record's overflow pages may sit in later frames.
    let wal_index = match wal.as_deref_mut() {
        Some(w) => index_wal(w, report.wal_frames, geometry, wal_header, &mut report),
        None => WalIndex::default(),
    };

    let mut scanner = Scanner {
        db,
        db_pages: report.pages,
        wal,
        wal_index,
        geometry,
        overflow_buf: vec![0; geometry.page_size],
        chain: Vec::new(),
    };
    scanner.scan_database(&mut report, &mut on_record);
    scanner.scan_wal(&mut report, &mut on_record);
    Ok(report)
}

/// Page size and usable size (page size less the reserved bytes at each page's end).
#[derive(Debug, Clone, Copy)]
struct Geometry {
    page_size: usize,
    usable: usize,
}

impl Geometry {
    /// `page_size` is a power of two in 512..=65536 (checked by every caller).
    fn new(page_size: u32, reserved: u8) -> Self {
        let page_size = usize::try_from(page_size).unwrap_or(MIN_PAGE_SIZE as usize);
        let usable = page_size.saturating_sub(usize::from(reserved));
        let usable = if usable >= MIN_USABLE {
            usable
        } else {
            page_size
        };
        Geometry { page_size, usable }
    }

    fn usable_u64(&self) -> u64 {
        self.usable as u64
    }

    /// Bytes of overflow-page content per overflow page.
    fn overflow_content(&self) -> u64 {
        self.usable_u64() - 4
    }

    /// How many bytes of a payload of `p` bytes a table-leaf cell keeps on its own page.
    fn local_payload(&self, p: u64) -> u64 {
        let u = self.usable_u64();
        let max_local = u - 35;
        if p <= max_local {
            return p;
        }
        let min_local = (u - 12) * 32 / 255 - 23;
        let k = min_local + (p - min_local) % (u - 4);
        if k <= max_local {
            k
        } else {
            min_local
        }
    }
}

/// What the database header says, when it is readable.
#[derive(Debug, Clone, Copy)]
struct DbHeader {
    page_size: u32,
    reserved: u8,
    encoding: Option<TextEncoding>,
}

fn parse_db_header(b: &[u8]) -> Option<DbHeader> {
    // The magic string, and the payload fractions the format fixes at 64, 32, 32: a
    // scribble over the page-size bytes most likely hits these too.
    if b.get(..16)? != DB_MAGIC || b.get(21..24)? != [64, 32, 32] {
        return None;
    }
    let raw = u32::from(be16(b, 16)?);
    let page_size = if raw == 1 { MAX_PAGE_SIZE } else { raw };
    if !valid_page_size(page_size) {
        return None;
    }
    let encoding = match be32(b, 56)? {
        1 => Some(TextEncoding::Utf8),
        2 => Some(TextEncoding::Utf16Le),
        3 => Some(TextEncoding::Utf16Be),
        _ => None,
    };
    Some(DbHeader {
        page_size,
        reserved: *b.get(20)?,
        encoding,
    })
}

fn valid_page_size(size: u32) -> bool {
    size.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&size)
}

/// What the WAL header says, when its magic and page size are readable.
#[derive(Debug, Clone, Copy)]
struct WalHeader {
    page_size: u32,
    big_endian: bool,
    salt: [u32; 2],
    /// The checksum stored in the header: the seed of the first frame's.
    checksum: [u32; 2],
    checksum_ok: bool,
}

fn parse_wal_header(b: &[u8]) -> Option<WalHeader> {
    let big_endian = match be32(b, 0)? {
        WAL_MAGIC_LE => false,
        WAL_MAGIC_BE => true,
        _ => return None,
    };
    let page_size = be32(b, 8)?;
    if !valid_page_size(page_size) {
        return None;
    }
    let checksum = [be32(b, 24)?, be32(b, 28)?];
    let computed = wal_checksum(big_endian, b.get(..24)?, [0, 0]);
    Some(WalHeader {
        page_size,
        big_endian,
        salt: [be32(b, 16)?, be32(b, 20)?],
        checksum,
        checksum_ok: computed == checksum,
    })
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from `seed`.
fn wal_checksum(big_endian: bool, data: &[u8], seed: [u32; 2]) -> [u32; 2] {
    let [mut s0, mut s1] = seed;
    for chunk in data.chunks_exact(8) {
        let (a, b) = chunk.split_at(4);
        let (a, b) = match (<[u8; 4]>::try_from(a), <[u8; 4]>::try_from(b)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => break,
        };
        let (x0, x1) = if big_endian {
            (u32::from_be_bytes(a), u32::from_be_bytes(b))
        } else {
            (u32::from_le_bytes(a), u32::from_le_bytes(b))
        };
        s0 = s0.wrapping_add(x0).wrapping_add(s1);
        s1 = s1.wrapping_add(x1).wrapping_add(s0);
    }
    [s0, s1]
}

/// One WAL frame, as its header says.
#[derive(Debug, Clone, Copy)]
struct FrameInfo {
    page: u32,
    salt: [u32; 2],
    committed: bool,
}

/// The WAL's frames: what each holds, which frames hold each page, where each frame's
/// transaction ends.
#[derive(Debug, Default)]
struct WalIndex {
    frames: Vec<FrameInfo>,
    /// Page number → indexes (0-based, ascending) of the frames holding it.
    by_page: HashMap<u32, Vec<u32>>,
    /// Frame index → index of the first commit frame at or after it (or the last frame).
    txn_end: Vec<u32>,
}

impl WalIndex {
    /// The frame to read page `page` from for a record of frame `of`: the latest frame of
    /// the same generation (salts) holding it, no later than the end of `of`'s transaction.
    fn frame_of_page(&self, page: u32, of: usize) -> Option<u32> {
        let info = self.frames.get(of)?;
        let end = *self.txn_end.get(of)?;
        let frames = self.by_page.get(&page)?;
        let upto = frames.partition_point(|&j| j <= end);
        frames
            .get(..upto)?
            .iter()
            .rev()
            .find(|&&j| {
                self.frames
                    .get(j as usize)
                    .is_some_and(|f| f.salt == info.salt)
            })
            .copied()
    }
}

/// Reads every frame header of the WAL (and the page, for the checksums): the index, the
/// committed prefix, the counts.
fn index_wal<W: Read + Seek>(
    wal: &mut W,
    frames: u64,
    geometry: Geometry,
    header: Option<WalHeader>,
    report: &mut ScanReport,
) -> WalIndex {
    let page_len = geometry.page_size;
    let frame_len = page_len.saturating_add(FRAME_HEADER_LEN as usize);
    let mut buf = vec![0u8; frame_len];
    let mut index = WalIndex::default();
    // The checksum chain is followed only while every frame so far is valid.
    let mut chain = header.filter(|h| h.checksum_ok && h.page_size as usize == page_len);
    let mut running = chain.map_or([0, 0], |h| h.checksum);
    let mut last_commit: Option<u32> = None;
    let mut commits: Vec<bool> = Vec::new();
    let frames = u32::try_from(frames).unwrap_or(u32::MAX);
    for i in 0..frames {
        let offset = frame_offset(i, page_len as u64);
        let got = match read_at(wal, offset, &mut buf) {
            Ok(got) => got,
            Err(_) => {
                report.wal_unreadable_frames += 1;
                chain = None;
                index.frames.push(FrameInfo {
                    page: 0,
                    salt: [0, 0],
                    committed: false,
                });
                commits.push(false);
                continue;
            }
        };
        let data = buf.get(..got).unwrap_or(&[]);
        let page = be32(data, 0).unwrap_or(0);
        let db_size = be32(data, 4).unwrap_or(0);
        let salt = [be32(data, 8).unwrap_or(0), be32(data, 12).unwrap_or(0)];
        if let Some(h) = chain {
            let whole = got == frame_len;
            let stored = [be32(data, 16).unwrap_or(0), be32(data, 20).unwrap_or(0)];
            let computed = data
                .get(..8)
                .zip(data.get(FRAME_HEADER_LEN as usize..))
                .map(|(head, page)| {
                    wal_checksum(
                        h.big_endian,
                        page,
                        wal_checksum(h.big_endian, head, running),
                    )
                });
            if whole && page != 0 && salt == h.salt && computed == Some(stored) {
                running = stored;
                if db_size != 0 {
                    last_commit = Some(i);
                }
            } else {
                chain = None;
            }
        }
        index.frames.push(FrameInfo {
            page,
            salt,
            committed: false,
        });
        commits.push(db_size != 0);
        index.by_page.entry(page).or_default().push(i);
    }
    if let Some(last) = last_commit {
        for frame in index.frames.iter_mut().take(last as usize + 1) {
            frame.committed = true;
        }
        report.wal_committed_frames = u64::from(last) + 1;
    }
    // Transaction ends, from the back.
    let count = index.frames.len();
    index.txn_end = vec![0; count];
    let mut end = u32::try_from(count.saturating_sub(1)).unwrap_or(0);
    for (i, is_commit) in commits.iter().enumerate().rev() {
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        if *is_commit {
            end = i;
        }
        if let Some(slot) = index.txn_end.get_mut(i as usize) {
            *slot = end;
        }
    }
    index
}

/// Byte offset of WAL frame `index` (0-based).
fn frame_offset(index: u32, page_len: u64) -> u64 {
    WAL_HEADER_LEN + u64::from(index) * (page_len + FRAME_HEADER_LEN)
}

/// Where the pages of a file are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Database,
    Wal,
}

/// Guesses the page size of a file whose header is unreadable: see the module docs.
fn guess_page_size<R: Read + Seek>(r: &mut R, len: u64, layout: Layout) -> Option<u32> {
    let mut best: Option<(u64, u64, u32)> = None;
    let mut buf = vec![0u8; MAX_PAGE_SIZE as usize];
    let mut size = MIN_PAGE_SIZE;
    while size <= MAX_PAGE_SIZE {
        let page_len = u64::from(size);
        let (base, stride, skip) = match layout {
            Layout::Database => (0, page_len, 0),
            Layout::Wal => (
                WAL_HEADER_LEN,
                page_len + FRAME_HEADER_LEN,
                FRAME_HEADER_LEN,
            ),
        };
        let units = len.saturating_sub(base).div_ceil(stride);
        let budget = (GUESS_SAMPLE_BYTES / page_len).max(1);
        let sample = units.min(budget);
        let geometry = Geometry::new(size, 0);
        let (mut pages, mut cells) = (0u64, 0u64);
        for j in 0..sample {
            // Evenly spread over the file; every unit when the file is small enough.
            let unit = (u128::from(j) * u128::from(units) / u128::from(sample)) as u64;
            let offset = base + unit * stride + skip;
            let page = buf.get_mut(..size as usize).unwrap_or(&mut []);
            let got = match read_at(r, offset, page) {
                Ok(got) => got,
                Err(_) => continue,
            };
            let data = page.get(..got).unwrap_or(&[]);
            let first = layout == Layout::Database && unit == 0;
            let found = plausible_leaf(data, header_offset(data, first), geometry);
            if found > 0 {
                pages += 1;
                cells += found;
            }
        }
        if pages > 0 && best.is_none_or(|(p, c, _)| (pages, cells) > (p, c)) {
            best = Some((pages, cells, size));
        }
        size *= 2;
    }
    best.map(|(_, _, size)| size)
}

/// Where the b-tree header of a page starts: after the database header on page 1 (or on
/// any page that begins with one, such as a WAL frame of page 1).
fn header_offset(data: &[u8], is_page_one: bool) -> usize {
    if is_page_one || data.starts_with(DB_MAGIC) {
        DB_HEADER_LEN
    } else {
        0
    }
}

/// For the page-size guess: how many cells of `data` decode, if it is a table-leaf page
/// whose every cell pointer lies inside the page (0 otherwise).
fn plausible_leaf(data: &[u8], hdr: usize, geometry: Geometry) -> u64 {
    let Some(leaf) = LeafPage::parse(data, hdr, geometry) else {
        return 0;
    };
    let mut decoded = 0;
    for i in 0..leaf.cells {
        let Some(ptr) = leaf.pointer(data, i) else {
            return 0;
        };
        if ptr < leaf.content_min || ptr >= geometry.usable {
            return 0;
        }
        match parse_cell(data, ptr, geometry, u64::MAX) {
            Ok(Cell::Local { payload, .. }) => {
                if decode_record(payload).is_some() {
                    decoded += 1;
                }
            }
            Ok(Cell::Spilled { .. }) => decoded += 1,
            Err(()) => {}
        }
    }
    decoded
}

/// The cell-pointer array of a table-leaf page.
#[derive(Debug, Clone, Copy)]
struct LeafPage {
    cells: usize,
    /// Offset of the first cell pointer.
    array: usize,
    /// The lowest offset a cell may start at (just past the pointer array).
    content_min: usize,
}

impl LeafPage {
    /// `None` unless `data` (a page, possibly cut short) has a table-leaf header at `hdr`
    /// whose pointer array fits in the page.
    fn parse(data: &[u8], hdr: usize, geometry: Geometry) -> Option<LeafPage> {
        if *data.get(hdr)? != TABLE_LEAF {
            return None;
        }
        let cells = usize::from(be16(data, hdr.checked_add(3)?)?);
        let array = hdr.checked_add(LEAF_HEADER_LEN)?;
        let content_min = array.checked_add(cells.checked_mul(2)?)?;
        (content_min <= geometry.usable).then_some(LeafPage {
            cells,
            array,
            content_min,
        })
    }

    /// The offset of cell `i` (`None` when the pointer lies past the bytes read).
    fn pointer(&self, data: &[u8], i: usize) -> Option<usize> {
        let at = self.array.checked_add(i.checked_mul(2)?)?;
        be16(data, at).map(usize::from)
    }
}

/// A table-leaf cell.
#[derive(Debug)]
enum Cell<'p> {
    /// The whole payload is on the page.
    Local { rowid: i64, payload: &'p [u8] },
    /// The payload continues on `overflow_pages` overflow pages from `first_overflow`.
    Spilled {
        rowid: i64,
        payload_size: u64,
        local: &'p [u8],
        first_overflow: u32,
        overflow_pages: u64,
    },
}

/// Parses the cell at `ptr` of a table-leaf page. `max_overflow_pages`: how many pages the
/// files hold, which bounds an overflow chain.
fn parse_cell(
    data: &[u8],
    ptr: usize,
    geometry: Geometry,
    max_overflow_pages: u64,
) -> Result<Cell<'_>, ()> {
    // A cell lies within the usable part of the page (and within what was read).
    let area = data.get(..geometry.usable.min(data.len())).ok_or(())?;
    let rest = area.get(ptr..).ok_or(())?;
    let (payload_size, n1) = varint(rest).ok_or(())?;
    let (rowid, n2) = varint(rest.get(n1..).ok_or(())?).ok_or(())?;
    if payload_size == 0 || payload_size > MAX_PAYLOAD {
        return Err(());
    }
    let rowid = rowid as i64;
    let start = n1.checked_add(n2).ok_or(())?;
    let local_len = geometry.local_payload(payload_size);
    let local_len = usize::try_from(local_len).map_err(|_| ())?;
    let end = start.checked_add(local_len).ok_or(())?;
    let local = rest.get(start..end).ok_or(())?;
    if local_len as u64 == payload_size {
        return Ok(Cell::Local {
            rowid,
            payload: local,
        });
    }
    let first_overflow = be32(rest, end).ok_or(())?;
    let overflow_pages = (payload_size - local_len as u64).div_ceil(geometry.overflow_content());
    if first_overflow == 0 || overflow_pages > max_overflow_pages {
        return Err(());
    }
    Ok(Cell::Spilled {
        rowid,
        payload_size,
        local,
        first_overflow,
        overflow_pages,
    })
}

/// Where a record's overflow pages are looked up.
#[derive(Debug, Clone, Copy)]
enum Origin {
    Database,
    /// WAL frame index (0-based).
    Wal(usize),
}

struct Scanner<'a, D, W> {
    db: &'a mut D,
    db_pages: u64,
    wal: Option<&'a mut W>,
    wal_index: WalIndex,
    geometry: Geometry,
    /// One page, for overflow pages.
    overflow_buf: Vec<u8>,
    /// The pages the current record's overflow chain was read from.
    chain: Vec<Location>,
}

impl<D: Read + Seek, W: Read + Seek> Scanner<'_, D, W> {
    fn scan_database(
        &mut self,
        report: &mut ScanReport,
        on_record: &mut impl FnMut(FoundRecord, &[Location]),
    ) {
        let mut page = vec![0u8; self.geometry.page_size];
        let page_len = self.geometry.page_size as u64;
        for index in 0..self.db_pages {
            let Ok(number) = u32::try_from(index + 1) else {
                break;
            };
            let got = match read_at(self.db, index * page_len, &mut page) {
                Ok(got) => got,
                Err(_) => {
                    report.unreadable_pages += 1;
                    continue;
                }
            };
            let data = page.get(..got).unwrap_or(&[]);
            let hdr = header_offset(data, index == 0);
            let Some(leaf) = LeafPage::parse(data, hdr, self.geometry) else {
                continue;
            };
            report.leaf_pages += 1;
            let (found, bad) = self.scan_leaf(
                data,
                leaf,
                Origin::Database,
                Location::Page(number),
                on_record,
            );
            report.records += found;
            report.unreadable_cells += bad;
        }
    }

    fn scan_wal(
        &mut self,
        report: &mut ScanReport,
        on_record: &mut impl FnMut(FoundRecord, &[Location]),
    ) {
        let page_len = self.geometry.page_size;
        let mut frame = vec![0u8; page_len + FRAME_HEADER_LEN as usize];
        for index in 0..self.wal_index.frames.len() {
            let Some(info) = self.wal_index.frames.get(index).copied() else {
                break;
            };
            let Ok(number) = u32::try_from(index + 1) else {
                break;
            };
            let Some(wal) = self.wal.as_deref_mut() else {
                return;
            };
            let Ok(got) = read_at(wal, frame_offset(number - 1, page_len as u64), &mut frame)
            else {
                continue;
            };
            let data = frame.get(FRAME_HEADER_LEN as usize..got).unwrap_or(&[]);
            let hdr = header_offset(data, info.page == 1);
            let Some(leaf) = LeafPage::parse(data, hdr, self.geometry) else {
                continue;
            };
            report.wal_leaf_pages += 1;
            let location = Location::WalFrame {
                frame: number,
                page: info.page,
                committed: info.committed,
            };
            let (found, bad) = self.scan_leaf(data, leaf, Origin::Wal(index), location, on_record);
            report.wal_records += found;
            report.wal_unreadable_cells += bad;
        }
    }

    /// Every cell of a leaf page: (records found, cells unreadable).
    fn scan_leaf(
        &mut self,
        data: &[u8],
        leaf: LeafPage,
        origin: Origin,
        location: Location,
        on_record: &mut impl FnMut(FoundRecord, &[Location]),
    ) -> (u64, u64) {
        let max_overflow_pages = match origin {
            Origin::Database => self.db_pages,
            Origin::Wal(_) => self
                .db_pages
                .saturating_add(self.wal_index.frames.len() as u64),
        };
        let (mut found, mut bad) = (0, 0);
        for i in 0..leaf.cells {
            self.chain.clear();
            let record = match leaf.pointer(data, i) {
                Some(ptr) if ptr >= leaf.content_min && ptr < self.geometry.usable => {
                    match parse_cell(data, ptr, self.geometry, max_overflow_pages) {
                        Ok(Cell::Local { rowid, payload }) => {
                            decode_record(payload).map(|values| (rowid, values))
                        }
                        Ok(Cell::Spilled {
                            rowid,
                            payload_size,
                            local,
                            first_overflow,
                            overflow_pages,
                        }) => self
                            .assemble(local, payload_size, first_overflow, overflow_pages, origin)
                            .and_then(|payload| decode_record(&payload))
                            .map(|values| (rowid, values)),
                        Err(()) => None,
                    }
                }
                _ => None,
            };
            match record {
                Some((rowid, values)) => {
                    found += 1;
                    on_record(
                        FoundRecord {
                            rowid,
                            values,
                            location,
                        },
                        &self.chain,
                    );
                }
                None => bad += 1,
            }
        }
        (found, bad)
    }

    /// The whole payload of a spilled cell: its local part, then exactly `pages` overflow
    /// pages from `first`, the last of which must end the chain.
    fn assemble(
        &mut self,
        local: &[u8],
        payload_size: u64,
        first: u32,
        pages: u64,
        origin: Origin,
    ) -> Option<Vec<u8>> {
        let capacity = usize::try_from(payload_size.min(1 << 20)).unwrap_or(0);
        let mut payload = Vec::with_capacity(capacity);
        payload.extend_from_slice(local);
        let mut remaining = payload_size.checked_sub(local.len() as u64)?;
        let per_page = self.geometry.overflow_content();
        let mut next = first;
        for step in 0..pages {
            if next == 0 {
                return None;
            }
            let content = self.read_overflow(next, origin)?;
            let take = remaining.min(per_page);
            let take_len = usize::try_from(take).ok()?;
            let next_page = be32(content, 0)?;
            payload.extend_from_slice(content.get(4..4usize.checked_add(take_len)?)?);
            remaining -= take;
            if step + 1 == pages && (remaining != 0 || next_page != 0) {
                return None;
            }
            next = next_page;
        }
        (remaining == 0).then_some(payload)
    }

    /// Reads overflow page `page` (its usable part) for a record from `origin`.
    fn read_overflow(&mut self, page: u32, origin: Origin) -> Option<&[u8]> {
        let page_len = self.geometry.page_size as u64;
        let wal_frame = match origin {
            Origin::Wal(of) => self.wal_index.frame_of_page(page, of),
            Origin::Database => None,
        };
        let got = if let (Some(j), Some(wal)) = (wal_frame, self.wal.as_deref_mut()) {
            let offset = frame_offset(j, page_len) + FRAME_HEADER_LEN;
            let got = read_at(wal, offset, &mut self.overflow_buf).ok()?;
            let info = self.wal_index.frames.get(j as usize)?;
            self.chain.push(Location::WalFrame {
                frame: j.checked_add(1)?,
                page,
                committed: info.committed,
            });
            got
        } else {
            if u64::from(page) > self.db_pages {
                return None;
            }
            let offset = u64::from(page.checked_sub(1)?) * page_len;
            let got = read_at(self.db, offset, &mut self.overflow_buf).ok()?;
            self.chain.push(Location::Page(page));
            got
        };
        self.overflow_buf.get(..got.min(self.geometry.usable))
    }
}

/// Decodes a record (header of serial types, then values); `None` unless its sizes add up
/// to exactly the payload.
fn decode_record(payload: &[u8]) -> Option<Vec<SqlValue>> {
    let (header_len, n) = varint(payload)?;
    let header_len = usize::try_from(header_len).ok()?;
    if header_len < n || header_len > payload.len() {
        return None;
    }
    let header = payload.get(n..header_len)?;
    // First pass: the sizes must add up, before anything is allocated.
    let mut body_len: usize = 0;
    let mut columns: usize = 0;
    let mut at = 0;
    while at < header.len() {
        let (serial, len) = varint(header.get(at..)?)?;
        at += len;
        body_len = body_len.checked_add(value_len(serial)?)?;
        columns += 1;
        if columns > MAX_COLUMNS {
            return None;
        }
    }
    // SQLite writes no record without columns; random bytes often look like one.
    if columns == 0 || header_len.checked_add(body_len)? != payload.len() {
        return None;
    }
    // Second pass: the values.
    let mut values = Vec::with_capacity(columns);
    let mut body = payload.get(header_len..)?;
    let mut at = 0;
    while at < header.len() {
        let (serial, len) = varint(header.get(at..)?)?;
        at += len;
        let size = value_len(serial)?;
        let (bytes, rest) = body.split_at_checked(size)?;
        body = rest;
        values.push(match serial {
            0 => SqlValue::Null,
            1..=6 => SqlValue::Integer(be_signed(bytes)),
            7 => SqlValue::Real(f64::from_bits(be_signed(bytes) as u64)),
            8 => SqlValue::Integer(0),
            9 => SqlValue::Integer(1),
            n if n % 2 == 0 => SqlValue::Blob(bytes.to_vec()),
            _ => SqlValue::Text(bytes.to_vec()),
        });
    }
    Some(values)
}

/// The size of a value of serial type `serial` (`None` for the reserved types 10 and 11,
/// and for sizes beyond this machine's address space).
fn value_len(serial: u64) -> Option<usize> {
    match serial {
        0 | 8 | 9 => Some(0),
        1..=4 => usize::try_from(serial).ok(),
        5 => Some(6),
        6 | 7 => Some(8),
        10 | 11 => None,
        n => usize::try_from((n - 12) / 2).ok(),
    }
}

/// A big-endian two's-complement integer of 1 to 8 bytes.
fn be_signed(bytes: &[u8]) -> i64 {
    let mut v: u64 = match bytes.first() {
        Some(b) if b & 0x80 != 0 => u64::MAX,
        _ => 0,
    };
    for &b in bytes {
        v = (v << 8) | u64::from(b);
    }
    v as i64
}

/// A SQLite varint at the start of `b`: (value, bytes used). 1 to 9 bytes, big-endian,
/// 7 bits a byte with the high bit meaning "more", the ninth byte all 8 bits.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, &byte) in b.iter().take(9).enumerate() {
        if i == 8 {
            return Some(((v << 8) | u64::from(byte), 9));
        }
        v = (v << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let bytes = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes(bytes.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let bytes = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// Reads up to `buf.len()` bytes at `offset`: how many were read (fewer at the end of the
/// file).
fn read_at<R: Read + Seek>(r: &mut R, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    r.seek(SeekFrom::Start(offset))?;
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..) {
        if rest.is_empty() {
            break;
        }
        match r.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n.min(rest.len()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
