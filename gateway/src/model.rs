//! The core domain model: what a reading *is*, independent of where it came from
//! and where it goes.
//!
//! Architecture invariant: this module does no I/O and derives no serde. Every wire or
//! storage format (the MQTT JSON payload, the buffer row, FHIR JSON) converts to and from
//! these types explicitly, in the module that owns that format.
//!
//! Each enum that has a name outside the program (in the MQTT payload, the buffer's rows,
//! FHIR, the technician report, metrics labels) has one text form, here: `as_str` and
//! `parse`, inverse of each other.
//!
//! Numbers are kept as [`Decimal`]s (an integer mantissa and a base-10 exponent), the same
//! shape as IEEE 11073-20601 SFLOAT/FLOAT, so a value keeps exactly the precision the device
//! reported: mantissa 200 with exponent -2 is `2.00`, not `2`.

use std::fmt;
use time::{Duration, OffsetDateTime};

/// An exact decimal number: `mantissa × 10^exponent`.
///
/// Equality is representational: `2.0` and `2.00` are different decimals because they carry
/// different precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decimal {
    /// The significant digits, with sign.
    pub mantissa: i64,
    /// The power of ten the mantissa is scaled by.
    pub exponent: i8,
}

impl Decimal {
    /// `mantissa × 10^exponent`.
    pub const fn new(mantissa: i64, exponent: i8) -> Self {
        Self { mantissa, exponent }
    }

    /// A whole number.
    pub const fn integer(value: i64) -> Self {
        Self::new(value, 0)
    }

    /// Whether both decimals denote the same number, whatever their precision (`2.0` and `2.00`
    /// do; representational `==` says they differ).
    pub fn same_value(self, other: Self) -> bool {
        self.normalized() == other.normalized()
    }

    /// The same number with trailing zero digits dropped from the mantissa.
    fn normalized(self) -> Self {
        let (mut mantissa, mut exponent) = (self.mantissa, self.exponent);
        if mantissa == 0 {
            return Self::new(0, 0);
        }
        while mantissa % 10 == 0 && exponent < i8::MAX {
            mantissa /= 10;
            exponent += 1;
        }
        Self::new(mantissa, exponent)
    }

    /// Parses a plain decimal literal such as `-12.50`, `3`, or `1e-3`, keeping its precision.
    pub fn parse(text: &str) -> Option<Self> {
        let (number, exp_part) = match text.find(['e', 'E']) {
            Some(i) => (&text[..i], Some(&text[i + 1..])),
            None => (text, None),
        };
        let mut exponent: i32 = match exp_part {
            Some(e) => e.parse().ok()?,
            None => 0,
        };
        let (sign, digits) = match number.strip_prefix('-') {
            Some(rest) => (-1i64, rest),
            None => (1, number.strip_prefix('+').unwrap_or(number)),
        };
        let (int_part, frac_part) = match digits.split_once('.') {
            Some((i, f)) => (i, f),
            None => (digits, ""),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        if !int_part
            .bytes()
            .chain(frac_part.bytes())
            .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let mut mantissa: i64 = 0;
        for b in int_part.bytes().chain(frac_part.bytes()) {
            mantissa = mantissa.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
        }
        exponent = exponent.checked_sub(i32::try_from(frac_part.len()).ok()?)?;
        Some(Self::new(sign * mantissa, i8::try_from(exponent).ok()?))
    }
}

impl fmt::Display for Decimal {
    /// Renders as a JSON/FHIR-compatible decimal literal with exactly the stored precision.
    /// Written piece by piece, with no text built first (every reading's value passes here).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mantissa == 0 && self.exponent >= 0 {
            return f.write_str("0");
        }
        let mut buf = [0u8; 20];
        let digits = decimal_digits(self.mantissa.unsigned_abs(), &mut buf);
        if self.mantissa < 0 {
            f.write_str("-")?;
        }
        if self.exponent >= 0 {
            f.write_str(digits)?;
            write_zeros(f, self.exponent as usize)
        } else {
            let scale = self.exponent.unsigned_abs() as usize;
            if digits.len() > scale {
                let (int, frac) = digits.split_at(digits.len() - scale);
                f.write_str(int)?;
                f.write_str(".")?;
                f.write_str(frac)
            } else {
                f.write_str("0.")?;
                write_zeros(f, scale - digits.len())?;
                f.write_str(digits)
            }
        }
    }
}

