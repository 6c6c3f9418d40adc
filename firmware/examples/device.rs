//! An example device: how firmware produces frames, keeps readings until they are
//! acknowledged, and sets its clock from the gateway.
//!
//! The device logic ([`Device`]) is `no_std` and talks to its board only through the small
//! [`Board`] trait (a byte link and a monotonic millisecond counter).
//!
//! - Built for a microcontroller (`--target thumbv7em-none-eabihf --no-default-features`)
//!   it is a `#![no_main]` program whose entry point drives [`Device`] with a stand-in
//!   board (`NoHalBoard`); a real device puts its HAL's UART and timer behind [`Board`].
//! - Built for the host (`cargo run -p vitalbridge-firmware --example device`) it runs the
//!   same [`Device`] against a simulated gateway over a simulated cable that is pulled for a
//!   while, a gateway restart, and a full gateway buffer, and checks that every reading
//!   arrived.
#![cfg_attr(target_os = "none", no_std, no_main)]

use vitalbridge_firmware::accumulator::Accumulator;
use vitalbridge_firmware::frame::{encode_frame, MAX_FRAME_LEN};
use vitalbridge_firmware::message::{
    DeviceTime, Heartbeat, Hello, Message, NackReason, Reading, TimeRequest, Unit, Value,
};
use vitalbridge_firmware::outbox::{Outbox, OutboxFull, RetryPolicy};

/// MDC_PULS_OXIM_SAT_O2.
const MDC_SPO2: u32 = 150456;
/// Readings the device can hold while the gateway is away (a real device sizes this for
/// its longest expected outage).
const OUTBOX_CAPACITY: usize = 32;
/// The device only receives small gateway messages, so a small receive buffer suffices;
/// anything bigger is reported as oversize and skipped.
const RX_BUFFER: usize = 64;
/// Send a heartbeat this often.
const HEARTBEAT_MS: u64 = 30_000;
/// Ask for the time again if no answer came within this long, and re-synchronise this often.
const TIME_RETRY_MS: u64 = 5_000;
const TIME_RESYNC_MS: u64 = 3_600_000;

/// What the device logic needs from the board.
pub trait Board {
    /// Milliseconds since boot, monotonic.
    fn now_ms(&self) -> u64;
    /// Queues bytes for the link (a UART driver would block or buffer).
    fn write(&mut self, bytes: &[u8]);
    /// Copies received bytes into `buf`, returning how many (0 if none).
    fn read(&mut self, buf: &mut [u8]) -> usize;
}

/// Wall-clock time learnt from the gateway.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// Unix milliseconds at boot (monotonic 0), once synchronised.
    unix_at_boot_ms: Option<u64>,
}

impl Clock {
    fn now(&self, mono_ms: u64) -> DeviceTime {
        match self.unix_at_boot_ms {
            Some(base) => DeviceTime::UnixMillis(base.saturating_add(mono_ms)),
            None => DeviceTime::NoClock,
        }
    }
}

/// The device's protocol state: outbox, receive accumulator, clock and timers.
pub struct Device {
    outbox: Outbox<OUTBOX_CAPACITY>,
    rx: Accumulator<RX_BUFFER>,
    clock: Clock,
    hello: Hello,
    /// Send a Hello at the next poll (after boot, or when the gateway asks).
    hello_due: bool,
    /// When the last time request went out, if it has not been answered.
    time_request_at: Option<u64>,
    /// When the clock was last set.
    synced_at: Option<u64>,
    last_heartbeat: u64,
}

impl Device {
    /// A freshly booted device. `first_seq` comes from persistent storage on a real device.
    pub fn new(hello: Hello, first_seq: u32) -> Self {
        Self {
            outbox: Outbox::new(first_seq, RetryPolicy::default()),
            rx: Accumulator::new(),
            clock: Clock {
                unix_at_boot_ms: None,
            },
            hello,
            hello_due: true,
            time_request_at: None,
            synced_at: None,
            last_heartbeat: 0,
        }
    }

    /// Records an SpO2 measurement in percent. When the outbox is full the reading is
    /// refused (the caller shows "memory full" rather than losing older readings).
    pub fn measure_spo2(&mut self, board: &impl Board, percent: i32) -> Result<u32, OutboxFull> {
        let unit = Unit::try_from("%").unwrap_or_default();
        let time = self.clock.now(board.now_ms());
        let reading = Reading::new(time, MDC_SPO2, Value::decimal(percent, 0), unit);
        self.outbox.push(reading)
    }

