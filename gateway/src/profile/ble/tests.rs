//! Byte-exact vectors for every decoder, through one `check(characteristic, hex, expected)`
//! helper; systematic truncation and flag-combination sweeps; and a proptest that random
//! bytes never panic.
//!
//! Each vector cites where it comes from. "GSS layout" means the bytes were assembled by
//! hand from the GATT Specification Supplement field tables (documented in each module).

use proptest::prelude::*;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;

use super::*;
use crate::model::{DeviceId, DeviceRef, Value};

fn ctx() -> FrameContext {
    FrameContext {
        device: DeviceRef {
            id: DeviceId::Bluetooth([0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6]),
            profile: "ble-test".into(),
            model: None,
            manufacturer: None,
        },
        patient: None,
        received_at: datetime!(2026-01-01 00:00:00 UTC),
        clock_offset: None,
        time_sync: None,
    }
}

fn bytes(hex: &str) -> Vec<u8> {
    let digits: Vec<u8> = hex.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    assert!(digits.len().is_multiple_of(2), "odd hex: {hex}");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn label(m: &Metric) -> String {
    let mut s = m.mdc_ref.to_string();
    if let Some(l) = m.loinc {
        s.push('#');
        s.push_str(l);
    }
    if m.display.contains("fast response") {
        s.push_str("~fast");
    }
    if m.display.contains("slow response") {
        s.push_str("~slow");
    }
    s
}

fn measured(m: &Measured) -> String {
    match m {
        Measured::Value(d) => d.to_string(),
        Measured::Absent(r) => format!("<{r:?}>"),
    }
}

/// One line per reading: `LABEL = VALUE [@time] [user=] [seq=] [dur=] [status]`.
fn render(r: &Reading) -> String {
    let value = match &r.value {
        Value::Quantity(q) => format!("{} {}", measured(&q.value), q.unit),
        Value::Components(cs) => {
            let parts: Vec<String> = cs
                .iter()
                .map(|c| {
                    format!(
                        "{} {} {}",
                        label(&c.metric),
                        measured(&c.quantity.value),
                        c.quantity.unit
                    )
                })
                .collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Coded { code, display, .. } => {
            format!("{code} {}", display.as_deref().unwrap_or(""))
        }
        Value::Samples(_) => "samples".into(),
    };
    let mut line = format!("{} = {value}", label(&r.metric));
    if let Some(t) = r.device_time {
        line.push_str(&format!(" @{}", t.format(&Rfc3339).unwrap()));
    }
    if let Some(u) = r.device_user {
        line.push_str(&format!(" user={u}"));
    }
    if let Some(s) = r.sequence {
        line.push_str(&format!(" seq={s}"));
    }
    if let Some(d) = r.duration {
        line.push_str(&format!(" dur={}s", d.whole_seconds()));
    }
    if !r.status.is_empty() {
        line.push_str(&format!(" {:?}", r.status));
    }
    line
}

/// Decodes `hex` as `characteristic` and compares the rendered readings (or the error
/// message, prefixed `error: `) with `expected`, line by line, ignoring indentation.
#[track_caller]
fn check(characteristic: u16, hex: &str, expected: &str) {
    let ctx = ctx();
    let got = match decode(characteristic, &bytes(hex), &ctx) {
        Ok(readings) => {
            for r in &readings {
                assert_eq!(r.received_at, ctx.received_at);
                assert_eq!(r.device, ctx.device);
                let decoder = Decoder::from_uuid(characteristic).unwrap();
                assert!(
                    decoder.metrics().contains(&r.metric),
                    "{} not listed in {}.metrics()",
                    r.metric.mdc_ref,
                    decoder.name()
                );
            }
            readings.iter().map(render).collect::<Vec<_>>().join("\n")
        }
        Err(e) => format!("error: {e}"),
    };
    let expected: Vec<&str> = expected
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(got, expected.join("\n"), "\ninput: {hex}");
}

const HR: u16 = 0x2A37;
const BP: u16 = 0x2A35;
const ICP: u16 = 0x2A36;
const TEMP: u16 = 0x2A1C;
const ITEMP: u16 = 0x2A1E;
const GLU: u16 = 0x2A18;
const GLUCTX: u16 = 0x2A34;
const SPOT: u16 = 0x2A5E;
const CONT: u16 = 0x2A5F;
const WEIGHT: u16 = 0x2A9D;
const BODY: u16 = 0x2A9C;

/// Every valid vector of the tables below, for the truncation sweep.
const VALID: &[(u16, &str)] = &[
    (HR, "04 AA"),
    (HR, "06 AA"),
    (HR, "00 AA"),
    (HR, "01 AA 01"),
    (HR, "08 AA BB 01"),
    (HR, "09 AA 01 BB 01"),
    (HR, "18 AA BB 01 CC 01"),
    (
        HR,
        "10 AA 00 00 01 00 02 00 03 00 F3 03 FC FF FD FF FE FF FF FF",
    ),
    (
        BP,
        "1E 8A 00 58 00 78 00 00 00 04 11 14 29 3B 3C 00 01 27 00",
    ),
    (BP, "15 BD F0 0B 00 9F F0 3C 00 12 00"),
    (BP, "00 BD F0 0B 00 9F F0"),
    (
        BP,
        "1E 7A 00 50 00 5A 00 E4 07 0C 19 08 1E 00 FF 07 FF 08 00",
    ),
    (ICP, "15 BD F0 0B 00 9F F0 3C 00 12 00"),
    (TEMP, "06 B0 0E 00 FE DC 07 0C 05 0B 32 1B 04"),
    (TEMP, "01 DA 03 00 FF"),
    (ITEMP, "00 FF FF 7F 00"),
    (GLU, "1B 01 00 E3 07 02 1B 0B 0A 1E FB FF 1E 00 12 05 01"),
    (GLU, "06 2A 00 E8 07 03 0F 0E 1E 2D 3F C0 F1"),
    (GLU, "08 05 00 E8 07 03 0F 0E 1E 2D 08 00"),
    (GLU, "02 06 00 E8 07 03 0F 0E 1E 2D 5F B0 4A"),
    (GLUCTX, "FF 00 00 B3 03 E8 F3 04 12 3C 00 32 04 D2 F4 59 F1"),
    (GLUCTX, "00 01 00"),
    (GLUCTX, "0C 02 00 FF FF FF 50"),
    (CONT, "00 E8 F3 84 F3"),
    (CONT, "00 64 00 5A 00"),
    (CONT, "1C 5F 00 5A 00 20 00 00 00 00 57 F0"),
    (
        CONT,
        "1F DE F3 CA F3 CA F3 5A F5 D4 F3 B2 F2 20 01 00 00 00 7A E3",
    ),
    (
        SPOT,
        "0F AC F3 BE F5 E8 07 0B 1D 17 08 39 20 40 22 00 00 66 E3",
    ),
    (SPOT, "11 62 00 48 00 D0 07 01 01 00 00 00"),
    (WEIGHT, "00 7B 00"),
    (WEIGHT, "02 7B 00 00 00 00 00 0D 0C 0C"),
    (WEIGHT, "06 7B 00 00 00 00 00 0D 0C 0C 17"),
    (WEIGHT, "08 7B 00 E6 00 E0 06"),
    (WEIGHT, "0F 10 27 E8 07 01 02 03 04 05 FF E6 00 D0 02"),
    (WEIGHT, "01 FF FF"),
    (
        BODY,
        "FE AF 12 34 E7 07 02 06 12 1C 00 2A 23 45 34 56 45 67 56 78 67 89 78 9A 89 AB 9A BC AB CD",
    ),
    (BODY, "00 50 12 34"),
    (
        BODY,
        "AA EA 12 34 E7 07 02 06 12 1C 00 23 45 45 67 67 89 89 AB AB CD",
    ),
    (BODY, "54 15 12 34 2A 34 56 56 78 78 9A 9A BC"),
    (BODY, "01 00 FF FF"),
];

/// The full 128-bit form of a 16-bit UUID, lower case.
fn full_uuid(short: u16) -> String {
    format!("0000{short:04x}{BASE_UUID_TAIL}")
}

#[test]
fn heart_rate_measurement() {
    // eisaev/blevalueparser tests/heartratemeasurementtest.cpp,
    // ContactsSupportedNotConnected / ContactsSupportedConnected / HR8 / HR16.
    check(
        HR,
        "04 AA",
        "MDC_ECG_HEART_RATE#8867-4 = 170 /min [Questionable]",
    );
    check(HR, "06 AA", "MDC_ECG_HEART_RATE#8867-4 = 170 /min");
    check(HR, "00 AA", "MDC_ECG_HEART_RATE#8867-4 = 170 /min");
    check(HR, "01 AA 01", "MDC_ECG_HEART_RATE#8867-4 = 426 /min");
    // Same file, HR8_EE and HR16_EE: energy expended 0x01BB = 443 kJ.
    check(
        HR,
        "08 AA BB 01",
        "MDC_ECG_HEART_RATE#8867-4 = 170 /min
         MDC_HF_ENERGY = 443 kJ",
    );
    check(
        HR,
        "09 AA 01 BB 01",
        "MDC_ECG_HEART_RATE#8867-4 = 426 /min
         MDC_HF_ENERGY = 443 kJ",
    );
    // Same file, HR8_EE_RR1: one RR-interval 0x01CC = 460/1024 s.
    check(
        HR,
        "18 AA BB 01 CC 01",
        "MDC_ECG_HEART_RATE#8867-4 = 170 /min
         MDC_HF_ENERGY = 443 kJ
         MDC_ECG_TIME_PD_RR_GL = 460 s/1024",
    );
    // Same file, HR8_RR9: nine RR-intervals including the extremes.
    check(
        HR,
        "10 AA 00 00 01 00 02 00 03 00 F3 03 FC FF FD FF FE FF FF FF",
        "MDC_ECG_HEART_RATE#8867-4 = 170 /min
         MDC_ECG_TIME_PD_RR_GL = 0 s/1024
         MDC_ECG_TIME_PD_RR_GL = 1 s/1024
         MDC_ECG_TIME_PD_RR_GL = 2 s/1024
         MDC_ECG_TIME_PD_RR_GL = 3 s/1024
         MDC_ECG_TIME_PD_RR_GL = 1011 s/1024
         MDC_ECG_TIME_PD_RR_GL = 65532 s/1024
         MDC_ECG_TIME_PD_RR_GL = 65533 s/1024
         MDC_ECG_TIME_PD_RR_GL = 65534 s/1024
         MDC_ECG_TIME_PD_RR_GL = 65535 s/1024",
    );
    // GSS layout: RR flag set but no interval; an odd byte left over.
    check(
        HR,
        "10 48",
        "error: too short for its flags: missing field `rr-interval` at offset 2",
    );
    check(
        HR,
        "10 48 00 04 01",
        "error: too short for its flags: missing field `rr-interval` at offset 4",
    );
    check(
        HR,
        "",
        "error: too short for its flags: missing field `flags` at offset 0",
    );
}

#[test]
fn blood_pressure_measurement() {
    // NordicSemiconductor/Android-BLE-Common-Library,
    // ble-common/src/test/.../bps/BloodPressureMeasurementDataCallbackTest.java,
    // onBloodPressureMeasurementReceived_full: year 0 means the date is unknown.
    check(
        BP,
        "1E 8A 00 58 00 78 00 00 00 04 11 14 29 3B 3C 00 01 27 00",
        "MDC_PRESS_BLD_NONINV#85354-9 = [MDC_PRESS_BLD_NONINV_SYS#8480-6 138 mm[Hg], MDC_PRESS_BLD_NONINV_DIA#8462-4 88 mm[Hg], MDC_PRESS_BLD_NONINV_MEAN#8478-0 120 mm[Hg]] user=1 [BodyMovement, CuffLoose, IrregularPulse, ImproperPosition]
         MDC_PULS_RATE_NON_INV#8867-4 = 60 /min user=1 [BodyMovement, CuffLoose, IrregularPulse, ImproperPosition]",
    );
    // Same file, _some: kPa, pulse rate below the lower limit, cuff too loose.
    check(
        BP,
        "15 BD F0 0B 00 9F F0 3C 00 12 00",
        "MDC_PRESS_BLD_NONINV#85354-9 = [MDC_PRESS_BLD_NONINV_SYS#8480-6 18.9 kPa, MDC_PRESS_BLD_NONINV_DIA#8462-4 11 kPa, MDC_PRESS_BLD_NONINV_MEAN#8478-0 15.9 kPa] [CuffLoose, PulseRateOutOfRange]
         MDC_PULS_RATE_NON_INV#8867-4 = 60 /min [CuffLoose, PulseRateOutOfRange]",
    );
    // Same file, _minimal.
    check(
        BP,
        "00 BD F0 0B 00 9F F0",
        "MDC_PRESS_BLD_NONINV#85354-9 = [MDC_PRESS_BLD_NONINV_SYS#8480-6 18.9 mm[Hg], MDC_PRESS_BLD_NONINV_DIA#8462-4 11 mm[Hg], MDC_PRESS_BLD_NONINV_MEAN#8478-0 15.9 mm[Hg]]",
    );
    // Same file, onInvalidDataReceived_toShort and _noTimestamp.
    check(
        BP,
        "01 02 03 04 05 06",
        "error: too short for its flags: missing field `mean arterial pressure` at offset 5",
    );
    check(
        BP,
        "03 02 03 04 05 06 07",
        "error: too short for its flags: missing field `time stamp` at offset 7",
    );
    // GSS layout: 122/80/90 mmHg, 2020-12-25 08:30:00, NaN pulse rate, user 0xFF (unknown),
    // pulse rate above the upper limit.
    check(
        BP,
        "1E 7A 00 50 00 5A 00 E4 07 0C 19 08 1E 00 FF 07 FF 08 00",
        "MDC_PRESS_BLD_NONINV#85354-9 = [MDC_PRESS_BLD_NONINV_SYS#8480-6 122 mm[Hg], MDC_PRESS_BLD_NONINV_DIA#8462-4 80 mm[Hg], MDC_PRESS_BLD_NONINV_MEAN#8478-0 90 mm[Hg]] @2020-12-25T08:30:00Z [PulseRateOutOfRange]
         MDC_PULS_RATE_NON_INV#8867-4 = <NotANumber> /min @2020-12-25T08:30:00Z [PulseRateOutOfRange]",
    );
    // GSS layout: pulse rate range 3 is reserved.
    check(
        BP,
        "10 7A 00 50 00 5A 00 18 00",
        "error: reserved value 3 in field `measurement status: pulse rate range` at offset 7",
    );
    // GSS layout: special values in the components.
    check(
        BP,
        "00 FF 07 00 08 FE 07",
        "MDC_PRESS_BLD_NONINV#85354-9 = [MDC_PRESS_BLD_NONINV_SYS#8480-6 <NotANumber> mm[Hg], MDC_PRESS_BLD_NONINV_DIA#8462-4 <NotAtResolution> mm[Hg], MDC_PRESS_BLD_NONINV_MEAN#8478-0 <PositiveInfinity> mm[Hg]]",
    );
}

#[test]
fn intermediate_cuff_pressure() {
    // Nordic BloodPressureMeasurementDataCallbackTest _some bytes; 0x2A36 shares the
    // format: the systolic field is the current cuff pressure.
    check(
        ICP,
        "15 BD F0 0B 00 9F F0 3C 00 12 00",
        "MDC_PRESS_BLD_NONINV = 18.9 kPa [CuffLoose, PulseRateOutOfRange]",
    );
    check(
        ICP,
        "04 BD F0 FF 07 FF 07",
        "error: too short for its flags: missing field `pulse rate` at offset 7",
    );
}

#[test]
fn temperature_measurement() {
    // Nordic Android-BLE-Common-Library .../ht/TemperatureMeasurementDataCallbackTest.java:
    // 37.60 °C, 2012-12-05 11:50:27, type 4 (finger); and its invalid vector (type missing).
    check(
        TEMP,
        "06 B0 0E 00 FE DC 07 0C 05 0B 32 1B 04",
        "MDC_TEMP_FINGER#8310-5 = 37.60 Cel @2012-12-05T11:50:27Z",
    );
    check(
        TEMP,
        "06 B0 0E 00 FE DC 07 0C 05 0B 32 1B",
        "error: too short for its flags: missing field `temperature type` at offset 12",
    );
    // GSS layout: 98.6 °F (FLOAT 986e-1), no type: generic body temperature.
    check(TEMP, "01 DA 03 00 FF", "MDC_TEMP_BODY#8310-5 = 98.6 [degF]");
    // Every site.
    for (code, mdc_ref) in [
        (1, "MDC_TEMP_AXILLA"),
        (2, "MDC_TEMP_BODY"),
        (3, "MDC_TEMP_EAR"),
        (4, "MDC_TEMP_FINGER"),
        (5, "MDC_TEMP_GIT"),
        (6, "MDC_TEMP_ORAL"),
        (7, "MDC_TEMP_RECT"),
        (8, "MDC_TEMP_TOE"),
        (9, "MDC_TEMP_TYMP"),
    ] {
        check(
            TEMP,
            &format!("04 6E 01 00 FF {code:02X}"),
            &format!("{mdc_ref}#8310-5 = 36.6 Cel"),
        );
    }
    // Reserved temperature types.
    check(
        TEMP,
        "04 6E 01 00 FF 00",
        "error: reserved value 0 in field `temperature type` at offset 5",
    );
    check(
        TEMP,
        "04 6E 01 00 FF 0A",
        "error: reserved value 10 in field `temperature type` at offset 5",
    );
    // FLOAT special values (PHD IG table).
    check(
        ITEMP,
        "00 FF FF 7F 00",
        "MDC_TEMP_BODY#8310-5 = <NotANumber> Cel",
    );
    check(
        ITEMP,
        "00 02 00 80 00",
        "MDC_TEMP_BODY#8310-5 = <NegativeInfinity> Cel",
    );
    // Invalid time stamp: month 13.
    check(
        TEMP,
        "02 6E 01 00 FF DC 07 0D 05 0B 32 1B",
        "error: invalid field `time stamp` at offset 5: month out of range 1-12",
    );
}

#[test]
fn glucose_measurement() {
    // Nordic Android-BLE-Common-Library .../glucose/GlucoseMeasurementDataCallbackTest.java:
    // seq 1, 2019-02-27 11:10:30 - 5 min, 30 kg/L (an extreme test value) capillary plasma
    // from a finger, status bits 0, 2, 8 (battery low, sample size insufficient, sensor
    // temperature too low), context follows. kg/L × 10^5 = mg/dL: exponent 0 → 5.
    check(
        GLU,
        "1B 01 00 E3 07 02 1B 0B 0A 1E FB FF 1E 00 12 05 01",
        "MDC_CONC_GLU_CAPILLARY_PLASMA#41653-7 = 3000000 mg/dL @2019-02-27T11:05:30Z seq=1 [LowBattery, Invalid, Questionable]
         MDC_CTXT_GLU_SAMPLELOCATION = 8417848 MDC_CTXT_GLU_SAMPLELOCATION_FINGER @2019-02-27T11:05:30Z seq=1 [LowBattery, Invalid, Questionable]",
    );
    // Same file, onInvalidDataReceived: with the time offset present the type/location
    // byte is 0x01, whose sample location 0 is reserved.
    check(
        GLU,
        "1B 00 00 E2 07 04 1A 0B 09 1E 1E 00 12 05 01",
        "error: reserved value 0 in field `sample location` at offset 14",
    );
    // GSS layout: mol/L, 0.0063 mol/L (SFLOAT 63e-4 = 0xC03F) → 6.3 mmol/L, capillary
    // whole blood (1), location not available (15).
    check(
        GLU,
        "06 2A 00 E8 07 03 0F 0E 1E 2D 3F C0 F1",
        "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD#14743-9 = 6.3 mmol/L @2024-03-15T14:30:45Z seq=42",
    );
    // GSS layout: kg/L 0.00095 (SFLOAT 95e-5 = 0xB05F) → 95 mg/dL; type-location 0x29 is
    // interstitial fluid (9) from an alternate site (2).
    check(
        GLU,
        "02 06 00 E8 07 03 0F 0E 1E 2D 5F B0 29",
        "MDC_CONC_GLU_ISF = 95 mg/dL @2024-03-15T14:30:45Z seq=6
         MDC_CTXT_GLU_SAMPLELOCATION = 8417852 MDC_CTXT_GLU_SAMPLELOCATION_AST @2024-03-15T14:30:45Z seq=6",
    );
    // GSS layout: control solution type and location → test data.
    check(
        GLU,
        "02 07 00 E8 07 03 0F 0E 1E 2D 5F B0 4A",
        "MDC_CONC_GLU_CONTROL = 95 mg/dL @2024-03-15T14:30:45Z seq=7 [TestData]
         MDC_CTXT_GLU_SAMPLELOCATION = 8417860 MDC_CTXT_GLU_SAMPLELOCATION_CTRLSOLUTION @2024-03-15T14:30:45Z seq=7 [TestData]",
    );
    // GSS layout: no concentration, only a status (strip insertion error, bit 3).
    check(
        GLU,
        "08 05 00 E8 07 03 0F 0E 1E 2D 08 00",
        "MDC_CONC_GLU_GEN = <Error> mg/dL @2024-03-15T14:30:45Z seq=5 [Invalid]",
    );
    // GSS layout: unknown base time (year 0) and a time offset: no device time.
    check(
        GLU,
        "01 09 00 00 00 00 00 00 00 00 0A 00",
        "MDC_CONC_GLU_GEN = <Error> mg/dL seq=9",
    );
    // Reserved type 0 and 11.
    check(
        GLU,
        "02 06 00 E8 07 03 0F 0E 1E 2D 5F B0 10",
        "error: reserved value 0 in field `type` at offset 12",
    );
    check(
        GLU,
        "02 06 00 E8 07 03 0F 0E 1E 2D 5F B0 1B",
        "error: reserved value 11 in field `type` at offset 12",
    );
    check(
        GLU,
        "00 06 00 E8 07 03 0F 0E 1E",
        "error: too short for its flags: missing field `base time` at offset 3",
    );
}

#[test]
fn glucose_measurement_context() {
    // Values of Nordic GlucoseMeasurementContextDataCallbackTest
    // .onGlucoseMeasurementContextReceived_full (flags 0xFF, extended flags 0xB3, dinner
    // 100.0, casual, health care professional / minor issues, 60 s at 50 %, long-acting
    // insulin, HbA1c 34.5), with SFLOATs chosen by hand (100.0 = 0xF3E8, 123.4 = 0xF4D2,
    // 34.5 = 0xF159); layout per GSS.
    check(
        GLUCTX,
        "FF 00 00 B3 03 E8 F3 04 12 3C 00 32 04 D2 F4 59 F1",
        "MDC_CTXT_GLU_CARB_DINNER = 100.0 kg seq=0
         MDC_CTXT_GLU_MEAL = 8417880 MDC_CTXT_GLU_MEAL_CASUAL seq=0
         MDC_CTXT_GLU_TESTER = 8417892 MDC_CTXT_GLU_TESTER_HCP seq=0
         MDC_CTXT_GLU_HEALTH = 8417824 MDC_CTXT_GLU_HEALTH_MINOR seq=0
         MDC_CTXT_GLU_EXERCISE = 50 % seq=0 dur=60s
         MDC_CTXT_MEDICATION_LONGACTING = 123.4 L seq=0
         MDC_CONC_HBA1C#4548-4 = 34.5 % seq=0",
    );
    // Same file, _empty (only flags and sequence number) and onInvalidDataReceived (cut
    // after the carbohydrate id).
    check(GLUCTX, "00 01 00", "");
    check(
        GLUCTX,
        "FF 00 00 B3 03",
        "error: too short for its flags: missing field `carbohydrate` at offset 5",
    );
    // GSS layout: tester and health "not available" give no reading; exercise overrun
    // (0xFFFF) gives no duration.
    check(
        GLUCTX,
        "0C 02 00 FF FF FF 50",
        "MDC_CTXT_GLU_EXERCISE = 80 % seq=2",
    );
    // Reserved codes.
    check(
        GLUCTX,
        "02 02 00 06",
        "error: reserved value 6 in field `meal` at offset 3",
    );
    check(
        GLUCTX,
        "01 02 00 00 E8 F3",
        "error: reserved value 0 in field `carbohydrate id` at offset 3",
    );
    check(
        GLUCTX,
        "04 02 00 F4",
        "error: reserved value 4 in field `tester` at offset 3",
    );
}

#[test]
fn glucose_context_readings_take_time_and_user_from_their_measurement() {
    let ctx = ctx();
    let measurement = decode(
        GLU,
        &bytes("1B 01 00 E3 07 02 1B 0B 0A 1E FB FF 1E 00 12 05 01"),
        &ctx,
    )
    .unwrap();
    let mut context = decode(GLUCTX, &bytes("02 01 00 01"), &ctx).unwrap();
    let mut other = decode(GLUCTX, &bytes("02 02 00 01"), &ctx).unwrap();
    assert_eq!(glucose::attach_context(&measurement, &mut context), 1);
    assert_eq!(context[0].device_time, measurement[0].device_time);
    assert_eq!(glucose::attach_context(&measurement, &mut other), 0);
    assert_eq!(other[0].device_time, None);
}

#[test]
fn plx_continuous_measurement() {
    // StanfordSpezi/SpeziBluetooth Tests/SpeziBluetoothServicesTests/PLXTests.swift,
    // testVerySimpleMeasurementCoding (both encodings of 100 % / 90 bpm).
    check(
        CONT,
        "00 E8 F3 84 F3",
        "MDC_PULS_OXIM_SAT_O2#2708-6 = 100.0 %
         MDC_PULS_OXIM_PULS_RATE#8867-4 = 90.0 /min",
    );
    check(
        CONT,
        "00 64 00 5A 00",
        "MDC_PULS_OXIM_SAT_O2#2708-6 = 100 %
         MDC_PULS_OXIM_PULS_RATE#8867-4 = 90 /min",
    );
    // Same file, testSimpleMeasurementCoding: measurement ongoing, PAI 8.7.
    check(
        CONT,
        "1C 5F 00 5A 00 20 00 00 00 00 57 F0",
        "MDC_PULS_OXIM_SAT_O2#2708-6 = 95 % [Questionable]
         MDC_PULS_OXIM_PULS_RATE#8867-4 = 90 /min [Questionable]
         MDC_PULS_OXIM_PERF_REL = 8.7 % [Questionable]",
    );
    // Same file, testFullMeasurementCoding: fast and slow pairs, ongoing + fully qualified.
    check(
        CONT,
        "1F DE F3 CA F3 CA F3 5A F5 D4 F3 B2 F2 20 01 00 00 00 7A E3",
        "MDC_PULS_OXIM_SAT_O2#2708-6 = 99.0 % [Questionable]
         MDC_PULS_OXIM_PULS_RATE#8867-4 = 97.0 /min [Questionable]
         MDC_PULS_OXIM_SAT_O2#2708-6~fast = 97.0 % [Questionable]
         MDC_PULS_OXIM_PULS_RATE#8867-4~fast = 137.0 /min [Questionable]
         MDC_PULS_OXIM_SAT_O2#2708-6~slow = 98.0 % [Questionable]
         MDC_PULS_OXIM_PULS_RATE#8867-4~slow = 69.0 /min [Questionable]
         MDC_PULS_OXIM_PERF_REL = 8.90 % [Questionable]",
    );
    // GSS layout: demonstration data, sensor disconnected.
    check(
        CONT,
        "0C 62 00 48 00 00 04 00 80 00",
        "MDC_PULS_OXIM_SAT_O2#2708-6 = 98 % [TestData, SensorFault]
         MDC_PULS_OXIM_PULS_RATE#8867-4 = 72 /min [TestData, SensorFault]",
    );
    check(
        CONT,
        "08 62 00 48 00 00 00",
        "error: too short for its flags: missing field `device and sensor status` at offset 5",
    );
}

#[test]
fn plx_spot_check_measurement() {
    // StanfordSpezi/SpeziBluetooth PLXTests.swift, testSpotCheckMeasurementCoding:
    // 94 %, 147 bpm, 2024-11-29 23:08:57, measurement ongoing + questionable, equipment
    // malfunction + low perfusion, PAI 8.70.
    check(
        SPOT,
        "0F AC F3 BE F5 E8 07 0B 1D 17 08 39 20 40 22 00 00 66 E3",
        "MDC_PULS_OXIM_SAT_O2#2708-6 = 94.0 % @2024-11-29T23:08:57Z [Questionable, SensorFault]
         MDC_PULS_OXIM_PULS_RATE#8867-4 = 147.0 /min @2024-11-29T23:08:57Z [Questionable, SensorFault]
         MDC_PULS_OXIM_PERF_REL = 8.70 % @2024-11-29T23:08:57Z [Questionable, SensorFault]",
    );
    // GSS layout: "device clock is not set" (bit 4): the 2000-01-01 time stamp is not used.
    check(
        SPOT,
        "11 62 00 48 00 D0 07 01 01 00 00 00",
        "MDC_PULS_OXIM_SAT_O2#2708-6 = 98 %
         MDC_PULS_OXIM_PULS_RATE#8867-4 = 72 /min",
    );
    check(
        SPOT,
        "01 62 00 48 00 D0 07 01 01 00 00",
        "error: too short for its flags: missing field `timestamp` at offset 5",
    );
}

#[test]
fn weight_measurement() {
    // Values of StanfordSpezi/SpeziBluetooth WeightScaleTests.swift testWeightMeasurement
    // (weight 123, time 13:12:12 with no date, user 23, BMI 230 / height 1760), bytes per
    // GSS layout. 123 × 0.005 kg = 0.615 kg.
    check(
        WEIGHT,
        "00 7B 00",
        "MDC_MASS_BODY_ACTUAL#29463-7 = 0.615 kg",
    );
    check(
        WEIGHT,
        "02 7B 00 00 00 00 00 0D 0C 0C",
        "MDC_MASS_BODY_ACTUAL#29463-7 = 0.615 kg",
    );
    check(
        WEIGHT,
        "06 7B 00 00 00 00 00 0D 0C 0C 17",
        "MDC_MASS_BODY_ACTUAL#29463-7 = 0.615 kg user=23",
    );
    check(
        WEIGHT,
        "08 7B 00 E6 00 E0 06",
        "MDC_MASS_BODY_ACTUAL#29463-7 = 0.615 kg
         MDC_RATIO_MASS_BODY_LEN_SQ#39156-5 = 23.0 kg/m2
         MDC_LEN_BODY_ACTUAL#8302-2 = 1.760 m",
    );
    // GSS layout: imperial, every field, user 0xFF (unknown).
    check(
        WEIGHT,
        "0F 10 27 E8 07 01 02 03 04 05 FF E6 00 D0 02",
        "MDC_MASS_BODY_ACTUAL#29463-7 = 100.00 [lb_av] @2024-01-02T03:04:05Z
         MDC_RATIO_MASS_BODY_LEN_SQ#39156-5 = 23.0 kg/m2 @2024-01-02T03:04:05Z
         MDC_LEN_BODY_ACTUAL#8302-2 = 72.0 [in_i] @2024-01-02T03:04:05Z",
    );
    // GSS: 0xFFFF is "measurement unsuccessful".
    check(
        WEIGHT,
        "01 FF FF",
        "MDC_MASS_BODY_ACTUAL#29463-7 = <Error> [lb_av]",
    );
    // 14000 × 0.005 kg is exactly 70.000 kg.
    check(
        WEIGHT,
        "00 B0 36",
        "MDC_MASS_BODY_ACTUAL#29463-7 = 70.000 kg",
    );
    check(
        WEIGHT,
        "08 7B 00 E6 00 E0",
        "error: too short for its flags: missing field `height` at offset 5",
    );
}

#[test]
fn body_composition_measurement() {
    // eisaev/blevalueparser tests/bodycompositionmeasurementtest.cpp,
    // FeaturesAll_SinglePacket_ReservedOdd (reserved flag bits 13 and 15 set: ignored).
    check(
        BODY,
        "FE AF 12 34 E7 07 02 06 12 1C 00 2A 23 45 34 56 45 67 56 78 67 89 78 9A 89 AB 9A BC AB CD",
        "MDC_BODY_FAT#41982-0 = 1333.0 % @2023-02-06T18:28:00Z user=42
         MDC_BASAL_METABOLISM = 17699 kJ @2023-02-06T18:28:00Z user=42
         MDC_BODY_MUSCLE = 2206.8 % @2023-02-06T18:28:00Z user=42
         MDC_MASS_BODY_MUSCLE = 132.185 kg @2023-02-06T18:28:00Z user=42
         MDC_MASS_BODY_FAT_FREE = 154.030 kg @2023-02-06T18:28:00Z user=42
         MDC_MASS_BODY_SOFT_LEAN = 175.875 kg @2023-02-06T18:28:00Z user=42
         MDC_BODY_WATER = 197.720 kg @2023-02-06T18:28:00Z user=42
         MDC_BODY_ELECTRICAL_IMPEDANCE = 4391.3 Ohm @2023-02-06T18:28:00Z user=42
         MDC_MASS_BODY_ACTUAL#29463-7 = 241.410 kg @2023-02-06T18:28:00Z user=42
         MDC_LEN_BODY_ACTUAL#8302-2 = 52.651 m @2023-02-06T18:28:00Z user=42",
    );
    // Same file, FeaturesNone_MultiplePacket_ReservedEven.
    check(BODY, "00 50 12 34", "MDC_BODY_FAT#41982-0 = 1333.0 %");
    // Same file, FeaturesOdd_SinglePacket_ReservedAll.
    check(
        BODY,
        "AA EA 12 34 E7 07 02 06 12 1C 00 23 45 45 67 67 89 89 AB AB CD",
        "MDC_BODY_FAT#41982-0 = 1333.0 % @2023-02-06T18:28:00Z
         MDC_BASAL_METABOLISM = 17699 kJ @2023-02-06T18:28:00Z
         MDC_MASS_BODY_MUSCLE = 132.185 kg @2023-02-06T18:28:00Z
         MDC_MASS_BODY_SOFT_LEAN = 175.875 kg @2023-02-06T18:28:00Z
         MDC_BODY_ELECTRICAL_IMPEDANCE = 4391.3 Ohm @2023-02-06T18:28:00Z
         MDC_LEN_BODY_ACTUAL#8302-2 = 52.651 m @2023-02-06T18:28:00Z",
    );
    // Same file, FeaturesEven_MultiplePacket_ReservedNone.
    check(
        BODY,
        "54 15 12 34 2A 34 56 56 78 78 9A 9A BC",
        "MDC_BODY_FAT#41982-0 = 1333.0 % user=42
         MDC_BODY_MUSCLE = 2206.8 % user=42
         MDC_MASS_BODY_FAT_FREE = 154.030 kg user=42
         MDC_BODY_WATER = 197.720 kg user=42
         MDC_MASS_BODY_ACTUAL#29463-7 = 241.410 kg user=42",
    );
    // GSS: body fat 0xFFFF is "measurement unsuccessful"; imperial mass and length.
    check(BODY, "01 00 FF FF", "MDC_BODY_FAT#41982-0 = <Error> %");
    check(
        BODY,
        "21 08 2C 01 10 27 D0 02",
        "MDC_BODY_FAT#41982-0 = 30.0 %
         MDC_MASS_BODY_MUSCLE = 100.00 [lb_av]
         MDC_LEN_BODY_ACTUAL#8302-2 = 72.0 [in_i]",
    );
    check(
        BODY,
        "00 04 12 34 9A",
        "error: too short for its flags: missing field `weight` at offset 4",
    );
}

#[test]
fn unknown_characteristics_are_refused() {
    check(0x2A19, "64", "error: no decoder for characteristic 0x2A19");
}

#[test]
fn characteristic_uuids_parse_in_every_form() {
    for s in [
        "2A35",
        "2a35",
        "0x2A35",
        "0X2a35",
        " 2A35 ",
        "00002a35-0000-1000-8000-00805f9b34fb",
        "00002A35-0000-1000-8000-00805F9B34FB",
    ] {
        assert_eq!(parse_characteristic(s), Ok(0x2A35), "{s}");
    }
    for s in [
        "",
        "2A3",
        "2A355",
        "0x",
        "zz35",
        "+2A3",
        "00002a35-0000-1000-8000-00805f9b34fc",
        "12342a35-0000-1000-8000-00805f9b34fb",
        "00002a3g-0000-1000-8000-00805f9b34fb",
        // Found by the ble_profile_file fuzz target: 36 bytes with a two-byte character
        // across byte 8 once panicked on a char boundary.
        "P==\"\"#\tН\"\u{1c}\"\"#\tН\tН\"\u{1c}\"\"#\t\"\u{1c}##\"b|\t#\u{10}",
        "0000\u{1c}aН-0000-1000-8000-00805f9b34fb",
    ] {
        assert!(parse_characteristic(s).is_err(), "{s}");
    }
    assert_eq!(full_uuid(0x2A35), "00002a35-0000-1000-8000-00805f9b34fb");
    for d in Decoder::ALL {
        assert_eq!(parse_characteristic(&full_uuid(d.uuid())), Ok(d.uuid()));
        assert_eq!(Decoder::from_name(d.name()), Some(d));
    }
}

#[test]
fn bluetooth_addresses_parse_with_or_without_separators() {
    let a = Some([0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6]);
    for s in [
        "A1:B2:C3:D4:E5:F6",
        "a1:b2:c3:d4:e5:f6",
        "A1-B2-C3-D4-E5-F6",
        "A1B2C3D4E5F6",
        " A1:B2:C3:D4:E5:F6 ",
    ] {
        assert_eq!(parse_bluetooth_address(s), a, "{s}");
    }
    for s in [
        "",
        "A1:B2:C3:D4:E5",
        "A1:B2:C3:D4:E5:G6",
        "A1:B2-C3:D4:E5:F6",
        "A1B2C3D4E5F",
        "A1:B2:C3:D4:E5:F6:07",
        "SIM-BP-0001",
        "ÄB:B2:C3:D4:E5:F",
        "A1:B2:C3:D4:E5::6",
    ] {
        assert_eq!(parse_bluetooth_address(s), None, "{s}");
    }
}

#[test]
fn every_truncation_of_every_valid_vector_is_an_error() {
    let ctx = ctx();
    for (uuid, hex) in VALID {
        let full = bytes(hex);
        let decoded = decode(*uuid, &full, &ctx);
        assert!(decoded.is_ok(), "{uuid:04X} {hex}: {decoded:?}");
        for len in 0..full.len() {
            let result = decode(*uuid, &full[..len], &ctx);
            if *uuid == HR {
                // RR-intervals run to the end: a cut at an interval boundary that leaves one
                // or more is a shorter, valid measurement.
                if let Ok(short) = heart_rate::HeartRateMeasurement::parse(&full[..len]) {
                    let long = heart_rate::HeartRateMeasurement::parse(&full).unwrap();
                    assert!(!short.rr_intervals.is_empty());
                    assert!(short.rr_intervals.len() < long.rr_intervals.len());
                    assert_eq!(
                        long.rr_intervals[..short.rr_intervals.len()],
                        short.rr_intervals
                    );
                    continue;
                }
            }
            let err = result.expect_err(&format!("{uuid:04X} {hex} cut at {len} decoded"));
            assert!(err.is_incomplete(), "{uuid:04X} {hex} cut at {len}: {err}");
        }
    }
}

#[test]
fn bytes_after_the_last_field_are_ignored() {
    let ctx = ctx();
    for (uuid, hex) in VALID.iter().filter(|(u, _)| *u != HR) {
        let mut longer = bytes(hex);
        let expected = decode(*uuid, &longer, &ctx).unwrap();
        longer.extend_from_slice(&[0xAB, 0xCD]);
        assert_eq!(decode(*uuid, &longer, &ctx).unwrap(), expected, "{hex}");
    }
}

/// A characteristic described as its flag bits, each with the bytes of the field it adds,
/// in wire order; `fixed` are the mandatory bytes after the flags (inserted at
/// `fixed_at` among the optional fields). Bits that only select units have empty bytes.
struct Layout {
    uuid: u16,
    flag_bytes: usize,
    fixed_before: &'static str,
    fields: &'static [(u32, &'static str)],
}

