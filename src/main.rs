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
        /// Data-plane threads (default: one per CPU).
        #[arg(long)]
        workers: Option<usize>,
        /// Pin data-plane thread i to the i-th CPU the process may use (as HAProxy's
        /// `cpu-map auto`); for a host that serves mostly Portico.
        #[arg(long)]
        pin_workers: bool,
        /// Scheduling policy of the data-plane threads: `batch` (SCHED_BATCH: no wake-up
        /// preemption, so a woken thread handles a batch of events; the default) or `normal`
        /// (SCHED_OTHER, as the kernel starts threads). The control plane stays `normal`.
        #[arg(long, default_value_t = portico::daemon::sched::WorkerScheduling::Batch)]
        worker_scheduling: portico::daemon::sched::WorkerScheduling,
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
    /// One simulated RD Gateway (TLS, MS-TSGU, console-token check, faults).
    SimGateway {
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// TLS certificate chain (PEM): CN the alias, SANs the node names.
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "web01")]
        name: String,
        /// A thumbprint of the FedAuth TrustedIssuerCertificates (repeatable).
        #[arg(long)]
        trusted_thumbprint: Vec<String>,
        /// A token-signing certificate installed on the gateway, PEM (repeatable).
        #[arg(long)]
        trusted_cert: Vec<PathBuf>,
        /// A fault active from the start (repeatable): token-reject, untrusted-issuer,
        /// slow:<ms>, hang, reset-after-handshake, http-503, http-401, websocket-unsupported.
        #[arg(long)]
        fault: Vec<String>,
        /// UDP side (answers each datagram with the gateway's name).
        #[arg(long)]
        udp: Option<std::net::SocketAddr>,
        /// Line-based control socket on a loopback address (`fault token-reject`, `records`).
        #[arg(long)]
        control: Option<std::net::SocketAddr>,
        /// Open every channel here instead of the host the client asks for.
        #[arg(long)]
        target_override: Option<std::net::SocketAddr>,
    },
    /// Probe every backend once (or the one named) with the pool's checks; print each
    /// check's verdict, timing, the certificate and the gateway's status codes. Exit 0 only
    /// if every probed backend is healthy, 1 otherwise, 2 on a config mistake.
    Probe {
        #[arg(long, short, default_value = "/etc/portico/portico.toml")]
        config: PathBuf,
        /// Only this backend (by name).
        backend: Option<String>,
        /// One JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Console-connect tokens: mint as VMM does, write a portal's .rdp, verify as a gateway.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Talk to a running daemon over its admin socket (exit 1: error reply, 2: unreachable).
    Ctl {
        #[command(flatten)]
        target: AdminTarget,
        #[command(subcommand)]
        command: CtlArg,
    },
    /// Run a failover drill against a live node; prints a timeline, exits 1 if an
    /// expectation failed.
    Drill {
        #[command(flatten)]
        target: AdminTarget,
        #[command(subcommand)]
        command: DrillArg,
    },
}

/// Where the admin socket is.
#[derive(clap::Args)]
struct AdminTarget {
    /// Read `[admin] socket` from this config file.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The admin socket itself (default /run/portico/admin.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CtlArg {
    /// Node, VRRP, services and every backend's state, connections and last probe.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The status table, redrawn every second until Ctrl-C.
    Watch {
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Stop after this many frames.
        #[arg(long)]
        count: Option<u64>,
    },
    /// No new clients; clients pinned by affinity keep reaching it (NLB drainstop).
    Drain {
        backend: String,
    },
    /// No new connections at all.
    Disable {
        backend: String,
        /// Also close its established connections.
        #[arg(long)]
        kill: bool,
    },
    Enable {
        backend: String,
    },
    /// Re-read the config file (as SIGHUP does); a bad file keeps the old config.
    Reload,
    /// VRRP: `demote` hands the VIP to the peer, `resume` takes part again.
    Vrrp {
        #[arg(value_parser = ["demote", "resume"])]
        action: String,
    },
}

#[derive(clap::Args)]
struct DrillOpts {
    /// Existing clients, and as many new ones (distinct loopback source addresses).
    #[arg(long, default_value_t = 12)]
    clients: u8,
    /// Longest time a client may see no answer.
    #[arg(long, default_value_t = 1000)]
    max_gap_ms: u64,
    /// How long to follow the gateway's connections down to 0.
    #[arg(long, default_value_t = 10)]
    drain_wait_s: u64,
    /// Leave the gateway drained/disabled afterwards.
    #[arg(long)]
    keep: bool,
}

