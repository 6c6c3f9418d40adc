//! Operations: metrics, systemd integration (and, later, health endpoints, status page and
//! audit log).

pub mod metrics;
pub mod systemd;
