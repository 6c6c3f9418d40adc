//! The `vitalbridge` command: parse the CLI, set up logging, call the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use vitalbridge::config::{Config, ConfigError, LogFormat as ConfigLogFormat, DEFAULT_CONFIG_TOML};
use vitalbridge::error_chain::Chain;
use vitalbridge::ops::systemd::Notifier;
use vitalbridge::tools::printable;

/// Vitalbridge: edge gateway for remote patient monitoring and bedside devices.
///
/// Reads devices (simulator, MQTT, Bluetooth LE, serial, HL7 v2 over MLLP), keeps every
/// reading in a durable local buffer, sealed at rest, and forwards FHIR R4 Observations (NDJSON
/// files, or a FHIR server over mutual TLS and/or OAuth 2.0), HL7 v2 ORU^R01 to an interface
/// engine, and streams to MQTT brokers and Kafka.
#[derive(Parser)]
#[command(name = "vitalbridge", version, propagate_version = true)]
struct Cli {
    /// Log format on stderr [default: the config's `ops.log_format`, else text].
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl From<ConfigLogFormat> for LogFormat {
    fn from(f: ConfigLogFormat) -> Self {
        match f {
            ConfigLogFormat::Text => LogFormat::Text,
            ConfigLogFormat::Json => LogFormat::Json,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (without -c: the demo — simulator in, NDJSON out, under ./vitalbridge-data).
    Run {
        /// Config file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Check a config file; exits non-zero naming every bad key.
    CheckConfig {
        /// Config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print the default configuration, with a comment on every key.
    PrintDefaultConfig,
    /// Decode a device's bytes and print the readings (for technicians and tests).
    Decode {
        #[command(subcommand)]
        command: DecodeCommand,
    },
    /// Bluetooth LE tools.
    Ble {
        #[command(subcommand)]
        command: BleCommand,
    },
    /// Simulate devices (for tests, and for technicians checking a cable).
    Sim {
        #[command(subcommand)]
        command: SimCommand,
    },
    /// The key that seals buffered readings at rest.
    BufferKey {
        #[command(subcommand)]
        command: BufferKeyCommand,
    },
    /// Readings held because no patient is bound to their device, and their release.
    Devices {
        /// Config file (TOML), for the data directory and the audit log.
        #[arg(short, long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Device profiles: try one on a captured sample; make, sign, verify, install, list and
    /// roll back signed profile packs (docs/profiles.md).
    Profiles {
        /// Config file (TOML): trusted keys, packs directory, audit log.
        #[arg(short, long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: ProfilesCommand,
    },
    /// The running gateway's status in a terminal: readiness, queue, uplinks, devices,
    /// certificates, the active profile pack (the facts of the status page).
    Status {
        /// Config file (TOML): where the operations server listens, its TLS and token.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Print /status.json as it came.
        #[arg(long)]
        json: bool,
        /// A client certificate (PEM), when the operations server asks for one.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Its private key (PEM).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
    },
    /// Check the FHIR uplink before going live, and what to register with its server.
    Uplink {
        #[command(subcommand)]
        command: UplinkCommand,
    },
    /// Inspect or repair the buffer queue.
    Queue {
        /// Config file (TOML), for the data directory.
        #[arg(short, long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: QueueCommand,
    },
}

#[derive(Subcommand)]
enum ProfilesCommand {
    /// Decode a captured sample with a profile and print the readings and the FHIR
    /// Observations the gateway would send: JSON for a json- profile, text lines for a line-
    /// profile, one hex value per line for a ble- profile. Exit 2 if it does not decode.
    Test {
        /// A profile file, or the id of a built-in profile.
        profile: String,
        /// The sample file.
        sample: PathBuf,
        /// json- profiles: the MQTT topic the sample came on [default: the profile's example's].
        #[arg(long)]
        topic: Option<String>,
        /// ble- profiles: the characteristic [default: the profile's first subscribed one].
        #[arg(long)]
        characteristic: Option<String>,
    },
    /// Make a new Ed25519 signing key (PKCS#8 DER, mode 0600) and print its public key for
    /// `[[profiles.trusted_keys]]`. Keep it off the hub.
    Keygen {
        /// The key file to create.
        file: PathBuf,
    },
    /// Make an unsigned pack in OUT from the profile files (json-, line-, ble-*.toml) in DIR.
    Pack {
        /// The directory of profile files.
        dir: PathBuf,
        /// The pack directory to create.
        #[arg(long)]
        out: PathBuf,
        /// The pack's name (lower-case letters, digits, dashes).
        #[arg(long)]
        name: String,
        /// The pack's version (dot-separated numbers; each install must be newer).
        #[arg(long = "pack-version")]
        pack_version: String,
        /// The id of the key that will sign it.
        #[arg(long)]
        key_id: String,
    },
    /// Sign a pack's manifest with a signing key (off the hub).
    Sign {
        /// The pack directory.
        pack: PathBuf,
        /// The PKCS#8 (DER) Ed25519 private key.
        #[arg(long)]
        key: PathBuf,
    },
    /// Verify a pack against the hub's trusted keys, without installing it.
    Verify {
        /// The pack directory.
        pack: PathBuf,
    },
    /// Verify a pack and make it the active one (atomically; the running gateway reloads).
    Install {
        /// The pack directory.
        pack: PathBuf,
    },
    /// The installed packs; `*` marks the active one.
    List,
    /// Make an older installed pack active again.
    Rollback {
        /// The version to go back to [default: the newest older than the active one].
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Subcommand)]
enum SimCommand {
    /// A device on a serial port: Vitalbridge firmware frames (resent until acknowledged)
    /// or the lines of a line profile. Stops after --count, or on Ctrl-C.
    Serial(SimSerial),
}

#[derive(clap::Args)]
struct SimSerial {
    /// The port to write to, e.g. /dev/ttyUSB0 (the far end of the gateway's cable).
    #[arg(long)]
    port: PathBuf,
    /// What the device speaks.
    #[arg(long, value_enum, default_value_t = SimProtocolArg::Firmware)]
    protocol: SimProtocolArg,
    /// With `line`: the line profile id (e.g. line-nonin-ascii).
    #[arg(long)]
    profile: Option<String>,
    /// With `line`: a directory of line-*.toml profiles besides the built-in ones.
    #[arg(long)]
    profiles_dir: Option<PathBuf>,
    /// Baud rate (default: the profile's, or 115200 for firmware).
    #[arg(long)]
    baud: Option<u32>,
    /// Readings (firmware) or lines (line) to send; 0 = until Ctrl-C.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Milliseconds between measurements.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Firmware: the device's serial number (its id at the gateway).
    #[arg(long, default_value = "SIM-SERIAL-0001")]
    serial: String,
    /// Firmware: the first sequence number.
    #[arg(long, default_value_t = 1)]
    first_seq: u32,
    /// Firmware: resend a reading after this many ms without an acknowledgement.
    #[arg(long, default_value_t = 2000)]
    ack_timeout_ms: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum SimProtocolArg {
    Firmware,
    Line,
}

#[derive(Subcommand)]
enum UplinkCommand {
    /// Get an access token ([uplink.fhir.auth]) and read the FHIR server's
    /// CapabilityStatement; prints a verdict. Exit codes: 0 ready, 2 configuration unusable,
    /// 3 no access token, 4 server unreachable, 5 server refused the token or is no FHIR R4
    /// server.
    Test {
        /// Config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print the public JWKS of the private_key_jwt key, to register with the authorization
    /// server (or publish at the jku URL).
    Jwks {
        /// Config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
        /// A key set published now (JSON, public keys only): its keys are printed after the
        /// configured one, for a key rotation (publish both before the gateway switches).
        #[arg(long, value_name = "JWKS_FILE")]
        keep: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BufferKeyCommand {
    /// Create a new random key file (mode 0600; refuses to overwrite one). Put it outside the
    /// data directory; under systemd, seal it with `systemd-creds encrypt`.
    New {
        /// The key file to create.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Pending, leased and dead-lettered readings, the age of the oldest, and the readings
    /// held unbound.
    Stats,
    /// List dead letters (newest first) with their reasons.
    DeadLetters {
        /// Most rows to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only readings this destination (uplink) gave up on.
        #[arg(long)]
        destination: Option<String>,
    },
    /// Put dead-lettered readings back in the queue, each for the destination that gave up
    /// on it (stop the gateway first).
    RetryDeadLetters {
        /// Only those of this destination (uplink).
        #[arg(long)]
        destination: Option<String>,
    },
    /// Recover every readable reading from a damaged buffer the gateway moved to
    /// `<data_dir>/quarantine/` into the queue (stop the gateway first).
    Salvage {
        /// The quarantine folder (or a damaged buffer.db; its -wal beside it is read too).
        path: PathBuf,
        /// Another key the damaged buffer may be sealed with (repeatable).
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// List the readings held unbound, per device and user index (no values, no patients).
    Unbound,
    /// Release a device's held readings to a patient (stop the gateway first: this takes
    /// the buffer's lock). Audited. Readings measured later are bound by the config.
    Bind {
        /// The device id (as in [[devices]]; a Bluetooth address with or without colons).
        device: String,
        /// The patient: SYSTEM|VALUE (an identifier) or Patient/ID.
        #[arg(long)]
        patient: String,
        /// Only the readings that reported this device user index (shared devices); without
        /// it, those that reported none.
        #[arg(long)]
        user: Option<u8>,
        /// Only readings measured at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only readings measured before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
    },
}

#[derive(Subcommand)]
enum DecodeCommand {
    /// Decode one Bluetooth SIG health characteristic value. Prints the readings as JSON
    /// (shape documented in gateway/src/profile/report.rs), or with --fhir the FHIR R4
    /// Observations as NDJSON. Malformed input: exit code 2, the error on stderr.
    Ble {
        /// Characteristic UUID: `2A35`, `0x2A35` or `00002a35-0000-1000-8000-00805f9b34fb`.
        #[arg(long)]
        characteristic: String,
        /// The value in hex; spaces, `:` and `-` between bytes are allowed.
        hex: String,
        /// Print FHIR Observations (NDJSON) instead of the readings report.
        #[arg(long)]
        fhir: bool,
        /// The device's Bluetooth address (for the device id and FHIR identifiers).
        #[arg(long)]
        device: Option<String>,
        /// Bind the readings to a patient, `SYSTEM|VALUE` or `Patient/ID`, as config would.
        #[arg(long)]
        patient: Option<String>,
    },
    /// Map a captured HL7 v2 ORU^R01 message or batch (IHE PCD-01) the way the HL7 listener
    /// would. Prints the readings as JSON (the shape of `decode ble`), or with --fhir the
    /// FHIR R4 Observations as NDJSON; OBX kept as dead letters are listed on stderr. A
    /// message the listener would refuse (AE/AR): exit code 2, the reason on stderr.
    Hl7 {
        /// The file holding the message (CR, LF or CRLF segment ends), or `-` for stdin.
        file: PathBuf,
        /// Print FHIR Observations (NDJSON) instead of the readings report.
        #[arg(long)]
        fhir: bool,
        /// IANA time zone of HL7 times without an offset (default: the host's).
        #[arg(long)]
        time_zone: Option<String>,
    },
}

#[derive(Subcommand)]
enum BleCommand {
    /// List nearby devices and the health services they advertise.
    Scan {
        /// How long to listen, in seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Also list devices that advertise no health service.
        #[arg(long)]
        all: bool,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// One malloc arena for the whole process. glibc gives each thread that allocates its own
/// arena (up to 8 per core); the gateway's threads (the runtime's worker, SQLite's) allocate
/// little at the same time, and the extra arenas cost about 3 MiB of peak memory on a hub
/// for no measurable throughput (see docs/benchmark.md). Per-thread caches still serve
/// small allocations without the arena lock.
///
/// The one `unsafe` left outside the allocation counter: mallopt is a glibc function, not a
/// system call, so rustix (which removed the others) has no wrapper for it, and no
/// maintained crate offers one; it is one call with constant arguments.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes glibc's allocator, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(feature = "alloc-counter")]
#[global_allocator]
static ALLOCATOR: vitalbridge::ops::alloc::CountingAllocator =
    vitalbridge::ops::alloc::CountingAllocator;

fn main() -> ExitCode {
    one_malloc_arena();
    #[cfg(feature = "alloc-counter")]
    vitalbridge::ops::alloc::CountingAllocator::enable();
    let cli = Cli::parse();
    match dispatch(cli.command, cli.log_format) {
        Ok(code) => code,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

/// Prints an error with its causes on one line (`what failed: why`), each cause once; a
/// list of configuration problems one per line. Outside text in it (paths, values quoted
/// from a file) is shown escaped.
fn report(e: &anyhow::Error) {
    let problems = match e.downcast_ref::<vitalbridge::RunError>() {
        Some(vitalbridge::RunError::Config(problems)) => Some(problems.as_slice()),
        _ => e.downcast_ref::<InvalidConfig>().map(|c| c.0.as_slice()),
    };
    match problems {
        Some(problems) => {
            eprintln!("error: invalid configuration:");
            for p in problems {
                eprintln!("  {}", printable(&p.to_string()));
            }
        }
        None => eprintln!("error: {}", printable(&Chain(e.as_ref()).to_string())),
    }
}

/// The problems of a config file that does not load.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration ({} problems)", .0.len())]
struct InvalidConfig(Vec<ConfigError>);

/// The async runtime of a command: one worker thread (the gateway's default,
/// `gateway.worker_threads`; a command other than `run` never needs more).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(1)
}

/// `worker_threads` is the config's value before `run` validates it: 0 is taken as 1 here,
/// so that an invalid config is reported by the validation like any other problem.
fn runtime_with(worker_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads.max(1))
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn load(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(vitalbridge::load_config(path).map_err(InvalidConfig)?)
}

/// Logging starts once the format is known: for `run`, after the config is loaded (the
/// command line's `--log-format` wins over the config's `ops.log_format`).
fn dispatch(command: Command, log_format: Option<LogFormat>) -> anyhow::Result<ExitCode> {
    if !matches!(command, Command::Run { .. }) {
        init_logging(log_format.unwrap_or(LogFormat::Text));
    }
    match command {
        Command::PrintDefaultConfig => {
            print!("{DEFAULT_CONFIG_TOML}");
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            let problems = vitalbridge::check_config_file(&config);
            if problems.is_empty() {
                println!("{}: ok", printable(&config.display().to_string()));
                return Ok(ExitCode::SUCCESS);
            }
            for p in problems {
                eprintln!("{}", printable(&format!("{}: {p}", config.display())));
            }
            Ok(ExitCode::from(2))
        }
        Command::Run { config } => {
            let config = load(config.as_deref())?;
            init_logging(log_format.unwrap_or(config.ops.log_format.into()));
            // Under systemd (Type=notify): READY=1 once running, STOPPING=1 on a signal.
            let notifier = Arc::new(Notifier::from_env());
            runtime_with(config.gateway.worker_threads)?.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(wait_for_signal(shutdown.clone(), notifier.clone()));
                let ready = || {
                    tracing::info!("gateway running");
                    if let Some(n) = notifier.as_ref() {
                        n.ready("running");
                    }
                };
                let summary = vitalbridge::run(config, shutdown, ready).await?;
                tracing::info!(
                    stored = summary.stored,
                    delivered = summary.delivered,
                    "stopped cleanly"
                );
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Decode {
            command:
                DecodeCommand::Ble {
                    characteristic,
                    hex,
                    fhir,
                    device,
                    patient,
                },
        } => {
            let request = vitalbridge::tools::decode::DecodeBle {
                characteristic: &characteristic,
                hex: &hex,
                fhir,
                device: device.as_deref(),
                patient: patient.as_deref(),
            };
            Ok(match vitalbridge::tools::decode::decode_ble(&request) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}", printable(&Chain(&e).to_string()));
                    ExitCode::from(2)
                }
            })
        }
        Command::Decode {
            command:
                DecodeCommand::Hl7 {
                    file,
                    fhir,
                    time_zone,
                },
        } => {
            let max = vitalbridge::tools::decode::MAX_HL7_INPUT;
            let bytes = if file.as_os_str() == "-" {
                use std::io::Read;
                let mut bytes = Vec::new();
                std::io::stdin().take(max).read_to_end(&mut bytes)?;
                bytes
            } else {
                use std::io::Read;
                let mut bytes = Vec::new();
                std::fs::File::open(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
                    .take(max)
                    .read_to_end(&mut bytes)?;
                bytes
            };
            Ok(
                match vitalbridge::tools::decode::decode_hl7(&bytes, fhir, time_zone.as_deref()) {
                    Ok(d) => {
                        println!("{}", d.text);
                        for w in &d.warnings {
                            eprintln!("warning: {w}");
                        }
                        if d.refused {
                            ExitCode::from(2)
                        } else {
                            ExitCode::SUCCESS
                        }
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::from(2)
                    }
                },
            )
        }
        Command::Ble {
            command: BleCommand::Scan { seconds, all },
        } => {
            let report = runtime()?.block_on(vitalbridge::tools::scan::ble_scan(seconds, all))?;
            // Device names in the table are escaped by `render`.
            println!("{}", report.table);
            eprintln!("{}", report.summary);
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim {
            command: SimCommand::Serial(args),
        } => sim_serial(args),
        Command::Uplink {
            command: UplinkCommand::Test { config },
        } => {
            let problems = vitalbridge::check_config_file(&config);
            if !problems.is_empty() {
                for p in problems {
                    eprintln!("{}", printable(&format!("{}: {p}", config.display())));
                }
                println!("FAIL: the configuration is unusable (see above)");
                return Ok(ExitCode::from(2));
            }
            let config = load(Some(&config))?;
            let report = runtime()?.block_on(vitalbridge::uplink_test(&config));
            for line in &report.lines {
                println!("{}", printable(line));
            }
            Ok(ExitCode::from(report.verdict as u8))
        }
        Command::Uplink {
            command: UplinkCommand::Jwks { config, keep },
        } => {
            let config = load(Some(&config))?;
            let kept = match &keep {
                None => Vec::new(),
                Some(path) => {
                    let read = std::fs::read(path)
                        .map_err(|e| e.to_string())
                        .and_then(|b| {
                            vitalbridge::auth_wire::parse_public_jwks(&b).map_err(|e| e.to_string())
                        });
                    match read {
                        Ok(keys) => keys,
                        Err(why) => {
                            eprintln!(
                                "error: --keep {}: {}",
                                printable(&path.display().to_string()),
                                printable(&why)
                            );
                            return Ok(ExitCode::from(2));
                        }
                    }
                }
            };
            match vitalbridge::uplink_jwks_keeping(&config, &kept)? {
                Some(jwks) => {
                    println!("{}", serde_json::to_string_pretty(&jwks)?);
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!(
                        "error: no [uplink.fhir.auth] with method = \"private_key_jwt\": no key to publish"
                    );
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::BufferKey {
            command: BufferKeyCommand::New { file },
        } => {
            let key = vitalbridge::buffer::seal::BufferKey::create(&file)?;
            println!(
                "created {} (key id {}): keep a copy somewhere safe; without it the buffered readings cannot be read",
                printable(&file.display().to_string()),
                key.id()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            config,
            json,
            cert,
            key,
        } => {
            let config = load(config.as_deref())?;
            let identity = cert.as_deref().zip(key.as_deref());
            let doc = vitalbridge::tools::status::fetch(&config, identity)?;
            if json {
                println!("{doc:#}");
            } else {
                println!("{}", vitalbridge::tools::status::render(&doc));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Profiles { config, command } => profiles_command(config.as_deref(), command),
        Command::Queue { config, command } => {
            let config = load(config.as_deref())?;
            runtime()?.block_on(queue_command(&config, command))
        }
        Command::Devices { config, command } => {
            let config = load(config.as_deref())?;
            runtime()?.block_on(devices_command(&config, command))
        }
    }
}

/// A progress line on stderr when it is a terminal (`verifying: 3/40 files`), nothing when
/// piped.
fn progress_line(what: &'static str) -> impl FnMut(usize, usize) {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stderr().is_terminal();
    move |done, total| {
        if terminal {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r{what}: {done}/{total} files");
            if done == total {
                let _ = writeln!(err);
            }
            let _ = err.flush();
        }
    }
}

/// A running count on standard error, only on a terminal (quiet when piped): `what: N
/// readings found`, rewritten in place.
fn found_line(what: &'static str) -> impl FnMut(u64) + Send {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stderr().is_terminal();
    move |found| {
        if terminal {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r{what}: {found} readings found");
            let _ = err.flush();
        }
    }
}

/// The `profiles` commands.
fn profiles_command(
    config: Option<&std::path::Path>,
    command: ProfilesCommand,
) -> anyhow::Result<ExitCode> {
    use vitalbridge::tools::profiles as tool;
    let with_config = |needs: &dyn Fn(
        &Config,
        &vitalbridge::ops::audit::Audit,
    ) -> Result<String, vitalbridge::packs::Refusal>|
     -> anyhow::Result<ExitCode> {
        let config = load(config)?;
        let id = vitalbridge::gateway_id(&config)?;
        let audit = vitalbridge::ops::start_cli_audit(&config, &id)?;
        Ok(match needs(&config, &audit) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(refusal) => {
                eprintln!("refused: {refusal}");
                ExitCode::from(3)
            }
        })
    };
    match command {
        ProfilesCommand::Test {
            profile,
            sample,
            topic,
            characteristic,
        } => {
            let request = tool::TestRequest {
                profile: &profile,
                sample: &sample,
                topic: topic.as_deref(),
                characteristic: characteristic.as_deref(),
            };
            Ok(match tool::test(&request) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}", printable(&Chain(&e).to_string()));
                    ExitCode::from(2)
                }
            })
        }
        ProfilesCommand::Keygen { file } => {
            let public = vitalbridge::packs::keygen(&file)?;
            println!("{public}");
            eprintln!("created {}: keep it off the hub; put the line above in [[profiles.trusted_keys]] ed25519", file.display());
            Ok(ExitCode::SUCCESS)
        }
        ProfilesCommand::Pack {
            dir,
            out,
            name,
            pack_version,
            key_id,
        } => {
            let m = vitalbridge::packs::pack(
                &dir,
                &out,
                &name,
                &pack_version,
                &key_id,
                time::OffsetDateTime::now_utc(),
            )?;
            println!(
                "made {} in {} ({} files, unsigned)",
                m.label(),
                out.display(),
                m.files.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        ProfilesCommand::Sign { pack, key } => {
            let public = vitalbridge::packs::sign(&pack, &key)?;
            println!(
                "signed {}; it verifies with the public key {public}",
                pack.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        ProfilesCommand::Verify { pack } => {
            with_config(&|c, a| tool::verify(c, &pack, a, &mut progress_line("verifying")))
        }
        ProfilesCommand::Install { pack } => {
            with_config(&|c, a| tool::install(c, &pack, a, &mut progress_line("verifying")))
        }
        ProfilesCommand::List => with_config(&|c, _| Ok(tool::list(c))),
        ProfilesCommand::Rollback { to } => {
            with_config(&|c, a| tool::rollback(c, to.as_deref(), a))
        }
    }
}

/// The `queue` commands.
async fn queue_command(config: &Config, command: QueueCommand) -> anyhow::Result<ExitCode> {
    use vitalbridge::buffer;
    let dir = &config.gateway.data_dir;
    match command {
        QueueCommand::Stats => {
            let store = buffer::open_read_only(dir, None).await?;
            let s = store.stats().await?;
            println!("pending: {}", s.pending);
            println!("leased: {}", s.leased);
            println!("dead_lettered: {}", s.dead_letters);
            match s.oldest_age_ms {
                Some(ms) => println!("oldest_age_s: {:.1}", ms as f64 / 1000.0),
                None => println!("oldest_age_s: -"),
            }
            println!("quarantined: {}", store.health().quarantined);
            let held: u64 = store
                .unbound_devices()
                .await?
                .iter()
                .map(|d| d.readings)
                .sum();
            println!("unbound: {held}");
            for d in store.destinations() {
                println!("pending[{}]: {}", d.name(), store.pending_for(d).await?);
            }
        }
        QueueCommand::DeadLetters { limit, destination } => {
            let key = buffer::seal::BufferKey::load(&config.buffer.key_file)
                .map_err(|e| {
                    eprintln!(
                        "warning: {}; the details stay sealed",
                        printable(&Chain(&e).to_string())
                    )
                })
                .ok();
            let store = buffer::open_read_only(dir, key).await?;
            let rows = store.dead_letters(limit, destination.as_deref()).await?;
            if rows.is_empty() {
                println!("no dead letters");
                return Ok(ExitCode::SUCCESS);
            }
            println!("id\ttime (UTC)\tkind\tseen\torigin\tidentifier\treason");
            for d in rows {
                let time = d
                    .created
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                let (origin, identifier, reason) = match &d.details {
                    Ok(e) => (
                        e.origin.as_str(),
                        e.identifier.as_deref().unwrap_or("-"),
                        e.reason.as_str(),
                    ),
                    Err(_) => (
                        d.source.as_str(),
                        "(sealed)",
                        "(sealed: no key or another key)",
                    ),
                };
                println!(
                    "{}\t{time}\t{}\t{}\t{}\t{}\t{}",
                    d.id,
                    d.kind,
                    d.seen,
                    printable(origin),
                    printable(identifier),
                    printable(reason)
                );
            }
        }
        QueueCommand::Salvage { path, keys } => {
            let extra = keys
                .iter()
                .map(|k| buffer::seal::BufferKey::load(k))
                .collect::<Result<Vec<_>, _>>()?;
            let (_store, mut writer, _) =
                buffer::open(dir, &vitalbridge::buffer_options(config)).await?;
            let report = buffer::salvage::salvage_with_progress(
                &mut writer,
                &path,
                extra,
                &mut found_line("salvaging"),
            )
            .await;
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                eprintln!();
            }
            let report = report?;
            writer.close().await;
            let shown = |p: &std::path::Path| printable(&p.display().to_string());
            println!(
                "read {}{}: {} readings found, {} queued ({} already in the buffer), {} damaged or sealed with another key",
                shown(&report.database),
                report.wal.as_ref().map(|w| format!(" and {}", shown(w))).unwrap_or_default(),
                report.found,
                report.queued,
                report.found - report.queued,
                report.unreadable
            );
            if let Ok(id) = vitalbridge::gateway_id(config) {
                if let Ok(audit) = vitalbridge::ops::start_cli_audit(config, &id) {
                    audit.record(vitalbridge::ops::audit::Event::BufferSalvaged {
                        from: &report.database,
                        found: report.found,
                        queued: report.queued,
                    });
                }
            }
        }
        QueueCommand::RetryDeadLetters { destination } => {
            let mut options = vitalbridge::buffer_options(config);
            options.capacity = u64::MAX;
            let (store, mut writer, _) = buffer::open(dir, &options).await?;
            let only =
                match destination.as_deref() {
                    Some(name) => {
                        Some(store.destination(name).ok_or_else(|| {
                            anyhow::anyhow!(
                        "--destination {name}: not a configured destination (configured: {})",
                        store.destinations().iter().map(|d| d.name()).collect::<Vec<_>>().join(", ")
                    )
                        })?)
                    }
                    None => None,
                };
            let moved = writer.retry_dead_letters(only.as_ref()).await?;
            println!("requeued: {moved}");
            writer.close().await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `devices` commands.
async fn devices_command(config: &Config, command: DevicesCommand) -> anyhow::Result<ExitCode> {
    use vitalbridge::tools::devices;
    let dir = &config.gateway.data_dir;
    match command {
        DevicesCommand::Unbound => println!("{}", devices::list_unbound(dir).await?),
        DevicesCommand::Bind {
            device,
            patient,
            user,
            since,
            until,
        } => {
            let audit = vitalbridge::gateway_id(config)
                .ok()
                .and_then(|id| vitalbridge::ops::start_cli_audit(config, &id).ok());
            let request = devices::BindRequest {
                device: &device,
                patient: &patient,
                user,
                since: since.as_deref(),
                until: until.as_deref(),
            };
            let text = devices::bind(
                dir,
                &vitalbridge::buffer_options(config),
                &request,
                audit.as_ref(),
            )
            .await?;
            println!("{text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn sim_serial(args: SimSerial) -> anyhow::Result<ExitCode> {
    use vitalbridge::ingest::serial::{simulator, FIRMWARE_SETTINGS};
    if matches!(args.protocol, SimProtocolArg::Firmware) {
        let line_only = [
            ("--profile", args.profile.is_some()),
            ("--profiles-dir", args.profiles_dir.is_some()),
        ];
        if let Some((option, _)) = line_only.iter().find(|(_, given)| *given) {
            anyhow::bail!(
                "{option} is for line devices: add --protocol line (without it the simulator speaks the firmware protocol, which has no profile)"
            );
        }
    }
    let (protocol, mut settings) = match args.protocol {
        SimProtocolArg::Firmware => (
            simulator::SimProtocol::Firmware {
                serial: args.serial,
                first_seq: args.first_seq,
                ack_timeout: std::time::Duration::from_millis(args.ack_timeout_ms),
            },
            FIRMWARE_SETTINGS,
        ),
        SimProtocolArg::Line => {
            let id = args
                .profile
                .context("--protocol line needs --profile (e.g. line-nonin-ascii)")?;
            let registry =
                vitalbridge::profile::line::Registry::load(args.profiles_dir.as_deref())?;
            let profile = registry.get(&id)?.clone();
            let settings = vitalbridge::ingest::serial::port::Settings::from(profile.serial);
            (simulator::SimProtocol::Line(Box::new(profile)), settings)
        }
    };
    if let Some(baud) = args.baud {
        settings.baud = baud;
    }
    let firmware = matches!(protocol, simulator::SimProtocol::Firmware { .. });
    let options = simulator::SimOptions {
        port: args.port,
        settings,
        protocol,
        count: args.count,
        interval: std::time::Duration::from_millis(args.interval_ms.max(1)),
    };
    runtime()?.block_on(async {
        let stop = CancellationToken::new();
        tokio::spawn(wait_for_signal(stop.clone(), Arc::new(None)));
        let summary = simulator::run(options, stop).await?;
        if firmware {
            println!(
                "readings: {}, acknowledged: {}, frames sent: {}, connections: {}",
                summary.produced, summary.acknowledged, summary.frames_sent, summary.connections
            );
            Ok(if summary.acknowledged == summary.produced {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        } else {
            println!(
                "lines: {}, connections: {}",
                summary.produced, summary.connections
            );
            Ok(ExitCode::SUCCESS)
        }
    })
}

async fn wait_for_signal(shutdown: CancellationToken, notifier: Arc<Option<Notifier>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
    if let Some(n) = notifier.as_ref() {
        n.stopping("stopping: flushing the buffer, finishing the current batch");
    }
    shutdown.cancel();
}