/// The decimal digits of `n`, written at the end of `buf` (a u64 has at most 20).
fn decimal_digits(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

/// `n` zeros (an exponent's, at most 128).
fn write_zeros(f: &mut fmt::Formatter<'_>, mut n: usize) -> fmt::Result {
    const ZEROS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
    while n > 0 {
        let k = n.min(ZEROS.len());
        f.write_str(&ZEROS[..k])?;
        n -= k;
    }
    Ok(())
}

impl Decimal {
    /// The nearest `f64`: the same number parsing the decimal's text would give (the text
    /// `<mantissa>e<exponent>` denotes the same value and is parsed with correct rounding),
    /// without building the text on the heap.
    pub fn to_f64(self) -> f64 {
        use std::io::Write;
        // An i64 (20 bytes), `e` and an i8 (4 bytes).
        let mut buf = [0u8; 32];
        let mut out = &mut buf[..];
        let _ = write!(out, "{}e{}", self.mantissa, self.exponent);
        let len = 32 - out.len();
        std::str::from_utf8(&buf[..len])
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(f64::NAN)
    }
}

/// Why a value is missing where a number was expected (IEEE 11073 special values and
/// device errors). Mapped to FHIR `dataAbsentReason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AbsentReason {
    /// IEEE 11073 NaN: not a number.
    NotANumber,
    /// IEEE 11073 NRes: not at this resolution — the device could not produce a value.
    NotAtResolution,
    /// +INF.
    PositiveInfinity,
    /// -INF.
    NegativeInfinity,
    /// A reserved special value, or any other device-reported error.
    Error,
}

impl AbsentReason {
    /// Every reason.
    pub const ALL: [AbsentReason; 5] = [
        AbsentReason::NotANumber,
        AbsentReason::NotAtResolution,
        AbsentReason::PositiveInfinity,
        AbsentReason::NegativeInfinity,
        AbsentReason::Error,
    ];

    /// The FHIR `data-absent-reason` code: `not-a-number`, `positive-infinity`,
    /// `negative-infinity`, and `error` for NRes and every other device error (the mapping
    /// the HL7 PHD IG gives for NRes and the reserved values). NRes has no code of its own,
    /// so this is the one name that does not round-trip: `parse("error")` is `Error`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AbsentReason::NotANumber => "not-a-number",
            AbsentReason::PositiveInfinity => "positive-infinity",
            AbsentReason::NegativeInfinity => "negative-infinity",
            AbsentReason::NotAtResolution | AbsentReason::Error => "error",
        }
    }

    /// The reason a `data-absent-reason` code names.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .filter(|r| *r != AbsentReason::NotAtResolution)
            .find(|r| r.as_str() == code)
    }
}

/// One measured number, or the reason there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measured {
    /// A finite value with its precision.
    Value(Decimal),
    /// No number: the device reported a special value.
    Absent(AbsentReason),
}

/// A quantity: a measured number in a UCUM unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity {
    /// The number, or why there is none.
    pub value: Measured,
    /// UCUM code, as the device reported it (e.g. `mm[Hg]`, `Cel`, `%`, `/min`).
    pub unit: String,
}

/// One part of a compound measurement, such as the systolic pressure of a blood pressure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// What this part measures.
    pub metric: Metric,
    /// Its value and unit.
    pub quantity: Quantity,
}

/// A chunk of sampled data (a waveform), kept for future sources; mapped to `SampledData`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Samples {
    /// Time between samples, in milliseconds.
    pub period_ms: Decimal,
    /// Value of a zero sample, in `unit`.
    pub origin: Decimal,
    /// Multiply each sample by this to get the value in `unit`.
    pub factor: Decimal,
    /// UCUM unit of the scaled samples.
    pub unit: String,
    /// The raw samples.
    pub data: Vec<i32>,
}

/// What a reading says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A single quantity (SpO2 %, body temperature, weight, heart rate…).
    Quantity(Quantity),
    /// A compound with no value of its own (blood pressure: systolic, diastolic, mean).
    Components(Vec<Component>),
    /// Sampled data.
    Samples(Samples),
    /// A coded value (e.g. a sensor state), as system + code + display.
    Coded {
        /// Code system URI.
        system: String,
        /// Code.
        code: String,
        /// Human-readable display, if known.
        display: Option<String>,
    },
}

/// What is measured: an IEEE 11073-10101 (MDC) code, the matching LOINC code where there is
/// one, a display, and the canonical UCUM unit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Metric {
    /// MDC code as a 32-bit number: partition × 2^16 + term code (e.g. 150456 for SpO2).
    pub mdc: u32,
    /// The MDC reference id, e.g. `MDC_PULS_OXIM_SAT_O2`.
    pub mdc_ref: &'static str,
    /// LOINC code, e.g. `2708-6`; `None` where LOINC has no equivalent.
    pub loinc: Option<&'static str>,
    /// Display text for the code.
    pub display: &'static str,
    /// The canonical UCUM unit of this metric (a device may report another, e.g. kPa).
    pub unit: &'static str,
    /// Whether the FHIR vital-signs profile covers this metric; its profile URL suffix if so
    /// (e.g. `bp`, `oxygensat`).
    pub vital_sign_profile: Option<&'static str>,
}

/// A device that measured something.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceRef {
    /// Stable identity of the device.
    pub id: DeviceId,
    /// The device profile that decoded its frames (e.g. `ble-blood-pressure`, `sim`).
    pub profile: String,
    /// Model name, if known.
    pub model: Option<String>,
    /// Manufacturer, if known.
    pub manufacturer: Option<String>,
}

/// The kind of a [`DeviceId`], without the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceIdKind {
    /// [`DeviceId::Eui64`].
    Eui64,
    /// [`DeviceId::Bluetooth`].
    Bluetooth,
    /// [`DeviceId::Serial`].
    Serial,
    /// [`DeviceId::Other`].
    Other,
}

