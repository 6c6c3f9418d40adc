//! Vitalbridge gateway library.
pub mod model;
pub mod pipeline;
pub mod profile;