/// Valid field contents: a known Date Time (2024-03-15 14:30:45), ordinary SFLOATs, codes
/// that are not reserved.
const DT: &str = "E8 07 03 0F 0E 1E 2D";

const LAYOUTS: &[Layout] = &[
    Layout {
        uuid: HR,
        flag_bytes: 1,
        fixed_before: "",
        // bit 0 widens the value (handled below), bits 1–2 contact, 3 energy, 4 RR.
        fields: &[(1, ""), (2, ""), (3, "BB 01"), (4, "CC 01 CD 01")],
    },
    Layout {
        uuid: BP,
        flag_bytes: 1,
        fixed_before: "7A 00 50 00 5A 00",
        fields: &[(0, ""), (1, DT), (2, "48 00"), (3, "02"), (4, "27 00")],
    },
    Layout {
        uuid: ICP,
        flag_bytes: 1,
        fixed_before: "7A 00 FF 07 FF 07",
        fields: &[(0, ""), (1, DT), (2, "48 00"), (3, "02"), (4, "27 00")],
    },
    Layout {
        uuid: TEMP,
        flag_bytes: 1,
        fixed_before: "6E 01 00 FF",
        fields: &[(0, ""), (1, DT), (2, "06")],
    },
    Layout {
        uuid: GLU,
        flag_bytes: 1,
        fixed_before: concat!("01 00 ", "E8 07 03 0F 0E 1E 2D"),
        fields: &[
            (0, "FB FF"),
            (1, "5F B0 11"),
            (2, ""),
            (3, "01 00"),
            (4, ""),
        ],
    },
    Layout {
        uuid: GLUCTX,
        flag_bytes: 1,
        fixed_before: "01 00",
        fields: &[
            (7, "00"),
            (0, "01 E8 F3"),
            (1, "01"),
            (2, "11"),
            (3, "3C 00 32"),
            (4, "01 E8 F3"),
            (5, ""),
            (6, "59 F1"),
        ],
    },
    Layout {
        uuid: SPOT,
        flag_bytes: 1,
        fixed_before: "62 00 48 00",
        fields: &[
            (0, DT),
            (1, "20 00"),
            (2, "02 00 00"),
            (3, "57 F0"),
            (4, ""),
        ],
    },
    Layout {
        uuid: CONT,
        flag_bytes: 1,
        fixed_before: "62 00 48 00",
        fields: &[
            (0, "61 00 47 00"),
            (1, "63 00 49 00"),
            (2, "20 00"),
            (3, "02 00 00"),
            (4, "57 F0"),
        ],
    },
    Layout {
        uuid: WEIGHT,
        flag_bytes: 1,
        fixed_before: "B0 36",
        fields: &[(0, ""), (1, DT), (2, "01"), (3, "E6 00 E0 06")],
    },
    Layout {
        uuid: BODY,
        flag_bytes: 2,
        fixed_before: "2C 01",
        fields: &[
            (0, ""),
            (1, DT),
            (2, "01"),
            (3, "23 45"),
            (4, "34 02"),
            (5, "45 67"),
            (6, "56 78"),
            (7, "67 29"),
            (8, "78 1A"),
            (9, "89 0B"),
            (10, "B0 36"),
            (11, "E0 06"),
            (12, ""),
        ],
    },
];