    /// Readings not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.outbox.len()
    }

    /// One turn of the main loop: take in received bytes, then send what is due.
    pub fn poll(&mut self, board: &mut impl Board) {
        let now = board.now_ms();
        let mut buf = [0u8; 32];
        loop {
            let n = board.read(&mut buf);
            if n == 0 {
                break;
            }
            // Split borrows: the accumulator yields messages the rest of `self` handles.
            let mut rx = core::mem::take(&mut self.rx);
            for message in rx.frames(&buf[..n]).flatten() {
                self.handle(message, now);
            }
            self.rx = rx;
        }

        if self.hello_due {
            self.hello_due = false;
            send(board, &Message::Hello(self.hello.clone()));
        }
        let time_due = match (self.time_request_at, self.synced_at) {
            (Some(sent), _) => now.saturating_sub(sent) >= TIME_RETRY_MS,
            (None, None) => true,
            (None, Some(synced)) => now.saturating_sub(synced) >= TIME_RESYNC_MS,
        };
        if time_due {
            self.time_request_at = Some(now);
            let request = TimeRequest {
                token: now as u32,
                device_time: self.clock.now(now),
            };
            send(board, &Message::TimeRequest(request));
        }
        while let Some(batch) = self.outbox.poll(now) {
            send(board, &Message::Readings(batch));
        }
        if now.saturating_sub(self.last_heartbeat) >= HEARTBEAT_MS {
            self.last_heartbeat = now;
            let heartbeat = Heartbeat {
                uptime_secs: (now / 1000) as u32,
                pending: u16::try_from(self.outbox.len()).unwrap_or(u16::MAX),
                device_time: self.clock.now(now),
            };
            send(board, &Message::Heartbeat(heartbeat));
        }
    }

    fn handle(&mut self, message: Message, now: u64) {
        match message {
            Message::Ack(ack) => {
                self.outbox.handle_ack(&ack);
            }
            Message::Nack(nack) => {
                if nack.reason == NackReason::Unidentified {
                    self.hello_due = true;
                }
                self.outbox.handle_nack(&nack, now);
            }
            Message::TimeResponse(response) => {
                // Only the answer to the outstanding request counts; half the round trip is
                // the best guess for the answer's age.
                if let Some(sent) = self.time_request_at {
                    if response.token == sent as u32 {
                        let rtt = now.saturating_sub(sent);
                        let gateway_now = response.gateway_unix_millis.saturating_add(rtt / 2);
                        self.clock.unix_at_boot_ms = Some(gateway_now.saturating_sub(now));
                        self.time_request_at = None;
                        self.synced_at = Some(now);
                    }
                }
            }
            // Device-bound traffic only; anything else is ignored.
            _ => {}
        }
    }
}

/// Frames and writes one message.
fn send(board: &mut impl Board, message: &Message) {
    let mut out = [0u8; MAX_FRAME_LEN];
    // MAX_FRAME_LEN always suffices, so this cannot fail.
    if let Ok(n) = encode_frame(message, &mut out) {
        board.write(&out[..n]);
    }
}

fn example_hello() -> Hello {
    Hello {
        system_id: Some([0x11, 0x22, 0x33, 0xff, 0xfe, 0x44, 0x55, 0x66]),
        serial: "SN0042".try_into().unwrap_or_default(),
        manufacturer: "Acme".try_into().unwrap_or_default(),
        model: "OX-1".try_into().unwrap_or_default(),
        firmware: "1.0.3".try_into().unwrap_or_default(),
        profile: "acme-ox1".try_into().unwrap_or_default(),
    }
}

#[cfg(target_os = "none")]
mod bare_metal {
    //! Entry point and panic handler for a microcontroller build without a HAL.

    use super::*;
    use core::panic::PanicInfo;

    /// A stand-in for a HAL: time advances one millisecond per call, written bytes go into a
    /// ring nobody reads, and nothing is ever received.
    struct NoHalBoard {
        ticks: core::cell::Cell<u64>,
        tx: [u8; 256],
        tx_at: usize,
    }

    impl Board for NoHalBoard {
        fn now_ms(&self) -> u64 {
            let t = self.ticks.get().wrapping_add(1);
            self.ticks.set(t);
            t
        }
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.tx[self.tx_at] = b;
                self.tx_at = (self.tx_at + 1) % self.tx.len();
            }
        }
        fn read(&mut self, _buf: &mut [u8]) -> usize {
            0
        }
    }

    #[no_mangle]
    pub extern "C" fn _start() -> ! {
        let mut board = NoHalBoard {
            ticks: core::cell::Cell::new(0),
            tx: [0; 256],
            tx_at: 0,
        };
        let mut device = Device::new(example_hello(), 0);
        // Flush whatever the gateway's receiver held before we started.
        board.write(&[0x00]);
        loop {
            if board.now_ms() % 2_000 == 0 {
                let _ = device.measure_spo2(&board, 97);
            }
            device.poll(&mut board);
        }
    }

    #[panic_handler]
    fn panic(_info: &PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    host::run();
}

#[cfg(not(target_os = "none"))]
mod host {
    //! The device against a simulated gateway, over a cable that misbehaves.

