//! The single `airlock` binary: clap subcommands that wire the crates together, nothing more.
//! Exit codes: the remote status for sessions, 0 success, 1 failure, 2 usage.

mod admin;
mod dev;
mod documents;
mod exec;
mod iam;
mod output;
mod player;
mod plugin;
mod port;
mod port_connections;
mod recording;
mod session;
mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Output format for commands that print results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Tables and sentences for people.
    #[default]
    Text,
    /// JSON for scripts.
    Json,
}

#[derive(Parser, Debug)]
#[command(
    name = "airlock",
    version,
    about = "Self-hosted shell and port access to hosts, compatible with AWS Session Manager"
)]
struct Cli {
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a server and a local agent on loopback, with an admin profile: the quickest start.
    Dev(DevArgs),
    /// Run the server.
    Server(Box<ServerArgs>),
    /// Register or run the agent on a host.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Open a shell on a host.
    StartSession(StartSessionArgs),
    /// Run a command on one host, or on many (--targets tag:KEY=VALUE,…), to its exit status.
    Exec(exec::ExecArgs),
    /// Forward a local port to a port on (or reachable from) a host.
    PortForward(port::PortForwardArgs),
    /// Relay stdin/stdout to a host's SSH port (for ssh -o ProxyCommand).
    SshProxy(port::SshProxyArgs),
    /// List or end sessions.
    #[command(subcommand)]
    Sessions(admin::SessionsCommand),
    /// List managed instances.
    #[command(subcommand)]
    Instances(admin::InstancesCommand),
    /// Users, groups, policies, grants, access keys, activations and instances.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Policy tools.
    #[command(subcommand)]
    Policy(iam::PolicyTool),
    /// The audit trail.
    #[command(subcommand)]
    Audit(iam::AuditCommand),
    /// The connections port sessions forwarded (port forwarding, SSH over a session).
    #[command(subcommand)]
    PortConnections(port_connections::PortConnectionsCommand),
}

/// `airlock dev`.
#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where the server keeps its state (default ~/.airlock/dev).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Loopback address to listen on.
    #[arg(long, default_value = "127.0.0.1:7220")]
    pub listen: SocketAddr,
}

