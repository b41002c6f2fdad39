//! `airlock exec`: runs one command on one host (stdout to stdout, stderr to stderr, the
//! remote exit status as ours, stdin forwarded when it is not a terminal), or on many hosts at
//! once (`--targets tag:Environment=staging,mi-…`): a bounded number at a time, each line
//! prefixed with its host (or one JSON object per host), a summary on stderr, and a status of
//! 0 only when every host ran the command and it succeeded. A host that fails (offline,
//! refused, non-zero) never stops the others.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};

use airlock_client::command::{self, CommandRequest};
use airlock_client::session::{Input, Output, SessionOptions};
use airlock_client::{ApiClient, Profile};

use crate::Format;

/// `airlock exec`.
#[derive(Args, Debug)]
pub struct ExecArgs {
    /// One instance (mi-…): its output goes to stdout/stderr unchanged.
    #[arg(short = 't', long, conflicts_with = "targets")]
    pub target: Option<String>,
    /// Many hosts: instance ids and `tag:KEY=VALUE` selectors, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', value_name = "ID|tag:KEY=VALUE")]
    pub targets: Vec<String>,
    /// Hosts running the command at once (fan-out).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Run in a PTY (AWS-StartInteractiveCommand): for programs that want a terminal.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// A shell command line, run as written (instead of ARGS, which are quoted one by one).
    #[arg(short = 'c', long, conflicts_with = "args")]
    pub command: Option<String>,
    /// Why you are running it (recorded).
    #[arg(long)]
    pub reason: Option<String>,
    /// The command and its arguments, each passed as one word.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub args: Vec<String>,
}

/// `airlock exec`.
pub async fn exec(a: ExecArgs, format: Format) -> anyhow::Result<i32> {
    let line = match (&a.command, a.args.is_empty()) {
        (Some(c), _) => c.clone(),
        (None, false) => command::join_args(&a.args),
        (None, true) => anyhow::bail!("name a command: airlock exec --target ID -- CMD ARGS…"),
    };
    let api = ApiClient::new(Profile::load()?)?;
    match (&a.target, format) {
        (Some(t), Format::Text) => single(&api, t, &line, &a).await,
        (Some(t), Format::Json) => fan_out(&api, vec![t.clone()], &line, &a, format).await,
        (None, _) if a.targets.is_empty() => {
            anyhow::bail!("name the hosts: --target ID, or --targets ID,…|tag:KEY=VALUE")
        }
        (None, _) => {
            let targets = resolve(&api, &a.targets).await?;
            fan_out(&api, targets, &line, &a, format).await
        }
    }
}

/// One host, its streams passed through; Ctrl-C ends the remote command too.
async fn single(api: &ApiClient, target: &str, line: &str, a: &ExecArgs) -> anyhow::Result<i32> {
    let req = CommandRequest {
        target: target.to_owned(),
        command: line.to_owned(),
        interactive: a.interactive,
        reason: a.reason.clone(),
    };
    let grant = command::start(api, &req).await?;
    let session_id = grant.session_id.clone();
    if a.interactive {
        // The terminal (raw mode, size, keys) is a shell session's.
        let run = crate::session::attach(grant, api.clone());
        let outcome = run.await?;
        return outcome.exit_code.ok_or_else(|| {
            anyhow::anyhow!(
                "the session ended without an exit status: {}",
                outcome.reason
            )
        });
    }
    let opts = SessionOptions {
        no_pty: true,
        tls: api.tls(),
        api: Some(api.clone()),
        ..Default::default()
    };
    let (in_tx, in_rx) = mpsc::channel::<Input>(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(64);
    // A terminal's keys are not the command's input (as `ssh host cmd` with -n).
    let stdin_task = if std::io::stdin().is_terminal() {
        let _ = in_tx.try_send(Input::Eof);
        None
    } else {
        Some(tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = in_tx.send(Input::Eof).await;
                        break;
                    }
                    Ok(n) => {
                        let chunk = Bytes::copy_from_slice(&buf[..n]);
                        if in_tx.send(Input::Data(chunk)).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }))
    };
    let out_task = tokio::spawn(async move {
        let (mut stdout, mut stderr) = (tokio::io::stdout(), tokio::io::stderr());
        while let Some(o) = out_rx.recv().await {
            let r = match o {
                Output::Stdout(b) => stdout.write_all(&b).await.and(stdout.flush().await),
                Output::Stderr(b) => stderr.write_all(&b).await.and(stderr.flush().await),
            };
            if r.is_err() {
                break;
            }
        }
    });
    let result = tokio::select! {
        r = airlock_client::session::run(grant, opts, in_rx, out_tx) => r,
        _ = crate::shutdown_signal() => {
            let _ = api.terminate_session(&session_id).await;
            eprintln!("airlock: interrupted; session {session_id} terminated");
            return Ok(130);
        }
    };
    let _ = out_task.await;
    if let Some(t) = stdin_task {
        t.abort();
    }
    let outcome = result?;
    outcome.exit_code.ok_or_else(|| {
        anyhow::anyhow!(
            "the session ended without an exit status{}",
            if outcome.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", outcome.reason)
            }
        )
    })
}

