//! Values that describe a serial port, shared by the config (`[[sources.serial]]`), line
//! profiles (their `[serial]` table) and the serial source that opens the port.
//!
//! Architecture invariant: a leaf: it imports nothing of the crate, so the config and the
//! profiles can both use it without knowing each other.

use std::fmt;

use serde::Deserialize;

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit.
    None,
    /// Odd parity.
    Odd,
    /// Even parity.
    Even,
}

/// Serial flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    /// None.
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// A USB vendor and product id, written `VVVV:PPPP` in hex (e.g. `0403:6001`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct UsbId {
    /// Vendor id (`idVendor`).
    pub vendor: u16,
    /// Product id (`idProduct`).
    pub product: u16,
}

/// Text that is not a USB id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be VVVV:PPPP, the USB vendor and product id in hex (e.g. 0403:6001)")]
pub struct NotAUsbId;

impl UsbId {
    /// Parses `VVVV:PPPP` (four hex digits each, either case).
    pub fn parse(text: &str) -> Option<Self> {
        let (v, p) = text.split_once(':')?;
        let hex4 = |s: &str| {
            (s.len() == 4 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u16::from_str_radix(s, 16).ok())
                .flatten()
        };
        Some(Self {
            vendor: hex4(v)?,
            product: hex4(p)?,
        })
    }
}

impl TryFrom<String> for UsbId {
    type Error = NotAUsbId;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text).ok_or(NotAUsbId)
    }
}

impl fmt::Debug for UsbId {
    /// `"0403:6001"`, as the string the config held before it was parsed at load: the
    /// configuration fingerprint hashes the config's `Debug` text, and an upgrade alone must
    /// not look like a configuration change in the audit log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl fmt::Display for UsbId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:04x}", self.vendor, self.product)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usb_ids_parse_as_four_hex_digits_each() {
        assert_eq!(
            UsbId::parse("0403:6001"),
            Some(UsbId {
                vendor: 0x0403,
                product: 0x6001
            })
        );
        assert_eq!(UsbId::parse("2FE3:0100").unwrap().to_string(), "2fe3:0100");
        assert_eq!(
            format!("{:?}", UsbId::parse("0403:6001")),
            "Some(\"0403:6001\")"
        );
        for bad in [
            "",
            "0403",
            "403:6001",
            "0403:60011",
            "0403-6001",
            "04g3:6001",
            "+403:6001",
        ] {
            assert_eq!(UsbId::parse(bad), None, "{bad}");
        }
    }
}
