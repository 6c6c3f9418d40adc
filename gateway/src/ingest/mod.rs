//! Sources: each owns one transport and turns what arrives into readings for the buffer.
//!
//! Architecture invariant: sources never import each other, the buffer or the uplink. They
//! hold an [`Ingest`](crate::pipeline::Ingest) handle and acknowledge upstream of themselves
//! only after its `commit` resolved `Ok`.

pub mod mqtt;
pub mod serial;
pub mod sim;

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::PatientRef;

/// Device → patient bindings from config, shared by all sources.
#[derive(Debug, Clone, Default)]
pub struct Bindings(Arc<HashMap<String, PatientRef>>);

impl Bindings {
    /// Bindings keyed by `DeviceId::key()`.
    pub fn new(map: HashMap<String, PatientRef>) -> Self {
        Self(Arc::new(map))
    }

    /// The patient bound to a device key, if any.
    pub fn patient(&self, device_key: &str) -> Option<PatientRef> {
        self.0.get(device_key).cloned()
    }
}