impl DrillOpts {
    fn args(
        &self,
        kind: portico::cli::drill::DrillKind,
        backend: String,
    ) -> portico::cli::drill::DrillArgs {
        portico::cli::drill::DrillArgs {
            kind,
            backend,
            clients: self.clients,
            max_gap: std::time::Duration::from_millis(self.max_gap_ms),
            drain_wait: std::time::Duration::from_secs(self.drain_wait_s),
            keep: self.keep,
        }
    }
}

#[derive(Subcommand)]
enum DrillArg {
    /// Drain a gateway: new clients go elsewhere, pinned clients stay, nothing is lost.
    Drain {
        backend: String,
        #[command(flatten)]
        opts: DrillOpts,
    },
    /// Disable a gateway: it gets nothing, pinned clients move.
    Disable {
        backend: String,
        /// Close its established connections too.
        #[arg(long)]
        kill: bool,
        #[command(flatten)]
        opts: DrillOpts,
    },
    /// Demote this node's VRRP and measure how long the VIP stays silent.
    VipHandover {
        /// The VIP and a service port on it.
        #[arg(long)]
        target: std::net::SocketAddr,
        /// Ask over UDP (a service answering datagrams) instead of TCP connects.
        #[arg(long)]
        udp: bool,
        #[arg(long, default_value_t = 3000)]
        max_gap_ms: u64,
        /// How long to watch after the demote.
        #[arg(long, default_value_t = 5)]
        watch_s: u64,
        /// Stay demoted afterwards.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(clap::Args)]
struct MintOpts {
    /// Signing certificate (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    #[arg(long)]
    key: PathBuf,
    /// Hyper-V host identity the token names (as VMM writes it, FQDN by default).
    #[arg(long)]
    host: String,
    #[arg(long, default_value_t = 2179)]
    port: u16,
    /// VMM's VMConnectTimeToLiveInMinutes (1..=60).
    #[arg(long, default_value_t = 1)]
    ttl_minutes: u64,
    /// RSA-PSS instead of PKCS#1 v1.5.
    #[arg(long)]
    pss: bool,
    /// SHA-512 instead of SHA-256.
    #[arg(long)]
    sha512: bool,
}

impl MintOpts {
    fn args(&self) -> portico::cli::token::MintArgs {
        portico::cli::token::MintArgs {
            cert: self.cert.clone(),
            key: self.key.clone(),
            host: self.host.clone(),
            port: self.port,
            ttl_minutes: self.ttl_minutes,
            pss: self.pss,
            sha512: self.sha512,
        }
    }
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a freshly signed token.
    Mint(MintOpts),
    /// Write the .rdp file a portal hands a tenant.
    Rdp {
        #[command(flatten)]
        mint: MintOpts,
        /// The VM's id (the preconnection blob, `pcb`).
        #[arg(long)]
        vm_id: String,
        /// The gateway alias (`gatewayhostname`).
        #[arg(long)]
        gateway: String,
        /// Write here (mode 0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a token the way the gateway's FedAuth plug-in does; exit 1 naming the failed step.
    Verify {
        /// A thumbprint of the gateway's TrustedIssuerCertificates (repeatable).
        #[arg(long)]
        trusted_thumbprint: Vec<String>,
        /// A certificate installed on the gateway, PEM (repeatable).
        #[arg(long)]
        trusted_cert: Vec<PathBuf>,
        /// Clock skew allowed on expiry, seconds (default 300).
        #[arg(long)]
        skew_secs: Option<u64>,
        #[arg(long)]
        allow_sha512: bool,
        /// Also check that this resource (CHANNEL_CREATE host) is what the token names.
        #[arg(long)]
        resource: Option<String>,
        #[arg(long, default_value_t = 2179)]
        resource_port: u16,
        /// The token, or `-` (default) to read it from stdin.
        #[arg(default_value = "-")]
        token: String,
    },
    /// Generate an RSA-2048 signing certificate and key for the probe.
    Keygen {
        #[arg(long, default_value = "Portico probe token signer")]
        cn: String,
        #[arg(long, default_value_t = 365)]
        days: u32,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
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
        Command::Token { command } => finish(token(command)),
        Command::Probe {
            config,
            backend,
            json,
        } => {
            if std::env::var_os("PORTICO_LOG").is_some() {
                init_logging();
            }
            finish(portico::cli::probe::run(&portico::cli::probe::ProbeArgs {
                config,
                backend,
                json,
            }))
        }
        Command::Ctl { target, command } => admin_command(&target, |path| async move {
            use portico::cli::ctl::{self, CtlCommand};
            let cmd = match command {
                CtlArg::Watch { interval_ms, count } => {
                    let every = std::time::Duration::from_millis(interval_ms.max(100));
                    return ctl::watch(&path, every, count).await;
                }
                CtlArg::Status { json } => CtlCommand::Status { json },
                CtlArg::Drain { backend } => CtlCommand::Drain { backend },
                CtlArg::Disable { backend, kill } => CtlCommand::Disable { backend, kill },
                CtlArg::Enable { backend } => CtlCommand::Enable { backend },
                CtlArg::Reload => CtlCommand::Reload,
                CtlArg::Vrrp { action } => CtlCommand::Vrrp {
                    action: if action == "demote" {
                        portico::admin::proto::VrrpAction::Demote
                    } else {
                        portico::admin::proto::VrrpAction::Resume
                    },
                },
            };
            ctl::run(&path, cmd).await
        }),
        Command::Drill { target, command } => admin_command(&target, |path| async move {
            use portico::cli::drill::{self, DrillKind, HandoverArgs};
            match command {
                DrillArg::Drain { backend, opts } => {
                    drill::run(&path, &opts.args(DrillKind::Drain, backend), true).await
                }
                DrillArg::Disable {
                    backend,
                    kill,
                    opts,
                } => {
                    drill::run(
                        &path,
                        &opts.args(DrillKind::Disable { kill }, backend),
                        true,
                    )
                    .await
                }
                DrillArg::VipHandover {
                    target,
                    udp,
                    max_gap_ms,
                    watch_s,
                    keep,
                } => {
                    let a = HandoverArgs {
                        target,
                        udp,
                        max_gap: std::time::Duration::from_millis(max_gap_ms),
                        watch: std::time::Duration::from_secs(watch_s),
                        keep,
                    };
                    drill::vip_handover(&path, &a, true).await
                }
            }
        }),
        Command::SimGateway {
            listen,
            cert,
            key,
            name,
            trusted_thumbprint,
            trusted_cert,
            fault,
            udp,
            control,
            target_override,
        } => {
            init_logging();
            let args = portico::cli::sim::SimArgs {
                listen,
                cert,
                key,
                name,
                trusted_thumbprints: trusted_thumbprint,
                trusted_certs: trusted_cert,
                faults: fault,
                udp,
                control,
                target_override,
            };
            run_async(Some(2), portico::cli::sim::run(args))
        }
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
        Command::Run {
            config,
            workers,
            pin_workers,
            worker_scheduling,
        } => {
            init_logging();
            let cfg = match portico::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let workers = workers.unwrap_or_else(portico::daemon::default_workers);
            // The data plane runs on its own threads; this runtime carries the control plane
            // (metrics, housekeeping, UDP, signals), which needs little.
            let threads = portico::daemon::Threads {
                workers,
                pin: pin_workers,
                scheduling: worker_scheduling,
            };
            run_async(Some(2), portico::daemon::run(cfg, threads))
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

fn token(cmd: TokenCommand) -> portico::cli::Outcome {
    use portico::cli::token as t;
    match cmd {
        TokenCommand::Mint(m) => t::mint(&m.args()),
        TokenCommand::Rdp {
            mint,
            vm_id,
            gateway,
            out,
        } => t::rdp(&mint.args(), &vm_id, &gateway, out.as_deref()),
        TokenCommand::Verify {
            trusted_thumbprint,
            trusted_cert,
            skew_secs,
            allow_sha512,
            resource,
            resource_port,
            token,
        } => {
            let text = if token == "-" {
                let mut s = String::new();
                if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
                    return portico::cli::Outcome::fail(format!(
                        "portico token verify: reading stdin: {e}\n"
                    ));
                }
                s
            } else {
                token
            };
            let args = t::VerifyArgs {
                trusted_thumbprints: trusted_thumbprint,
                trusted_certs: trusted_cert,
                skew_secs,
                allow_sha512,
                resource,
                resource_port,
            };
            t::verify(&args, &text)
        }
        TokenCommand::Keygen {
            cn,
            days,
            cert,
            key,
        } => t::keygen(&cn, days, &cert, &key),
    }
}

/// Resolves the admin socket and runs `f` on a small runtime.
fn admin_command<F, Fut>(target: &AdminTarget, f: F) -> ExitCode
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = portico::cli::Outcome>,
{
    let path =
        match portico::cli::ctl::socket_path(target.socket.as_deref(), target.config.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("portico: {e}");
                return ExitCode::from(portico::cli::ctl::EXIT_UNREACHABLE);
            }
        };
    let rt = match runtime(Some(1)) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portico: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    finish(rt.block_on(f(path)))
}

fn finish(o: portico::cli::Outcome) -> ExitCode {
    print!("{}", o.stdout);
    eprint!("{}", o.stderr);
    ExitCode::from(o.code)
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
