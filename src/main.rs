//! Thin binary: parse flags, load config, wire the library (`startup` picks the adapters),
//! report how it ended.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use image_builder::api::Serving;
use image_builder::config::{self, Settings};
use image_builder::events::Event;
use image_builder::metrics::Metrics;
use image_builder::startup;
use image_builder::store::BuildStore;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "image-builder",
    version,
    about = "Queue-driven container image builder"
)]
struct Cli {
    /// A TOML file of settings over the built-in defaults (nothing is read from the working
    /// directory). IMAGE_BUILDER_ENV=local selects the built-in development overlay.
    #[arg(long, global = true, env = "IMAGE_BUILDER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume build requests until SIGTERM/SIGINT.
    Worker,
    /// Serve the HTTP API (records, logs, cancel, webhooks, metrics) until SIGTERM/SIGINT.
    Serve,
    /// Worker and HTTP API in one process.
    Run,
    /// Declare the RabbitMQ topology, migrate the build store, and exit.
    Setup,
    /// Print a new random API key and the SHA-256 to put in `api.keys` (with a role and user ids).
    ApiKey,
    /// Publish a build request; with --wait, print its outcome event.
    Submit(Box<SubmitArgs>),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective settings (secrets masked) and where each came from; exit 1 on an
    /// unknown key or an unsafe combination.
    Check,
}

#[derive(Args)]
struct SubmitArgs {
    /// A JSON request file; flags below override its fields.
    #[arg(long)]
    file: Option<PathBuf>,
    #[arg(long)]
    repo: Option<String>,
    #[arg(long = "ref")]
    git_ref: Option<String>,
    #[arg(long)]
    user_id: Option<String>,
    #[arg(long)]
    connector: Option<String>,
    #[arg(long)]
    context: Option<String>,
    #[arg(long)]
    dockerfile: Option<String>,
    /// Name of an environment variable holding the token (tokens never go on the command line).
    #[arg(long)]
    token_env: Option<String>,
    /// Wait for the outcome and print it; exit 1 unless the image was pushed.
    #[arg(long)]
    wait: bool,
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

fn main() -> ExitCode {
    // As PID 1 (a container's entry point) this process only reaps and forwards signals; the
    // worker runs as its child.
    if let Some(code) = image_builder::init::supervise_if_pid1() {
        return code;
    }
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(async_main()),
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn async_main() -> ExitCode {
    let cli = Cli::parse();
    // These two need no settings (and `config check` reports what loading would refuse).
    match cli.command {
        Command::ApiKey => return api_key(),
        Command::Config(ConfigCommand::Check) => return config_check(cli.config.as_deref()),
        _ => {}
    }
    let loaded = config::process_layers(cli.config.as_deref())
        .and_then(|layers| Settings::from_layers(&layers));
    let (settings, relaxations) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: refusing to start:\n{e:#}");
            return ExitCode::from(2);
        }
    };
    image_builder::telemetry::init(settings.log.format, &settings.log.level);
    for relaxation in &relaxations {
        tracing::warn!("{}", relaxation.warning());
    }
    match run(cli.command, settings).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Worker | Command::Serve | Command::Run => {
            let settings = Arc::new(settings);
            let store = BuildStore::open(&settings).await?;
            let metrics = Metrics::new();
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            let worker = match command {
                Command::Worker | Command::Run => {
                    startup::prepare_build_host(&settings);
                    let env = Arc::new(startup::environment(&settings, &store, &metrics)?);
                    Some(image_builder::worker::run(
                        settings.clone(),
                        env,
                        store.clone(),
                        metrics.clone(),
                        shutdown.clone(),
                    ))
                }
                _ => None,
            };
            let serving = match command {
                Command::Serve | Command::Run => Some(Serving::Api),
                // A worker alone answers only an orchestrator's probes, and only when asked to.
                _ if !settings.api.probes_listen.is_empty() => Some(Serving::Probes),
                _ => None,
            };
            let api = serving.map(|what| {
                image_builder::api::serve(what, settings, store, metrics, shutdown.clone())
            });
            let (worker, api) = tokio::join!(
                async {
                    match worker {
                        Some(w) => w.await,
                        None => Ok(()),
                    }
                },
                async {
                    let result = match api {
                        Some(a) => a.await,
                        None => Ok(()),
                    };
                    // An API that cannot start (port taken) stops the whole process.
                    if result.is_err() {
                        shutdown.cancel();
                    }
                    result
                }
            );
            worker?;
            api?;
            Ok(ExitCode::SUCCESS)
        }
        // Answered in async_main before settings load.
        Command::ApiKey | Command::Config(_) => Ok(ExitCode::SUCCESS),
        Command::Setup => {
            BuildStore::open(&settings).await?;
            let brokers = image_builder::amqp::Brokers::from_settings(&settings.amqp);
            let conn = brokers.connect("image-builder setup").await?;
            let topology = image_builder::amqp::Topology::from_settings(&settings);
            topology
                .declare(&conn)
                .await
                .context("failed to declare the topology")?;
            let first = brokers
                .first()
                .context("no broker URL configured (amqp.url, amqp.urls)")?;
            image_builder::amqp::apply_through_any(
                &settings.amqp.management_apis(),
                first,
                &topology.policies(),
            )
            .await
            .context("failed to apply the queue policies")?;
            println!(
                "declared exchange {} and queue {}",
                topology.exchange, topology.build_queue
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit(args) => submit(*args, settings).await,
    }
}

fn api_key() -> ExitCode {
    let key = image_builder::api::generate_key();
    println!("key:  {key}");
    println!("hash: {}", image_builder::api::hash_key(&key));
    println!(
        "Give the key to the client; put only the hash in config: [[api.keys]] hash, role, users (or api.key_hashes for an admin key)."
    );
    ExitCode::SUCCESS
}

/// The report on stdout; exit 1 when the worker would refuse these settings.
fn config_check(file: Option<&std::path::Path>) -> ExitCode {
    match config::process_layers(file) {
        Ok(layers) => {
            let report = config::report::check(&layers);
            print!("{}", report.text);
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn submit(args: SubmitArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    let mut body = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read {}", path.display()))?;
            match serde_json::from_str::<Value>(&text)
                .with_context(|| format!("failed to parse {}", path.display()))?
            {
                Value::Object(map) => map,
                _ => anyhow::bail!("{} must hold a JSON object", path.display()),
            }
        }
        None => Map::new(),
    };
    for (key, value) in [
        ("repo", &args.repo),
        ("ref", &args.git_ref),
        ("user_id", &args.user_id),
        ("connector", &args.connector),
        ("context", &args.context),
        ("dockerfile", &args.dockerfile),
    ] {
        if let Some(value) = value {
            body.insert(key.into(), Value::String(value.clone()));
        }
    }
    if let Some(var) = &args.token_env {
        let token =
            std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?;
        body.insert("token".into(), Value::String(token));
    }
    let wait = args.wait.then(|| Duration::from_secs(args.timeout_secs));
    let (id, outcome) = image_builder::submit::submit(&settings, body, wait, |event| {
        eprintln!("{}: {}", event.routing_key(), event.build().build_id);
    })
    .await?;
    let Some(event) = outcome else {
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    };
    println!("{}", serde_json::to_string_pretty(&event)?);
    Ok(match event {
        Event::ImageUpdated(_) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("failed to install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutdown requested: finishing in-flight builds");
    shutdown.cancel();
}
