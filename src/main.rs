//! Thin binary: parse flags, load config, wire the library (`startup` picks the adapters),
//! report how it ended.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use image_builder::api::Serving;
use image_builder::config::{self, Settings};
use image_builder::metrics::Metrics;
use image_builder::startup;
use image_builder::store::BuildStore;
use tokio_util::sync::CancellationToken;

use cli::api_commands::{self, CancelArgs, ListArgs, LogsArgs, RebuildArgs, StatusArgs};
use cli::build_command::{self, BuildArgs};
use cli::docs::{self, CompletionsArgs, ManArgs};
use cli::submit_command::{self, SubmitArgs};

#[derive(Parser)]
#[command(
    name = "image-builder",
    version,
    about = "Queue-driven container image builder",
    after_help = "Examples:
  image-builder run                         # worker + HTTP API (make run starts the services)
  image-builder build .                     # build this directory once, push it, no broker
  image-builder submit --repo acme/app --user-id 42 --wait
  image-builder list --state running        # the HTTP API (--api, IMAGE_BUILDER_API_KEY)
  image-builder logs BUILD_ID --follow
  image-builder config check --config /etc/image-builder.toml"
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
    #[command(after_help = "Examples:
  image-builder worker --config /etc/image-builder/worker.toml
  IMAGE_BUILDER__AMQP__PREFETCH=4 image-builder worker")]
    Worker,
    /// Serve the HTTP API (records, logs, cancel, webhooks, metrics) until SIGTERM/SIGINT.
    #[command(after_help = "Examples:
  IMAGE_BUILDER__API__LISTEN=0.0.0.0:8080 image-builder serve")]
    Serve,
    /// Worker and HTTP API in one process.
    #[command(after_help = "Examples:
  IMAGE_BUILDER_ENV=local image-builder run   # what `make run` starts")]
    Run,
    /// Declare the RabbitMQ topology, migrate the build store, and exit.
    #[command(after_help = "Examples:
  image-builder setup --config /etc/image-builder/worker.toml")]
    Setup,
    /// Print a new random API key and the SHA-256 to put in `api.keys` (with a role and user ids).
    #[command(after_help = "Examples:
  image-builder api-key   # then [[api.keys]] hash = \"<hash>\", role = \"submit\", users = [\"42\"]")]
    ApiKey,
    /// Build a local directory (or --repo) once and push it: no broker, no API.
    Build(Box<BuildArgs>),
    /// Publish a build request; with --wait, follow it to its outcome.
    Submit(Box<SubmitArgs>),
    /// List builds, newest first (HTTP API).
    List(ListArgs),
    /// Show one build: state, commit, image, pull command, history (HTTP API).
    Status(StatusArgs),
    /// Print a build's log; --follow streams it while the build runs (HTTP API).
    Logs(LogsArgs),
    /// Cancel a queued or running build (HTTP API).
    Cancel(CancelArgs),
    /// Build a finished build's request again under a new id (HTTP API).
    Rebuild(RebuildArgs),
    /// Inspect the configuration.
    #[command(
        subcommand,
        after_help = "Examples:
  image-builder config check"
    )]
    Config(ConfigCommand),
    /// Print shell completions.
    Completions(CompletionsArgs),
    /// Print the manual page (or write one per command with --dir).
    Man(ManArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective settings (secrets masked) and where each came from; exit 1 on an
    /// unknown key or an unsafe combination.
    #[command(after_help = "Examples:
  image-builder config check
  IMAGE_BUILDER__AMQP__PREFETCH=8 image-builder config check --config prod.toml")]
    Check,
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
    // These need no settings (and `config check` reports what loading would refuse); the API
    // commands talk to a server whose settings are its own.
    let answered = match cli.command {
        Command::ApiKey => Ok(api_key()),
        Command::Config(ConfigCommand::Check) => Ok(config_check(cli.config.as_deref())),
        Command::Completions(args) => Ok(docs::completions(args, Cli::command())),
        Command::Man(args) => docs::man(args, Cli::command()),
        Command::List(args) => api_commands::list(args).await,
        Command::Status(args) => api_commands::status(args).await,
        Command::Logs(args) => api_commands::logs(args).await,
        Command::Cancel(args) => api_commands::cancel(args).await,
        Command::Rebuild(args) => api_commands::rebuild(args).await,
        command => return with_settings(command, cli.config.as_deref()).await,
    };
    answered.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

async fn with_settings(command: Command, config_file: Option<&std::path::Path>) -> ExitCode {
    let loaded =
        config::process_layers(config_file).and_then(|layers| Settings::from_layers(&layers));
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
    match run(command, settings).await {
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
            // Delivers the notification outbox until the worker and the API are done (what a
            // draining worker records still goes out; what is left waits in the store).
            let notify_stop = CancellationToken::new();
            let notifier = image_builder::notify::spawn(
                &settings,
                store.clone(),
                metrics.clone(),
                notify_stop.clone(),
            )?;
            let api = serving.map(|what| {
                let registry = startup::registry(&settings);
                let base_registries = startup::registry_hosts(&settings);
                image_builder::api::serve(
                    what,
                    settings,
                    store,
                    metrics,
                    registry,
                    base_registries,
                    shutdown.clone(),
                )
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
            notify_stop.cancel();
            if let Some(notifier) = notifier {
                let _ = notifier.await;
            }
            worker?;
            api?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Build(args) => build_command::build(*args, settings).await,
        // Answered in async_main before settings load.
        Command::ApiKey
        | Command::Config(_)
        | Command::Completions(_)
        | Command::Man(_)
        | Command::List(_)
        | Command::Status(_)
        | Command::Logs(_)
        | Command::Cancel(_)
        | Command::Rebuild(_) => Ok(ExitCode::SUCCESS),
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
        Command::Submit(args) => submit_command::submit(*args, settings).await,
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every command shows examples and every flag and argument says what it is for.
    #[test]
    fn every_command_has_examples_and_every_flag_help() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        let mut commands = vec![cli];
        while let Some(command) = commands.pop() {
            let name = command.get_name().to_owned();
            let help = command
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            if name != "help" && name != "image-builder" {
                assert!(help.contains("Examples:"), "`{name}` shows no examples");
            }
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(arg.get_help().is_some(), "`{name}`: {id} has no help text");
            }
            commands.extend(command.get_subcommands().cloned());
        }
    }
}
