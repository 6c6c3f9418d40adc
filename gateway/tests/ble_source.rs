//! The BLE source against recorded notification streams, through a fake [`Central`]: the
//! source's whole logic (subscriptions, RACP sequencing, reconnects, clock handling,
//! notification → buffer) runs unchanged; only the radio is simulated. Readings land in a
//! real SQLite buffer through the real group-commit writer.
//!
//! The byte streams are Bluetooth SIG characteristic values laid out per the GATT
//! Specification Supplement (the decoders' own byte-exact tests cite their vectors).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vitalbridge::buffer::writer::{self, WriterConfig};
use vitalbridge::buffer::Store;
use vitalbridge::config::{BleSourceConfig, Config};
use vitalbridge::ingest::ble::{
    Address, Advertisement, BleError, BleSource, Central, CentralEvent, GattCharacteristic, Link,
    Notification, Properties, Timing,
};
use vitalbridge::ingest::Bindings;
use vitalbridge::model::{Reading, TimeSource, Value};
use vitalbridge::ops::metrics::Metrics;
use vitalbridge::pipeline::{self, Ingest};
use vitalbridge::profile::ble::{datetime, racp};

const GLS: u16 = 0x1808;
const BLS: u16 = 0x1810;
const HTS: u16 = 0x1809;
const CTS: u16 = 0x1805;
const GLUCOSE: u16 = 0x2A18;
const GLUCOSE_CONTEXT: u16 = 0x2A34;
const RACP: u16 = 0x2A52;
const BPM: u16 = 0x2A35;
const TEMP: u16 = 0x2A1C;
const CURRENT_TIME: u16 = 0x2A2B;

const METER: Address = [0xC0, 0xFF, 0xEE, 0x00, 0x00, 0x01];
const CUFF: Address = [0xC0, 0xFF, 0xEE, 0x00, 0x00, 0x02];
const THERMOMETER: Address = [0xC0, 0xFF, 0xEE, 0x00, 0x00, 0x03];

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn ch(
    service: u16,
    uuid: u16,
    read: bool,
    write: bool,
    notify: bool,
    indicate: bool,
) -> GattCharacteristic {
    GattCharacteristic {
        service,
        uuid,
        properties: Properties {
            read,
            write,
            notify,
            indicate,
        },
    }
}

/// What a fake device does. Everything it sends is a recorded characteristic value.
#[derive(Clone, Default)]
struct Script {
    services: Vec<u16>,
    chars: Vec<GattCharacteristic>,
    /// Stored glucose records by sequence number: the measurement and, if any, its context.
    records: Vec<(u16, Vec<Notification>)>,
    /// Values the device indicates right after a subscription to the characteristic (a cuff's
    /// stored measurement), after which it disconnects if `hang_up_after_stored`.
    on_subscribe: Vec<(u16, Vec<Notification>)>,
    hang_up_after_stored: bool,
    /// With `hang_up_after_stored`: every stored value is queued and the adapter reports the
    /// disconnection before the subscription call returns (BlueZ confirmed the indications
    /// already; the source sees the values and the "gone" report at once).
    gone_at_once: bool,
    /// Per connection (by index): drop the link after sending this many RACP notifications.
    drop_after: HashMap<usize, usize>,
    /// Device clock = real clock − skew.
    clock_skew: time::Duration,
    /// Refuse this many connection attempts first (out of range, busy).
    refuse_connects: usize,
    /// The clock was never set: Current Time reads "not known" (year 0) until written.
    clock_unset: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Connect(Address),
    Subscribe(Address, u16),
    Write(Address, u16, Vec<u8>),
    Read(Address, u16),
    Sent(Address, u16, Vec<u8>),
    /// The gateway disconnected: its session is over and everything it committed is in.
    Disconnect(Address),
}

#[derive(Default)]
struct World {
    scripts: HashMap<Address, Script>,
    ops: Vec<Op>,
    connections: HashMap<Address, usize>,
    /// The notification sender of each live connection, so a test can send live values.
    live: HashMap<Address, mpsc::Sender<Notification>>,
}

#[derive(Clone, Default)]
struct FakeCentral {
    world: Arc<Mutex<World>>,
    events: Arc<Mutex<Option<mpsc::Sender<CentralEvent>>>>,
}

impl FakeCentral {
    fn add(&self, address: Address, script: Script) {
        self.world.lock().unwrap().scripts.insert(address, script);
    }

    fn ops(&self) -> Vec<Op> {
        self.world.lock().unwrap().ops.clone()
    }

    fn log(&self, op: Op) {
        self.world.lock().unwrap().ops.push(op);
    }

    async fn advertise(&self, address: Address) {
        let services = self.world.lock().unwrap().scripts[&address]
            .services
            .clone();
        let tx = self.events.lock().unwrap().clone();
        if let Some(tx) = tx {
            let _ = tx
                .send(CentralEvent::Advertisement(Advertisement {
                    address,
                    name: Some("fake".into()),
                    services,
                    rssi: Some(-50),
                }))
                .await;
        }
    }

