//! Vitalbridge firmware framing (placeholder until the framing issue lands).
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![warn(missing_docs)]