/// Every combination of every flag bit of every characteristic decodes, with a time
/// stamp exactly when the flags announce one and the user id when announced; and cutting
/// off the last byte of any combination that has optional bytes is an error.
#[test]
fn every_flag_combination_decodes() {
    let ctx = ctx();
    let mut combinations = 0;
    for layout in LAYOUTS {
        let n = layout.fields.len();
        for mask in 0u32..(1 << n) {
            let mut flags = 0u32;
            let mut body = bytes(layout.fixed_before);
            if layout.uuid == HR {
                body.push(0x48);
            }
            for (i, (bit, field)) in layout.fields.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    flags |= 1 << bit;
                    body.extend(bytes(field));
                }
            }
            let mut payload = flags.to_le_bytes()[..layout.flag_bytes].to_vec();
            payload.extend(&body);
            let readings = decode(layout.uuid, &payload, &ctx)
                .unwrap_or_else(|e| panic!("{:04X} flags {flags:#x}: {e}", layout.uuid));
            combinations += 1;
            // Glucose always has its base time; the others when a Date Time field is on.
            let has_time = layout.uuid == GLU
                || layout
                    .fields
                    .iter()
                    .any(|(bit, f)| *f == DT && flags & (1 << bit) != 0);
            // The PLX "clock not set" bit suppresses the time stamp.
            let clock_not_set = layout.uuid == SPOT && flags & 0x10 != 0;
            for r in &readings {
                assert_eq!(
                    r.device_time.is_some(),
                    has_time && !clock_not_set,
                    "{:04X} flags {flags:#x}",
                    layout.uuid
                );
            }
            let user_bit = match layout.uuid {
                BP | ICP => Some(3),
                WEIGHT | BODY => Some(2),
                _ => None,
            };
            if let Some(b) = user_bit {
                let announced = flags & (1 << b) != 0;
                assert!(
                    readings
                        .iter()
                        .all(|r| r.device_user.is_some() == announced),
                    "{:04X} flags {flags:#x} user",
                    layout.uuid
                );
            }
            let optional_bytes = payload.len()
                > layout.flag_bytes
                    + bytes(layout.fixed_before).len()
                    + usize::from(layout.uuid == HR);
            if optional_bytes && layout.uuid != HR {
                let cut = &payload[..payload.len() - 1];
                assert!(
                    decode(layout.uuid, cut, &ctx).is_err(),
                    "{:04X} flags {flags:#x} cut",
                    layout.uuid
                );
            }
        }
    }
    assert_eq!(combinations, 8648);
}