impl DeviceIdKind {
    /// Every kind.
    pub const ALL: [DeviceIdKind; 4] = [
        DeviceIdKind::Eui64,
        DeviceIdKind::Bluetooth,
        DeviceIdKind::Serial,
        DeviceIdKind::Other,
    ];

    /// Its name: `eui64`, `bluetooth`, `serial`, `other`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeviceIdKind::Eui64 => "eui64",
            DeviceIdKind::Bluetooth => "bluetooth",
            DeviceIdKind::Serial => "serial",
            DeviceIdKind::Other => "other",
        }
    }

    /// The kind a name names.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// How a device is identified, from most to least standard.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceId {
    /// IEEE EUI-64 system id (BLE System ID, IEEE 11073 system-id).
    Eui64([u8; 8]),
    /// Bluetooth device address (EUI-48).
    Bluetooth([u8; 6]),
    /// Manufacturer serial number.
    Serial(String),
    /// Any other stable id (an MQTT device name, a simulator id).
    Other(String),
}

impl DeviceId {
    /// The key used in identifiers and logs: upper-case hex for EUI-64 / EUI-48
    /// (`FEEDABEEDEADBEEF`, `A1B2C3D4E5F6`), the text otherwise.
    pub fn key(&self) -> String {
        match self {
            DeviceId::Eui64(b) => hex_upper(b),
            DeviceId::Bluetooth(b) => hex_upper(b),
            DeviceId::Serial(s) | DeviceId::Other(s) => s.clone(),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> DeviceIdKind {
        match self {
            DeviceId::Eui64(_) => DeviceIdKind::Eui64,
            DeviceId::Bluetooth(_) => DeviceIdKind::Bluetooth,
            DeviceId::Serial(_) => DeviceIdKind::Serial,
            DeviceId::Other(_) => DeviceIdKind::Other,
        }
    }

    /// The id of `kind` whose [`key`](Self::key) is `key`: exactly 16 (EUI-64) or 12
    /// (Bluetooth) hex digits, in either case; any text for the others. `None` when the
    /// digits do not fit.
    pub fn from_key(kind: DeviceIdKind, key: String) -> Option<Self> {
        Some(match kind {
            DeviceIdKind::Eui64 => DeviceId::Eui64(parse_hex(&key)?),
            DeviceIdKind::Bluetooth => DeviceId::Bluetooth(parse_hex(&key)?),
            DeviceIdKind::Serial => DeviceId::Serial(key),
            DeviceIdKind::Other => DeviceId::Other(key),
        })
    }
}

/// Exactly `2 × N` hex digits (either case), without separators.
fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// Upper-case hex without separators.
pub fn hex_upper(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex_upper(&mut s, bytes);
    s
}

fn push_hex_upper(s: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// The patient a reading belongs to, as a FHIR identifier or a literal reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PatientRef {
    /// A business identifier: FHIR `subject.identifier`.
    Identifier {
        /// The identifier system, e.g. an MRN namespace URI.
        system: String,
        /// The identifier value in that system.
        value: String,
    },
    /// A literal reference to the Patient resource, e.g. `Patient/123`: FHIR
    /// `subject.reference`.
    Reference(String),
}

impl PatientRef {
    /// A business identifier.
    pub fn identifier(system: impl Into<String>, value: impl Into<String>) -> Self {
        PatientRef::Identifier {
            system: system.into(),
            value: value.into(),
        }
    }
}

/// Where the effective time of a reading came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSource {
    /// The device's own clock, used as reported.
    Device,
    /// The device's clock, corrected by the gateway's per-device offset.
    DeviceCorrected,
    /// The device had no usable clock: the gateway's receive time is used.
    GatewayReceive,
}

impl TimeSource {
    /// Its name, as the FHIR time-source extension and the decode report write it:
    /// `device`, `device-corrected`, `gateway-receive`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TimeSource::Device => "device",
            TimeSource::DeviceCorrected => "device-corrected",
            TimeSource::GatewayReceive => "gateway-receive",
        }
    }
}

/// Measurement status: reported by the device (e.g. BLE BP measurement-status bits, PLX
/// device status), or found by the gateway's own checks (`implausible`, `time-in-future`,
/// `time-too-old`, see `profile::admission`). Kept on the reading so it is never silently
/// dropped; mapped to FHIR `interpretation` (and `status` `preliminary` for the flags that
/// say the value or its time may not be right) by the FHIR layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusFlag {
    /// Body movement during measurement.
    BodyMovement,
    /// Cuff fit too loose.
    CuffLoose,
    /// Irregular pulse detected.
    IrregularPulse,
    /// Pulse rate out of the device's range.
    PulseRateOutOfRange,
    /// Improper measurement position.
    ImproperPosition,
    /// The device marks the value questionable.
    Questionable,
    /// The device was calibrating.
    Calibrating,
    /// The reading is test or demo data (mapped to `meta.security` HTEST).
    TestData,
    /// The device reports low battery.
    LowBattery,
    /// A sensor fault or malfunction reported by the device.
    SensorFault,
    /// The value was measured early/invalid per the device (generic "invalid" bit).
    Invalid,
    /// The gateway found the value outside the metric's physiological limits (kept because
    /// the configuration says to flag rather than refuse).
    Implausible,
    /// The gateway found the measurement time later than its receive time by more than the
    /// tolerance: the device clock is ahead.
    TimeInFuture,
    /// The gateway found the measurement time older than the configured maximum age: a
    /// device clock that was reset, or a very old stored record.
    TimeTooOld,
}