/// `airlock server`.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Address to listen on. Non-loopback addresses get TLS unless --insecure-http.
    #[arg(long, default_value = "127.0.0.1:8443", env = "AIRLOCK_LISTEN")]
    pub listen: SocketAddr,
    /// State directory (database, generated certificate, bootstrap credentials).
    #[arg(long, default_value = "/var/lib/airlock", env = "AIRLOCK_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Database URL (default: SQLite in the data directory).
    #[arg(long, env = "AIRLOCK_DATABASE_URL")]
    pub database_url: Option<String>,
    /// TLS certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Use a generated self-signed certificate even on loopback.
    #[arg(long, conflicts_with_all = ["tls_cert", "insecure_http"])]
    pub self_signed: bool,
    /// Serve plain HTTP on a non-loopback address (only behind a TLS-terminating proxy).
    #[arg(long, conflicts_with = "tls_cert")]
    pub insecure_http: bool,
    /// URL clients use to reach this server (for StreamUrl), if not the listen address.
    #[arg(long)]
    pub public_url: Option<String>,
    /// Region in ARNs and SigV4 scopes.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Account id in ARNs.
    #[arg(long, default_value = "000000000000")]
    pub account_id: String,
    /// The master key sealing secrets at rest (default: master.key in the data directory).
    #[arg(long, env = "AIRLOCK_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Open connections at once, all sources together.
    #[arg(long, default_value_t = 8192, env = "AIRLOCK_MAX_CONNECTIONS")]
    pub max_connections: usize,
    /// Open connections at once from one source address.
    #[arg(long, default_value_t = 512, env = "AIRLOCK_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: usize,
    /// Seconds a connection has to send a complete request head (TLS handshake included).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout_secs: u64,
    /// Largest request head, in bytes.
    #[arg(long, default_value_t = 16 * 1024, value_parser = clap::value_parser!(u64).range(1024..=1048576))]
    pub max_header_bytes: u64,
    /// Largest API request body, in bytes.
    #[arg(long, default_value_t = 256 * 1024, value_parser = clap::value_parser!(u64).range(1024..=67108864))]
    pub max_body_bytes: u64,
    /// Test only: the length of a preferences "minute" in milliseconds (idle timeout, maximum
    /// session duration and their warnings), so tests see limits in seconds.
    #[arg(long, hide = true, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub test_minute_ms: u64,
    /// Where session recordings go: file:///dir or s3://bucket/prefix (default: the
    /// preferences' s3BucketName/s3KeyPrefix, else <data-dir>/recordings).
    #[arg(long, env = "AIRLOCK_RECORDINGS")]
    pub recordings: Option<String>,
    /// S3-compatible endpoint for recordings (credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY).
    #[arg(long, env = "AIRLOCK_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region for recordings.
    #[arg(long, env = "AIRLOCK_S3_REGION")]
    pub s3_region: Option<String>,
    /// Most MiB of recording chunks spooled locally while the recording store is down.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1048576))]
    pub recording_spool_mb: u64,
    /// Write every recorded session event (output, and input where recorded) and every session
    /// change as JSON lines to FILE (appended, mode 0600), or to standard output with `-`.
    /// A FILE moved away by logrotate is reopened at its path within a second.
    #[arg(long, value_name = "FILE|-", env = "AIRLOCK_SESSION_LOG")]
    pub session_log: Option<String>,
    /// Accept webhook URLs with plain http:// to hosts other than loopback (events and audit
    /// records then cross the network unencrypted).
    #[arg(long)]
    pub allow_plain_http_webhooks: bool,
    /// Test only: the first webhook retry delay in milliseconds (it doubles per attempt).
    #[arg(long, hide = true, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub test_webhook_retry_ms: u64,
}

#[derive(Subcommand, Debug)]
enum AgentCommand {
    /// Register this host with an activation (once).
    Register(AgentRegisterArgs),
    /// Run the agent (keeps an outbound connection to the server).
    Run(AgentRunArgs),
}

