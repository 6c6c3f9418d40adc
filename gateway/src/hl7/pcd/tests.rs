//! PCD-01 mapping over the example messages of `tests/fixtures/hl7/` (assembled from the
//! structure the IHE PCD Technical Framework and public vendor interface guides document)
//! and over broken variants of them.

use time::macros::datetime;

use super::*;
use crate::hl7::v2::{split_batch, Message};

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("../../../../tests/fixtures/hl7/", $name))
    };
}

fn berlin() -> TimeZone {
    TimeZone::get("Europe/Berlin").expect("tzdata")
}

fn run(bytes: &[u8]) -> Result<Mapped, Refusal> {
    let zone = berlin();
    let placeholders = [Decimal::integer(-999)];
    let ctx = MapContext {
        received_at: datetime!(2026-01-05 12:00:00 UTC),
        zone: &zone,
        placeholders: &placeholders,
        binding: &|key| {
            (key == "0012211839000009").then(|| patient_ref("urn:oid:9".into(), "bound".into()))
        },
    };
    let m = Message::parse(bytes).map_err(|e| Refusal {
        ack: AckCode::Reject,
        error: ErrorInfo {
            segment: String::new(),
            sequence: 0,
            field: 0,
            code: 0,
            text: e.to_string(),
        },
    })?;
    map(&m, &ctx)
}

fn ok(bytes: &[u8]) -> Mapped {
    run(bytes).unwrap_or_else(|e| panic!("{e}"))
}

fn quantity(r: &Reading) -> (String, &str) {
    match &r.value {
        Value::Quantity(Quantity {
            value: Measured::Value(d),
            unit,
        }) => (d.to_string(), unit.as_str()),
        other => panic!("{other:?}"),
    }
}

