//! Line decoder tests: the shipped profiles against their documented lines through one
//! `check(profile, line, expected)` helper, error cases that must name fields and never
//! echo values, the schema's refusals, and a proptest that no input panics.
//!
//! Vectors and where they come from:
//! - Masimo Rad-8 Operator's Manual, section 4, "Sample Trend Output" (page 4-24): the eight
//!   sample lines, verbatim.
//! - Nonin 7500FO / Avant 9600 / 8500 / BT4000 manuals: the documented line templates
//!   (`SPO2=XXX HR=YYY`, `… F`, `…*`, `SPO2=--- HR=---`) with values filled in.

use proptest::prelude::*;
use time::macros::{datetime, offset};
use time::UtcOffset;

use super::schema::{describe, ProfileFile};
use super::*;
use crate::model::{DeviceId, DeviceRef, PatientRef};

fn ctx() -> FrameContext {
    FrameContext {
        device: DeviceRef {
            id: DeviceId::Serial("502123456".into()),
            profile: "line-test".into(),
            model: None,
            manufacturer: None,
        },
        patient: Some(PatientRef::identifier("urn:oid:1.2.3", "p-1")),
        received_at: datetime!(2026-11-25 10:00:00.123 UTC),
        clock_offset: None,
        time_sync: None,
    }
}

fn profile(id: &str) -> LineProfile {
    Registry::built_in().unwrap().get(id).unwrap().clone()
}

/// One string per reading: `MDC_REF VALUE UNIT @TIME [flags]`, or `ignored`.
fn render(decoded: &Decoded) -> Vec<String> {
    match decoded {
        Decoded::Ignored => vec!["ignored".into()],
        Decoded::Readings(readings) => readings
            .iter()
            .map(|r| {
                let time = r
                    .device_time
                    .map(crate::model::format_time)
                    .unwrap_or_else(|| "receive-time".into());
                let flags: Vec<&str> = r.status.iter().map(|f| f.as_str()).collect();
                format!("{} @{time} {flags:?}", describe(r))
            })
            .collect(),
    }
}

fn check(profile: &LineProfile, line: &str, utc: UtcOffset, expected: &[&str]) {
    let decoded = profile
        .decode(line.as_bytes(), &ctx(), utc)
        .unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(render(&decoded), expected, "{line:?}");
}

#[test]
fn masimo_rad8_sample_trend_output_decodes_exactly() {
    let p = profile("line-masimo-rad8");
    let utc = UtcOffset::UTC;
    // Sensor off / searching / no value: nothing was measured.
    for line in [
        "09/21/08 09:56:08 SpO2=000 PR=000 PI=00.00 EXC=820:OffPat,SET",
        "09/21/08 09:56:10 SpO2=000 PR=000 PI=00.00 EXC=828:Search,OffPat,SET",
        "09/21/08 09:56:18 SpO2=000 PR=000 PI=00.00 EXC=800:SET",
        "09/21/08 09:56:20 SpO2=000 PR=000 PI=00.00 EXC=820:OffPat,SET",
    ] {
        check(&p, line, utc, &[]);
    }
    check(
        &p,
        "09/21/08 09:56:12 SpO2=097 PR=069 PI=04.69 EXC=800:SET",
        utc,
        &[
            "MDC_PULS_OXIM_SAT_O2 97 % @2008-09-21T09:56:12Z []",
            "MDC_PULS_OXIM_PULS_RATE 69 /min @2008-09-21T09:56:12Z []",
            "MDC_PULS_OXIM_PERF_REL 4.69 % @2008-09-21T09:56:12Z []",
        ],
    );
    check(
        &p,
        "09/21/08 09:56:14 SpO2=096 PR=074 PI=02.28 EXC=C00:LowSigIQ,SET",
        utc,
        &[
            "MDC_PULS_OXIM_SAT_O2 96 % @2008-09-21T09:56:14Z [\"questionable\"]",
            "MDC_PULS_OXIM_PULS_RATE 74 /min @2008-09-21T09:56:14Z [\"questionable\"]",
            "MDC_PULS_OXIM_PERF_REL 2.28 % @2008-09-21T09:56:14Z [\"questionable\"]",
        ],
    );
    check(
        &p,
        "09/21/08 09:56:16 SpO2=098 PR=078 PI=03.64 EXC=800:SET",
        utc,
        &[
            "MDC_PULS_OXIM_SAT_O2 98 % @2008-09-21T09:56:16Z []",
            "MDC_PULS_OXIM_PULS_RATE 78 /min @2008-09-21T09:56:16Z []",
            "MDC_PULS_OXIM_PERF_REL 3.64 % @2008-09-21T09:56:16Z []",
        ],
    );
    check(
        &p,
        "09/21/08 09:56:22 SpO2=096 PR=078 PI=02.68 EXC=800:SET",
        utc,
        &[
            "MDC_PULS_OXIM_SAT_O2 96 % @2008-09-21T09:56:22Z []",
            "MDC_PULS_OXIM_PULS_RATE 78 /min @2008-09-21T09:56:22Z []",
            "MDC_PULS_OXIM_PERF_REL 2.68 % @2008-09-21T09:56:22Z []",
        ],
    );
}

