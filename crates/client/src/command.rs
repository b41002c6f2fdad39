//! Command sessions from the SDK: runs one command on a target through the AWS command
//! documents (`AWS-StartNonInteractiveCommand` with `separateOutputStream`, or
//! `AWS-StartInteractiveCommand` in a PTY) and the ordinary session code, to its end. Callers
//! either stream the output ([`stream`]) or collect it ([`run`]); both give the remote exit
//! status, which is what a script running commands on hosts needs and what a shell session
//! only reports in passing.

use tokio::sync::mpsc;

use crate::api::{ApiClient, ApiError, StreamGrant};
use crate::session::{Input, Output, SessionError, SessionOptions};

/// Runs one command in a PTY (parameter `command`).
pub const INTERACTIVE_DOCUMENT: &str = "AWS-StartInteractiveCommand";
/// Runs one command on pipes, stdout and stderr apart, with its exit status.
pub const NON_INTERACTIVE_DOCUMENT: &str = "AWS-StartNonInteractiveCommand";

/// One command to run on one target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandRequest {
    /// Instance id (mi-…).
    pub target: String,
    /// The shell command line (run as `$SHELL -c` on the host).
    pub command: String,
    /// In a PTY (`AWS-StartInteractiveCommand`): stderr merged into stdout.
    pub interactive: bool,
    /// Why (recorded with the session).
    pub reason: Option<String>,
}

impl CommandRequest {
    /// The StartSession request body.
    pub fn start_input(&self) -> serde_json::Value {
        let mut input = if self.interactive {
            serde_json::json!({
                "Target": self.target,
                "DocumentName": INTERACTIVE_DOCUMENT,
                "Parameters": { "command": [self.command] },
            })
        } else {
            serde_json::json!({
                "Target": self.target,
                "DocumentName": NON_INTERACTIVE_DOCUMENT,
                "Parameters": { "command": [self.command], "separateOutputStream": ["true"] },
            })
        };
        if let Some(r) = &self.reason {
            input["Reason"] = r.clone().into();
        }
        input
    }
}

/// What a command printed and how it ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// The remote exit status (128 + n for a command killed by signal n).
    pub exit_code: i32,
    /// Everything written to standard output (the terminal, for interactive commands).
    pub stdout: Vec<u8>,
    /// Everything written to standard error (empty for interactive commands).
    pub stderr: Vec<u8>,
}

/// Why a command did not run to an exit status.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// StartSession refused (no access, target offline, bad command …).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The session broke.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The session ended without an exit status (terminated, the agent went away).
    #[error("the session ended without an exit status{}", if .0.is_empty() { String::new() } else { format!(": {}", .0) })]
    NoExitStatus(String),
}

/// Starts the command's session (StartSession only).
pub async fn start(api: &ApiClient, req: &CommandRequest) -> Result<StreamGrant, ApiError> {
    api.start_session(&req.start_input()).await
}

/// Runs the command, sending its output to `output` as it arrives and `input` to its stdin
/// (non-interactive) or terminal (interactive), and returns its exit status. `opts` supplies
/// the channel limits; this sets the API client, TLS and `no_pty` itself.
pub async fn stream(
    api: &ApiClient,
    req: &CommandRequest,
    opts: SessionOptions,
    input: mpsc::Receiver<Input>,
    output: mpsc::Sender<Output>,
) -> Result<i32, CommandError> {
    let grant = start(api, req).await?;
    let opts = SessionOptions {
        no_pty: !req.interactive,
        tls: opts.tls.clone().or_else(|| api.tls()),
        api: Some(api.clone()),
        ..opts
    };
    let outcome = crate::session::run(grant, opts, input, output).await?;
    outcome
        .exit_code
        .ok_or(CommandError::NoExitStatus(outcome.reason))
}

/// Runs the command with no input and collects what it prints.
pub async fn run(api: &ApiClient, req: &CommandRequest) -> Result<CommandOutput, CommandError> {
    let (in_tx, in_rx) = mpsc::channel(1);
    let _ = in_tx.try_send(Input::Eof);
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(64);
    let collect = async move {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(o) = out_rx.recv().await {
            match o {
                Output::Stdout(b) => stdout.extend_from_slice(&b),
                Output::Stderr(b) => stderr.extend_from_slice(&b),
            }
        }
        (stdout, stderr)
    };
    let (code, (stdout, stderr)) = tokio::join!(
        stream(api, req, SessionOptions::default(), in_rx, out_tx),
        collect
    );
    drop(in_tx);
    Ok(CommandOutput {
        exit_code: code?,
        stdout,
        stderr,
    })
}

/// Quotes `arg` for a POSIX shell: unchanged when it holds only characters no shell treats
/// specially, else in single quotes (a `'` inside written as `'\''`). Joining quoted
/// arguments with spaces gives a command line that runs exactly those arguments.
pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./=:,@%+".contains(&b));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// The command line that runs `args` as given (each one quoted).
pub fn join_args<S: AsRef<str>>(args: &[S]) -> String {
    args.iter()
        .map(|a| shell_quote(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_every_argument_whole() {
        assert_eq!(shell_quote("echo"), "echo");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("$(id)"), "'$(id)'");
        assert_eq!(
            join_args(&["echo", "a b", ";", "x\ny"]),
            "echo 'a b' ';' 'x\ny'"
        );
        // The shell itself agrees.
        let args = ["printf", "%s|", "a b", "it's", "$HOME", "*", "\\", "\n", ""];
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(join_args(&args))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "a b|it's|$HOME|*|\\|\n||"
        );
    }

    #[test]
    fn start_input_names_the_aws_documents() {
        let req = CommandRequest {
            target: "mi-0123456789abcdef0".into(),
            command: "uptime".into(),
            ..Default::default()
        };
        let v = req.start_input();
        assert_eq!(v["DocumentName"], NON_INTERACTIVE_DOCUMENT);
        assert_eq!(v["Parameters"]["separateOutputStream"][0], "true");
        let v = CommandRequest {
            interactive: true,
            reason: Some("why".into()),
            ..req
        }
        .start_input();
        assert_eq!(v["DocumentName"], INTERACTIVE_DOCUMENT);
        assert_eq!(v["Parameters"]["command"][0], "uptime");
        assert_eq!(v["Reason"], "why");
    }
}
