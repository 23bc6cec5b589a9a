//! The `keel` binary: `keel broker` runs a broker; the other subcommands are clients.

use std::io::IsTerminal;

use keel::cli::{self, Cli, CliError, Command, LogFormat};
use keel::meta::store_rocks::RocksStore;
use keel::server::{run_broker, BrokerHooks};
use keel::storage::file::FileDisk;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// A hostile Kafka frame must not abort the broker with one huge allocation (module doc).
#[global_allocator]
static ALLOC: keel::reserving_alloc::ReservingAlloc = keel::reserving_alloc::ReservingAlloc;

#[tokio::main]
async fn main() {
    let mut cli = Cli::parse_checked();
    if let Err(error) = cli.load_tls() {
        eprintln!("error: {}", error.message);
        std::process::exit(error.exit_code);
    }
    let default_level = if matches!(cli.command, Command::Broker(_)) { "info" } else { "warn" };
    init_logging(&cli, default_level);

    let result = match &cli.command {
        Command::Broker(args) => broker(&cli, args).await,
        Command::Topic(command) => cli::run_topic(&cli, command).await,
        Command::Produce(args) => cli::run_produce(&cli, args).await,
        Command::Consume(args) => cli::run_consume(&cli, args).await,
        Command::Group(command) => cli::group::run(&cli, command).await,
        Command::Bench(command) => cli::bench::run(&cli, command).await,
        Command::Cluster(command) => cli::cluster::run(&cli, command).await,
        Command::User(command) => cli::user::run(&cli, command).await,
    };
    if let Err(error) = result {
        eprintln!("error: {}", error.message);
        std::process::exit(error.exit_code);
    }
}

async fn broker(cli: &Cli, args: &cli::BrokerArgs) -> Result<(), CliError> {
    let mut config = cli::broker_config(cli, args)?;
    let failure = |message: String| CliError { message, exit_code: 1 };
    let limit = raise_open_file_limit();
    let budget = config.file_budget(limit).map_err(|error| failure(error.to_string()))?;
    config.connections_max = budget.connections_max;
    config.open_files_max = Some(budget.open_files_max);
    tracing::info!(
        open_file_limit = budget.limit,
        partition_files = budget.open_files_max,
        connections_max = budget.connections_max,
        reserve = keel::config::OPEN_FILES_RESERVE,
        "file budget"
    );
    if let Some(why) = budget.lowered {
        tracing::warn!(connections_max = budget.connections_max, open_files_max = budget.open_files_max, "{why}");
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|error| failure(format!("cannot create data dir {}: {error}", config.data_dir.display())))?;
    let disk = FileDisk::new(&config.data_dir);
    let meta_dir = config.data_dir.join("meta");
    let meta_store = RocksStore::open(&meta_dir)
        .map_err(|error| failure(format!("cannot open the metadata store {}: {error}", meta_dir.display())))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let mut hooks = BrokerHooks::default();
    let admin_stop = CancellationToken::new();
    if let Some(addr) = config.admin_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|error| failure(format!("cannot listen on the admin address {addr}: {error}")))?;
        let tls = config.tls().map_err(|error| failure(error.to_string()))?.and_then(|tls| tls.peers);
        let advertised = config.advertised_addr.clone();
        let serving = AdminServing { listener, tls, advertised };
        tokio::spawn(admin(serving, &mut hooks, shutdown.clone(), admin_stop.clone()));
    }
    let result = run_broker(config, disk, meta_store, shutdown, hooks).await;
    admin_stop.cancel();
    result.map_err(|error| failure(error.to_string()))
}

/// What the admin listener needs besides the broker: its socket, and how to reach the broker (its
/// advertised address, with the broker's own TLS client settings when it speaks TLS).
struct AdminServing {
    listener: tokio::net::TcpListener,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    advertised: Option<String>,
}

/// The admin listener (ADR 0027), serving once the broker hands over its observer and address.
/// `/readyz` turns 503 as soon as `stopping` (the broker's shutdown) is cancelled; the listener
/// stops at `stop`.
fn admin(
    AdminServing { listener, tls, advertised }: AdminServing,
    hooks: &mut BrokerHooks,
    stopping: CancellationToken,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> {
    let (bound_sender, bound) = tokio::sync::oneshot::channel();
    let (observer_sender, observer) = tokio::sync::oneshot::channel();
    hooks.bound = Some(bound_sender);
    hooks.observer = Some(observer_sender);
    async move {
        let (Ok(mut native), Ok(observer)) = (bound.await, observer.await) else { return };
        if native.ip().is_unspecified() {
            native.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        match listener.local_addr() {
            Ok(addr) => tracing::info!(admin_listen = %addr, "admin listener listening"),
            Err(error) => tracing::warn!(%error, "admin listener: no local address"),
        }
        let addr = advertised.unwrap_or_else(|| native.to_string());
        let admin = keel::admin::Admin::new(observer, addr, tls, stopping);
        keel::admin::serve(listener, admin, stop).await;
    }
}

/// Raises the soft open-file limit to the hard one (a process may, without privileges) and returns
/// the limit it runs with.
fn raise_open_file_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = getrlimit(Resource::Nofile),
            Err(error) => tracing::warn!(%error, "cannot raise the open-file limit to its hard limit"),
        }
    }
    // `None` is "unlimited": 1 << 20 descriptors is already more than the kernel's default nr_open.
    limit.current.unwrap_or(1 << 20)
}

/// Logs go to stderr: text, coloured only when stderr is a terminal and `NO_COLOR` is unset or empty
/// (https://no-color.org), or one JSON object per line with `--log-format json` for log shippers.
fn init_logging(cli: &Cli, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
            builder.with_ansi(std::io::stderr().is_terminal() && !no_color).init()
        }
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
    }
    shutdown.cancel();
}
