//! Power loss: the gateway's data directory on a layer that loses every write not yet
//! fsync'ed (`tests/powerloss_fs.py`, through `vitalbridge_tests::powerloss`), and power
//! cut at random moments while readings keep coming.
//!
//! The first tests check the layer itself: that it really drops unsynced data and keeps
//! synced data, so that the gateway test below proves something.
//!
//! Needs root and /dev/fuse (FUSE), and Debian's python3-pyfuse3 (tests/setup.sh).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use rand::Rng;
use vitalbridge_tests::fixture::{self, Pace, Publisher, Rig};
use vitalbridge_tests::powerloss::PowerLossFs;

fn read(path: &std::path::Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn the_layer_loses_unsynced_writes_and_keeps_synced_ones() {
    let mut fs = PowerLossFs::mount().expect("mount the power-loss layer");
    let dir = fs.path();

    // Written, never synced.
    fs::write(dir.join("unsynced"), b"gone after the cut").unwrap();
    // Written and fsync'ed, then more written without a sync.
    let mut synced = File::create(dir.join("synced")).unwrap();
    synced.write_all(b"kept").unwrap();
    synced.sync_all().unwrap();
    synced.write_all(b" but not this").unwrap();
    // fdatasync counts as well.
    let mut datasynced = File::create(dir.join("datasynced")).unwrap();
    datasynced.write_all(&[7u8; 10_000]).unwrap();
    datasynced.sync_data().unwrap();
    // An unsynced truncate, then an unsynced overwrite inside what is left.
    datasynced.set_len(100).unwrap();
    datasynced.seek(SeekFrom::Start(10)).unwrap();
    datasynced.write_all(b"xx").unwrap();
    // An unsynced extension (the size change is unsynced too).
    let grown = File::create(dir.join("grown")).unwrap();
    grown.set_len(4096 * 3 + 5).unwrap();
    // A rename: names are durable at once (the layer's documented choice).
    fs::write(dir.join("old-name"), b"x").unwrap();
    fs::rename(dir.join("old-name"), dir.join("new-name")).unwrap();
    // Unlinked: stays unlinked.
    fs::write(dir.join("deleted"), b"x").unwrap();
    File::open(dir.join("deleted")).unwrap().sync_all().unwrap();
    fs::remove_file(dir.join("deleted")).unwrap();

    // Before the cut every reader sees everything, as with a page cache.
    assert_eq!(read(&dir.join("unsynced")), b"gone after the cut");
    assert_eq!(read(&dir.join("synced")), b"kept but not this");
    let mut expect = vec![7u8; 100];
    expect[10..12].copy_from_slice(b"xx");
    assert_eq!(read(&dir.join("datasynced")), expect);
    assert_eq!(read(&dir.join("grown")), vec![0u8; 4096 * 3 + 5]);
    // … while the disk holds only what was synced.
    assert_eq!(read(&fs.backing().join("unsynced")), b"");
    assert_eq!(read(&fs.backing().join("synced")), b"kept");
    let status = fs.status().unwrap();
    assert!(status.fsyncs >= 3, "{status:?}");
    for name in ["unsynced", "synced", "datasynced", "grown", "new-name"] {
        assert!(status.file(name).is_some(), "{name} is dirty: {status:?}");
    }
    drop((synced, datasynced, grown));

    let cut = fs.power_cut().unwrap();
    assert!(cut.lost_bytes("unsynced") > 0, "{cut:?}");
    assert_eq!(fs.mounts(), 2);

    assert_eq!(
        read(&dir.join("unsynced")),
        b"",
        "an unsynced write is lost"
    );
    assert_eq!(
        read(&dir.join("synced")),
        b"kept",
        "only the synced part stays"
    );
    assert_eq!(
        read(&dir.join("datasynced")),
        vec![7u8; 10_000],
        "an unsynced truncate and overwrite are undone"
    );
    assert_eq!(
        read(&dir.join("grown")),
        b"",
        "an unsynced size change is undone"
    );
    assert!(!dir.join("old-name").exists() && dir.join("new-name").exists());
    assert_eq!(read(&dir.join("new-name")), b"", "its unsynced data is not");
    assert!(!dir.join("deleted").exists());
    assert!(
        fs.status().unwrap().files.is_empty(),
        "a fresh mount holds nothing unsynced"
    );
}

#[test]
fn shared_memory_maps_work_and_are_not_durable_without_msync() {
    let mut fs = PowerLossFs::mount().expect("mount the power-loss layer");
    let path = fs.path().join("mapped-shm");
    const LEN: usize = 32 * 1024;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(LEN as u64).unwrap();
    file.sync_all().unwrap();
    // SAFETY: a fresh shared read-write mapping of a file we own, of its exact length,
    // unmapped below; nothing else in this test touches it meanwhile.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        let bytes = std::slice::from_raw_parts_mut(p.cast::<u8>(), LEN);
        bytes[..5].copy_from_slice(b"hello");
        bytes[LEN - 5..].copy_from_slice(b"world");
        // Another descriptor reads what the mapping wrote (one page cache).
        let mut other = File::open(&path).unwrap();
        let mut seen = vec![0u8; LEN];
        other.read_exact(&mut seen).unwrap();
        assert_eq!(&seen[..5], b"hello");
        assert_eq!(&seen[LEN - 5..], b"world");
        libc::munmap(p, LEN);
    }
    drop(file);
    let cut = fs.power_cut().unwrap();
    assert!(cut.lost_bytes("mapped-shm") > 0, "{cut:?}");
    let after = read(&path);
    assert_eq!(after.len(), LEN, "the synced size stays");
    assert!(
        after.iter().all(|b| *b == 0),
        "what the mapping wrote was never synced"
    );
}

