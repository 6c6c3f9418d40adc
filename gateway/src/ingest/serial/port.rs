//! Finding and opening a serial port.
//!
//! A port is configured by path (`/dev/ttyUSB0`, or better a stable
//! `/dev/serial/by-id/...` link) or by USB vendor and product id. A USB id is resolved on
//! every (re)connect by reading sysfs directly — no libudev, so ARM cross builds need no
//! extra C library: for each `/sys/class/tty/<name>`, the `device` link is followed and its
//! ancestors searched for the USB device directory (the one holding `idVendor` and
//! `idProduct`, and `serial` for the serial-number string). A match opens `/dev/<name>`, so
//! an adapter that comes back as `ttyUSB1` after a replug is found again. Two matches are an
//! error (set `usb_serial` to tell them apart), never a guess.
//!
//! The sysfs and `/dev` roots are parameters ([`SysRoots`]) so tests use a fake tree.

use std::fmt;
use std::path::{Path, PathBuf};

use tokio_serial::{SerialPortBuilderExt, SerialStream};

use crate::profile::line::SerialSettings;
use crate::serial_settings::{FlowControl, Parity, UsbId};

/// How far up from a tty's `device` directory the USB device directory may be (usb-serial:
/// tty → port → interface → device; cdc-acm: interface → device).
const MAX_SYSFS_DEPTH: usize = 6;

/// Which port to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortTarget {
    /// A device path (or a link to one).
    Path(PathBuf),
    /// Whichever tty belongs to this USB device.
    Usb {
        /// Vendor and product id.
        id: UsbId,
        /// The USB serial-number string, when several adapters share the id.
        serial: Option<String>,
    },
}

impl fmt::Display for PortTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortTarget::Path(p) => write!(f, "{}", p.display()),
            PortTarget::Usb { id, serial: None } => write!(f, "usb {id}"),
            PortTarget::Usb {
                id,
                serial: Some(s),
            } => write!(f, "usb {id} serial {s}"),
        }
    }
}

/// Where sysfs and device nodes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysRoots {
    /// Normally `/sys`.
    pub sys: PathBuf,
    /// Normally `/dev`.
    pub dev: PathBuf,
}

impl Default for SysRoots {
    fn default() -> Self {
        Self {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }
}

/// Line settings to open a port with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Baud rate.
    pub baud: u32,
    /// Data bits, 5–8.
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
    /// Flow control.
    pub flow_control: FlowControl,
}

impl From<SerialSettings> for Settings {
    /// The settings a line profile documents for its device.
    fn from(s: SerialSettings) -> Self {
        Self {
            baud: s.baud,
            data_bits: s.data_bits,
            parity: s.parity,
            stop_bits: s.stop_bits,
            flow_control: s.flow_control,
        }
    }
}

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parity = match self.parity {
            Parity::None => 'N',
            Parity::Odd => 'O',
            Parity::Even => 'E',
        };
        let flow = match self.flow_control {
            FlowControl::None => "none",
            FlowControl::Software => "xon/xoff",
            FlowControl::Hardware => "rts/cts",
        };
        write!(
            f,
            "{} {}{}{} flow {flow}",
            self.baud, self.data_bits, parity, self.stop_bits
        )
    }
}

/// Why a port could not be found or opened. Each is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// No tty belongs to the configured USB device (unplugged?).
    #[error("no serial port for usb {0} (is it plugged in?)")]
    NotFound(UsbId),
    /// Several ttys match the USB id; the configuration must say which.
    #[error("{count} serial ports match usb {id} ({ports}); set `usb_serial` to choose one")]
    Ambiguous {
        /// The id.
        id: UsbId,
        /// How many matched.
        count: usize,
        /// Their device paths.
        ports: String,
    },
    /// sysfs could not be read.
    #[error("cannot read {path}")]
    Sysfs {
        /// What was read.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The device could not be opened or configured.
    #[error("cannot open {path}")]
    Open {
        /// The device path.
        path: String,
        /// What is in the way.
        #[source]
        source: OpenError,
    },
}

