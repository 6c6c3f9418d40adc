//! `vitalbridge decode ble`: one characteristic value in, the readings report (or the FHIR
//! Observations) out, exactly as the gateway would decode and map it. `vitalbridge decode
//! hl7`: a captured HL7 v2 message (or batch) in, the same report out, as the HL7 listener
//! maps it.

use time::OffsetDateTime;

use crate::fhir;
use crate::model::{DeviceId, DeviceRef, PatientRef};
use crate::profile::{ble, report, FrameContext};

/// What to decode.
#[derive(Debug, Clone, Default)]
pub struct DecodeBle<'a> {
    /// Characteristic UUID: `2A35`, `0x2A35` or the 128-bit form.
    pub characteristic: &'a str,
    /// The value in hex (see [`parse_hex`]).
    pub hex: &'a str,
    /// Print FHIR Observations (NDJSON) instead of the report.
    pub fhir: bool,
    /// The device's Bluetooth address, for its id and FHIR identifiers.
    pub device: Option<&'a str>,
    /// `SYSTEM|VALUE` or a literal reference (`Patient/ID`).
    pub patient: Option<&'a str>,
}

/// Why the input could not be decoded: the command exits 2 with this message and its causes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DecodeToolError {
    /// The characteristic argument is not a UUID.
    #[error("--characteristic")]
    Characteristic(#[source] ble::UuidError),
    /// No decoder handles the characteristic.
    #[error("--characteristic: no decoder for 0x{0:04X}")]
    NoDecoder(u16),
    /// The hex argument is malformed.
    #[error("HEX")]
    Hex(#[source] HexError),
    /// The device argument is not a Bluetooth address.
    #[error("--device: not a Bluetooth address")]
    Device,
    /// `--time-zone` names no zone of this host's tz database.
    #[error("--time-zone: not a time zone of this host's tz database")]
    TimeZone(#[source] jiff::Error),
    /// The value does not decode (the cause names the field, never a value).
    #[error("0x{uuid:04X} ({decoder})")]
    Decode {
        /// Characteristic UUID.
        uuid: u16,
        /// Decoder name.
        decoder: &'static str,
        /// What is wrong.
        #[source]
        error: ble::DecodeError,
    },
}

/// Why a hex argument is not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    /// A character that is neither a hex digit nor an allowed separator.
    #[error("not a hex digit: {0:?}")]
    NotADigit(char),
    /// Half a byte at the end.
    #[error("odd number of hex digits")]
    OddLength,
}

/// Decodes the value and renders the report (pretty JSON) or one Observation per line.
pub fn decode_ble(request: &DecodeBle<'_>) -> Result<String, DecodeToolError> {
    let uuid = ble::parse_characteristic(request.characteristic)
        .map_err(DecodeToolError::Characteristic)?;
    let decoder = ble::Decoder::from_uuid(uuid).ok_or(DecodeToolError::NoDecoder(uuid))?;
    let bytes = parse_hex(request.hex).map_err(DecodeToolError::Hex)?;
    let id = match request.device {
        None => DeviceId::Other("vitalbridge-decode".into()),
        Some(d) => {
            DeviceId::Bluetooth(ble::parse_bluetooth_address(d).ok_or(DecodeToolError::Device)?)
        }
    };
    let ctx = FrameContext {
        device: DeviceRef {
            id,
            profile: decoder.name().into(),
            model: None,
            manufacturer: None,
        },
        patient: request.patient.map(patient),
        received_at: OffsetDateTime::now_utc(),
        clock_offset: None,
        time_sync: None,
    };
    let readings = decoder
        .decode(&bytes, &ctx)
        .map_err(|error| DecodeToolError::Decode {
            uuid,
            decoder: decoder.name(),
            error,
        })?;
    if !request.fhir {
        let report = report::readings_to_json(&readings);
        // Rendering a serde_json::Value cannot fail.
        return Ok(serde_json::to_string_pretty(&report).unwrap_or_default());
    }
    let gateway = fhir::Gateway {
        id: "vitalbridge-decode".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        convert_units: None,
    };
    let gateway_url = fhir::gateway_device(&gateway).full_url;
    let lines: Vec<String> = readings
        .iter()
        .map(|r| {
            let device_url = fhir::device(&r.device).full_url;
            fhir::observation(r, &device_url, &gateway_url).to_string()
        })
        .collect();
    Ok(lines.join("\n"))
}

/// What `decode hl7` printed: the report or the Observations, and warnings for stderr.
#[derive(Debug, Clone)]
pub struct Hl7Decoded {
    /// The readings report (pretty JSON) or one Observation per line.
    pub text: String,
    /// Observations the gateway would keep as a dead letter, and refused messages.
    pub warnings: Vec<String>,
    /// Whether any message of the input would be refused (AE or AR).
    pub refused: bool,
}

/// The largest capture `decode hl7` reads.
pub const MAX_HL7_INPUT: u64 = 64 * 1024 * 1024;

/// Maps a captured HL7 v2 message or batch (MLLP framing bytes are ignored) the way the
/// listener would, with times without an offset in `time_zone` (default the host's).
pub fn decode_hl7(
    bytes: &[u8],
    fhir_out: bool,
    time_zone: Option<&str>,
) -> Result<Hl7Decoded, DecodeToolError> {
    let zone = crate::hl7::dtm::zone(time_zone).map_err(DecodeToolError::TimeZone)?;
    let settings = crate::hl7::Settings {
        zone,
        placeholders: Vec::new(),
    };
    let mut readings = Vec::new();
    let mut warnings = Vec::new();
    let mut refused = false;
    for (i, p) in crate::hl7::decode(bytes, &settings, OffsetDateTime::now_utc())
        .into_iter()
        .enumerate()
    {
        match p.outcome {
            Ok(m) => {
                warnings.extend(m.unmapped.into_iter().map(|u| {
                    format!(
                        "message {} ({}): kept as a dead letter: {u}",
                        i + 1,
                        p.header.control_id
                    )
                }));
                readings.extend(m.readings);
            }
            Err(r) => {
                refused = true;
                warnings.push(format!("message {} ({}): {r}", i + 1, p.header.control_id));
            }
        }
    }
    let text = if fhir_out {
        let gateway = fhir::Gateway {
            id: "vitalbridge-decode".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            convert_units: None,
        };
        let gateway_url = fhir::gateway_device(&gateway).full_url;
        readings
            .iter()
            .map(|r| {
                let device_url = fhir::device(&r.device).full_url;
                fhir::observation(r, &device_url, &gateway_url).to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        serde_json::to_string_pretty(&report::readings_to_json(&readings)).unwrap_or_default()
    };
    Ok(Hl7Decoded {
        text,
        warnings,
        refused,
    })
}

/// `SYSTEM|VALUE` as an identifier, anything else as a literal reference.
fn patient(text: &str) -> PatientRef {
    match text.split_once('|') {
        Some((system, value)) if !system.is_empty() => PatientRef::identifier(system, value),
        _ => PatientRef::Reference(text.into()),
    }
}

/// Hex bytes, optionally separated by spaces, tabs, `:` or `-`, optionally prefixed `0x`.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, HexError> {
    let text = text.trim();
    let text = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !matches!(b, b' ' | b'\t' | b':' | b'-'))
        .collect();
    if let Some(bad) = digits.iter().find(|b| !b.is_ascii_hexdigit()) {
        return Err(HexError::NotADigit(char::from(*bad)));
    }
    if !digits.len().is_multiple_of(2) {
        return Err(HexError::OddLength);
    }
    Ok(digits
        .chunks(2)
        .filter_map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_accepts_the_separators_technicians_paste() {
        for text in [
            "1E7A00",
            "1e 7a 00",
            "0x1E7A00",
            "1E:7A:00",
            "1E-7A-00",
            " 1E\t7A 00 ",
        ] {
            assert_eq!(parse_hex(text), Ok(vec![0x1E, 0x7A, 0x00]), "{text:?}");
        }
        assert_eq!(parse_hex(""), Ok(vec![]));
        assert_eq!(parse_hex("1E7"), Err(HexError::OddLength));
        assert_eq!(parse_hex("1G"), Err(HexError::NotADigit('G')));
        assert_eq!(
            HexError::NotADigit('\u{1b}').to_string(),
            "not a hex digit: '\\u{1b}'",
            "a control character is shown escaped (as `{{:?}}` writes it)"
        );
        assert!(parse_hex("1é").is_err(), "non-ASCII is refused, not sliced");
    }

    #[test]
    fn errors_name_the_argument_and_the_field() {
        let base = DecodeBle {
            characteristic: "2A35",
            hex: "1E",
            ..DecodeBle::default()
        };
        let err = decode_ble(&base).unwrap_err();
        assert!(
            matches!(err, DecodeToolError::Decode { uuid: 0x2A35, .. }),
            "{err}"
        );
        assert_eq!(err.to_string(), "0x2A35 (blood-pressure-measurement)");
        let chain = crate::error_chain::Chain(&err).to_string();
        assert!(
            chain.starts_with("0x2A35 (blood-pressure-measurement): "),
            "the cause names the field: {chain}"
        );
        let err = decode_ble(&DecodeBle {
            characteristic: "2A00",
            ..base.clone()
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "--characteristic: no decoder for 0x2A00");
        let err = decode_ble(&DecodeBle {
            device: Some("not-an-address"),
            ..base
        })
        .unwrap_err();
        assert!(matches!(err, DecodeToolError::Device), "{err}");
    }

    #[test]
    fn a_patient_is_an_identifier_or_a_literal_reference() {
        assert_eq!(
            patient("urn:oid:1.2.3|p-1"),
            PatientRef::identifier("urn:oid:1.2.3", "p-1")
        );
        assert_eq!(
            patient("Patient/9"),
            PatientRef::Reference("Patient/9".into())
        );
    }
}
