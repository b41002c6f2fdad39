//! `airlock start-session`: an interactive shell in raw mode with resize forwarding (the
//! terminal restored on every path), or a streamed session when stdin is not a terminal.
//! Exits with the remote shell's status.

use std::io::IsTerminal;

use anyhow::Context;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use airlock_client::session::{run, Input, Output, SessionOptions};
use airlock_client::{ApiClient, Outcome, Profile, StreamGrant};

use crate::StartSessionArgs;

/// Restores the terminal when dropped (normal exit, error, or panic unwinding).
pub struct RawModeGuard;

impl RawModeGuard {
    /// Puts the terminal in raw mode: every key, Ctrl-C included, goes to the remote shell.
    pub fn enable() -> anyhow::Result<RawModeGuard> {
        crossterm::terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
        Ok(RawModeGuard)
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Builds the StartSession request body.
pub fn start_input(a: &StartSessionArgs) -> anyhow::Result<serde_json::Value> {
    let mut input = serde_json::json!({ "Target": a.target });
    if let Some(d) = &a.document_name {
        input["DocumentName"] = d.clone().into();
    }
    if let Some(r) = &a.reason {
        input["Reason"] = r.clone().into();
    }
    if let Some(p) = &a.parameters {
        let v: serde_json::Value = serde_json::from_str(p)
            .context("--parameters must be JSON such as {\"portNumber\":[\"80\"]}")?;
        input["Parameters"] = v;
    }
    Ok(input)
}

/// `airlock start-session`.
pub async fn start(a: StartSessionArgs) -> anyhow::Result<i32> {
    let profile = Profile::load()?;
    let api = ApiClient::new(profile)?;
    let grant = api.start_session(&start_input(&a)?).await?;
    let outcome = attach(grant, api).await?;
    if !outcome.reason.is_empty() {
        eprintln!("{}", outcome.reason);
    }
    // No exit status means the session was ended from outside (terminated, failed).
    Ok(outcome
        .exit_code
        .unwrap_or(if outcome.reason.is_empty() { 0 } else { 1 }))
}

/// Connects the local terminal or pipes to a granted session until it ends.
pub async fn attach(grant: StreamGrant, api: ApiClient) -> anyhow::Result<Outcome> {
    let interactive = std::io::stdin().is_terminal();
    let opts = SessionOptions {
        no_pty: !interactive,
        tls: api.tls(),
        api: Some(api),
        ..Default::default()
    };
    let (in_tx, in_rx) = mpsc::channel::<Input>(32);
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(64);
    let guard = if interactive {
        Some(RawModeGuard::enable()?)
    } else {
        None
    };

    if interactive {
        if let Ok((cols, rows)) = crossterm::terminal::size() {
            let _ = in_tx
                .send(Input::Size {
                    cols: cols.into(),
                    rows: rows.into(),
                })
                .await;
        }
        let tx = in_tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Ok((cols, rows)) = crossterm::terminal::size() {
                    if tx
                        .send(Input::Size {
                            cols: cols.into(),
                            rows: rows.into(),
                        })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        });
    }
    // stdin → session. A terminal is read in small chunks so keys go out at once.
    let chunk = if interactive { 1024 } else { 64 * 1024 };
    let stdin_task = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; chunk];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = in_tx.send(Input::Eof).await;
                    break;
                }
                Ok(n) => {
                    if in_tx
                        .send(Input::Data(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    // session → stdout/stderr.
    let out_task = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        let mut stderr = tokio::io::stderr();
        while let Some(chunk) = out_rx.recv().await {
            let r = match chunk {
                Output::Stdout(b) => {
                    async {
                        stdout.write_all(&b).await?;
                        stdout.flush().await
                    }
                    .await
                }
                Output::Stderr(b) => {
                    async {
                        stderr.write_all(&b).await?;
                        stderr.flush().await
                    }
                    .await
                }
            };
            if r.is_err() {
                break;
            }
        }
    });
    let result = run(grant, opts, in_rx, out_tx).await;
    let _ = out_task.await;
    stdin_task.abort();
    drop(guard);
    Ok(result?)
}