/// The instance ids `specs` name: ids as given, `tag:KEY=VALUE` through
/// DescribeInstanceInformation's tag filter (so only instances the caller may see), in order,
/// each once.
pub async fn resolve(api: &ApiClient, specs: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for spec in specs.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let ids = match spec.strip_prefix("tag:") {
            Some(tag) => {
                let (key, value) = tag
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .with_context(|| format!("{spec}: a tag selector is tag:KEY=VALUE"))?;
                let input = json!({
                    "MaxResults": 50,
                    "Filters": [{ "Key": format!("tag:{key}"), "Values": [value] }],
                });
                let found = crate::admin::fetch_pages(
                    api,
                    "AmazonSSM.DescribeInstanceInformation",
                    input,
                    "InstanceInformationList",
                    None,
                )
                .await?
                .items;
                if found.is_empty() {
                    eprintln!("airlock: no instance you may see has the tag {key}={value}");
                }
                found
                    .iter()
                    .filter_map(|i| i["InstanceId"].as_str().map(str::to_owned))
                    .collect()
            }
            None => vec![spec.to_owned()],
        };
        for id in ids {
            if seen.insert(id.clone()) {
                out.push(id);
            }
        }
    }
    if out.is_empty() {
        anyhow::bail!("no target matched {}", specs.join(","));
    }
    Ok(out)
}

/// How one host's run ended.
struct HostResult {
    target: String,
    exit_code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    duration_ms: u128,
    error: Option<String>,
}

/// Many hosts, `--concurrency` at a time; returns 0 only if every one exited 0.
async fn fan_out(
    api: &ApiClient,
    targets: Vec<String>,
    line: &str,
    a: &ExecArgs,
    format: Format,
) -> anyhow::Result<i32> {
    let slots = Arc::new(Semaphore::new(usize::try_from(a.concurrency).unwrap_or(16)));
    let json = format == Format::Json;
    // Sessions open now, so that Ctrl-C ends the remote commands too.
    let open: OpenSessions = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    for target in targets {
        let req = CommandRequest {
            target,
            command: line.to_owned(),
            interactive: a.interactive,
            reason: a.reason.clone(),
        };
        let (api, slots, open) = (api.clone(), slots.clone(), open.clone());
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let r = one_host(&api, req, json, &open).await;
            if json {
                print_json(&r);
            }
            r
        });
    }
    let (mut ok, mut failed) = (0usize, Vec::new());
    loop {
        let r = tokio::select! {
            r = tasks.join_next() => match r {
                Some(r) => r.context("a host's task failed")?,
                None => break,
            },
            _ = crate::shutdown_signal() => {
                tasks.abort_all();
                let ids: Vec<String> = open.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
                let mut ends = tokio::task::JoinSet::new();
                for id in ids.clone() {
                    let api = api.clone();
                    ends.spawn(async move { api.terminate_session(&id).await });
                }
                while ends.join_next().await.is_some() {}
                eprintln!("airlock: interrupted; {} running session(s) terminated, {ok} host(s) had finished", ids.len());
                return Ok(130);
            }
        };
        match (&r.error, r.exit_code) {
            (None, Some(0)) => ok += 1,
            (Some(e), _) => failed.push(format!("{}: {e}", r.target)),
            (None, code) => failed.push(format!(
                "{}: exit {}",
                r.target,
                code.map_or("?".into(), |c| c.to_string())
            )),
        }
    }
    failed.sort();
    let mut summary = format!("{ok} ok, {} failed", failed.len());
    if !failed.is_empty() {
        summary.push_str(&format!(" ({})", failed.join("; ")));
    }
    eprintln!("{summary}");
    Ok(if failed.is_empty() { 0 } else { 1 })
}