    use super::*;
    use std::cell::Cell;
    use std::collections::{BTreeMap, VecDeque};
    use vitalbridge_firmware::accumulator::FrameAccumulator;
    use vitalbridge_firmware::message::Readings;

    /// Both ends of the cable, and the clock.
    #[derive(Default)]
    struct Cable {
        now: Cell<u64>,
        to_gateway: VecDeque<u8>,
        to_device: VecDeque<u8>,
        /// Pulled: bytes written in either direction are lost.
        pulled: bool,
    }

    impl Board for Cable {
        fn now_ms(&self) -> u64 {
            self.now.get()
        }
        fn write(&mut self, bytes: &[u8]) {
            if !self.pulled {
                self.to_gateway.extend(bytes);
            }
        }
        fn read(&mut self, buf: &mut [u8]) -> usize {
            let n = buf.len().min(self.to_device.len());
            for (slot, byte) in buf.iter_mut().zip(self.to_device.drain(..n)) {
                *slot = byte;
            }
            n
        }
    }

    /// What the gateway's serial source does, minus the real buffer.
    #[derive(Default)]
    struct Gateway {
        decoder: FrameAccumulator,
        /// "Durable" storage: survives restarts. Keyed by sequence number.
        stored: BTreeMap<u32, Reading>,
        /// Whether this port has said Hello since the gateway (re)started.
        identified: bool,
        /// Storage full: refuse readings.
        full: bool,
        bad_frames: usize,
    }

    impl Gateway {
        fn restart(&mut self) {
            self.decoder.reset();
            self.identified = false;
        }

        fn answer(&mut self, readings: &Readings) -> Message {
            if !self.identified {
                return Message::Nack(readings.nack(NackReason::Unidentified));
            }
            if self.full {
                return Message::Nack(readings.nack(NackReason::BufferFull));
            }
            for reading in &readings.readings {
                // A retransmission is stored once and acknowledged again.
                self.stored
                    .entry(reading.seq)
                    .or_insert_with(|| reading.clone());
            }
            Message::Ack(readings.ack())
        }

        fn serve(&mut self, cable: &mut Cable, gateway_unix_ms: u64) {
            let chunk: Vec<u8> = cable.to_gateway.drain(..).collect();
            let results: Vec<_> = self.decoder.frames(&chunk).collect();
            for result in results {
                let reply = match result {
                    Ok(Message::Hello(_)) => {
                        self.identified = true;
                        None
                    }
                    Ok(Message::Readings(readings)) => Some(self.answer(&readings)),
                    Ok(Message::TimeRequest(request)) => {
                        Some(Message::TimeResponse(request.respond(gateway_unix_ms)))
                    }
                    Ok(_) => None,
                    Err(_) => {
                        self.bad_frames += 1;
                        None
                    }
                };
                if let (Some(reply), false) = (reply, cable.pulled) {
                    let mut frame = [0u8; MAX_FRAME_LEN];
                    let n = encode_frame(&reply, &mut frame).expect("MAX_FRAME_LEN suffices");
                    cable.to_device.extend(&frame[..n]);
                }
            }
        }
    }

    pub fn run() {
        const UNIX_AT_START: u64 = 1_700_000_000_000;
        let mut cable = Cable::default();
        let mut gateway = Gateway::default();
        let mut device = Device::new(example_hello(), 100);
        let mut measured = 0;

        for tick in 0..1_200u64 {
            let now = tick * 100; // 100 ms per tick, two minutes in all
            cable.now.set(now);
            match now {
                10_000 => {
                    println!("{now:>6} ms  cable pulled");
                    cable.pulled = true;
                }
                28_000 => {
                    println!("{now:>6} ms  cable back");
                    cable.pulled = false;
                }
                40_000 => {
                    println!("{now:>6} ms  gateway restarts");
                    gateway.restart();
                }
                60_000 => {
                    println!("{now:>6} ms  gateway buffer full");
                    gateway.full = true;
                }
                75_000 => {
                    println!("{now:>6} ms  gateway buffer drained");
                    gateway.full = false;
                }
                _ => {}
            }
            if now % 2_000 == 0 && now < 90_000 {
                match device.measure_spo2(&cable, 95 + (tick % 4) as i32) {
                    Ok(_) => measured += 1,
                    Err(_) => println!("{now:>6} ms  outbox full, reading refused"),
                }
            }
            device.poll(&mut cable);
            gateway.serve(&mut cable, UNIX_AT_START + now);
        }

        println!(
            "measured {measured}, stored {}, still pending {}, bad frames seen {}",
            gateway.stored.len(),
            device.pending(),
            gateway.bad_frames
        );
        assert_eq!(gateway.stored.len(), measured, "every reading arrived once");
        assert_eq!(device.pending(), 0);
        let timed = gateway
            .stored
            .values()
            .filter(|r| matches!(r.time, DeviceTime::UnixMillis(_)))
            .count();
        println!("{timed} readings carry a synchronised device time");
    }
}