#[test]
fn masimo_exception_bits_become_flags_on_every_reading() {
    let p = profile("line-masimo-rad8");
    // 0x0A3 = no sensor | defective | sensor off | unrecognized; 0x45C = the "questionable" bits.
    check(
        &p,
        "01/02/26 03:04:05 SpO2=090 PR=100 PI=01.00 EXC=4FF:Everything",
        UtcOffset::UTC,
        &[
            "MDC_PULS_OXIM_SAT_O2 90 % @2026-01-02T03:04:05Z [\"sensor-fault\", \"questionable\"]",
            "MDC_PULS_OXIM_PULS_RATE 100 /min @2026-01-02T03:04:05Z [\"sensor-fault\", \"questionable\"]",
            "MDC_PULS_OXIM_PERF_REL 1.00 % @2026-01-02T03:04:05Z [\"sensor-fault\", \"questionable\"]",
        ],
    );
}

#[test]
fn a_device_clock_in_local_time_keeps_its_configured_offset() {
    let p = profile("line-masimo-rad8");
    let decoded = p
        .decode(
            b"09/21/08 09:56:12 SpO2=097 PR=069 PI=04.69 EXC=800:SET",
            &ctx(),
            offset!(+2),
        )
        .unwrap();
    let Decoded::Readings(readings) = decoded else {
        panic!("not readings")
    };
    let t = readings[0].device_time.unwrap();
    assert_eq!(t, datetime!(2008-09-21 09:56:12 +2));
    assert_eq!(
        crate::model::format_time(t),
        "2008-09-21T09:56:12+02:00",
        "the identifier keeps the device's own wall-clock time and offset"
    );
}

#[test]
fn nonin_realtime_lines_decode_exactly() {
    let p = profile("line-nonin-ascii");
    let utc = UtcOffset::UTC;
    check(
        &p,
        "SPO2=097 HR=072",
        utc,
        &[
            "MDC_PULS_OXIM_SAT_O2 97 % @receive-time []",
            "MDC_PULS_OXIM_PULS_RATE 72 /min @receive-time []",
        ],
    );
    check(
        &p,
        "SPO2=094 HR=101*",
        utc,
        &[
            "MDC_PULS_OXIM_SAT_O2 94 % @receive-time []",
            "MDC_PULS_OXIM_PULS_RATE 101 /min @receive-time []",
        ],
    );
    check(
        &p,
        "SPO2=099 HR=058 F",
        utc,
        &[
            "MDC_PULS_OXIM_SAT_O2 99 % @receive-time []",
            "MDC_PULS_OXIM_PULS_RATE 58 /min @receive-time []",
        ],
    );
    check(
        &p,
        "SPO2= 97 HR= 72",
        utc,
        &[
            "MDC_PULS_OXIM_SAT_O2 97 % @receive-time []",
            "MDC_PULS_OXIM_PULS_RATE 72 /min @receive-time []",
        ],
    );
    check(&p, "SPO2=--- HR=---", utc, &[]);
    check(
        &p,
        "SPO2=096 HR=---",
        utc,
        &["MDC_PULS_OXIM_SAT_O2 96 % @receive-time []"],
    );
    // The power-up header (its text is not specified; this one is illustrative) and blank
    // lines are skipped, not errors.
    check(&p, "NONIN 7500  12:00:00 25-NOV-26", utc, &["ignored"]);
    check(&p, "", utc, &["ignored"]);
}

