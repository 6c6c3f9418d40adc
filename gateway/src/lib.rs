//! Vitalbridge gateway library.
pub mod buffer;
pub mod config;
pub mod fhir;
pub mod model;
pub mod pipeline;
pub mod profile;
