//! The `vitalbridge` command: parse the CLI, set up logging, call the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use vitalbridge::config::{Config, DEFAULT_CONFIG_TOML};
use vitalbridge::ops::systemd::Notifier;

/// Vitalbridge: edge gateway for remote patient monitoring and bedside devices.
///
/// Reads devices (simulator, MQTT), keeps every reading in a durable local buffer, and
/// forwards FHIR R4 Observations (NDJSON files, or a FHIR server over mutual TLS).
#[derive(Parser)]
#[command(name = "vitalbridge", version, propagate_version = true)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
enum QueueCommand {
    /// Pending, leased and dead-lettered readings, and the age of the oldest.
    Stats,
    /// List dead letters (newest first) with their reasons.
    DeadLetters {
        /// Most rows to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Put dead-lettered readings back in the queue (stop the gateway first).
    RetryDeadLetters,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn load(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    vitalbridge::load_config(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::PrintDefaultConfig => {
            print!("{DEFAULT_CONFIG_TOML}");
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            let parsed = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    return Ok(ExitCode::from(2));
                }
            };
            match parsed.validate() {
                Ok(()) => {
                    println!("{}: ok", config.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(problems) => {
                    for p in problems {
                        eprintln!("{}: {p}", config.display());
                    }
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Run { config } => {
            let config = load(config.as_deref())?;
            // Under systemd (Type=notify): READY=1 once running, STOPPING=1 on a signal.
            let notifier = Arc::new(Notifier::from_env());
            runtime()?.block_on(async {
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
        Command::Queue { config, command } => {
            let config = load(config.as_deref())?;
            let dir = config.gateway.data_dir.clone();
            runtime()?.block_on(async move {
                match command {
                    QueueCommand::Stats => {
                        let store = vitalbridge::buffer::Store::open_read_only(&dir).await?;
                        let s = store.stats().await?;
                        println!("pending: {}", s.pending);
                        println!("leased: {}", s.leased);
                        println!("dead_lettered: {}", s.dead_letters);
                        match s.oldest_age_ms {
                            Some(ms) => println!("oldest_age_s: {:.1}", ms as f64 / 1000.0),
                            None => println!("oldest_age_s: -"),
                        }
                    }
                    QueueCommand::DeadLetters { limit } => {
                        let store = vitalbridge::buffer::Store::open_read_only(&dir).await?;
                        for d in store.dead_letters(limit).await? {
                            println!(
                                "{}\t{}\t{}\t{}\t{}\t{}",
                                d.id,
                                d.created_ms,
                                d.kind,
                                d.origin,
                                d.identifier.as_deref().unwrap_or("-"),
                                d.reason
                            );
                        }
                    }
                    QueueCommand::RetryDeadLetters => {
                        let store = vitalbridge::buffer::Store::open(&dir, u64::MAX).await?;
                        let moved = store.retry_dead_letters().await?;
                        println!("requeued: {moved}");
                        store.close().await;
                    }
                }
                Ok(ExitCode::SUCCESS)
            })
        }
    }
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
