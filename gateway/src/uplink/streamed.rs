//! What the streaming uplinks (MQTT, Kafka) put on the wire: one FHIR R4 Observation per
//! reading (or a transaction Bundle per batch and topic), topics from a template, and record
//! keys. Pure: no I/O.
//!
//! An Observation on its own references its Device and the gateway Device as
//! `Device/<uuid>`, the same deterministic ids the file uplink and the Bundle use
//! ([`fhir::urn_uuid`]), and carries the reading's `identifier`: consumers drop the
//! duplicates that at-least-once delivery allows by it (docs/streams.md).

use crate::config::{TopicField, TopicPart};
use crate::fhir::{self, Gateway};
use crate::model::{DeviceRef, PatientRef, Reading};

/// Renders topics and payloads for one destination.
pub struct Renderer {
    /// This gateway (its Device in Bundles).
    gateway: Gateway,
    /// `Device/<uuid>` of the gateway's Device.
    gateway_ref: String,
    /// The parsed topic template (empty for a fixed topic).
    topic: Vec<TopicPart>,
}

/// The `Device/<uuid>` references of a batch's devices (a batch holds a handful).
#[derive(Default)]
pub struct DeviceRefs(Vec<(DeviceRef, String)>);

impl DeviceRefs {
    /// The reference of `device`, computed once per batch.
    pub fn of(&mut self, device: &DeviceRef) -> &str {
        let i = match self.0.iter().position(|(d, _)| d == device) {
            Some(i) => i,
            None => {
                let full_url = fhir::device(device).full_url;
                self.0
                    .push((device.clone(), format!("Device/{}", uuid_of(&full_url))));
                self.0.len() - 1
            }
        };
        &self.0[i].1
    }
}

fn uuid_of(full_url: &str) -> &str {
    full_url.strip_prefix("urn:uuid:").unwrap_or(full_url)
}

/// A patient's key: `system|value`, or the literal reference. The only place the streaming
/// uplinks read a [`PatientRef`]'s parts.
pub fn patient_key(p: &PatientRef) -> String {
    match p {
        PatientRef::Identifier { system, value } => format!("{system}|{value}"),
        PatientRef::Reference(reference) => reference.clone(),
    }
}

/// `value` as one topic level: bytes outside `A-Z a-z 0-9 - . _ ~` percent-encoded, so a
/// value can neither add levels (`/`) nor be a wildcard (`+`, `#`).
fn push_level(topic: &mut String, value: &str) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            topic.push(b as char);
        } else {
            topic.push_str(&format!("%{b:02X}"));
        }
    }
}

impl Renderer {
    /// A renderer for `gateway` with the topic template `topic` (already validated).
    pub fn new(gateway: Gateway, topic: Vec<TopicPart>) -> Self {
        let gw = fhir::gateway_device(&gateway);
        let gateway_ref = format!("Device/{}", uuid_of(&gw.full_url));
        Self {
            gateway,
            gateway_ref,
            topic,
        }
    }

    /// This gateway.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The topic of `r`'s message.
    pub fn topic(&self, r: &Reading) -> String {
        let mut topic = String::with_capacity(64);
        for part in &self.topic {
            match part {
                TopicPart::Literal(s) => topic.push_str(s),
                TopicPart::Field(TopicField::Gateway) => push_level(&mut topic, &self.gateway.id),
                TopicPart::Field(TopicField::Device) => push_level(&mut topic, &r.device.id.key()),
                TopicPart::Field(TopicField::Patient) => match &r.patient {
                    Some(PatientRef::Identifier { value, .. }) => push_level(&mut topic, value),
                    Some(PatientRef::Reference(reference)) => push_level(&mut topic, reference),
                    None => topic.push_str("unbound"),
                },
                TopicPart::Field(TopicField::Code) => topic.push_str(&r.metric.mdc.to_string()),
            }
        }
        topic
    }

    /// The Observation of `r` as FHIR R4 JSON.
    pub fn observation(&self, r: &Reading, devices: &mut DeviceRefs) -> Vec<u8> {
        let identifier = r.identifier();
        let device_ref = devices.of(&r.device);
        let observation = fhir::Observation::new(r, &identifier, device_ref, &self.gateway_ref);
        // Serializing these types into a Vec cannot fail: no I/O, every map key is a string.
        serde_json::to_vec(&observation).unwrap_or_default()
    }

    /// The transaction Bundle of `rows`, as the FHIR uplink would send it.
    pub fn bundle(&self, rows: &[(i64, &Reading)]) -> Vec<u8> {
        fhir::bundle(
            &self.gateway,
            rows,
            fhir::BundleType::Transaction,
            fhir::PatientMode::Identifier,
        )
        .body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_field_is_one_level_and_never_a_wildcard() {
        let mut t = String::new();
        push_level(&mut t, "ab/c+#d é");
        assert_eq!(t, "ab%2Fc%2B%23d%20%C3%A9");
    }
}
