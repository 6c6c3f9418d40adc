//! `vitalbridge decode ble`: one characteristic value in, the readings report (or the FHIR
//! Observations) out, exactly as the gateway would decode and map it.

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

/// Why the input could not be decoded: the command exits 2 with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeToolError {
    /// The characteristic argument is not a UUID, or no decoder handles it.
    #[error("--characteristic: {0}")]
    Characteristic(String),
    /// The hex argument is malformed.
    #[error("HEX: {0}")]
    Hex(String),
    /// The device argument is not a Bluetooth address.
    #[error("--device: not a Bluetooth address")]
    Device,
    /// The value does not decode (the message names the field, never a value).
    #[error("0x{uuid:04X} ({decoder}): {error}")]
    Decode {
        /// Characteristic UUID.
        uuid: u16,
        /// Decoder name.
        decoder: &'static str,
        /// What is wrong.
        error: ble::DecodeError,
    },
}

/// Decodes the value and renders the report (pretty JSON) or one Observation per line.
pub fn decode_ble(request: &DecodeBle<'_>) -> Result<String, DecodeToolError> {
    let uuid = ble::parse_characteristic(request.characteristic)
        .map_err(|e| DecodeToolError::Characteristic(e.to_string()))?;
    let decoder = ble::Decoder::from_uuid(uuid)
        .ok_or_else(|| DecodeToolError::Characteristic(format!("no decoder for 0x{uuid:04X}")))?;
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

/// `SYSTEM|VALUE` as an identifier, anything else as a literal reference.
fn patient(text: &str) -> PatientRef {
    match text.split_once('|') {
        Some((system, value)) if !system.is_empty() => PatientRef::identifier(system, value),
        _ => PatientRef::Reference(text.into()),
    }
}

/// Hex bytes, optionally separated by spaces, tabs, `:` or `-`, optionally prefixed `0x`.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
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
        return Err(format!("not a hex digit: {:?}", char::from(*bad)));
    }
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
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
        assert_eq!(parse_hex("1E7"), Err("odd number of hex digits".to_owned()));
        assert_eq!(parse_hex("1G"), Err("not a hex digit: 'G'".to_owned()));
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
        assert!(
            err.to_string()
                .starts_with("0x2A35 (blood-pressure-measurement): "),
            "{err}"
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
        assert_eq!(err, DecodeToolError::Device);
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