#[test]
fn readings_carry_the_device_patient_receive_time_and_no_sequence() {
    let p = profile("line-nonin-ascii");
    let Decoded::Readings(readings) = p
        .decode(b"SPO2=097 HR=072", &ctx(), UtcOffset::UTC)
        .unwrap()
    else {
        panic!("not readings")
    };
    let r = &readings[0];
    assert_eq!(r.device, ctx().device);
    assert_eq!(r.patient, ctx().patient);
    assert_eq!(r.received_at, ctx().received_at);
    assert_eq!(r.device_time, None);
    assert_eq!(r.sequence, None);
    assert_eq!(
        r.identifier(),
        "502123456-p-1-urn:oid:1.2.3-150456-2026-11-25T10:00:00.123Z"
    );
}

#[test]
fn bad_lines_are_errors_that_name_fields_and_never_echo_values() {
    let rad8 = profile("line-masimo-rad8");
    let nonin = profile("line-nonin-ascii");
    let cases: &[(&LineProfile, &[u8], DecodeError)] = &[
        (&nonin, b"SPO2=097 HR=072 extra", DecodeError::NoMatch),
        (&nonin, b"SPO2=0x7 HR=072", DecodeError::NoMatch),
        (&nonin, b"SPO2=097\x00HR=072", DecodeError::NotText),
        (&nonin, b"SPO2=\xff97 HR=072", DecodeError::NotText),
        (&nonin, &[b'S'; 65], DecodeError::TooLong { max: 64 }),
        (
            &rad8,
            b"13/21/08 09:56:12 SpO2=097 PR=069 PI=04.69 EXC=800:SET",
            DecodeError::Field {
                field: "date+time".into(),
                problem: "is not a valid date and time (MM/DD/YY hh:mm:ss)".into(),
            },
        ),
        (
            &rad8,
            b"09/21/08 09:56 SpO2=097 PR=069 PI=04.69 EXC=800:SET",
            DecodeError::NoMatch,
        ),
    ];
    for (p, line, expected) in cases {
        let got = p.decode(line, &ctx(), UtcOffset::UTC).unwrap_err();
        assert_eq!(&got, expected, "{:?}", String::from_utf8_lossy(line));
        let text = got.to_string();
        for value in ["097", "072", "069", "09:56"] {
            assert!(!text.contains(value), "{text:?} echoes a value");
        }
    }
}

#[test]
fn a_field_the_profile_uses_has_a_length_limit_and_others_do_not() {
    let p = ProfileFile::from_toml(
        &CSV_PROFILE.replace("max_length = 80", "max_length = 400"),
        "csv",
    )
    .unwrap()
    .compile("csv")
    .unwrap();
    // Leading zeros: a number of any length that still parses.
    let digits = |n: usize| format!("{}1", "0".repeat(n - 1));
    // An unused column may be long; a used one may be up to the limit.
    let ok = format!(
        "2026-11-25T08:30:00,{},{},0",
        "x".repeat(300),
        digits(MAX_LINE_FIELD_LEN)
    );
    assert!(p.decode(ok.as_bytes(), &ctx(), UtcOffset::UTC).is_ok());
    for (line, field) in [
        (
            format!("2026-11-25T08:30:00,x,{},0", digits(MAX_LINE_FIELD_LEN + 1)),
            "temp",
        ),
        (
            format!(
                "2026-11-25T08:30:00,x,36.6,{}",
                digits(MAX_LINE_FIELD_LEN + 1)
            ),
            "flags",
        ),
        (
            format!(
                "2026-11-25T08:30:00{},x,36.6,0",
                " ".repeat(MAX_LINE_FIELD_LEN)
            ),
            "stamp",
        ),
    ] {
        assert_eq!(
            p.decode(line.as_bytes(), &ctx(), UtcOffset::UTC),
            Err(DecodeError::Field {
                field: field.into(),
                problem: format!("is longer than {MAX_LINE_FIELD_LEN} bytes"),
            }),
            "{field}"
        );
    }
}

