//! Readings to FHIR R4 JSON: Observation, Device and transaction Bundle (no I/O).
//!
//! Follows the FHIR vital-signs profiles and the HL7 Personal Health Device IG (STU2):
//!
//! - `Observation.identifier`: system [`IDENTIFIER_SYSTEM`], value [`Reading::identifier`];
//!   every entry is a conditional create on it (`ifNoneExist`), so a resent batch never makes
//!   a second resource.
//! - `category`: `vital-signs` where the metric has a vital-signs profile, and PHD's `phd`.
//! - `code`: LOINC (where there is one) and MDC (`urn:iso:std:iso:11073:10101`).
//! - values in UCUM (`http://unitsofmeasure.org`) with the device's precision; special values
//!   as `dataAbsentReason`; blood pressure as components with no value of its own.
//! - `device` → the measuring Device, `extension[gatewayDevice]` → this gateway's Device,
//!   both in the same Bundle as conditional creates referenced by `urn:uuid` fullUrls.
//! - `effectiveDateTime` is the (corrected) measurement time with its offset, or a Period when
//!   the measurement has a duration. Every one says where its time came from, in the
//!   [`TIME_SOURCE_EXTENSION`] on it: `source` `device` (the device's clock as reported),
//!   `device-corrected` (with `deviceTime`, the device's own time, and `offsetMs`, the
//!   gateway's correction) or `gateway-receive` (no device clock: the receive time), and
//!   `synchronization`, how the gateway knows the device clock (`ble-current-time`,
//!   `firmware-time-sync`, `configured-zone`, `hl7-time-zone`) where it does. The identifier
//!   always keeps the time as the device reported it.
//! - measurement-status flags, the device's and the gateway's checks' (`implausible`,
//!   `time-in-future`, `time-too-old`) → `interpretation` codings in [`STATUS_SYSTEM`], and
//!   `status` `preliminary` (not `final`) when one doubts the value or its time
//!   ([`crate::model::StatusFlag::doubts_value`]); test data → `meta.security` HTEST.
//! - `category` `vital-signs` also for a systolic, diastolic or mean pressure sent on its own;
//!   SpO2 carries LOINC 59408-5 (by pulse oximetry) beside 2708-6.
//! - values in the unit the device sent, or with `clinical.units = "canonical"` converted to
//!   the metric's canonical unit (`kg`, `Cel`, `mm[Hg]`) with the value as sent kept in the
//!   core `iso21090-PQ-translation` extension on the quantity ([`Gateway::convert_units`]).
//! - `meta.tag`: the device profile that decoded the reading, `id` or `id@version`
//!   (`observation::PROFILE_TAG_SYSTEM`), so the readings of a bad profile can be found.
//!
//! Readings without a patient get no `subject`, and then claim no vital-signs profile (those
//! profiles require a subject): bind every device to a patient in config.

mod observation;

pub use observation::{device, gateway_device, observation, DeviceIdentifier, Observation};

use std::collections::hash_map::{Entry as MapEntry, HashMap};
use std::fmt;

use serde::Serialize;

use crate::model::{Decimal, DeviceRef, PatientRef, Reading};

/// PHD's identifier system for Observations.
pub const IDENTIFIER_SYSTEM: &str =
    "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation";
/// LOINC.
pub const LOINC: &str = "http://loinc.org";
/// IEEE 11073-10101 nomenclature.
pub const MDC: &str = "urn:iso:std:iso:11073:10101";
/// UCUM.
pub const UCUM: &str = "http://unitsofmeasure.org";
/// Vitalbridge's code system for device measurement-status flags in `interpretation`.
pub const STATUS_SYSTEM: &str = "https://vitalbridge.dev/fhir/CodeSystem/measurement-status";
/// Extension on `effective[x]` recording where the time came from (`source`: `device`,
/// `device-corrected`, `gateway-receive`), when corrected the device's own time
/// (`deviceTime`) and the correction (`offsetMs`), and how the device clock is known
/// (`synchronization`).
pub const TIME_SOURCE_EXTENSION: &str =
    "https://vitalbridge.dev/fhir/StructureDefinition/time-source";

/// This gateway, as FHIR needs it.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// The gateway id (config `gateway.id` or generated).
    pub id: String,
    /// Software version.
    pub version: String,
    /// With `clinical.units = "canonical"`: converts a value to the metric's canonical unit
    /// (`profile::units::convert`, given by the wiring), the original kept beside it; `None`:
    /// values stay in the unit the device sent.
    pub convert_units: Option<UnitConverter>,
}