/// Power cuts the test makes: 50, or `POWERLOSS_CUTS` (tests/soak.sh sets it higher).
fn cuts_wanted() -> u32 {
    std::env::var("POWERLOSS_CUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_at_random_moments_lose_and_duplicate_nothing() {
    let started = Instant::now();
    let rig = Rig::start().await;
    // A slow card: each fsync takes 15 ms, so a cut often finds a commit half-way.
    let mut fs = PowerLossFs::mount_with_sync_delay(Duration::from_millis(15))
        .expect("mount the power-loss layer");
    let config = rig.config(&fs.path().join("data"), "");
    let mut gw = rig.start_gateway(&config);
    assert!(
        fixture::wait_subscribed(&gw, 1, Duration::from_secs(30)),
        "the gateway did not start on the power-loss layer\n{}\n--- layer log ---\n{}",
        fixture::tail(&gw.log(), 40),
        fs.log()
    );

    let publisher = Publisher::start(
        rig.broker.port(),
        Pace {
            chunk: 50,
            pause: Duration::from_millis(150),
            max: u64::MAX,
        },
    );
    let mut rng = rand::thread_rng();
    let mut lost_wal_cuts = 0u32;
    let mut lost_wal_bytes = 0u64;
    let mut mid_fsync_cuts = 0u32;
    let mut lost_shm_cuts = 0u32;
    let wanted = cuts_wanted();
    let mut cuts = 0u32;
    while cuts < wanted {
        // Sometimes while the gateway starts (opening and recovering the database), mostly
        // while it commits and delivers.
        let wait = if rng.gen_bool(0.25) {
            rng.gen_range(0..300)
        } else {
            rng.gen_range(300..1500)
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let cut = fs.cut(&mut gw).unwrap_or_else(|e| {
            panic!(
                "power cut {}: {e}\n--- layer log ---\n{}",
                cuts + 1,
                fs.log()
            )
        });
        cuts += 1;
        let wal = cut.lost_bytes("buffer.db-wal");
        if wal > 0 {
            lost_wal_cuts += 1;
            lost_wal_bytes += wal;
        }
        if cut.lost.fsyncs_in_flight > 0 {
            mid_fsync_cuts += 1;
        }
        if cut.lost_bytes("buffer.db-shm") > 0 {
            lost_shm_cuts += 1;
        }
        gw.restart().expect("restart the gateway");
    }
    let published = publisher.stop().await;
    let delivered = fixture::wait_for_delivery(
        &rig.upstream,
        published.accepted as usize,
        Duration::from_secs(30),
        Duration::from_secs(120),
    )
    .await;
    // Give a would-be duplicate time to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let resends: usize = rig.upstream.log().iter().map(|e| e.existed).sum();
    eprintln!(
        "{cuts} power cuts in {} s: {} readings published, {delivered} delivered; \
         {lost_wal_cuts} cuts lost unsynced WAL data ({} KiB in all), {mid_fsync_cuts} came \
         during an fsync, {lost_shm_cuts} lost the WAL index (-shm); the upstream answered \
         'already exists' {resends} times",
        started.elapsed().as_secs(),
        published.accepted,
        lost_wal_bytes / 1024
    );
    assert_eq!(gw.starts, wanted + 1);
    assert!(
        published.accepted > 0 && lost_wal_cuts > 0,
        "no cut found unsynced WAL data ({} readings published): the test proves nothing",
        published.accepted
    );
    if let Err(e) = fixture::reconcile(&rig.upstream, published.accepted, &gw.log()) {
        panic!(
            "after {cuts} power cuts: {e}\n--- layer log ---\n{}",
            fs.log()
        );
    }
}