impl PortError {
    /// Whether the path names nothing at all (a mistyped path, or an adapter unplugged).
    pub fn is_missing(&self) -> bool {
        matches!(
            self,
            PortError::Open {
                source: OpenError::NoSuchFile,
                ..
            }
        )
    }
}

/// What stands in the way of opening a serial device, in the words a technician acts on.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Nothing has this path.
    #[error(
        "no such file (check the path: /dev/serial/by-id/ lists the serial adapters plugged in)"
    )]
    NoSuchFile,
    /// The path names something that is no serial port.
    #[error("not a serial port but {0} (check the path)")]
    NotATty(&'static str),
    /// The user may not open it.
    #[error(
        "permission denied (the user must be in the group that owns the device, usually `dialout`)"
    )]
    PermissionDenied,
    /// Another program holds it.
    #[error("in use by another program")]
    Busy,
    /// The driver refused it for another reason.
    #[error("the serial driver refused it")]
    Driver(#[source] tokio_serial::Error),
}

impl OpenError {
    /// Names what went wrong opening `path`, from the driver's error and what `path` is.
    fn of(path: &Path, e: tokio_serial::Error) -> Self {
        use std::os::unix::fs::FileTypeExt;
        let file_type = match std::fs::metadata(path) {
            Err(m) if m.kind() == std::io::ErrorKind::NotFound => return OpenError::NoSuchFile,
            Ok(m) => Some(m.file_type()),
            Err(_) => None,
        };
        match file_type {
            Some(t) if t.is_file() => return OpenError::NotATty("a regular file"),
            Some(t) if t.is_dir() => return OpenError::NotATty("a directory"),
            Some(t) if !t.is_char_device() => return OpenError::NotATty("no device"),
            _ => {}
        }
        match e.kind() {
            tokio_serial::ErrorKind::Io(std::io::ErrorKind::NotFound) => OpenError::NoSuchFile,
            tokio_serial::ErrorKind::Io(std::io::ErrorKind::PermissionDenied) => {
                OpenError::PermissionDenied
            }
            tokio_serial::ErrorKind::NoDevice => OpenError::Busy,
            _ => OpenError::Driver(e),
        }
    }
}

