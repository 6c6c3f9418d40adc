//! `vitalbridge ble scan`: the devices in range, their advertised services and the device
//! profile that would read them, as a table for a technician.

use std::time::Duration;

use crate::ingest::ble::{self, BleError, ScanEntry};

/// How long the adapter may take to answer beyond the listening time (it is reached over
/// D-Bus; the command must never hang on it).
const ADAPTER_GRACE: Duration = Duration::from_secs(15);

/// What `ble scan` prints: the table (stdout) and a summary line (stderr, so the table can be
/// piped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// One header line and one line per device shown.
    pub table: String,
    /// How many were shown and seen.
    pub summary: String,
}

/// Listens for `seconds` on the host's adapter and renders the devices (health devices only
/// unless `all`).
pub async fn ble_scan(seconds: u64, all: bool) -> Result<ScanReport, BleError> {
    #[cfg(all(feature = "ble", target_os = "linux"))]
    {
        let central = ble::btleplug::BtleplugCentral::new();
        let profiles = ble::Profiles::builtin();
        let listen = Duration::from_secs(seconds.max(1));
        let entries = tokio::time::timeout(
            listen + ADAPTER_GRACE,
            ble::scan(&central, &profiles, listen),
        )
        .await
        .map_err(|_| BleError::Timeout("scan (the adapter did not answer)"))??;
        Ok(render(&entries, all, listen))
    }
    #[cfg(not(all(feature = "ble", target_os = "linux")))]
    {
        let _ = (
            seconds,
            all,
            ADAPTER_GRACE,
            render as fn(&[ScanEntry], bool, Duration) -> ScanReport,
        );
        Err(BleError::NotBuilt)
    }
}

/// The table: address, signal, name, services, profiles; and how many were shown.
pub fn render(entries: &[ScanEntry], all: bool, listened: Duration) -> ScanReport {
    let mut out = format!(
        "{:<17}  {:>5}  {:<24}  {:<24}  profiles",
        "address", "rssi", "name", "services"
    );
    let shown: Vec<&ScanEntry> = entries
        .iter()
        .filter(|e| all || !e.profiles.is_empty())
        .collect();
    for e in &shown {
        let services: Vec<String> = e.services.iter().map(|s| format!("{s:04X}")).collect();
        let profiles = if e.profiles.is_empty() {
            "-".to_owned()
        } else {
            e.profiles.join(" ")
        };
        out.push_str(&format!(
            "\n{:<17}  {:>5}  {:<24}  {:<24}  {profiles}",
            ble::format_address(&e.address),
            e.rssi.map_or("-".into(), |r| r.to_string()),
            e.name.as_deref().map_or("-".into(), super::printable),
            services.join(" "),
        ));
    }
    ScanReport {
        table: out,
        summary: format!(
            "{} device(s) shown, {} seen in {}s",
            shown.len(),
            entries.len(),
            listened.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blood pressure cuff advertising `name`.
    fn cuff(name: &str) -> ScanEntry {
        ScanEntry {
            address: [0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6],
            name: Some(name.into()),
            rssi: Some(-61),
            services: vec![0x1810, 0x180A],
            profiles: vec!["ble-blood-pressure".into()],
        }
    }

    #[test]
    fn the_table_lists_health_devices_unless_all_is_asked_for() {
        let cuff = cuff("BP7000");
        let speaker = ScanEntry {
            address: [1, 2, 3, 4, 5, 6],
            name: None,
            rssi: None,
            services: vec![],
            profiles: vec![],
        };
        let entries = [cuff, speaker];
        let report = render(&entries, false, Duration::from_secs(10));
        let text = &report.table;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[1].starts_with("A1:B2:C3:D4:E5:F6    -61  BP7000"),
            "{text}"
        );
        assert!(
            lines[1].ends_with("1810 180A                 ble-blood-pressure"),
            "{text}"
        );
        assert_eq!(report.summary, "1 device(s) shown, 2 seen in 10s");
        let all = render(&entries, true, Duration::from_secs(10));
        assert!(
            all.table.contains("01:02:03:04:05:06      -  -"),
            "{}",
            all.table
        );
        assert_eq!(all.summary, "2 device(s) shown, 2 seen in 10s");
    }

    /// A device name is whatever the device advertises: anyone nearby can put an escape
    /// sequence or a newline in it.
    #[test]
    fn a_device_name_from_the_air_cannot_forge_a_row_or_drive_the_terminal() {
        let forged = cuff("\u{1b}[2JBP\nFF:FF:FF:FF:FF:FF  -1  fake");
        let report = render(&[forged], false, Duration::from_secs(10));
        assert_eq!(report.table.lines().count(), 2, "{}", report.table);
        assert!(!report.table.contains('\u{1b}'), "{}", report.table);
        assert!(
            report.table.contains("\\u{1b}[2JBP\\nFF:FF"),
            "{}",
            report.table
        );
    }
}