fn components(r: &Reading) -> Vec<(u32, String, &str)> {
    match &r.value {
        Value::Components(parts) => parts
            .iter()
            .map(|c| match &c.quantity.value {
                Measured::Value(d) => (c.metric.mdc, d.to_string(), c.quantity.unit.as_str()),
                Measured::Absent(_) => (c.metric.mdc, "absent".into(), c.quantity.unit.as_str()),
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

fn path(r: &Reading) -> Vec<u32> {
    r.bedside.as_ref().unwrap().containment.clone()
}

#[test]
fn a_monitor_with_a_containment_tree_gives_every_metric_its_device_and_channel() {
    let m = ok(fixture!("monitor_vitals.hl7"));
    let got: Vec<u32> = m.readings.iter().map(|r| r.metric.mdc).collect();
    assert_eq!(
        got,
        [147842, 148066, 150456, 149530, 150032, 149522, 150044, 150344, 150344, 151562]
    );
    assert_eq!(m.unmapped, Vec::<String>::new());
    // MDS, 4 VMD headers, 2 channel headers.
    assert_eq!(m.skipped, 7);
    for r in &m.readings {
        // The MDS header's EUI-64, inherited by every metric under it.
        assert_eq!(
            r.device.id,
            DeviceId::Eui64([0, 0x12, 0x21, 0x18, 0x39, 0, 0, 1])
        );
        assert_eq!(r.device.profile, PROFILE);
        assert_eq!(
            r.patient,
            Some(patient_ref(
                "urn:oid:1.2.840.99999.1".into(),
                "MRN-4711".into()
            ))
        );
        assert_eq!(r.device_time, Some(datetime!(2026-01-05 10:15:00 +01:00)));
        let b = r.bedside.as_ref().unwrap();
        assert_eq!(b.location.as_deref(), Some("ICU-EAST^12^A"));
        assert_eq!(b.status, ResultStatus::Final);
        assert!(r.status.is_empty());
    }
    assert_eq!(quantity(&m.readings[0]), ("72".into(), "/min"));
    assert_eq!(m.readings[0].metric.loinc, Some("8867-4"));
    assert_eq!(path(&m.readings[0]), [1, 1, 1, 1]);
    assert_eq!(quantity(&m.readings[2]), ("97".into(), "%"));
    assert_eq!(m.readings[2].metric.loinc, Some("2708-6"));
    assert_eq!(
        components(&m.readings[4]),
        [
            (150033, "118".into(), "mm[Hg]"),
            (150034, "76".into(), "mm[Hg]"),
            (150035, "90".into(), "mm[Hg]")
        ]
    );
    assert_eq!(path(&m.readings[4]), [1, 3, 1]);
    assert_eq!(components(&m.readings[6]).len(), 3);
    assert_eq!(path(&m.readings[6]), [1, 3, 2]);
    // Two temperatures of one code in two channels: two readings, two identifiers.
    assert_eq!(quantity(&m.readings[7]), ("37.2".into(), "Cel"));
    assert_eq!(quantity(&m.readings[8]), ("36.4".into(), "Cel"));
    assert_ne!(m.readings[7].identifier(), m.readings[8].identifier());
    assert!(m.readings[7].identifier().ends_with("-c1.4.1"));
    assert_eq!(quantity(&m.readings[9]), ("16".into(), "/min"));
}

#[test]
fn nibp_parts_make_one_panel_and_a_time_without_offset_is_in_the_configured_zone() {
    let m = ok(fixture!("nibp.hl7"));
    assert_eq!(m.readings.len(), 2);
    let bp = &m.readings[0];
    assert_eq!(bp.metric, catalog::BLOOD_PRESSURE);
    assert_eq!(
        components(bp),
        [
            (150021, "124".into(), "mm[Hg]"),
            (150022, "81".into(), "mm[Hg]"),
            (150023, "95".into(), "mm[Hg]")
        ]
    );
    assert_eq!(bp.device_time, Some(datetime!(2026-01-05 08:29:45 +01:00)));
    assert_eq!(
        bp.bedside.as_ref().unwrap().status,
        ResultStatus::Preliminary
    );
    assert_eq!(
        bp.patient,
        Some(patient_ref(
            "https://hospital.example/mrn".into(),
            "P-1002".into()
        ))
    );
    assert_eq!(quantity(&m.readings[1]), ("68".into(), "/min"));
}

#[test]
fn placeholders_become_data_absent_and_x_makes_no_reading() {
    let m = ok(fixture!("spo2.hl7"));
    assert_eq!(m.readings.len(), 3);
    assert_eq!(m.skipped, 1);
    assert_eq!(quantity(&m.readings[0]), ("95".into(), "%"));
    let absent = |r: &Reading| match &r.value {
        Value::Quantity(q) => q.value,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        absent(&m.readings[1]),
        Measured::Absent(AbsentReason::Error)
    );
    assert_eq!(
        absent(&m.readings[2]),
        Measured::Absent(AbsentReason::NotANumber)
    );
    // EUI-64 in EI.1 of every OBX-18; a namespace-only assigning authority.
    assert_eq!(
        m.readings[0].device.id,
        DeviceId::Eui64([0, 0x12, 0x21, 0x18, 0x39, 0, 0, 3])
    );
    assert_eq!(
        m.readings[0].patient,
        Some(patient_ref("HOSP".into(), "55501".into()))
    );
}

#[test]
fn fahrenheit_the_obr_time_msh3_device_and_a_correction() {
    let m = ok(fixture!("temperature.hl7"));
    let r = &m.readings[0];
    assert_eq!(r.metric, catalog::TEMP_ORAL);
    assert_eq!(quantity(r), ("98.6".into(), "[degF]"));
    assert_eq!(r.device_time, Some(datetime!(2026-01-05 13:55:00 -05:00)));
    assert_eq!(r.device.id.key(), "00A0B1FFFEC2D3E4");
    assert_eq!(r.bedside.as_ref().unwrap().status, ResultStatus::Corrected);
    assert_eq!(
        r.patient,
        Some(patient_ref(
            "urn:oid:2.16.840.1.113883.3.999".into(),
            "A123".into()
        ))
    );
}

#[test]
fn a_pump_metric_unknown_to_the_catalog_is_kept_as_unmapped_not_dropped() {
    let m = ok(fixture!("pump.hl7"));
    assert_eq!(m.readings.len(), 1);
    assert_eq!(quantity(&m.readings[0]), ("12.5".into(), "mL/h"));
    assert_eq!(m.unmapped.len(), 1);
    assert!(m.unmapped[0].contains("157884"), "{:?}", m.unmapped);
    assert_eq!(m.skipped, 2);
}

#[test]
fn a_batch_is_taken_message_by_message() {
    let bytes = fixture!("batch.hl7");
    let parts = split_batch(bytes);
    assert_eq!(parts.len(), 2);
    let values: Vec<String> = parts
        .iter()
        .map(|p| quantity(&ok(p).readings[0]).0)
        .collect();
    assert_eq!(values, ["80", "82"]);
}

#[test]
fn escapes_and_custom_delimiters_and_latin1() {
    let m = ok(fixture!("escaped.hl7"));
    let r = &m.readings[0];
    // \S\ is the message's own component separator, `:` here; `*` is its field separator.
    assert_eq!(
        r.patient,
        Some(patient_ref("urn:oid:1.2.840.99999.1".into(), "X:77".into()))
    );
    assert_eq!(
        r.bedside.as_ref().unwrap().location.as_deref(),
        Some("WARD*7^BA^2")
    );
    assert_eq!(r.device.id.key(), "0012211839000005");
    let m = ok(fixture!("latin1.hl7"));
    let r = &m.readings[0];
    assert_eq!(
        r.bedside.as_ref().unwrap().location.as_deref(),
        Some("Süd^3^1")
    );
    assert_eq!(quantity(r), ("72.5".into(), "kg"));
}

#[test]
fn without_pid_the_device_binding_applies() {
    let msg = "MSH|^~\\&|X|Y|||20260105101500+0100||ORU^R01|1|P|2.6\rOBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.1.1.1|97|262688^MDC_DIM_PERCENT^MDC|||||F|||||||0012211839000009^^0012211839000009^EUI-64\r";
    let m = ok(msg.as_bytes());
    assert_eq!(
        m.readings[0].patient,
        Some(patient_ref("urn:oid:9".into(), "bound".into()))
    );
}

/// The refusal of `fixture` changed by `edit`.
fn refused(msg: &str) -> Refusal {
    match run(msg.as_bytes()) {
        Ok(m) => panic!("accepted: {m:?}"),
        Err(r) => r,
    }
}

const GOOD: &str = "MSH|^~\\&|X^0012211839000001^EUI-64|Y|||20260105101500+0100||ORU^R01|C1|P|2.6\rPID|||7^^^H\rOBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.1.1.1|97|262688^MDC_DIM_PERCENT^MDC|||||F\r";

#[test]
fn the_good_template_is_good() {
    assert_eq!(ok(GOOD.as_bytes()).readings.len(), 1);
}

#[test]
fn messages_that_cannot_be_processed_are_rejected() {
    for (edit, field, code) in [
        (
            GOOD.replace("ORU^R01", ""),
            9,
            err_code::REQUIRED_FIELD_MISSING,
        ),
        (
            GOOD.replace("ORU^R01", "ADT^A01"),
            9,
            err_code::UNSUPPORTED_MESSAGE_TYPE,
        ),
        (
            GOOD.replace("ORU^R01", "ORU^R30"),
            9,
            err_code::UNSUPPORTED_EVENT,
        ),
        (
            GOOD.replace("|2.6", "|2.2"),
            12,
            err_code::UNSUPPORTED_VERSION,
        ),
        (
            GOOD.replace("|2.6", "|3.0"),
            12,
            err_code::UNSUPPORTED_VERSION,
        ),
        (
            GOOD.replace("|C1|", "||"),
            10,
            err_code::REQUIRED_FIELD_MISSING,
        ),
    ] {
        let r = refused(&edit);
        assert_eq!(r.ack, AckCode::Reject, "{edit}");
        assert_eq!(
            (r.error.segment.as_str(), r.error.field, r.error.code),
            ("MSH", field, code),
            "{edit}"
        );
    }
    for v in [
        "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.2",
    ] {
        assert!(
            run(GOOD.replace("|2.6", &format!("|{v}")).as_bytes()).is_ok(),
            "{v}"
        );
    }
}

#[test]
fn messages_that_parse_but_cannot_be_used_are_errors_naming_the_field() {
    for (edit, segment, field, code) in [
        (
            GOOD.replace("|150456^MDC_PULS_OXIM_SAT_O2^MDC|", "||"),
            "OBX",
            3,
            err_code::REQUIRED_FIELD_MISSING,
        ),
        (GOOD.replace("|97|", "|9x7|"), "OBX", 5, err_code::DATA_TYPE),
        (GOOD.replace("|97|", "|1e3|"), "OBX", 5, err_code::DATA_TYPE),
        (
            GOOD.replace("|97|", "|9\\Q\\7|"),
            "OBX",
            5,
            err_code::DATA_TYPE,
        ),
        (
            GOOD.replace("|97|", "|97\\|"),
            "OBX",
            5,
            err_code::DATA_TYPE,
        ),
        (
            GOOD.replace("|1.1.1.1|", "|a.b|"),
            "OBX",
            4,
            err_code::DATA_TYPE,
        ),
        (
            GOOD.replace("150456^MDC_PULS", "15x456^MDC_PULS"),
            "OBX",
            3,
            err_code::DATA_TYPE,
        ),
        (
            GOOD.replace("|||||F", "|||||Z"),
            "OBX",
            11,
            err_code::DATA_TYPE,
        ),
        (GOOD.replace("7^^^H", "7"), "PID", 3, err_code::DATA_TYPE),
        (
            GOOD.replace("20260105101500+0100", "2026-01-05"),
            "MSH",
            7,
            err_code::DATA_TYPE,
        ),
        (
            GOOD.replace("|||||F", "|||||F|||20261399"),
            "OBX",
            14,
            err_code::DATA_TYPE,
        ),
        (
            GOOD.replace("X^0012211839000001^EUI-64", ""),
            "OBX",
            18,
            err_code::REQUIRED_FIELD_MISSING,
        ),
    ] {
        let r = refused(&edit);
        assert_eq!(r.ack, AckCode::Error, "{edit}");
        assert_eq!(
            (r.error.segment.as_str(), r.error.field, r.error.code),
            (segment, field, code),
            "{edit}: {r}"
        );
    }
}

#[test]
fn units_are_mdc_or_ucum_and_an_unknown_unit_is_kept_not_guessed() {
    let ucum = GOOD.replace("262688^MDC_DIM_PERCENT^MDC", "%^percent^UCUM");
    assert_eq!(quantity(&ok(ucum.as_bytes()).readings[0]).1, "%");
    assert!(
        !ok(ucum.as_bytes()).readings[0]
            .bedside
            .as_ref()
            .unwrap()
            .unit_as_sent
    );
    // Kept as the sender wrote it, marked as not UCUM.
    for (unknown, text) in [
        ("bpm^^L", "bpm"),
        ("%", "%"),
        ("999999^MDC_DIM_NOPE^MDC", "MDC_DIM_NOPE"),
        ("x^percent^99LOCAL", "percent"),
    ] {
        let edit = GOOD.replace("262688^MDC_DIM_PERCENT^MDC", unknown);
        let m = ok(edit.as_bytes());
        assert_eq!(quantity(&m.readings[0]).1, text, "{unknown}");
        assert!(
            m.readings[0].bedside.as_ref().unwrap().unit_as_sent,
            "{unknown}"
        );
        assert!(m.unmapped.is_empty(), "{unknown}");
    }
    // In FHIR: the text, no UCUM system or code, and no vital-signs profile claimed for it.
    let m = ok(GOOD
        .replace("262688^MDC_DIM_PERCENT^MDC", "bpm^^L")
        .as_bytes());
    let obs = crate::fhir::observation(&m.readings[0], "Device/d", "Device/g");
    assert_eq!(obs["valueQuantity"]["unit"], "bpm");
    assert!(
        obs["valueQuantity"].get("system").is_none() && obs["valueQuantity"].get("code").is_none()
    );
    assert!(!obs["meta"].to_string().contains("oxygensat"), "{obs}");
    let text = crate::hl7::oru::write(
        &[&m.readings[0]],
        &Default::default(),
        "C",
        m.readings[0].received_at,
    );
    assert!(text.contains("|97|^bpm|"), "{text}");
    // No unit at all, or an unknown unit on a blood-pressure part: the dead letter.
    let edit = GOOD.replace("262688^MDC_DIM_PERCENT^MDC", "");
    let m = ok(edit.as_bytes());
    assert!(m.readings.is_empty() && m.unmapped.len() == 1);
    let bp = GOOD
        .replace(
            "150456^MDC_PULS_OXIM_SAT_O2",
            "150021^MDC_PRESS_BLD_NONINV_SYS",
        )
        .replace("262688^MDC_DIM_PERCENT^MDC", "mmHg^^L");
    let m = ok(bp.as_bytes());
    assert!(m.readings.is_empty() && m.unmapped.len() == 1);
}

#[test]
fn test_processing_ids_mark_test_data_and_result_statuses_map() {
    let m = ok(GOOD.replace("|P|2.6", "|T|2.6").as_bytes());
    assert_eq!(m.readings[0].status, vec![StatusFlag::TestData]);
    for (letter, status) in [
        ("F", Some(ResultStatus::Final)),
        ("P", Some(ResultStatus::Preliminary)),
        ("R", Some(ResultStatus::Preliminary)),
        ("C", Some(ResultStatus::Corrected)),
        ("A", Some(ResultStatus::Amended)),
        ("W", Some(ResultStatus::EnteredInError)),
        ("D", Some(ResultStatus::EnteredInError)),
        ("X", None),
        ("I", None),
    ] {
        let m = ok(GOOD.replace("|||||F", &format!("|||||{letter}")).as_bytes());
        assert_eq!(
            m.readings
                .first()
                .map(|r| r.bedside.as_ref().unwrap().status),
            status,
            "{letter}"
        );
    }
}

#[test]
fn the_same_message_gives_the_same_identifiers_whenever_it_is_received() {
    let a = ok(fixture!("monitor_vitals.hl7"));
    let zone = berlin();
    let ctx = MapContext {
        received_at: datetime!(2027-01-01 00:00:00 UTC),
        zone: &zone,
        placeholders: &[],
        binding: &|_| None,
    };
    let b = map(
        &Message::parse(fixture!("monitor_vitals.hl7")).unwrap(),
        &ctx,
    )
    .unwrap();
    let ids = |m: &Mapped| {
        m.readings
            .iter()
            .map(Reading::identifier)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&a), ids(&b));
}

proptest::proptest! {
    #[test]
    fn random_obx_never_panic(
        fields in proptest::collection::vec("[0-9A-Z.^&~\\\\|+-]{0,12}", 0..20),
    ) {
        let obx = fields.join("|");
        let msg = format!("MSH|^~\\&|A||||20260105||ORU^R01|1|P|2.6\rPID|||1^^^H\rOBR|1|||x|||2026\rOBX|{obx}\r");
        let _ = run(msg.as_bytes());
    }
}