/// Converts `value` in the first unit to the second; `None` when they do not convert.
pub type UnitConverter = fn(Decimal, &str, &str) -> Option<Decimal>;

/// The core extension on a Quantity carrying the same quantity in another unit: with
/// converted units, the value as the device sent it.
pub const PQ_TRANSLATION_EXTENSION: &str =
    "http://hl7.org/fhir/StructureDefinition/iso21090-PQ-translation";

/// Which Bundle type to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleType {
    /// All or nothing.
    Transaction,
    /// Each entry on its own.
    Batch,
}

/// How an Observation's `subject` names a patient bound by identifier (`uplink.fhir.
/// patient_reference`). A literal reference (`Patient/123`) is sent as it is in every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PatientMode {
    /// `subject.identifier` only: no Patient resource is needed, none is linked.
    #[default]
    Identifier,
    /// `subject.reference` = `Patient?identifier=system|value`, a conditional reference the
    /// server resolves inside the transaction to the one Patient with that identifier (and
    /// refuses when there is none or several); the identifier stays beside it.
    Conditional,
    /// A Patient entry per patient of the batch, created by conditional create on its
    /// identifier (a Patient holding only the identifier, where none exists), and the
    /// subject referencing it.
    Create,
}

/// What an entry of a Bundle stands for, so responses can be matched back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryRole {
    /// A Device (measuring device or the gateway).
    Device,
    /// A Patient (conditional create, [`PatientMode::Create`]).
    Patient,
    /// The Observation for the leased buffer row with this id.
    Observation(i64),
}

/// A Bundle ready to send, already serialized, and the role of each of its entries.
#[derive(Debug, Clone)]
pub struct MappedBundle {
    /// The Bundle resource as JSON bytes. Entries are serialized one at a time, so memory
    /// holds one entry's JSON tree at most, not the whole Bundle's.
    pub body: Vec<u8>,
    /// One role per entry, in order.
    pub roles: Vec<EntryRole>,
}

/// The namespace of the gateway's name-based UUIDs.
const UUID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5f1b_6e3c_9a0d_4c1e_8b7a_2d4f_6e8c_0a13);

/// A deterministic `urn:uuid:` for a resource, from its identifier: the name-based UUID
/// (version 5, RFC 9562 §5.5: SHA-1 of the namespace then the name) of `kind/key`. The name
/// is hashed in parts, never joined into a string first.
pub fn urn_uuid(kind: &str, key: &str) -> String {
    UrnUuid::new(kind, key).as_str().to_owned()
}

/// [`urn_uuid`]'s text in a buffer of its own, for a fullUrl written once (every
/// Observation entry has one).
pub struct UrnUuid([u8; UrnUuid::LEN]);

impl UrnUuid {
    /// `urn:uuid:` and a hyphenated UUID.
    const LEN: usize = 9 + 36;

    /// The `urn:uuid:` of `kind/key` ([`urn_uuid`]).
    pub fn new(kind: &str, key: &str) -> Self {
        use ring::digest::{Context, SHA1_FOR_LEGACY_USE_ONLY};
        let mut sha1 = Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
        sha1.update(UUID_NAMESPACE.as_bytes());
        sha1.update(kind.as_bytes());
        sha1.update(b"/");
        sha1.update(key.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&sha1.finish().as_ref()[..16]);
        let uuid = uuid::Builder::from_sha1_bytes(bytes).into_uuid();
        let mut text = [0u8; Self::LEN];
        text[..9].copy_from_slice(b"urn:uuid:");
        uuid.hyphenated().encode_lower(&mut text[9..]);
        Self(text)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // ASCII only: the prefix and a UUID's hex digits and hyphens.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A conditional-create search string: `identifier=system|value`.
///
/// Each part is escaped by the FHIR search rules (`\\` before `\\`, `,`, `|` and `$`: R4
/// search.html#escaping) and then percent-encoded (everything but RFC 3986's unreserved
/// characters), so a value holding the search syntax's own characters, spaces or non-ASCII
/// text is matched as itself. The values the gateway builds never need the escapes
/// ([`crate::model::search_safe`]); a patient's identifier from the config may.
pub fn if_none_exist(system: &str, value: &str) -> String {
    IfNoneExist { system, value }.to_string()
}

/// [`if_none_exist`]'s text, written where it goes (a Bundle entry's request) instead of into
/// a string first.
struct IfNoneExist<'a> {
    system: &'a str,
    value: &'a str,
}

impl fmt::Display for IfNoneExist<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("identifier=")?;
        write_search_param(f, self.system)?;
        f.write_str("%7C")?;
        write_search_param(f, self.value)
    }
}

