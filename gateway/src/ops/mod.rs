//! Operations: metrics (and, later, health endpoints, status page and audit log).

pub mod metrics;