    /// Keeps advertising `address` until `done` holds (a device advertises while it has data).
    async fn advertise_until(&self, address: Address, what: &str, done: impl Fn(&[Op]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !done(&self.ops()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; ops: {:#?}",
                self.ops()
            );
            self.advertise(address).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The adapter reports the device gone (btleplug/BlueZ: the notification stream itself
    /// does not end).
    async fn report_disconnected(&self, address: Address) {
        let tx = self.events.lock().unwrap().clone();
        tx.expect("scanning")
            .send(CentralEvent::Disconnected(address))
            .await
            .unwrap();
    }

    /// Sends a live notification on the device's current connection.
    async fn send_live(&self, address: Address, n: Notification) {
        let tx = self.world.lock().unwrap().live.get(&address).cloned();
        tx.expect("connected").send(n).await.unwrap();
    }
}

impl Central for FakeCentral {
    type Link = FakeLink;

    async fn scan(&self) -> Result<mpsc::Receiver<CentralEvent>, BleError> {
        let (tx, rx) = mpsc::channel(16);
        *self.events.lock().unwrap() = Some(tx);
        Ok(rx)
    }

    async fn connect(&self, address: Address) -> Result<FakeLink, BleError> {
        let mut w = self.world.lock().unwrap();
        let script = w
            .scripts
            .get(&address)
            .cloned()
            .ok_or(BleError::NotFound("unknown".into()))?;
        w.ops.push(Op::Connect(address));
        if let Some(s) = w
            .scripts
            .get_mut(&address)
            .filter(|s| s.refuse_connects > 0)
        {
            s.refuse_connects -= 1;
            return Err(BleError::operation(
                "connect",
                "le-connection-abort-by-local",
            ));
        }
        let n = w.connections.entry(address).or_default();
        let index = *n;
        *n += 1;
        Ok(FakeLink {
            address,
            index,
            script,
            central: self.clone(),
            tx: Arc::new(Mutex::new(None)),
        })
    }
}

struct FakeLink {
    address: Address,
    index: usize,
    script: Script,
    central: FakeCentral,
    tx: Arc<Mutex<Option<mpsc::Sender<Notification>>>>,
}

impl FakeLink {
    fn sender(&self) -> Option<mpsc::Sender<Notification>> {
        self.tx.lock().unwrap().clone()
    }

    fn hang_up(&self) {
        self.tx.lock().unwrap().take();
        self.central
            .world
            .lock()
            .unwrap()
            .live
            .remove(&self.address);
    }

    /// Sends values from a separate task, as a device does: the gateway's writes complete
    /// whether or not it has drained the notifications yet.
    fn send_all(&self, values: Vec<Notification>, then: After) {
        let Some(tx) = self.sender() else { return };
        let (central, address, slot) = (self.central.clone(), self.address, self.tx.clone());
        tokio::spawn(async move {
            for n in values {
                central.log(Op::Sent(address, n.characteristic, n.value.clone()));
                if tx.send(n).await.is_err() {
                    return;
                }
            }
            match then {
                After::Stay => {}
                After::HangUp => {
                    drop(tx);
                    slot.lock().unwrap().take();
                    central.world.lock().unwrap().live.remove(&address);
                }
            }
        });
    }
}

enum After {
    Stay,
    HangUp,
}

impl Link for FakeLink {
    async fn discover(&self) -> Result<Vec<GattCharacteristic>, BleError> {
        Ok(self.script.chars.clone())
    }

    async fn notifications(&self) -> Result<mpsc::Receiver<Notification>, BleError> {
        // Small on purpose: the source must keep draining while a device sends a burst.
        let (tx, rx) = mpsc::channel(2);
        *self.tx.lock().unwrap() = Some(tx.clone());
        self.central
            .world
            .lock()
            .unwrap()
            .live
            .insert(self.address, tx);
        Ok(rx)
    }

    async fn subscribe(&self, characteristic: u16) -> Result<(), BleError> {
        self.central
            .log(Op::Subscribe(self.address, characteristic));
        if let Some((_, values)) = self
            .script
            .on_subscribe
            .iter()
            .find(|(c, _)| *c == characteristic)
        {
            if self.script.gone_at_once {
                let tx = self.sender().expect("notifications asked for first");
                for n in values.clone() {
                    self.central
                        .log(Op::Sent(self.address, n.characteristic, n.value.clone()));
                    tx.try_send(n).expect("room for the stored values");
                }
                self.hang_up();
                // Handed over: the cuff has nothing stored for a later connection.
                if let Some(s) = self
                    .central
                    .world
                    .lock()
                    .unwrap()
                    .scripts
                    .get_mut(&self.address)
                {
                    s.on_subscribe.clear();
                }
                let events = self.central.events.lock().unwrap().clone();
                events
                    .expect("scanning")
                    .try_send(CentralEvent::Disconnected(self.address))
                    .expect("room for the event");
                return Ok(());
            }
            let then = if self.script.hang_up_after_stored {
                After::HangUp
            } else {
                After::Stay
            };
            self.send_all(values.clone(), then);
        }
        Ok(())
    }

    async fn read(&self, characteristic: u16) -> Result<Vec<u8>, BleError> {
        self.central.log(Op::Read(self.address, characteristic));
        if characteristic == CURRENT_TIME {
            let script = &self.central.world.lock().unwrap().scripts[&self.address];
            if script.clock_unset {
                return Ok(vec![0; 10]);
            }
            let skew = script.clock_skew;
            let now = OffsetDateTime::now_utc() - skew;
            return Ok(datetime::encode_current_time(now).unwrap().to_vec());
        }
        Err(BleError::operation("read", "not readable"))
    }

    async fn write(&self, characteristic: u16, value: Vec<u8>) -> Result<(), BleError> {
        self.central
            .log(Op::Write(self.address, characteristic, value.clone()));
        match characteristic {
            RACP => {
                let from = match racp::parse_request(&value) {
                    Some(racp::Request::AllRecords) => 0,
                    Some(racp::Request::FromSequence(s)) => s,
                    None => return Err(BleError::operation("write 2A52", "bad request")),
                };
                let mut out: Vec<Notification> = self
                    .script
                    .records
                    .iter()
                    .filter(|(seq, _)| *seq >= from)
                    .flat_map(|(_, ns)| ns.clone())
                    .collect();
                match self.script.drop_after.get(&self.index) {
                    Some(&n) => {
                        out.truncate(n);
                        self.send_all(out, After::HangUp);
                    }
                    None => {
                        let code = if out.is_empty() {
                            racp::ResponseCode::NoRecordsFound
                        } else {
                            racp::ResponseCode::Success
                        };
                        out.push(Notification {
                            characteristic: RACP,
                            value: racp::Response::Code {
                                request_op_code: racp::OP_REPORT_STORED_RECORDS,
                                code,
                            }
                            .encode(),
                        });
                        self.send_all(out, After::Stay);
                    }
                }
                Ok(())
            }
            CURRENT_TIME => {
                let set = datetime::current_time(&value)
                    .map_err(|e| BleError::operation("write 2A2B", e))?
                    .expect("a known time");
                let mut w = self.central.world.lock().unwrap();
                let script = w.scripts.get_mut(&self.address).unwrap();
                script.clock_skew = OffsetDateTime::now_utc() - set;
                script.clock_unset = false;
                Ok(())
            }
            _ => Err(BleError::operation("write", "not writable")),
        }
    }

    async fn disconnect(&self) -> Result<(), BleError> {
        self.central.log(Op::Disconnect(self.address));
        self.hang_up();
        Ok(())
    }
}

/// A real buffer and writer in a temp dir, and the source running over `central`.
struct Harness {
    _dir: tempfile::TempDir,
    store: Store,
    shutdown: CancellationToken,
    source: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<writer::WriterCounts>,
    metrics: Arc<Metrics>,
}

fn timing() -> Timing {
    Timing {
        connect_timeout: Duration::from_secs(5),
        reconnect_initial: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(100),
        clock_settle: Duration::from_millis(100),
        commit_retry: Duration::from_millis(10),
    }
}

/// The source's config and bindings. A hub with no binding in its config is taken as a home
/// hub with one patient (`[default_patient]`), so the readings are stored to be delivered:
/// without a patient they would be held unbound, which `buffer::unbound` tests.
fn ble_config(toml: &str) -> (BleSourceConfig, Bindings) {
    let config = Config::from_toml(toml).expect("config parses");
    vitalbridge::validate_config(&config).expect("config validates");
    let home = vitalbridge::config::DefaultPatient {
        system: Some("urn:test".into()),
        id: Some("home".into()),
        reference: None,
        users: (0..=254).collect(),
    };
    let bindings = Bindings::from_config(&config.devices)
        .with_default(config.default_patient.as_ref().or(Some(&home)));
    (config.sources.ble.expect("[sources.ble]"), bindings)
}

impl Harness {
    async fn start(central: FakeCentral, toml: &str) -> Self {
        Self::with_capacity(central, toml, 10_000).await
    }

    async fn with_capacity(central: FakeCentral, toml: &str, capacity: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let options = vitalbridge::buffer::OpenOptions {
            capacity,
            key_file: dir.path().join("buffer.key"),
            previous_key_files: Vec::new(),
            min_free_bytes: Some(0),
            destinations: vec!["test".into()],
        };
        let (store, writer, _) = vitalbridge::buffer::open(&dir.path().join("data"), &options)
            .await
            .unwrap();
        let (tx, rx) = pipeline::channel();
        let config = WriterConfig {
            max_rows: 1000,
            linger: Duration::from_millis(1),
        };
        // Stopped already: the writer ends when the source drops its handle.
        let stop = CancellationToken::new();
        stop.cancel();
        let writer = tokio::spawn(writer.run(rx, config, stop, Box::new(|_| {})));
        let (ble, bindings) = ble_config(toml);
        let source = BleSource::new(&ble).unwrap().with_timing(timing());
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(Metrics::default());
        let ctx = vitalbridge::ingest::SourceContext {
            ingest: Ingest::new(tx, "ble"),
            bindings,
            metrics: metrics.clone(),
            audit: vitalbridge::ops::audit::Audit::default(),
            shutdown: shutdown.clone(),
        };
        let task = tokio::spawn(source.run(central, ctx));
        Self {
            _dir: dir,
            store,
            shutdown,
            source: task,
            writer,
            metrics,
        }
    }

    /// Stops the source and the writer and returns every buffered reading, in order.
    async fn finish(self) -> (Store, Vec<Reading>, Arc<Metrics>) {
        self.shutdown.cancel();
        self.source.await.unwrap();
        self.writer.await.unwrap();
        let readings = self
            .store
            .lease(&self.store.destination("test").unwrap(), 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.reading.unwrap())
            .collect();
        (self.store, readings, self.metrics)
    }
}

fn sessions_over(ops: &[Op]) -> usize {
    ops.iter()
        .filter(|o| matches!(o, Op::Disconnect(_)))
        .count()
}

fn sent(ops: &[Op], c: u16) -> usize {
    ops.iter()
        .filter(|o| matches!(o, Op::Sent(_, ch, _) if *ch == c))
        .count()
}

fn racp_requests(ops: &[Op]) -> Vec<Option<racp::Request>> {
    ops.iter()
        .filter_map(|o| match o {
            Op::Write(_, RACP, v) => Some(racp::parse_request(v)),
            _ => None,
        })
        .collect()
}

/// A Glucose Measurement per GSS: flags 0x02 (concentration, type and location present) or
/// 0x12 (and a context follows); base time 2026-01-<seq> 08:00:00; 0.00095 kg/L (SFLOAT
/// 0xB05F → 95 mg/dL); capillary whole blood from a finger (0x11).
fn glucose(seq: u16, with_context: bool) -> Notification {
    let [lo, hi] = seq.to_le_bytes();
    let flags = if with_context { 0x12 } else { 0x02 };
    let mut v = vec![flags, lo, hi, 0xEA, 0x07, 0x01, seq as u8, 0x08, 0x00, 0x00];
    v.extend(hex("5F B0 11"));
    Notification {
        characteristic: GLUCOSE,
        value: v,
    }
}

/// A Glucose Measurement Context per GSS: flags 0x02 (meal present), meal 1 (preprandial).
fn context(seq: u16) -> Notification {
    let [lo, hi] = seq.to_le_bytes();
    Notification {
        characteristic: GLUCOSE_CONTEXT,
        value: vec![0x02, lo, hi, 0x01],
    }
}

fn meter_script() -> Script {
    // Records 1..=6; the even ones carry a context.
    let records = (1..=6)
        .map(|seq| {
            let with_context = seq % 2 == 0;
            let mut ns = vec![glucose(seq, with_context)];
            if with_context {
                ns.push(context(seq));
            }
            (seq, ns)
        })
        .collect();
    Script {
        services: vec![GLS],
        chars: vec![
            ch(GLS, GLUCOSE, false, false, true, false),
            ch(GLS, GLUCOSE_CONTEXT, false, false, true, false),
            ch(GLS, RACP, false, true, false, true),
        ],
        records,
        ..Script::default()
    }
}

const METER_TOML: &str = r#"
[sources.ble]
[[sources.ble.devices]]
address = "C0:FF:EE:00:00:01"
"#;

fn glucose_sequences(readings: &[Reading]) -> Vec<u64> {
    readings
        .iter()
        .filter(|r| r.metric.mdc_ref == "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD")
        .filter_map(|r| r.sequence)
        .collect()
}

/// The meter's first connection drops after `values` notifications; runs until the second
/// session ends and returns what the central saw and what the gateway buffered.
async fn meter_reconnecting_after(values: usize) -> (Vec<Op>, Vec<Reading>, Arc<Metrics>) {
    let central = FakeCentral::default();
    let mut script = meter_script();
    script.drop_after.insert(0, values);
    central.add(METER, script);
    let h = Harness::start(central.clone(), METER_TOML).await;
    central
        .advertise_until(METER, "the second session to end", |ops| {
            sessions_over(ops) >= 2
        })
        .await;
    let ops = central.ops();
    let (_, readings, metrics) = h.finish().await;
    (ops, readings, metrics)
}

#[tokio::test]
async fn a_glucose_meter_reconnecting_mid_transfer_delivers_every_record_once() {
    // The first connection drops after records 1 (1 value), 2 (2), 3 (1): 4 values.
    let (ops, readings, metrics) = meter_reconnecting_after(4).await;

    // First everything, then only what the buffer did not hold.
    assert_eq!(
        racp_requests(&ops),
        [
            Some(racp::Request::AllRecords),
            Some(racp::Request::FromSequence(4))
        ]
    );
    // Nothing fetched twice: each record crossed the air once.
    assert_eq!(sent(&ops, GLUCOSE), 6);
    assert_eq!(sent(&ops, GLUCOSE_CONTEXT), 3);
    // Nothing missed, nothing stored twice.
    assert_eq!(glucose_sequences(&readings), [1, 2, 3, 4, 5, 6], "{ops:#?}");
    let meals: Vec<&Reading> = readings
        .iter()
        .filter(|r| r.metric.mdc_ref == "MDC_CTXT_GLU_MEAL")
        .collect();
    assert_eq!(meals.len(), 3);
    for meal in meals {
        // The context took its measurement's time (2026-01-<seq> 08:00).
        let seq = meal.sequence.unwrap();
        assert_eq!(meal.device_time.unwrap().day() as u64, seq);
    }
    // The measurement keeps the device's precision through the exact kg/L → mg/dL shift.
    let first = readings.iter().find(|r| r.sequence == Some(1)).unwrap();
    match &first.value {
        Value::Quantity(q) => {
            assert_eq!(q.unit, "mg/dL");
            assert_eq!(
                format!("{:?}", q.value),
                "Value(Decimal { mantissa: 95, exponent: 0 })"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(first.device.id.key(), "C0FFEE000001");
    assert_eq!(
        vitalbridge::ops::metrics::Metrics::get(&metrics.readings_in),
        readings.len() as u64
    );
}

#[tokio::test]
async fn a_record_whose_context_was_cut_off_is_asked_for_again_and_stored_once_with_it() {
    // Records 1, then 2's measurement but not its context: 2 is not committed.
    let (ops, readings, _) = meter_reconnecting_after(2).await;
    assert_eq!(
        racp_requests(&ops),
        [
            Some(racp::Request::AllRecords),
            Some(racp::Request::FromSequence(2))
        ]
    );
    assert_eq!(glucose_sequences(&readings), [1, 2, 3, 4, 5, 6]);
    let two: Vec<&Reading> = readings.iter().filter(|r| r.sequence == Some(2)).collect();
    // The measurement, its sample location (finger) and its meal context.
    assert_eq!(two.len(), 3);
    assert!(two.iter().all(|r| r.device_time == two[0].device_time));
}

#[tokio::test]
async fn a_meter_with_nothing_new_is_asked_only_for_newer_records() {
    let central = FakeCentral::default();
    central.add(METER, meter_script());
    let h = Harness::start(central.clone(), METER_TOML).await;
    central
        .advertise_until(METER, "the second session to end", |ops| {
            sessions_over(ops) >= 2
        })
        .await;
    let ops = central.ops();
    let (_, readings, _) = h.finish().await;
    assert_eq!(
        racp_requests(&ops),
        [
            Some(racp::Request::AllRecords),
            Some(racp::Request::FromSequence(7))
        ]
    );
    assert_eq!(sent(&ops, GLUCOSE), 6);
    assert_eq!(glucose_sequences(&readings), [1, 2, 3, 4, 5, 6]);
}

/// Blood Pressure Measurement per GSS: flags 0x1E (time stamp, pulse rate, user id,
/// measurement status), 122/80/90 mmHg, 2026-01-15 07:30:00, pulse 72, user `user`, no
/// status bits.
fn bp(user: u8, minute: u8) -> Notification {
    let mut v = hex("1E 7A 00 50 00 5A 00 EA 07 01 0F 07");
    v.extend([minute, 0x00, 0x48, 0x00, user, 0x00, 0x00]);
    Notification {
        characteristic: BPM,
        value: v,
    }
}

const CUFF_TOML: &str = r#"
[sources.ble]
[[sources.ble.devices]]
address = "C0:FF:EE:00:00:02"
profile = "ble-blood-pressure"

[[devices]]
id = "C0:FF:EE:00:00:02"
user = 1
patient_system = "urn:oid:1.2.3"
patient_id = "alice"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_queued_when_the_device_is_reported_gone_are_all_stored() {
    // A cuff hands over two stored measurements and hangs up at once; the adapter reports
    // it gone while both still wait for the source (the fake's notification queue holds
    // two). BlueZ has confirmed them, so the
    // cuff has forgotten them: each must be stored. (Before the fix the session ended on
    // the report and dropped what was queued.)
    for round in 0..5 {
        let central = FakeCentral::default();
        central.add(
            CUFF,
            Script {
                services: vec![BLS],
                chars: vec![ch(BLS, BPM, false, false, false, true)],
                on_subscribe: vec![(BPM, vec![bp(1, 10), bp(1, 11)])],
                hang_up_after_stored: true,
                gone_at_once: true,
                ..Script::default()
            },
        );
        let h = Harness::start(central.clone(), CUFF_TOML).await;
        central
            .advertise_until(CUFF, "the delivery", |ops| sessions_over(ops) >= 1)
            .await;
        let (_, readings, _) = h.finish().await;
        let bps = readings
            .iter()
            .filter(|r| r.metric.mdc_ref == "MDC_PRESS_BLD_NONINV")
            .count();
        assert_eq!(bps, 2, "round {round}: blood pressures stored");
    }
}

#[tokio::test]
async fn a_cuff_that_connects_only_to_deliver_is_read_each_time_it_advertises() {
    let central = FakeCentral::default();
    // A shared cuff whose clock reads 10 minutes slow and cannot be set. It holds user 1's
    // measurement, a malformed value, and user 2's; it hangs up once they are sent.
    let mut script = Script {
        services: vec![BLS],
        chars: vec![
            ch(BLS, BPM, false, false, false, true),
            ch(CTS, CURRENT_TIME, true, false, true, false),
        ],
        on_subscribe: vec![(
            BPM,
            vec![
                bp(1, 30),
                Notification {
                    characteristic: BPM,
                    value: hex("1E 7A 00"),
                },
                bp(2, 31),
            ],
        )],
        hang_up_after_stored: true,
        clock_skew: time::Duration::minutes(10),
        ..Script::default()
    };
    central.add(CUFF, script.clone());
    let h = Harness::start(central.clone(), CUFF_TOML).await;
    central
        .advertise_until(CUFF, "the first delivery", |ops| sessions_over(ops) >= 1)
        .await;
    // The next morning the cuff has one new measurement and advertises again.
    script.on_subscribe = vec![(BPM, vec![bp(1, 45)])];
    central.add(CUFF, script);
    central
        .advertise_until(CUFF, "the second delivery", |ops| sessions_over(ops) >= 2)
        .await;
    // The cuff hanging up is the normal end: the source connects again right away.
    let ops = central.ops();
    let (store, readings, metrics) = h.finish().await;

    assert!(
        !ops.iter().any(|o| matches!(o, Op::Write(..))),
        "read-only clock is not written"
    );
    let bps: Vec<&Reading> = readings
        .iter()
        .filter(|r| r.metric.mdc_ref == "MDC_PRESS_BLD_NONINV")
        .collect();
    // User 2 is bound to nobody: their blood pressure and pulse are held unbound, never
    // queued for delivery (and never given to alice).
    assert_eq!(bps.len(), 2);
    assert_eq!(
        readings.len(),
        4,
        "each blood pressure comes with its pulse rate"
    );
    let held = store.unbound_devices().await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(
        (held[0].device_key.as_str(), held[0].user, held[0].readings),
        ("C0FFEE000002", Some(2), 2)
    );
    let alice = |r: &&&Reading| {
        r.patient
            == Some(vitalbridge::model::PatientRef::identifier(
                "urn:oid:1.2.3",
                "alice",
            ))
    };
    // User 1's readings go to alice.
    assert_eq!(bps.iter().filter(alice).count(), 2);
    // The device clock was read slow by 10 minutes: the raw time is kept, the correction
    // recorded.
    for r in &bps {
        let offset = r.clock_offset.expect("clock corrected");
        assert!(
            (offset - time::Duration::minutes(10)).abs() < time::Duration::seconds(5),
            "{offset}"
        );
        assert_eq!(r.effective_time().1, TimeSource::DeviceCorrected);
        assert_eq!(r.device_time.unwrap().hour(), 7);
    }
    // The malformed value is dead-lettered, with a reason that names the field.
    let dead = store.dead_letters(10, None).await.unwrap();
    assert_eq!(dead.len(), 1);
    let details = dead[0].details.as_ref().unwrap();
    assert_eq!(details.origin, "ble:C0:FF:EE:00:00:02/2A35");
    assert!(details.reason.contains("`diastolic`"), "{}", details.reason);
    assert_eq!(dead[0].source, "ble");
    assert_eq!(Metrics::get(&metrics.payloads_rejected), 1);
}

const THERMOMETER_TOML: &str = r#"
[sources.ble]
[[sources.ble.devices]]
service = "1809"
"#;

/// Temperature Measurement per GSS: flags 0x02 (time stamp), 36.6 °C (FLOAT 0xFF00016E),
/// stamped `t`.
fn temperature(t: OffsetDateTime) -> Notification {
    let mut v = hex("02 6E 01 00 FF");
    v.extend(&datetime::encode_current_time(t).unwrap()[..7]);
    Notification {
        characteristic: TEMP,
        value: v,
    }
}

#[tokio::test]
async fn a_settable_device_clock_is_set_after_its_stored_data_and_later_readings_need_no_correction(
) {
    let central = FakeCentral::default();
    let skew = time::Duration::hours(1);
    // The stored measurement was taken 5 minutes ago, by a clock one hour slow.
    let stamped = OffsetDateTime::now_utc() - skew - time::Duration::minutes(5);
    let stamped = stamped.replace_millisecond(0).unwrap();
    central.add(
        THERMOMETER,
        Script {
            services: vec![HTS],
            chars: vec![
                ch(HTS, TEMP, false, false, false, true),
                ch(CTS, CURRENT_TIME, true, true, true, false),
            ],
            on_subscribe: vec![(TEMP, vec![temperature(stamped)])],
            clock_skew: skew,
            ..Script::default()
        },
    );
    let h = Harness::start(central.clone(), THERMOMETER_TOML).await;
    central
        .advertise_until(THERMOMETER, "the clock to be set", |ops| {
            ops.iter()
                .any(|o| matches!(o, Op::Write(_, CURRENT_TIME, _)))
                && ops
                    .iter()
                    .filter(|o| matches!(o, Op::Read(_, CURRENT_TIME)))
                    .count()
                    >= 2
        })
        .await;
    // A new measurement, stamped by the corrected clock.
    let now = OffsetDateTime::now_utc().replace_millisecond(0).unwrap();
    central.send_live(THERMOMETER, temperature(now)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.store.stats().await.unwrap().pending < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the live reading was not stored"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ops = central.ops();
    let (_, readings, _) = h.finish().await;

    // What the gateway wrote is its own time, as UTC, with "external reference" as reason.
    let written = ops
        .iter()
        .find_map(|o| match o {
            Op::Write(_, CURRENT_TIME, v) => Some(v.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(written.len(), 10);
    assert_eq!(written[9], datetime::ADJUST_EXTERNAL_REFERENCE);
    let set = datetime::current_time(&written).unwrap().unwrap();
    assert!((OffsetDateTime::now_utc() - set).abs() < time::Duration::seconds(5));
    // The order: read the clock, subscribe (stored data arrives), then write, then re-read.
    let pos = |f: &dyn Fn(&Op) -> bool| ops.iter().position(f).unwrap();
    assert!(
        pos(&|o| matches!(o, Op::Read(_, CURRENT_TIME)))
            < pos(&|o| matches!(o, Op::Subscribe(_, TEMP)))
    );
    assert!(
        pos(&|o| matches!(o, Op::Subscribe(_, TEMP)))
            < pos(&|o| matches!(o, Op::Write(_, CURRENT_TIME, _)))
    );

    assert_eq!(readings.len(), 2);
    // The stored one: raw device time kept (for the identifier), one hour of correction.
    assert_eq!(readings[0].device_time, Some(stamped));
    let offset = readings[0].clock_offset.expect("corrected");
    assert!(
        (offset - skew).abs() < time::Duration::seconds(5),
        "{offset}"
    );
    let (effective, source) = readings[0].effective_time();
    assert_eq!(source, TimeSource::DeviceCorrected);
    assert!((effective - (stamped + skew)).abs() < time::Duration::seconds(5));
    // The live one, taken after the clock was set: no correction.
    assert_eq!(readings[1].device_time, Some(now));
    assert_eq!(readings[1].clock_offset, None);
    assert_eq!(readings[1].effective_time().1, TimeSource::Device);
}

#[tokio::test]
async fn failed_connections_are_retried_after_a_backoff_until_the_meter_answers() {
    let central = FakeCentral::default();
    let mut script = meter_script();
    script.refuse_connects = 3;
    central.add(METER, script);
    let h = Harness::start(central.clone(), METER_TOML).await;
    central
        .advertise_until(METER, "the transfer", |ops| sessions_over(ops) >= 1)
        .await;
    let ops = central.ops();
    let (_, readings, _) = h.finish().await;
    let attempts = ops.iter().filter(|o| matches!(o, Op::Connect(_))).count();
    assert_eq!(attempts, 4, "three refused, then connected");
    assert_eq!(racp_requests(&ops), [Some(racp::Request::AllRecords)]);
    assert_eq!(glucose_sequences(&readings), [1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn a_full_buffer_holds_the_transfer_back_without_losing_or_repeating_a_record() {
    let central = FakeCentral::default();
    central.add(METER, meter_script());
    // Room for 4 readings; the six records make 15 (measurement, location, meal context).
    let h = Harness::with_capacity(central.clone(), METER_TOML, 4).await;
    // The uplink: takes what is buffered and acknowledges it, slowly.
    let store = h.store.clone();
    let stop = CancellationToken::new();
    let uplink = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut delivered: Vec<Reading> = Vec::new();
            loop {
                let dest = store.destination("test").unwrap();
                let leased = store.lease(&dest, 2).await.unwrap();
                let ids: Vec<i64> = leased.iter().map(|l| l.id).collect();
                delivered.extend(leased.into_iter().map(|l| l.reading.unwrap()));
                store.ack(&dest, &ids).await.unwrap();
                if stop.is_cancelled() && ids.is_empty() {
                    return delivered;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    central
        .advertise_until(METER, "the transfer", |ops| sessions_over(ops) >= 1)
        .await;
    // The uplink drains the buffer and stops first: its acknowledgements go through the
    // buffer's writer, which ends with the source.
    stop.cancel();
    let mut delivered = uplink.await.unwrap();
    let (_, left, metrics) = h.finish().await;
    delivered.extend(left);
    assert!(
        Metrics::get(&metrics.buffer_full) > 0,
        "the buffer did refuse"
    );
    assert_eq!(glucose_sequences(&delivered), [1, 2, 3, 4, 5, 6]);
    assert_eq!(delivered.len(), 15);
    assert_eq!(sent(&central.ops(), GLUCOSE), 6);
}

#[tokio::test]
async fn a_device_clock_that_was_never_set_is_set_and_its_undated_reading_gets_the_receive_time() {
    let central = FakeCentral::default();
    // Temperature Measurement with a "not known" time stamp (year 0), as a thermometer with
    // fresh batteries sends it.
    let mut undated = hex("02 6E 01 00 FF");
    undated.extend([0; 7]);
    central.add(
        THERMOMETER,
        Script {
            services: vec![HTS],
            chars: vec![
                ch(HTS, TEMP, false, false, false, true),
                ch(CTS, CURRENT_TIME, true, true, true, false),
            ],
            on_subscribe: vec![(
                TEMP,
                vec![Notification {
                    characteristic: TEMP,
                    value: undated,
                }],
            )],
            clock_unset: true,
            ..Script::default()
        },
    );
    let h = Harness::start(central.clone(), THERMOMETER_TOML).await;
    central
        .advertise_until(THERMOMETER, "the clock to be set", |ops| {
            ops.iter()
                .any(|o| matches!(o, Op::Write(_, CURRENT_TIME, _)))
        })
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.store.stats().await.unwrap().pending < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reading was not stored"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, readings, _) = h.finish().await;
    assert_eq!(readings.len(), 1);
    assert_eq!(readings[0].device_time, None);
    assert_eq!(readings[0].clock_offset, None);
    assert_eq!(readings[0].effective_time().1, TimeSource::GatewayReceive);
}

const STRAP: Address = [0xC0, 0xFF, 0xEE, 0x00, 0x00, 0x04];

#[tokio::test]
async fn a_heart_rate_strap_whose_link_drops_is_reconnected_and_keeps_streaming() {
    let central = FakeCentral::default();
    central.add(
        STRAP,
        Script {
            services: vec![0x180D],
            chars: vec![ch(0x180D, 0x2A37, false, false, true, false)],
            ..Script::default()
        },
    );
    let toml = "[sources.ble]\n[[sources.ble.devices]]\naddress = \"C0:FF:EE:00:00:04\"\n";
    let h = Harness::start(central.clone(), toml).await;
    let connected = |n: usize| {
        move |ops: &[Op]| {
            ops.iter()
                .filter(|o| matches!(o, Op::Subscribe(_, 0x2A37)))
                .count()
                >= n
        }
    };
    let wait_stored = |n: u64| {
        let store = h.store.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while store.stats().await.unwrap().pending < n {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{n} readings not stored"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // Heart Rate Measurement per GSS: flags 0x00, 72 and 75 beats per minute.
    let hr = |bpm: u8| Notification {
        characteristic: 0x2A37,
        value: vec![0x00, bpm],
    };
    central
        .advertise_until(STRAP, "a connection", connected(1))
        .await;
    central.send_live(STRAP, hr(72)).await;
    wait_stored(1).await;
    // The link drops; the adapter says so, the stream stays open.
    central.report_disconnected(STRAP).await;
    central
        .advertise_until(STRAP, "the first session to end", |ops| {
            sessions_over(ops) >= 1
        })
        .await;
    central
        .advertise_until(STRAP, "a reconnection", connected(2))
        .await;
    central.send_live(STRAP, hr(75)).await;
    wait_stored(2).await;
    let (_, readings, _) = h.finish().await;
    let rates: Vec<String> = readings
        .iter()
        .map(|r| match &r.value {
            Value::Quantity(q) => format!("{:?} {}", q.value, q.unit),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        rates,
        [
            "Value(Decimal { mantissa: 72, exponent: 0 }) /min",
            "Value(Decimal { mantissa: 75, exponent: 0 }) /min"
        ]
    );
    // A strap has no clock: the receive time, recorded as such.
    assert!(readings
        .iter()
        .all(|r| r.effective_time().1 == TimeSource::GatewayReceive));
}
