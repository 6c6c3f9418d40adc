//! Test harness for Vitalbridge end-to-end tests (filled in by the harness work).