impl StatusFlag {
    /// Every flag.
    pub const ALL: [StatusFlag; 14] = [
        StatusFlag::BodyMovement,
        StatusFlag::CuffLoose,
        StatusFlag::IrregularPulse,
        StatusFlag::PulseRateOutOfRange,
        StatusFlag::ImproperPosition,
        StatusFlag::Questionable,
        StatusFlag::Calibrating,
        StatusFlag::TestData,
        StatusFlag::LowBattery,
        StatusFlag::SensorFault,
        StatusFlag::Invalid,
        StatusFlag::Implausible,
        StatusFlag::TimeInFuture,
        StatusFlag::TimeTooOld,
    ];

    /// Its name, kebab-case: `body-movement`, `cuff-loose`, `irregular-pulse`,
    /// `pulse-rate-out-of-range`, `improper-position`, `questionable`, `calibrating`,
    /// `test-data`, `low-battery`, `sensor-fault`, `invalid`, `implausible`, `time-in-future`,
    /// `time-too-old`.
    pub const fn as_str(self) -> &'static str {
        match self {
            StatusFlag::BodyMovement => "body-movement",
            StatusFlag::CuffLoose => "cuff-loose",
            StatusFlag::IrregularPulse => "irregular-pulse",
            StatusFlag::PulseRateOutOfRange => "pulse-rate-out-of-range",
            StatusFlag::ImproperPosition => "improper-position",
            StatusFlag::Questionable => "questionable",
            StatusFlag::Calibrating => "calibrating",
            StatusFlag::TestData => "test-data",
            StatusFlag::LowBattery => "low-battery",
            StatusFlag::SensorFault => "sensor-fault",
            StatusFlag::Invalid => "invalid",
            StatusFlag::Implausible => "implausible",
            StatusFlag::TimeInFuture => "time-in-future",
            StatusFlag::TimeTooOld => "time-too-old",
        }
    }

    /// The flag a name names.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// Whether the flag says the value (or its time) may not be right, so the reading is not
    /// final: the device's own questionable, invalid, calibrating, sensor-fault, cuff-loose,
    /// improper-position and body-movement bits, and the gateway's implausible and time
    /// flags. Irregular pulse, a pulse rate out of the device's range, low battery and test
    /// data describe the measurement without doubting its value.
    pub const fn doubts_value(self) -> bool {
        matches!(
            self,
            StatusFlag::BodyMovement
                | StatusFlag::CuffLoose
                | StatusFlag::ImproperPosition
                | StatusFlag::Questionable
                | StatusFlag::Calibrating
                | StatusFlag::SensorFault
                | StatusFlag::Invalid
                | StatusFlag::Implausible
                | StatusFlag::TimeInFuture
                | StatusFlag::TimeTooOld
        )
    }
}

/// How the gateway knows the offset of a device's clock, when it corrects (or checks) the
/// time a device reports. Recorded on the reading so the Observation can say where its time
/// came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeSync {
    /// Read the device's Bluetooth Current Time (0x2A2B) and compared it with the gateway's
    /// clock (and set it where the device allows).
    BleCurrentTime,
    /// The Vitalbridge firmware's time-sync exchange on a serial link.
    FirmwareTimeSync,
    /// The device's clock keeps local time without a zone; the zone comes from the
    /// configuration (`device_utc_offset` of a serial line device).
    ConfiguredZone,
    /// The zone an HL7 v2 message (PCD-01) gives for the device's time stamps.
    Hl7TimeZone,
}

impl TimeSync {
    /// Every method.
    pub const ALL: [TimeSync; 4] = [
        TimeSync::BleCurrentTime,
        TimeSync::FirmwareTimeSync,
        TimeSync::ConfiguredZone,
        TimeSync::Hl7TimeZone,
    ];

