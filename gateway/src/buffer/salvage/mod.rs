//! Recovery of readings from a damaged buffer database.

pub mod scan;
