//! The `portico` command: argument parsing, logging set-up, exit codes. Everything else lives
//! in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "portico",
    version,
    about = "VIP owner and layer-4 balancer for RD Gateway farms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        #[arg(long, short, default_value = "/etc/portico/portico.toml")]
        config: PathBuf,
        /// Worker threads for the data plane (default: one per CPU).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate a config file and print the plan it describes; exit 1 on any mistake.
    Check {
        #[arg(long, short, default_value = "/etc/portico/portico.toml")]
        config: PathBuf,
    },
    /// The embedded lab on loopback: three gateway stand-ins, the balancer, metrics.
    Lab {
        /// Moves every lab port by (N - 10000).
        #[arg(long, default_value_t = portico::lab::DEFAULT_PORT_BASE)]
        port_base: u16,
        /// Where the lab writes its config, CA and admin socket.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the generated config and exit.
        #[arg(long)]
        print_config: bool,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTICO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all().thread_name("portico");
    if let Some(n) = workers {
        b.worker_threads(n.max(1));
    }
    b.build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match portico::config::load(&config) {
            Ok(cfg) => {
                print!("{}", portico::check::render_plan(&cfg));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, workers } => {
            init_logging();
            let cfg = match portico::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            run_async(workers, portico::daemon::run(cfg))
        }
        Command::Lab {
            port_base,
            dir,
            print_config,
        } => {
            if !print_config {
                init_logging();
            }
            let opts = portico::lab::LabOptions {
                port_base,
                dir: dir.unwrap_or_else(portico::lab::default_dir),
                print_config,
            };
            run_async(None, portico::lab::run(opts))
        }
    }
}

fn run_async(
    workers: Option<usize>,
    fut: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let rt = match runtime(workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portico: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portico: {e:#}");
            ExitCode::FAILURE
        }
    }
}