#[derive(Args, Debug)]
struct AgentRegisterArgs {
    /// Server URL, e.g. https://airlock.example.com:8443.
    #[arg(long)]
    server: String,
    /// Activation id.
    #[arg(long)]
    activation_id: String,
    /// Activation code.
    #[arg(long, env = "AIRLOCK_ACTIVATION_CODE")]
    activation_code: String,
    /// PEM certificate(s) to trust for the server (e.g. its self-signed certificate).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// State file (default /var/lib/airlock-agent/state.json as root, else ~/.airlock/agent.json).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Replace an existing registration.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
struct AgentRunArgs {
    /// State file written by `agent register`.
    #[arg(long)]
    state: Option<PathBuf>,
    /// User that sessions run as when the agent runs as root (default: airlock-user, created if missing).
    #[arg(long)]
    run_as: Option<String>,
    /// Allow --run-as root.
    #[arg(long)]
    allow_root_sessions: bool,
    /// Let port sessions connect only to CIDR:PORTS (e.g. 10.0.0.0/8:5432, [::1]:22,
    /// 192.0.2.7:80,443, 127.0.0.1:8000-8100, fe80::/10:*); repeatable. Adds to
    /// AllowDestinations in the state file.
    #[arg(long, value_name = "CIDR:PORTS")]
    allow_destination: Vec<String>,
    /// Never let port sessions connect to CIDR:PORTS; beats any allow. Link-local and the
    /// cloud metadata addresses are refused by default. Repeatable; adds to DenyDestinations.
    #[arg(long, value_name = "CIDR:PORTS")]
    deny_destination: Vec<String>,
}

/// `airlock start-session`.
#[derive(Args, Debug)]
pub struct StartSessionArgs {
    /// Instance id (mi-…).
    #[arg(long)]
    pub target: String,
    /// Session document.
    #[arg(long)]
    pub document_name: Option<String>,
    /// Document parameters as JSON, e.g. '{"portNumber":["80"]}'.
    #[arg(long)]
    pub parameters: Option<String>,
    /// Why you are connecting (recorded).
    #[arg(long)]
    pub reason: Option<String>,
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Keeps glibc from returning and re-faulting the memory of data-channel buffers. A port
/// forward allocates and frees buffers of a few hundred KiB per frame; by default glibc serves
/// those with mmap or trims them off the heap on free, and every reuse then page-faults its
/// memory in again (in a profile, 15 % of all CPU went to page faults and zeroing pages).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    if plugin::is_plugin_invocation(&args) {
        init_tracing("warn");
        return run_async(plugin::main(args));
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let quiet = matches!(
        cli.command,
        Command::StartSession(_)
            | Command::SshProxy(_)
            | Command::PortForward(_)
            | Command::Exec(_)
    );
    init_tracing(if quiet { "warn" } else { "info" });
    let format = cli.output;
    // The client commands run one session each: one thread moves its bytes with no hand-offs
    // between worker threads (a wake-up across threads costs more than the work it hands on),
    // and leaves the other core to the peer processes on the same host.
    let one_thread = quiet || matches!(cli.command, Command::Agent(AgentCommand::Run(_)));
    run_async_on(one_thread, async move {
        match cli.command {
            Command::Dev(a) => dev::run(a, format).await,
            Command::Server(a) => run_server(*a).await,
            Command::Agent(AgentCommand::Register(a)) => agent_register(a, format).await,
            Command::Agent(AgentCommand::Run(a)) => agent_run(a).await,
            Command::StartSession(a) => session::start(a).await,
            Command::Exec(a) => exec::exec(a, format).await,
            Command::PortForward(a) => port::port_forward(a, format).await,
            Command::SshProxy(a) => port::ssh_proxy(a).await,
            Command::Sessions(c) => admin::sessions(c, format).await,
            Command::Instances(c) => admin::instances(c, format).await,
            Command::Admin(c) => admin::admin(c, format).await,
            Command::Policy(iam::PolicyTool::Simulate(a)) => iam::simulate(a, format).await,
            Command::Audit(c) => iam::audit(c, format).await,
            Command::PortConnections(c) => port_connections::run(c, format).await,
        }
    })
}

fn run_async<F: std::future::Future<Output = anyhow::Result<i32>>>(f: F) -> ExitCode {
    run_async_on(false, f)
}

fn run_async_on<F: std::future::Future<Output = anyhow::Result<i32>>>(
    one_thread: bool,
    f: F,
) -> ExitCode {
    // The server (and admin commands) use a worker per core (TOKIO_WORKER_THREADS overrides),
    // so a gateway on a large machine relays on all of its cores.
    let mut builder = if one_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("airlock: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(f);
    // A blocking stdin read may still be parked in the runtime; do not wait for a key press.
    rt.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)),
        Err(e) => {
            eprintln!("airlock: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// Server settings from the command line.
pub fn server_config(a: &ServerArgs) -> airlock_server::ServerConfig {
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => airlock_server::TlsMode::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ if a.self_signed => airlock_server::TlsMode::SelfSigned,
        _ if a.insecure_http => airlock_server::TlsMode::InsecurePlainHttp,
        _ => airlock_server::TlsMode::Auto,
    };
    airlock_server::ServerConfig {
        listen: a.listen,
        data_dir: a.data_dir.clone(),
        database_url: a.database_url.clone(),
        tls,
        region: a.region.clone(),
        account_id: a.account_id.clone(),
        public_url: a.public_url.clone(),
        master_key_file: a.master_key_file.clone(),
        limits: airlock_server::Limits {
            max_connections: a.max_connections,
            max_connections_per_ip: a.max_connections_per_ip,
            header_timeout: std::time::Duration::from_secs(a.header_timeout_secs),
            max_header_bytes: usize::try_from(a.max_header_bytes).unwrap_or(usize::MAX),
            max_body_bytes: usize::try_from(a.max_body_bytes).unwrap_or(usize::MAX),
            ..Default::default()
        },
        minute: std::time::Duration::from_millis(a.test_minute_ms),
        recording: airlock_server::recording::RecordingConfig {
            url: a.recordings.clone(),
            s3_endpoint: a.s3_endpoint.clone(),
            s3_region: a.s3_region.clone(),
            spool_max_bytes: a.recording_spool_mb.saturating_mul(1024 * 1024),
            ..Default::default()
        },
        webhooks: airlock_server::events::WebhookSettings {
            retry_base: std::time::Duration::from_millis(a.test_webhook_retry_ms),
            allow_plain_http: a.allow_plain_http_webhooks,
            ..Default::default()
        },
        session_log: a
            .session_log
            .as_deref()
            .map(airlock_server::events::SessionLog::parse),
        ..Default::default()
    }
}

async fn run_server(a: ServerArgs) -> anyhow::Result<i32> {
    let server = airlock_server::start(server_config(&a)).await?;
    // With `--session-log -` standard output is the JSON-lines stream: the server's own
    // messages go to standard error, so every stdout line parses.
    let stream_on_stdout = a.session_log.as_deref() == Some("-");
    let say = |line: String| {
        if stream_on_stdout {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    say(format!("Airlock server listening on {}", server.url));
    if let (Some(fp), Some(path)) = (&server.tls_fingerprint, &server.tls_cert_path) {
        say(format!(
            "TLS certificate {} (SHA-256 fingerprint {fp})",
            path.display()
        ));
    }
    if let Some(b) = &server.bootstrap {
        say(format!(
            "Created the first admin user '{}'; its access key is in {} (readable by you only).",
            b.user_name,
            a.data_dir.join("admin-credentials.json").display()
        ));
    }
    shutdown_signal().await;
    say("Stopping…".to_owned());
    server.shutdown().await;
    Ok(0)
}

async fn agent_register(a: AgentRegisterArgs, format: Format) -> anyhow::Result<i32> {
    let path = a
        .state
        .unwrap_or_else(airlock_agent::state::default_state_path);
    if path.exists() && !a.force {
        anyhow::bail!(
            "{} already holds a registration; pass --force to replace it",
            path.display()
        );
    }
    let state = airlock_agent::register(&airlock_agent::Registration {
        server: a.server,
        activation_id: a.activation_id,
        activation_code: a.activation_code,
        ca_file: a.ca_file,
    })
    .await?;
    state.save(&path)?;
    match format {
        Format::Json => println!(
            "{}",
            serde_json::json!({ "InstanceId": state.instance_id, "StateFile": path })
        ),
        Format::Text => println!(
            "Registered as {} (state in {}). Start it with: airlock agent run",
            state.instance_id,
            path.display()
        ),
    }
    Ok(0)
}

async fn agent_run(a: AgentRunArgs) -> anyhow::Result<i32> {
    let path = a
        .state
        .unwrap_or_else(airlock_agent::state::default_state_path);
    let state = airlock_agent::AgentState::load(&path)?;
    let destinations = airlock_agent::destinations::DestinationRules::new(
        &a.allow_destination,
        &a.deny_destination,
    )?;
    let config = airlock_agent::AgentConfig {
        run_as: a.run_as,
        allow_root_sessions: a.allow_root_sessions,
        destinations: std::sync::Arc::new(destinations),
        ..Default::default()
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        c2.cancel();
    });
    airlock_agent::run(state, config, cancel).await?;
    Ok(0)
}