#[test]
fn every_string_of_a_profile_file_has_a_length_limit() {
    use crate::limits::{MAX_CODE_LEN, MAX_NAME_LEN, MAX_TEXT_LEN, MAX_UNIT_LEN};
    let long = |n: usize| "q".repeat(n + 1);
    let cases: Vec<(&str, String, &str, usize)> = vec![
        (
            "id = \"line-test-csv\"",
            format!("id = \"line-{}\"", long(MAX_CODE_LEN)),
            "id",
            MAX_CODE_LEN,
        ),
        (
            "name = \"A CSV thermometer\"",
            format!("name = \"{}\"", long(MAX_NAME_LEN)),
            "name",
            MAX_NAME_LEN,
        ),
        (
            "manufacturer = \"Test\"",
            format!("manufacturer = \"{}\"", long(MAX_NAME_LEN)),
            "manufacturer",
            MAX_NAME_LEN,
        ),
        (
            "model = \"T-1\"",
            format!("model = \"{}\"", long(MAX_NAME_LEN)),
            "model",
            MAX_NAME_LEN,
        ),
        (
            "documentation = \"this test\"",
            format!("documentation = \"{}\"", long(MAX_TEXT_LEN)),
            "documentation",
            MAX_TEXT_LEN,
        ),
        (
            "ignore = ['^#']",
            format!("ignore = ['^#', '{}']", long(MAX_TEXT_LEN)),
            "line.ignore[1]",
            MAX_TEXT_LEN,
        ),
        (
            "columns = [\"stamp\", \"\"",
            format!("columns = [\"stamp\", \"{}\"", long(MAX_CODE_LEN)),
            "line.columns[1]",
            MAX_CODE_LEN,
        ),
        (
            "format = \"YYYY-MM-DDThh:mm:ss\"",
            format!("format = \"{}\"", long(MAX_CODE_LEN)),
            "time.format",
            MAX_CODE_LEN,
        ),
        (
            "metric = \"body-temperature\"",
            format!("metric = \"{}\"", long(MAX_CODE_LEN)),
            "metrics[0].metric",
            MAX_CODE_LEN,
        ),
        (
            "metric = \"body-temperature\"",
            format!(
                "metric = \"body-temperature\"\nunit = \"{}\"",
                long(MAX_UNIT_LEN)
            ),
            "metrics[0].unit",
            MAX_UNIT_LEN,
        ),
        (
            "absent = [\"\", \"NaN\"]",
            format!("absent = [\"{}\"]", long(MAX_LINE_FIELD_LEN)),
            "metrics[0].absent[0]",
            MAX_LINE_FIELD_LEN,
        ),
        (
            "flag = \"low-battery\"",
            format!("flag = \"{}\"", long(MAX_CODE_LEN)),
            "status[0].bits[0].flag",
            MAX_CODE_LEN,
        ),
    ];
    for (from, to, key, max) in cases {
        assert!(CSV_PROFILE.contains(from), "{from}");
        let text = CSV_PROFILE.replacen(from, &to, 1);
        let err = ProfileFile::from_toml(&text, "csv")
            .and_then(|f| f.compile("csv"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, format!("csv: `{key}` is longer than {max} bytes"));
    }
    let pattern = CSV_PROFILE
        .replace(
            "delimiter = \",\"",
            &format!(
                "pattern = '(?<{}>.*),(?<temp>.*),(?<flags>.*)'",
                long(MAX_CODE_LEN)
            ),
        )
        .replace("columns = [\"stamp\", \"\", \"temp\", \"flags\"]", "")
        .replace("fields = [\"stamp\"]", "fields = [\"temp\"]");
    let err = ProfileFile::from_toml(&pattern, "csv")
        .and_then(|f| f.compile("csv"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`line.pattern` names a group longer than 64 bytes"),
        "{err}"
    );
}

#[test]
fn a_huge_profile_file_in_the_directory_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("line-huge.toml");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(crate::limits::MAX_PROFILE_FILE_BYTES + 1)
        .unwrap();
    let err = Registry::load(Some(dir.path())).unwrap_err();
    let chain = crate::error_chain::Chain(&err).to_string();
    assert!(
        chain.contains("line-huge.toml") && chain.contains("larger than 1048576 bytes"),
        "{chain}"
    );
}

const CSV_PROFILE: &str = r#"
id = "line-test-csv"
name = "A CSV thermometer"
manufacturer = "Test"
model = "T-1"
documentation = "this test"
[serial]
baud = 19200
data_bits = 8
parity = "even"
stop_bits = 1
flow_control = "hardware"
[line]
max_length = 80
ignore = ['^#']
delimiter = ","
columns = ["stamp", "", "temp", "flags"]
[time]
fields = ["stamp"]
format = "YYYY-MM-DDThh:mm:ss"
[[metrics]]
field = "temp"
metric = "body-temperature"
absent = ["", "NaN"]
[[status]]
field = "flags"
radix = 10
bits = [{ mask = 1, flag = "low-battery" }, { mask = 2, flag = "calibrating" }]
"#;

fn csv() -> LineProfile {
    ProfileFile::from_toml(CSV_PROFILE, "csv")
        .unwrap()
        .compile("csv")
        .unwrap()
}

#[test]
fn delimited_profiles_split_by_position() {
    let p = csv();
    assert_eq!(p.serial.parity, Parity::Even);
    assert_eq!(p.serial.flow_control, FlowControl::Hardware);
    let utc = UtcOffset::UTC;
    check(
        &p,
        "2026-11-25T08:30:00,ignored column,36.60,3",
        utc,
        &["MDC_TEMP_BODY 36.60 Cel @2026-11-25T08:30:00Z [\"low-battery\", \"calibrating\"]"],
    );
    check(&p, "2026-11-25T08:30:00,x,NaN,0", utc, &[]);
    check(&p, "2026-11-25T08:30:00,x,,0", utc, &[]);
    check(&p, "# a comment", utc, &["ignored"]);
    let err = |line: &str| p.decode(line.as_bytes(), &ctx(), utc).unwrap_err();
    assert_eq!(
        err("2026-11-25T08:30:00,x,36.6"),
        DecodeError::Columns {
            expected: 4,
            found: 3
        }
    );
    assert_eq!(
        err("2026-11-25T08:30:00,x,warm,0"),
        DecodeError::Field {
            field: "temp".into(),
            problem: "is not a decimal number (or a declared absent marker)".into()
        }
    );
    assert_eq!(
        err("2026-11-25T08:30:00,x,36.6,z"),
        DecodeError::Field {
            field: "flags".into(),
            problem: "is not a base-10 number".into()
        }
    );
}

#[test]
fn whitespace_delimited_lines_ignore_runs_of_spaces() {
    let text = CSV_PROFILE
        .replace("delimiter = \",\"", "delimiter = \"whitespace\"")
        .replace("ignore = ['^#']", "");
    let p = ProfileFile::from_toml(&text, "ws")
        .unwrap()
        .compile("ws")
        .unwrap();
    check(
        &p,
        "  2026-11-25T08:30:00 \t x   37.0 0 ",
        UtcOffset::UTC,
        &["MDC_TEMP_BODY 37.0 Cel @2026-11-25T08:30:00Z []"],
    );
}

#[test]
fn profile_files_with_mistakes_are_refused_naming_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("id = \"line-test-csv\"", "id = \"test-csv\"", "`id`"),
        (
            "documentation = \"this test\"",
            "documentation = \" \"",
            "`documentation`",
        ),
        ("baud = 19200", "baud = 10", "`serial.baud`"),
        ("parity = \"even\"", "parity = \"mark\"", "serial.parity"),
        ("max_length = 80", "max_length = 0", "`line.max_length`"),
        (
            "delimiter = \",\"",
            "delimiter = \"ab\"",
            "`line.delimiter`",
        ),
        (
            "delimiter = \",\"",
            "pattern = '(?<x>.*)'\ndelimiter = \",\"",
            "`line`",
        ),
        ("ignore = ['^#']", "ignore = ['(']", "`line.ignore[0]`"),
        (
            "fields = [\"stamp\"]",
            "fields = [\"nope\"]",
            "`time.fields`",
        ),
        (
            "format = \"YYYY-MM-DDThh:mm:ss\"",
            "format = \"hh:mm\"",
            "`time.format`",
        ),
        (
            "metric = \"body-temperature\"",
            "metric = \"nope\"",
            "`metrics[0].metric`",
        ),
        ("field = \"temp\"", "field = \"\"", "`metrics[0].field`"),
        ("radix = 10", "radix = 8", "`status[0].radix`"),
        (
            "flag = \"low-battery\"",
            "flag = \"sleepy\"",
            "`status[0].bits[0].flag`",
        ),
        ("mask = 1", "mask = 0", "`status[0].bits[0].mask`"),
        (
            "model = \"T-1\"",
            "model = \"T-1\"\ncolour = \"red\"",
            "unknown field `colour`",
        ),
    ];
    for (from, to, key) in cases {
        assert!(CSV_PROFILE.contains(from), "{from}");
        let text = CSV_PROFILE.replacen(from, to, 1);
        let err = ProfileFile::from_toml(&text, "csv")
            .and_then(|f| f.compile("csv"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{to:?}: {err}");
    }
}

#[test]
fn an_example_that_does_not_decode_as_stated_refuses_the_profile() {
    let text = format!(
        "{CSV_PROFILE}\n[[examples]]\nsource = \"t\"\nline = \"2026-11-25T08:30:00,x,36.6,0\"\ntime = \"2026-11-25T08:30:00\"\nreadings = [\"MDC_TEMP_BODY 36.7 Cel\"]\n"
    );
    let err = ProfileFile::from_toml(&text, "csv")
        .unwrap()
        .compile("csv")
        .unwrap_err();
    assert!(
        err.to_string().ends_with("`examples[0]` does not hold"),
        "{err}"
    );
    let chain = crate::error_chain::Chain(&err).to_string();
    assert!(chain.contains("36.6 Cel"), "the cause says how: {chain}");
    let good = text.replace("36.7 Cel", "36.6 Cel");
    ProfileFile::from_toml(&good, "csv")
        .unwrap()
        .compile("csv")
        .unwrap();
}

#[test]
fn the_built_in_profiles_are_the_device_profiles_directory() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../device-profiles");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("line-") && n.ends_with(".toml"))
        .collect();
    on_disk.sort();
    let built_in: Vec<&str> = registry::BUILT_IN.iter().map(|(n, _)| *n).collect();
    assert_eq!(on_disk, built_in, "embed every device-profiles/line-*.toml");
    let r = Registry::built_in().unwrap();
    for (name, _) in registry::BUILT_IN {
        let p = r.get(name.trim_end_matches(".toml")).unwrap();
        assert!(!p.examples.is_empty(), "{name} has documented examples");
    }
}