/// Runs the command on one host; in text mode prints its lines, prefixed, as they come.
/// The ids of the sessions a fan-out has open.
type OpenSessions = Arc<std::sync::Mutex<HashSet<String>>>;

async fn one_host(
    api: &ApiClient,
    req: CommandRequest,
    json: bool,
    open: &OpenSessions,
) -> HostResult {
    let started = Instant::now();
    let target = req.target.clone();
    let (in_tx, in_rx) = mpsc::channel(1);
    let _ = in_tx.try_send(Input::Eof);
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(64);
    let prefix = format!("{target}: ");
    let collect = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(o) = out_rx.recv().await {
            match o {
                Output::Stdout(b) => {
                    out.extend_from_slice(&b);
                    if !json {
                        print_lines(&prefix, &mut out, false, false);
                    }
                }
                Output::Stderr(b) => {
                    err.extend_from_slice(&b);
                    if !json {
                        print_lines(&prefix, &mut err, true, false);
                    }
                }
            }
        }
        if !json {
            print_lines(&prefix, &mut out, false, true);
            print_lines(&prefix, &mut err, true, true);
        }
        (out, err)
    };
    let run = async {
        let grant = command::start(api, &req).await?;
        let id = grant.session_id.clone();
        open.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone());
        let opts = SessionOptions {
            no_pty: !req.interactive,
            tls: api.tls(),
            api: Some(api.clone()),
            ..Default::default()
        };
        let r = airlock_client::session::run(grant, opts, in_rx, out_tx).await;
        open.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        let outcome = r?;
        outcome
            .exit_code
            .ok_or(command::CommandError::NoExitStatus(outcome.reason))
    };
    let (result, (stdout, stderr)) = tokio::join!(run, collect);
    drop(in_tx);
    let (exit_code, error) = match result {
        Ok(code) => (Some(code), None),
        Err(e) => (None, Some(e.to_string())),
    };
    HostResult {
        target,
        exit_code,
        stdout,
        stderr,
        duration_ms: started.elapsed().as_millis(),
        error,
    }
}

/// Prints the complete lines of `buf` with `prefix` (a last partial line too when `all`),
/// leaving the rest in `buf`. Each line goes in one write, so hosts never interleave within
/// a line.
fn print_lines(prefix: &str, buf: &mut Vec<u8>, to_stderr: bool, all: bool) {
    let upto = if all {
        buf.len()
    } else {
        match buf.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => return,
        }
    };
    if upto == 0 {
        return;
    }
    let mut text = Vec::with_capacity(upto + prefix.len() * 4);
    for l in buf[..upto].split_inclusive(|&b| b == b'\n') {
        text.extend_from_slice(prefix.as_bytes());
        text.extend_from_slice(l);
        if l.last() != Some(&b'\n') {
            text.push(b'\n');
        }
    }
    buf.drain(..upto);
    let _ = if to_stderr {
        std::io::stderr().lock().write_all(&text)
    } else {
        std::io::stdout().lock().write_all(&text)
    };
}

fn print_json(r: &HostResult) {
    let v: Value = json!({
        "target": r.target,
        "exit_code": r.exit_code,
        "stdout": String::from_utf8_lossy(&r.stdout),
        "stderr": String::from_utf8_lossy(&r.stderr),
        "duration_ms": r.duration_ms,
        "error": r.error,
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}