/// Writes one token part of a search: FHIR-escaped, then percent-encoded.
fn write_search_param(out: &mut impl fmt::Write, text: &str) -> fmt::Result {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // `%XX` in one write (the writer may be a JSON string's, which scans each write).
    let pct = |out: &mut dyn fmt::Write, b: u8| {
        let text = [b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0x0f)]];
        // Three ASCII bytes.
        out.write_str(std::str::from_utf8(&text).unwrap_or_default())
    };
    // Runs of unreserved characters are copied whole: a run starts and ends next to ASCII
    // bytes, so both ends are character boundaries.
    let mut run = 0;
    for (i, b) in text.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            continue;
        }
        if i > run {
            out.write_str(&text[run..i])?;
        }
        if matches!(b, b'\\' | b',' | b'|' | b'$') {
            pct(out, b'\\')?;
        }
        pct(out, b)?;
        run = i + 1;
    }
    if text.len() > run {
        out.write_str(&text[run..])?;
    }
    Ok(())
}

/// A text a Bundle entry's request writes as a JSON string, straight from its `Display`.
struct Text<'a>(&'a dyn fmt::Display);

impl Serialize for Text<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

/// One Bundle entry: a conditional create.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry<'a, R: Serialize> {
    full_url: &'a str,
    resource: R,
    request: EntryRequest<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EntryRequest<'a> {
    method: &'static str,
    url: &'static str,
    if_none_exist: Text<'a>,
}

/// Bytes a Bundle needs besides its Observation entries (the gateway's Device, a few
/// measuring Devices).
const BUNDLE_OVERHEAD: usize = 8 * 1024;
/// A typical Observation entry, serialized (a blood pressure with three components is
/// about 3 KiB, a single quantity about 2 KiB).
const ENTRY_ESTIMATE: usize = 2560;

/// Appends `,` (unless first) and one entry to a Bundle being written. When the body is
/// nearly full it grows by a quarter, not by doubling: a Bundle is the uplink's largest
/// buffer, and a doubled one would be half empty.
fn write_entry<R: Serialize>(
    body: &mut Vec<u8>,
    first: bool,
    full_url: &str,
    resource: R,
    kind: &'static str,
    if_none_exist: &dyn fmt::Display,
) {
    if body.capacity() - body.len() < ENTRY_ESTIMATE * 2 {
        body.reserve_exact(body.len() / 4 + ENTRY_ESTIMATE * 2);
    }
    if !first {
        body.push(b',');
    }
    let entry = Entry {
        full_url,
        resource,
        request: EntryRequest {
            method: "POST",
            url: kind,
            if_none_exist: Text(if_none_exist),
        },
    };
    // Writing these types into a Vec cannot fail: no I/O, every map key is a string.
    let _ = serde_json::to_writer(&mut *body, &entry);
}

/// How many of `rows`, from the start, make a Bundle of at most `max_entries` entries (the
/// gateway's Device, one Device per distinct measuring device, in [`PatientMode::Create`]
/// one Patient per distinct patient, one Observation per row); at least 1.
pub fn rows_within_entries(
    rows: &[(i64, &Reading)],
    max_entries: usize,
    patients: PatientMode,
) -> usize {
    let mut entries = 1;
    let mut devices: Vec<&DeviceRef> = Vec::new();
    let mut seen_patients: Vec<&PatientRef> = Vec::new();
    for (i, (_, r)) in rows.iter().enumerate() {
        let new_device = !devices.contains(&&r.device);
        let new_patient = match (&r.patient, patients) {
            (Some(p @ PatientRef::Identifier { .. }), PatientMode::Create) => {
                (!seen_patients.contains(&p)).then_some(p)
            }
            _ => None,
        };
        let more = 1 + usize::from(new_device) + usize::from(new_patient.is_some());
        if entries + more > max_entries {
            return i.max(1);
        }
        entries += more;
        if new_device {
            devices.push(&r.device);
        }
        if let Some(p) = new_patient {
            seen_patients.push(p);
        }
    }
    rows.len()
}