    /// Its name: `ble-current-time`, `firmware-time-sync`, `configured-zone`,
    /// `hl7-time-zone`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TimeSync::BleCurrentTime => "ble-current-time",
            TimeSync::FirmwareTimeSync => "firmware-time-sync",
            TimeSync::ConfiguredZone => "configured-zone",
            TimeSync::Hl7TimeZone => "hl7-time-zone",
        }
    }

    /// The method a name names.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// One measurement, as the gateway received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Which device measured it.
    pub device: DeviceRef,
    /// Whom it belongs to, if the device is bound to a patient (or reported a user).
    pub patient: Option<PatientRef>,
    /// What was measured.
    pub metric: Metric,
    /// The value.
    pub value: Value,
    /// The time as the device reported it, with the offset it reported (or UTC). `None` when
    /// the device has no clock. This is what the idempotency identifier uses.
    pub device_time: Option<OffsetDateTime>,
    /// Correction the gateway applies to the device clock (gateway time − device time).
    pub clock_offset: Option<Duration>,
    /// When the gateway received the reading.
    pub received_at: OffsetDateTime,
    /// Duration of the measurement, when it has one (effective period).
    pub duration: Option<Duration>,
    /// The device's own sequence number for this measurement, where it has one.
    pub sequence: Option<u64>,
    /// Status bits the device reported.
    pub status: Vec<StatusFlag>,
    /// Device-specific user index (BLE user id on shared scales/cuffs), if reported.
    pub device_user: Option<u8>,
    /// How the gateway knows the device clock's offset (`clock_offset`), when it does.
    pub time_sync: Option<TimeSync>,
    /// Where in a point-of-care device the reading was measured and how its sender
    /// qualified it (HL7 v2 PCD-01 feeds); `None` for every other source.
    pub bedside: Option<Box<Bedside>>,
}

/// What a hospital feed (IEEE 11073 / IHE PCD-01) says about a reading beyond its value:
/// kept so the reading can be forwarded as it came (OBX-4, PV1-3, OBX-11) and so that one
/// metric measured in two channels of a monitor stays two readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bedside {
    /// The IEEE 11073 containment path: MDS, VMD, channel, metric (OBX-4 `1.13.1.2`), as
    /// many levels as the sender gave.
    pub containment: Vec<u32>,
    /// The point of care as the sender wrote it (PV1-3, `ICU^12^A`), if it gave one.
    pub location: Option<String>,
    /// The result status the sender gave the observation.
    pub status: ResultStatus,
    /// The quantity's unit is the sender's text, not a UCUM code: an OBX-6 that is neither a
    /// known MDC unit nor UCUM, kept as it came rather than guessed at.
    pub unit_as_sent: bool,
}

impl Bedside {
    /// The containment path without the metric's own index (MDS.VMD.channel): what tells
    /// two channels apart in the identifier. The metric index is only a position.
    pub fn channel_path(&self) -> &[u32] {
        match self.containment.len() {
            4.. => &self.containment[..3],
            _ => &self.containment,
        }
    }
}

/// The status of an observation result as its sender reported it (HL7 v2 table 0085),
/// in the terms of FHIR `Observation.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultStatus {
    /// Final (F, and sources without such a status).
    Final,
    /// Preliminary (P).
    Preliminary,
    /// A correction replacing a final result (C).
    Corrected,
    /// Amended (A).
    Amended,
    /// Posted by mistake (D, W).
    EnteredInError,
}

impl ResultStatus {
    /// The FHIR `Observation.status` code.
    pub fn fhir_code(self) -> &'static str {
        match self {
            ResultStatus::Final => "final",
            ResultStatus::Preliminary => "preliminary",
            ResultStatus::Corrected => "corrected",
            ResultStatus::Amended => "amended",
            ResultStatus::EnteredInError => "entered-in-error",
        }
    }

    /// The status for a FHIR `Observation.status` code.
    pub fn from_fhir_code(code: &str) -> Option<Self> {
        Some(match code {
            "final" => ResultStatus::Final,
            "preliminary" => ResultStatus::Preliminary,
            "corrected" => ResultStatus::Corrected,
            "amended" => ResultStatus::Amended,
            "entered-in-error" => ResultStatus::EnteredInError,
            _ => return None,
        })
    }
}

/// The characters FHIR search gives a meaning to in a token value (`\\` escape, `,` or, `|`
/// system separator, `$` composite separator), and `%`, which writes them.
const SEARCH_SPECIAL: [char; 5] = ['%', '\\', ',', '|', '$'];

