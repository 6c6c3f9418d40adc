//! The technician commands besides `run`: decode a device's bytes (`decode ble`), list the
//! Bluetooth devices in range (`ble scan`), try and manage device profiles and packs
//! (`profiles …`), and show the running gateway's status (`status`). Each returns the text
//! to print or a typed error; `main.rs` only parses arguments, prints, and picks the exit
//! code.

pub mod decode;
pub mod profiles;
pub mod scan;
pub mod status;