#[test]
fn heart_rate_value_format_bit_selects_uint16() {
    check(HR, "01 48 00", "MDC_ECG_HEART_RATE#8867-4 = 72 /min");
    check(
        HR,
        "01 48",
        "error: too short for its flags: missing field `heart rate measurement value (uint16)` at offset 1",
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random bytes never panic, for every characteristic (and a few unknown ones).
    #[test]
    fn random_bytes_never_panic(
        which in 0usize..(Decoder::ALL.len() + 1),
        payload in proptest::collection::vec(any::<u8>(), 0..48),
    ) {
        let uuid = Decoder::ALL.get(which).map_or(0x2A00, |d| d.uuid());
        let _ = decode(uuid, &payload, &ctx());
    }

    /// Arbitrary text never panics the UUID parser (the fuzz-found char-boundary bug), nor
    /// the address parser.
    #[test]
    fn arbitrary_text_never_panics_the_uuid_parser(s in "\\PC{0,40}") {
        let _ = parse_characteristic(&s);
        let _ = parse_bluetooth_address(&s);
    }

    /// Random bytes behind every flags value never panic either (the flags byte is where
    /// random input is least likely to reach deep paths).
    #[test]
    fn every_flags_value_with_random_fields_never_panics(
        which in 0usize..Decoder::ALL.len(),
        flags in any::<u16>(),
        rest in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let d = Decoder::ALL[which];
        let mut payload = flags.to_le_bytes().to_vec();
        payload.extend(rest);
        let _ = d.decode(&payload, &ctx());
    }
}