/// Appends `text` with each of `% \\ , | $` written as `%` and two upper-case hex digits
/// (`%25 %5C %2C %7C %24`), everything else as it is.
///
/// Identifier values the gateway builds (the Observation identifier, a Device's identifier
/// from a serial number or other device id, the gateway's id) go through this, so they never
/// hold a character a FHIR search has to escape. Escaping them is what the specification asks
/// (and the uplink does), but servers differ in what they match once escaped: Medplum, for
/// one, never matches an escaped `\\|`, so a conditional create on such a value would create a
/// duplicate on every resend. The rule is deterministic and reversible (`%` itself is
/// written `%25`), and every uplink (FHIR server, NDJSON files, HL7 v2) gets the same value.
pub fn push_search_safe(out: &mut String, text: &str) {
    // Runs without a special character are copied whole (every identifier passes here).
    let mut rest = text;
    while let Some(i) = rest.find(SEARCH_SPECIAL) {
        out.push_str(&rest[..i]);
        // The special characters are ASCII: one byte each.
        out.push('%');
        push_hex_upper(out, &rest.as_bytes()[i..=i]);
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

/// `text` made search-safe by [`push_search_safe`]; borrowed when there was nothing to do.
pub fn search_safe(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains(SEARCH_SPECIAL) {
        let mut out = String::with_capacity(text.len() + 8);
        push_search_safe(&mut out, text);
        std::borrow::Cow::Owned(out)
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// RFC 3339 with milliseconds, keeping the offset the time carries.
pub fn format_time(t: OffsetDateTime) -> String {
    TimeText::new(t).as_str().to_owned()
}

/// [`format_time`]'s text, written into a buffer of its own instead of a new string (every
/// reading's identifier and Observation carries one or two).
#[derive(Clone, Copy)]
pub struct TimeText {
    buf: [u8; TIME_TEXT_CAP],
    len: usize,
}

/// Room for the longest RFC 3339 text (30 bytes) or an i64 (20).
const TIME_TEXT_CAP: usize = 48;

impl TimeText {
    /// The text of `t`: RFC 3339, truncated to milliseconds so the identifier does not depend
    /// on sub-ms noise; Unix seconds for a year RFC 3339 cannot write (before year 0).
    pub fn new(t: OffsetDateTime) -> Self {
        use time::format_description::well_known::Rfc3339;
        let t = t
            .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
            .unwrap_or(t);
        let mut text = Self {
            buf: [0; TIME_TEXT_CAP],
            len: 0,
        };
        let mut out = &mut text.buf[..];
        let written = match t.format_into(&mut out, &Rfc3339) {
            Ok(_) => TIME_TEXT_CAP - out.len(),
            Err(_) => {
                let mut out = &mut text.buf[..];
                // An i64 in decimal is at most 20 bytes: it fits.
                let _ = std::io::Write::write_fmt(&mut out, format_args!("{}", t.unix_timestamp()));
                TIME_TEXT_CAP - out.len()
            }
        };
        text.len = written;
        text
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII is written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl Reading {
    /// The deterministic identity of this measurement, used as the FHIR Observation
    /// identifier value and as the buffer's de-duplication key.
    ///
    /// Following the PHD IG, the parts joined by `-` are: the device key (upper-case hex for
    /// EUI-64/EUI-48), the patient identifier value and system (when bound), the MDC code, the
    /// time **as the device reported it** (receive time when the device has no clock), the
    /// duration in ms when there is one, the device sequence number when there is one, and for
    /// a point-of-care metric its channel (`-c1.13.1`, see [`Bedside::channel_path`]).
    /// The same measurement resent — after a lost ACK, a broker redelivery, a gateway crash —
    /// gives the same identifier. The device id, patient value, system and reference are
    /// written with [`push_search_safe`], so the identifier never holds `\\ , | $` (nor a bare
    /// `%`), whatever the device or the binding calls itself.
    pub fn identifier(&self) -> String {
        use fmt::Write;
        let mut id = String::with_capacity(96);
        match &self.device.id {
            DeviceId::Eui64(b) => push_hex_upper(&mut id, b),
            DeviceId::Bluetooth(b) => push_hex_upper(&mut id, b),
            DeviceId::Serial(s) | DeviceId::Other(s) => push_search_safe(&mut id, s),
        }
        match &self.patient {
            Some(PatientRef::Identifier { system, value }) => {
                id.push('-');
                push_search_safe(&mut id, value);
                id.push('-');
                push_search_safe(&mut id, system);
            }
            Some(PatientRef::Reference(reference)) => {
                id.push('-');
                push_search_safe(&mut id, reference);
            }
            None => {}
        }
        // Writing into a String cannot fail.
        let _ = write!(id, "-{}-", self.metric.mdc);
        id.push_str(TimeText::new(self.identity_time()).as_str());
        if let Some(d) = self.duration {
            let _ = write!(id, "-{}ms", d.whole_milliseconds());
        }
        if let Some(seq) = self.sequence {
            let _ = write!(id, "-seq{seq}");
        }
        if let Some(b) = &self.bedside {
            for (i, level) in b.channel_path().iter().enumerate() {
                let _ = write!(id, "{}{level}", if i == 0 { "-c" } else { "." });
            }
        }
        id
    }

    /// The time in the identifier: the device time as reported, else the receive time.
    pub fn identity_time(&self) -> OffsetDateTime {
        self.device_time.unwrap_or(self.received_at)
    }

    /// The time the measurement was taken, and where that time came from.
    pub fn effective_time(&self) -> (OffsetDateTime, TimeSource) {
        match (self.device_time, self.clock_offset) {
            (Some(t), Some(offset)) if !offset.is_zero() => {
                (t + offset, TimeSource::DeviceCorrected)
            }
            (Some(t), _) => (t, TimeSource::Device),
            (None, _) => (self.received_at, TimeSource::GatewayReceive),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_renders_with_the_precision_it_was_given() {
        let cases = [
            (Decimal::new(200, -2), "2.00"),
            (Decimal::new(-5, -1), "-0.5"),
            (Decimal::new(5, -3), "0.005"),
            (Decimal::new(12, 2), "1200"),
            (Decimal::new(0, 0), "0"),
            (Decimal::new(0, -2), "0.00"),
            (Decimal::new(-1205, -1), "-120.5"),
        ];
        for (d, text) in cases {
            assert_eq!(d.to_string(), text, "{d:?}");
        }
    }

    #[test]
    fn decimal_parse_keeps_precision_and_round_trips() {
        for text in [
            "2.00", "-0.5", "0.005", "98.6", "120", "0", "-120.5", "0.00",
        ] {
            let d = Decimal::parse(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(d.to_string(), text);
        }
        assert_eq!(Decimal::parse("1e-3"), Some(Decimal::new(1, -3)));
        assert_eq!(Decimal::parse("1.5E2"), Some(Decimal::new(15, 1)));
    }

    #[test]
    fn decimal_parse_rejects_garbage_without_panicking() {
        for text in [
            "",
            "-",
            ".",
            "1.2.3",
            "abc",
            "1e",
            "--1",
            "99999999999999999999",
            "1e999",
        ] {
            assert_eq!(Decimal::parse(text), None, "{text}");
        }
    }

    fn reading() -> Reading {
        use time::macros::datetime;
        Reading {
            device: DeviceRef {
                id: DeviceId::Eui64([0xfe, 0xed, 0xab, 0xee, 0xde, 0xad, 0xbe, 0xef]),
                profile: "test".into(),
                model: None,
                manufacturer: None,
            },
            patient: Some(PatientRef::identifier("urn:oid:1.2.3", "p42")),
            metric: Metric {
                mdc: 150456,
                mdc_ref: "MDC_PULS_OXIM_SAT_O2",
                loinc: Some("2708-6"),
                display: "SpO2",
                unit: "%",
                vital_sign_profile: Some("oxygensat"),
            },
            value: Value::Quantity(Quantity {
                value: Measured::Value(Decimal::integer(97)),
                unit: "%".into(),
            }),
            device_time: Some(datetime!(2026-11-25 10:00:00.5 +01:00)),
            clock_offset: None,
            received_at: datetime!(2026-11-25 09:00:03 UTC),
            duration: None,
            sequence: Some(7),
            status: vec![],
            device_user: None,
            bedside: None,
            time_sync: None,
        }
    }

    #[test]
    fn search_safe_writes_the_search_characters_and_percent_reversibly() {
        assert_eq!(search_safe("plain-id é"), "plain-id é");
        assert!(matches!(
            search_safe("plain"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(search_safe(r"a,b|c\d$e%f"), "a%2Cb%7Cc%5Cd%24e%25f");
        // `%` is written too, so two different ids never meet.
        assert_ne!(search_safe("a,b"), search_safe("a%2Cb"));
    }

    /// The text `Decimal`'s Display wrote before it was written piece by piece.
    fn decimal_text_as_built_before(d: Decimal) -> String {
        let digits = d.mantissa.unsigned_abs().to_string();
        let sign = if d.mantissa < 0 { "-" } else { "" };
        if d.exponent >= 0 {
            if d.mantissa == 0 {
                return "0".into();
            }
            format!("{sign}{digits}{}", "0".repeat(d.exponent as usize))
        } else {
            let scale = d.exponent.unsigned_abs() as usize;
            if digits.len() > scale {
                let (int, frac) = digits.split_at(digits.len() - scale);
                format!("{sign}{int}.{frac}")
            } else {
                format!("{sign}0.{}{digits}", "0".repeat(scale - digits.len()))
            }
        }
    }

    #[test]
    fn decimal_text_at_the_extremes() {
        for d in [
            Decimal::new(i64::MIN, i8::MIN),
            Decimal::new(i64::MAX, i8::MAX),
            Decimal::new(i64::MIN, 0),
            Decimal::new(0, i8::MIN),
            Decimal::new(0, i8::MAX),
            Decimal::new(-1, i8::MAX),
        ] {
            assert_eq!(d.to_string(), decimal_text_as_built_before(d), "{d:?}");
            assert_eq!(d.to_f64(), d.to_string().parse::<f64>().unwrap(), "{d:?}");
        }
    }

    proptest::proptest! {
        /// Every decimal's text is what it was when the text was built first; its `f64` is
        /// what parsing that text gives.
        #[test]
        fn decimal_text_and_f64_are_as_from_the_text(mantissa in proptest::num::i64::ANY, exponent in proptest::num::i8::ANY) {
            let d = Decimal::new(mantissa, exponent);
            let text = d.to_string();
            proptest::prop_assert_eq!(&text, &decimal_text_as_built_before(d));
            let parsed: f64 = text.parse().unwrap();
            proptest::prop_assert_eq!(d.to_f64().to_bits(), parsed.to_bits());
        }

        /// Any text comes out with exactly its search characters written `%XX`.
        #[test]
        fn search_safe_writes_exactly_the_search_characters(text in "[a-z%,|$\\\\é ]{0,24}") {
            let want: String = text
                .chars()
                .map(|c| {
                    if SEARCH_SPECIAL.contains(&c) {
                        format!("%{:02X}", c as u8)
                    } else {
                        c.to_string()
                    }
                })
                .collect();
            proptest::prop_assert_eq!(search_safe(&text), want);
        }

        /// A time's text is what `time` writes for it in RFC 3339 after truncation to
        /// milliseconds, and Unix seconds where RFC 3339 has no text (years before 0).
        #[test]
        fn time_text_is_rfc_3339_to_the_millisecond(
            secs in -377_705_116_800i64..253_402_300_799,
            nanos in 0u32..1_000_000_000,
            offset in -86_399i32..86_399,
        ) {
            use time::format_description::well_known::Rfc3339;
            let t = OffsetDateTime::from_unix_timestamp(secs)
                .unwrap()
                .replace_nanosecond(nanos)
                .unwrap()
                .checked_to_offset(time::UtcOffset::from_whole_seconds(offset).unwrap());
            proptest::prop_assume!(t.is_some());
            let t = t.unwrap();
            let ms = t.replace_nanosecond(t.millisecond() as u32 * 1_000_000).unwrap();
            let want = ms.format(&Rfc3339).unwrap_or_else(|_| ms.unix_timestamp().to_string());
            let text = TimeText::new(t);
            proptest::prop_assert_eq!(text.as_str(), want.as_str());
            proptest::prop_assert_eq!(format_time(t), want);
        }
    }

    #[test]
    fn identifier_uses_the_device_time_as_reported_not_the_corrected_one() {
        let r = reading();
        assert_eq!(
            r.identifier(),
            "FEEDABEEDEADBEEF-p42-urn:oid:1.2.3-150456-2026-11-25T10:00:00.5+01:00-seq7"
        );
        let corrected = Reading {
            clock_offset: Some(Duration::seconds(30)),
            ..r.clone()
        };
        assert_eq!(corrected.identifier(), r.identifier());
        assert_eq!(corrected.effective_time().1, TimeSource::DeviceCorrected);
        let resent = Reading {
            received_at: r.received_at + Duration::hours(2),
            ..r.clone()
        };
        assert_eq!(resent.identifier(), r.identifier());
    }

    #[test]
    fn a_literal_patient_reference_is_in_the_identifier_alone() {
        let r = Reading {
            patient: Some(PatientRef::Reference("Patient/123".into())),
            ..reading()
        };
        assert_eq!(
            r.identifier(),
            "FEEDABEEDEADBEEF-Patient/123-150456-2026-11-25T10:00:00.5+01:00-seq7"
        );
    }

    #[test]
    fn a_device_without_a_clock_gets_the_receive_time_and_says_so() {
        let r = Reading {
            device_time: None,
            ..reading()
        };
        assert_eq!(
            r.effective_time(),
            (r.received_at, TimeSource::GatewayReceive)
        );
        assert!(r.identifier().contains("2026-11-25T09:00:03Z"));
    }

    #[test]
    fn every_text_form_parses_back() {
        for flag in StatusFlag::ALL {
            assert_eq!(StatusFlag::parse(flag.as_str()), Some(flag));
        }
        for sync in TimeSync::ALL {
            assert_eq!(TimeSync::parse(sync.as_str()), Some(sync));
        }
        for kind in DeviceIdKind::ALL {
            assert_eq!(DeviceIdKind::parse(kind.as_str()), Some(kind));
        }
        for reason in AbsentReason::ALL {
            let back = AbsentReason::parse(reason.as_str()).unwrap();
            match reason {
                AbsentReason::NotAtResolution => assert_eq!(back, AbsentReason::Error),
                _ => assert_eq!(back, reason),
            }
        }
        assert_eq!(AbsentReason::parse("nres"), None);
        assert_eq!(StatusFlag::parse("Cuff-Loose"), None);
        assert_eq!(DeviceIdKind::parse("bt"), None);
    }

    #[test]
    fn device_ids_come_back_from_their_keys() {
        let ids = [
            DeviceId::Eui64([0xfe, 0xed, 0xab, 0xee, 0xde, 0xad, 0xbe, 0xef]),
            DeviceId::Bluetooth([0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6]),
            DeviceId::Serial("SN-1".into()),
            DeviceId::Other("sim-1".into()),
        ];
        for id in ids {
            assert_eq!(DeviceId::from_key(id.kind(), id.key()), Some(id.clone()));
        }
        let bt = DeviceIdKind::Bluetooth;
        assert_eq!(
            DeviceId::from_key(bt, "a1b2c3d4e5f6".into()),
            Some(DeviceId::Bluetooth([0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6]))
        );
        for bad in [
            "A1B2C3D4E5",
            "A1:B2:C3:D4:E5:F6",
            "G1B2C3D4E5F6",
            "€1B2C3D4E5",
        ] {
            assert_eq!(DeviceId::from_key(bt, bad.into()), None, "{bad}");
        }
    }

    #[test]
    fn device_keys_are_upper_case_hex() {
        assert_eq!(
            DeviceId::Eui64([0xfe, 0xed, 0xab, 0xee, 0xde, 0xad, 0xbe, 0xef]).key(),
            "FEEDABEEDEADBEEF"
        );
        assert_eq!(
            DeviceId::Bluetooth([0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6]).key(),
            "A1B2C3D4E5F6"
        );
    }
}
