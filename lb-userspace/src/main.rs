//! The `gerbang` command line.

use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use gerbang::{
    config::Config,
    control::Request,
    controller,
    dataplane::AdminState,
    observe::{self, StatusView},
    privileges::{CapSet, Capability},
};

#[derive(Parser)]
#[command(
    name = "gerbang",
    version,
    about = "High-availability L4 load balancer (XDP)"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the config, attach the XDP program and balance until stopped. SIGHUP reloads
    /// the config; SIGTERM/SIGINT detach and stop; SIGUSR2 exits leaving the program
    /// forwarding for the next gerbang to take over (restart, upgrade).
    ///
    /// Once running, gerbang keeps only the capabilities it still uses (CAP_NET_ADMIN with
    /// XDP or VRRP, and CAP_BPF with XDP on kernels before 6.5; none otherwise), in every
    /// thread and in the bounding set, and sets no_new_privs; VRRP notify and track scripts
    /// run with the same set.
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Keep this capability too once running (repeatable), for VRRP scripts that need
        /// it: CAP_NET_RAW, NET_RAW or net_raw.
        #[arg(long = "keep-capability", value_name = "CAP", value_parser = parse_capability)]
        keep_capability: Vec<Capability>,
    },
    /// Validate a configuration file and exit (no privileges needed).
    CheckConfig {
        /// Configuration file.
        file: PathBuf,
    },
    /// Take a backend out of rotation or put it back, in a running gerbang.
    Backend {
        #[arg(value_enum)]
        action: BackendAction,
        service: String,
        backend: String,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Make a running gerbang read its config file again (like SIGHUP, but reports errors).
    Reload {
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Show a running gerbang's services, backends (state, last check), VRRP instances and
    /// data plane: what its status page shows.
    Status {
        #[command(flatten)]
        socket: SocketArgs,
        /// Print the JSON of the status page's API instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendAction {
    /// No new flows; established flows continue.
    Drain,
    /// Out for maintenance: no new flows, established flows continue, checks keep running.
    Maint,
    /// Back in service.
    Ready,
}

/// Where to find the running gerbang's control socket.
#[derive(clap::Args)]
struct SocketArgs {
    /// The control socket (default: the one named in --config, else /run/gerbang/control.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Configuration file whose [control] socket to use.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

const DEFAULT_CONFIG: &str = "/etc/gerbang/gerbang.toml";

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run {
            config,
            keep_capability,
        } => run(config, CapSet::of(&keep_capability)),
        Command::CheckConfig { file } => check_config(file),
        Command::Backend {
            action,
            service,
            backend,
            socket,
        } => {
            let state = match action {
                BackendAction::Drain => AdminState::Drain,
                BackendAction::Maint => AdminState::Maint,
                BackendAction::Ready => AdminState::Ready,
            };
            send(
                &socket,
                &Request::SetAdmin {
                    service,
                    backend,
                    state,
                },
            )
        }
        Command::Reload { socket } => send(&socket, &Request::Reload),
        Command::Status { socket, json } => status(&socket, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gerbang: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: PathBuf, keep: CapSet) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(controller::run(&config, keep))
}

fn parse_capability(name: &str) -> anyhow::Result<Capability> {
    Capability::parse(name)
}

fn send(socket: &SocketArgs, request: &Request) -> anyhow::Result<()> {
    println!("{}", ask(socket, request)?);
    Ok(())
}

/// Sends `request` to the running gerbang and returns its answer.
fn ask(socket: &SocketArgs, request: &Request) -> anyhow::Result<String> {
    let path = match (&socket.socket, &socket.config) {
        (Some(path), _) => path.clone(),
        (None, Some(config)) => Config::load(config)?.control.socket,
        (None, None) => match Config::load(std::path::Path::new(DEFAULT_CONFIG)) {
            Ok(config) => config.control.socket,
            Err(_) => PathBuf::from(gerbang::config::ControlConfig::DEFAULT_SOCKET),
        },
    };
    controller::send_command(&path, request)
}

fn status(socket: &SocketArgs, json: bool) -> anyhow::Result<()> {
    let answer = ask(socket, &Request::Status)?;
    if json {
        println!("{answer}");
    } else {
        let view = StatusView::from_json(&answer)
            .context("gerbang answered with a status this gerbang cannot read")?;
        print!("{}", observe::render(&view));
    }
    Ok(())
}

fn check_config(file: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&file)?;
    let backends: usize = config.services.iter().map(|s| s.backends.len()).sum();
    println!(
        "{}: ok ({} services, {backends} backends)",
        file.display(),
        config.services.len()
    );
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