/// The Patient a subject identifier stands for: a resource holding only that identifier.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PatientResource<'a> {
    resource_type: &'static str,
    identifier: [PatientIdentifier<'a>; 1],
}

#[derive(Serialize)]
struct PatientIdentifier<'a> {
    system: &'a str,
    value: &'a str,
}

/// `Patient?identifier=system|value`, escaped and encoded as [`if_none_exist`] is.
pub fn conditional_patient_reference(system: &str, value: &str) -> String {
    format!("Patient?{}", IfNoneExist { system, value })
}

/// Maps leased rows `(row id, reading)` to one Bundle: a conditional create per distinct
/// device, one for the gateway, and one per Observation. The Bundle is written straight to
/// bytes, entry by entry, without an intermediate JSON tree.
pub fn bundle(
    gateway: &Gateway,
    rows: &[(i64, &Reading)],
    kind: BundleType,
    patients: PatientMode,
) -> MappedBundle {
    let kind = match kind {
        BundleType::Transaction => "transaction",
        BundleType::Batch => "batch",
    };
    let mut body = Vec::with_capacity(BUNDLE_OVERHEAD + rows.len() * ENTRY_ESTIMATE);
    body.extend_from_slice(br#"{"resourceType":"Bundle","type":""#);
    body.extend_from_slice(kind.as_bytes());
    body.extend_from_slice(br#"","entry":["#);
    let mut roles = Vec::with_capacity(rows.len() + 4);
    let gw = gateway_device(gateway);
    write_entry(
        &mut body,
        true,
        &gw.full_url,
        &gw.resource,
        "Device",
        &gw.if_none_exist,
    );
    roles.push(EntryRole::Device);
    // Distinct devices of the batch, in order of first appearance, with their fullUrls; found
    // by hash (a batch of a ward or a fleet of hubs can hold hundreds of devices, and a
    // linear search per row cost more than the entry it looked up for).
    let mut devices: HashMap<&DeviceRef, String> = HashMap::new();
    for (_, r) in rows {
        if let MapEntry::Vacant(slot) = devices.entry(&r.device) {
            let (system, value) = observation::device_identifier(&r.device);
            let full_url = observation::device_full_url(&system, &value);
            write_entry(
                &mut body,
                false,
                &full_url,
                observation::DeviceResource::new(&r.device, &system, &value),
                "Device",
                &IfNoneExist {
                    system: &system,
                    value: &value,
                },
            );
            roles.push(EntryRole::Device);
            slot.insert(full_url);
        }
    }
    // Distinct patients bound by identifier, with the reference their subjects get.
    let mut patient_urls: Vec<(&PatientRef, String)> = Vec::new();
    if patients != PatientMode::Identifier {
        for (_, r) in rows {
            let Some(p @ PatientRef::Identifier { system, value }) = &r.patient else {
                continue;
            };
            if patient_urls.iter().any(|(q, _)| *q == p) {
                continue;
            }
            let url = match patients {
                PatientMode::Create => {
                    let url = urn_uuid("Patient", &format!("{system}|{value}"));
                    write_entry(
                        &mut body,
                        false,
                        &url,
                        PatientResource {
                            resource_type: "Patient",
                            identifier: [PatientIdentifier { system, value }],
                        },
                        "Patient",
                        &IfNoneExist { system, value },
                    );
                    roles.push(EntryRole::Patient);
                    url
                }
                _ => conditional_patient_reference(system, value),
            };
            patient_urls.push((p, url));
        }
    }
    for (id, r) in rows {
        let identifier = r.identifier();
        let patient_url = r.patient.as_ref().and_then(|p| {
            patient_urls
                .iter()
                .find(|(q, _)| *q == p)
                .map(|(_, url)| url.as_str())
        });
        let device_url = devices.get(&r.device).map_or("", String::as_str);
        let obs = Observation::new_with(
            r,
            &identifier,
            device_url,
            &gw.full_url,
            patient_url,
            gateway.convert_units,
        );
        write_entry(
            &mut body,
            false,
            UrnUuid::new("Observation", &identifier).as_str(),
            obs,
            "Observation",
            &IfNoneExist {
                system: IDENTIFIER_SYSTEM,
                value: &identifier,
            },
        );
        roles.push(EntryRole::Observation(*id));
    }
    body.extend_from_slice(b"]}");
    MappedBundle { body, roles }
}

#[cfg(test)]
mod tests;