/// The device path the target names right now.
pub fn resolve(target: &PortTarget, roots: &SysRoots) -> Result<PathBuf, PortError> {
    match target {
        PortTarget::Path(p) => Ok(p.clone()),
        PortTarget::Usb { id, serial } => {
            let mut found = find_usb_ttys(*id, serial.as_deref(), roots)?;
            match found.len() {
                0 => Err(PortError::NotFound(*id)),
                1 => Ok(found.remove(0)),
                count => Err(PortError::Ambiguous {
                    id: *id,
                    count,
                    ports: found
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            }
        }
    }
}

/// Every `/dev/<tty>` whose USB device has this id (and serial number, when given), sorted.
pub fn find_usb_ttys(
    id: UsbId,
    serial: Option<&str>,
    roots: &SysRoots,
) -> Result<Vec<PathBuf>, PortError> {
    let class = roots.sys.join("class/tty");
    let entries = std::fs::read_dir(&class).map_err(|source| PortError::Sysfs {
        path: class.display().to_string(),
        source,
    })?;
    let mut found = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Ok(device) = std::fs::canonicalize(entry.path().join("device")) else {
            continue; // virtual terminals have no device
        };
        let Some(usb) = usb_device_dir(&device) else {
            continue; // not on USB (e.g. a UART ttyS0)
        };
        if read_hex(&usb.join("idVendor")) != Some(id.vendor)
            || read_hex(&usb.join("idProduct")) != Some(id.product)
        {
            continue;
        }
        if let Some(wanted) = serial {
            let have = std::fs::read_to_string(usb.join("serial")).unwrap_or_default();
            if have.trim() != wanted {
                continue;
            }
        }
        found.push(roots.dev.join(name));
    }
    found.sort();
    Ok(found)
}

/// The nearest ancestor of `dir` (itself included) that is a USB device directory.
fn usb_device_dir(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .take(MAX_SYSFS_DEPTH)
        .find(|d| d.join("idVendor").is_file() && d.join("idProduct").is_file())
        .map(Path::to_path_buf)
}

fn read_hex(path: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(path).ok()?;
    u16::from_str_radix(text.trim(), 16).ok()
}

/// Opens `path` with `settings` for async I/O, exclusively (a second opener is refused).
pub fn open(path: &Path, settings: Settings) -> Result<SerialStream, PortError> {
    let data_bits = match settings.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let parity = match settings.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Odd => tokio_serial::Parity::Odd,
        Parity::Even => tokio_serial::Parity::Even,
    };
    let stop_bits = match settings.stop_bits {
        2 => tokio_serial::StopBits::Two,
        _ => tokio_serial::StopBits::One,
    };
    let flow_control = match settings.flow_control {
        FlowControl::None => tokio_serial::FlowControl::None,
        FlowControl::Software => tokio_serial::FlowControl::Software,
        FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
    };
    tokio_serial::new(path.to_string_lossy(), settings.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(flow_control)
        .open_native_async()
        .map_err(|e| PortError::Open {
            path: path.display().to_string(),
            source: OpenError::of(path, e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A sysfs tree with an FTDI usb-serial adapter (ttyUSB3, serial A10K4XYZ), a second one
    /// with the same ids (ttyUSB4, serial B20), a CDC-ACM device (ttyACM0), a UART (ttyS0) and
    /// a virtual console (tty0).
    fn fake_sysfs() -> (tempfile::TempDir, SysRoots) {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path().join("sys");
        let write = |dir: &Path, files: &[(&str, &str)]| {
            std::fs::create_dir_all(dir).unwrap();
            for (name, text) in files {
                std::fs::write(dir.join(name), text).unwrap();
            }
        };
        let usb = sys.join("devices/pci0000:00/0000:00:14.0/usb1");
        let ftdi = usb.join("1-1");
        write(
            &ftdi,
            &[
                ("idVendor", "0403\n"),
                ("idProduct", "6001\n"),
                ("serial", "A10K4XYZ\n"),
            ],
        );
        let ftdi_port = ftdi.join("1-1:1.0/ttyUSB3");
        write(&ftdi_port, &[]);
        let ftdi2 = usb.join("1-3");
        write(
            &ftdi2,
            &[
                ("idVendor", "0403\n"),
                ("idProduct", "6001\n"),
                ("serial", "B20\n"),
            ],
        );
        let ftdi2_port = ftdi2.join("1-3:1.0/ttyUSB4");
        write(&ftdi2_port, &[]);
        let acm = usb.join("1-2");
        write(&acm, &[("idVendor", "2fe3\n"), ("idProduct", "0100\n")]);
        let acm_intf = acm.join("1-2:1.0");
        write(&acm_intf, &[]);
        let uart = sys.join("devices/platform/serial8250");
        write(&uart, &[]);
        let class = sys.join("class/tty");
        for (name, target) in [
            ("ttyUSB3", Some(&ftdi_port)),
            ("ttyUSB4", Some(&ftdi2_port)),
            ("ttyACM0", Some(&acm_intf)),
            ("ttyS0", Some(&uart)),
            ("tty0", None),
        ] {
            let dir = class.join(name);
            write(&dir, &[("dev", "4:0\n")]);
            if let Some(target) = target {
                symlink(target, dir.join("device")).unwrap();
            }
        }
        let roots = SysRoots {
            sys,
            dev: PathBuf::from("/dev"),
        };
        (root, roots)
    }

    #[test]
    fn a_usb_id_finds_its_tty_through_sysfs() {
        let (_tmp, roots) = fake_sysfs();
        let acm = PortTarget::Usb {
            id: UsbId::parse("2fe3:0100").unwrap(),
            serial: None,
        };
        assert_eq!(resolve(&acm, &roots).unwrap(), Path::new("/dev/ttyACM0"));
        let ftdi_a = PortTarget::Usb {
            id: UsbId::parse("0403:6001").unwrap(),
            serial: Some("A10K4XYZ".into()),
        };
        assert_eq!(resolve(&ftdi_a, &roots).unwrap(), Path::new("/dev/ttyUSB3"));
        let ftdi_b = PortTarget::Usb {
            id: UsbId::parse("0403:6001").unwrap(),
            serial: Some("B20".into()),
        };
        assert_eq!(resolve(&ftdi_b, &roots).unwrap(), Path::new("/dev/ttyUSB4"));
    }

    #[test]
    fn two_matches_are_refused_and_none_is_not_found() {
        let (_tmp, roots) = fake_sysfs();
        let any_ftdi = PortTarget::Usb {
            id: UsbId::parse("0403:6001").unwrap(),
            serial: None,
        };
        let err = resolve(&any_ftdi, &roots).unwrap_err().to_string();
        assert!(
            err.contains("2 serial ports match usb 0403:6001 (/dev/ttyUSB3, /dev/ttyUSB4)")
                && err.contains("usb_serial"),
            "{err}"
        );
        let absent = PortTarget::Usb {
            id: UsbId::parse("1a86:7523").unwrap(),
            serial: None,
        };
        assert!(matches!(
            resolve(&absent, &roots),
            Err(PortError::NotFound(_))
        ));
        let wrong_serial = PortTarget::Usb {
            id: UsbId::parse("0403:6001").unwrap(),
            serial: Some("nope".into()),
        };
        assert!(matches!(
            resolve(&wrong_serial, &roots),
            Err(PortError::NotFound(_))
        ));
    }

    #[test]
    fn a_replug_under_another_name_is_found_again() {
        let (tmp, roots) = fake_sysfs();
        let target = PortTarget::Usb {
            id: UsbId::parse("2fe3:0100").unwrap(),
            serial: None,
        };
        assert_eq!(resolve(&target, &roots).unwrap(), Path::new("/dev/ttyACM0"));
        // Unplugged: the class entry goes away.
        let class = roots.sys.join("class/tty");
        std::fs::remove_dir_all(class.join("ttyACM0")).unwrap();
        assert!(matches!(
            resolve(&target, &roots),
            Err(PortError::NotFound(_))
        ));
        // Plugged in again, enumerated as ttyACM1.
        let dir = class.join("ttyACM1");
        std::fs::create_dir_all(&dir).unwrap();
        let intf = tmp
            .path()
            .join("sys/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0");
        symlink(intf, dir.join("device")).unwrap();
        assert_eq!(resolve(&target, &roots).unwrap(), Path::new("/dev/ttyACM1"));
    }

    #[test]
    fn a_missing_sysfs_is_an_error_naming_the_path() {
        let roots = SysRoots {
            sys: PathBuf::from("/nonexistent-sysfs"),
            dev: PathBuf::from("/dev"),
        };
        let target = PortTarget::Usb {
            id: UsbId::parse("0403:6001").unwrap(),
            serial: None,
        };
        let err = resolve(&target, &roots).unwrap_err().to_string();
        assert!(err.contains("/nonexistent-sysfs/class/tty"), "{err}");
    }

    /// What a technician mistyping `--port` or `path` is told, and the gateway logs.
    #[test]
    fn a_port_that_cannot_open_says_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            flow_control: FlowControl::None,
        };
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let cases = [
            (dir.path().join("ttyUSBX"), "no such file"),
            (file, "not a serial port but a regular file"),
            (
                dir.path().to_path_buf(),
                "not a serial port but a directory",
            ),
        ];
        for (path, expected) in cases {
            let err = open(&path, settings).unwrap_err();
            assert_eq!(err.to_string(), format!("cannot open {}", path.display()));
            let chain = crate::error_chain::Chain(&err).to_string();
            assert!(chain.contains(expected), "{chain}");
            assert_eq!(err.is_missing(), expected == "no such file", "{chain}");
        }
    }

    #[test]
    fn settings_read_like_a_technician_writes_them() {
        let s = Settings {
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            flow_control: FlowControl::None,
        };
        assert_eq!(s.to_string(), "9600 8N1 flow none");
    }
}