#[test]
fn a_profiles_directory_adds_and_replaces_profiles() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("line-test-csv.toml"), CSV_PROFILE).unwrap();
    let replaced = registry::BUILT_IN[1]
        .1
        .replace("max_length = 64", "max_length = 70");
    std::fs::write(dir.path().join("line-nonin-ascii.toml"), replaced).unwrap();
    std::fs::write(dir.path().join("README.txt"), "not a profile").unwrap();
    let r = Registry::load(Some(dir.path())).unwrap();
    assert_eq!(
        r.ids(),
        ["line-masimo-rad8", "line-nonin-ascii", "line-test-csv"]
    );
    assert_eq!(r.get("line-nonin-ascii").unwrap().max_length, 70);
    assert!(matches!(
        r.get("line-nope"),
        Err(ProfileError::Unknown { .. })
    ));

    std::fs::write(dir.path().join("line-other-name.toml"), CSV_PROFILE).unwrap();
    let err = Registry::load(Some(dir.path())).unwrap_err().to_string();
    assert!(err.contains("file is named line-other-name.toml"), "{err}");
    assert!(Registry::load(Some(&dir.path().join("missing"))).is_err());
}

/// The profiles the proptests run, compiled once.
static FUZZED: std::sync::LazyLock<Vec<LineProfile>> = std::sync::LazyLock::new(|| {
    vec![
        profile("line-masimo-rad8"),
        profile("line-nonin-ascii"),
        csv(),
    ]
});

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoding_never_panics_on_any_bytes(line in proptest::collection::vec(any::<u8>(), 0..200)) {
        for p in FUZZED.iter() {
            let _ = p.decode(&line, &ctx(), UtcOffset::UTC);
        }
    }

    #[test]
    fn decoding_never_panics_on_near_misses(
        base in prop_oneof![
            Just("09/21/08 09:56:12 SpO2=097 PR=069 PI=04.69 EXC=800:SET"),
            Just("SPO2=097 HR=072 F"),
            Just("2026-11-25T08:30:00,x,36.60,3"),
        ],
        at in 0usize..60,
        byte in any::<u8>(),
    ) {
        let mut line = base.as_bytes().to_vec();
        if let Some(b) = line.get_mut(at) {
            *b = byte;
        }
        for p in FUZZED.iter() {
            let _ = p.decode(&line, &ctx(), UtcOffset::UTC);
        }
    }
}
