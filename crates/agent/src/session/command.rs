//! Command sessions: the `InteractiveCommands` and `NonInteractiveCommands` session types
//! (protocol.md §8.1). The document's `properties.linux.commands` (parameters already
//! substituted by the server) runs as `$SHELL -c <commands>` for the run-as user, in the
//! login environment shells get, as the leader of its own process group:
//!
//! - interactive: in a real PTY, exactly as a shell session's terminal (input, resize);
//! - non-interactive: on pipes. With `separateOutputStream` stdout goes as PT 1 Output,
//!   stderr as PT 11 StdErr and the exit status as PT 12 `EXIT_CODE: <n>`; without it both
//!   streams share one pipe (their order kept) and go as Output. An AWS client's input is
//!   not the command's stdin: its control characters become signals and the rest is dropped,
//!   as the AWS agent does; an Airlock client that negotiated `no_pty` feeds stdin instead,
//!   ending it with its input-EOF flag.
//!
//! This is also where a `Standard_Stream` document's `shellProfile` is read.

use std::process::Stdio;

use nix::sys::signal::Signal;
use serde_json::Value;

use super::shell::{Input, Shell, ShellError};
use crate::runas::RunAs;

/// What a command session runs, from its document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandSpec {
    /// In a PTY (`InteractiveCommands`) or on pipes (`NonInteractiveCommands`).
    pub interactive: bool,
    /// The shell command line.
    pub commands: String,
    /// Non-interactive only: stderr as StdErr and the exit status as ExitCode.
    pub separate_output: bool,
}

impl CommandSpec {
    /// The session type named in the HandshakeRequest (protocol.md §5).
    pub fn session_type(&self) -> &'static str {
        if self.interactive {
            "InteractiveCommands"
        } else {
            "NonInteractiveCommands"
        }
    }

    /// The command of a command document; `Ok(None)` for other session types, an error for
    /// a command document without a command (the server validates, but the agent trusts
    /// nothing it did not check).
    pub fn from_document(doc: &Value) -> Result<Option<CommandSpec>, String> {
        let interactive = match doc.get("sessionType").and_then(Value::as_str) {
            Some("InteractiveCommands") => true,
            Some("NonInteractiveCommands") => false,
            _ => return Ok(None),
        };
        let linux = doc.get("properties").and_then(|p| p.get("linux"));
        let commands = linux
            .and_then(|l| l.get("commands"))
            .and_then(Value::as_str)
            .filter(|c| !c.trim().is_empty())
            .ok_or("the command document names no command (properties.linux.commands)")?;
        if commands.contains('\0') {
            return Err("the command contains a NUL byte".into());
        }
        // AWS documents carry the flag as the string "true"; ours as a boolean.
        let separate_output = !interactive
            && match linux.and_then(|l| l.get("separateOutputStream")) {
                Some(Value::Bool(b)) => *b,
                Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
                _ => false,
            };
        Ok(Some(CommandSpec {
            interactive,
            commands: commands.to_owned(),
            separate_output,
        }))
    }
}

/// `inputs.shellProfile.linux` of a `Standard_Stream` document, when it says anything.
pub fn shell_profile(doc: &Value) -> Option<String> {
    doc.get("inputs")
        .and_then(|i| i.get("shellProfile"))
        .and_then(|p| p.get("linux"))
        .and_then(Value::as_str)
        .filter(|p| !p.trim().is_empty())
        .map(str::to_owned)
}

/// The signal a client's keystroke stands for in a session without a terminal (the AWS
/// plugin sends Ctrl-C, Ctrl-\ and Ctrl-Z as bytes, protocol.md §8.1); the first one wins.
pub fn control_signal(data: &[u8]) -> Option<Signal> {
    data.iter().find_map(|b| match b {
        0x03 => Some(Signal::SIGINT),
        0x1c => Some(Signal::SIGQUIT),
        0x1a => Some(Signal::SIGTSTP),
        _ => None,
    })
}

/// Starts a non-interactive command on pipes. `stdin`: the client feeds the command's input
/// (an Airlock client with `no_pty`); otherwise stdin is `/dev/null` and input bytes only
/// signal.
pub fn spawn_pipes(user: &RunAs, spec: &CommandSpec, stdin: bool) -> Result<Shell, ShellError> {
    let spawn_err = |e: std::io::Error| ShellError::Spawn(e.to_string());
    let mut cmd = tokio::process::Command::new(&user.shell);
    cmd.arg("-c")
        .arg(&spec.commands)
        .env_clear()
        .envs(super::shell::environment(user, false))
        .current_dir(if user.home.is_dir() {
            user.home.clone()
        } else {
            "/".into()
        })
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .process_group(0)
        .kill_on_drop(true);
    // Merged output shares one pipe, so the interleaving the command wrote is the one sent.
    let merged = if spec.separate_output {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        None
    } else {
        let (reader, writer) = std::io::pipe().map_err(spawn_err)?;
        let writer2 = writer.try_clone().map_err(spawn_err)?;
        cmd.stdout(Stdio::from(writer)).stderr(Stdio::from(writer2));
        Some(reader)
    };
    if user.switch {
        cmd.uid(user.uid).gid(user.gid);
    }
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // Our copies of the write ends go with the command builder: end of file must come when
    // the command's side closes.
    drop(cmd);
    let (output, stderr): (
        Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    ) = match merged {
        Some(reader) => {
            let fd = std::os::fd::OwnedFd::from(reader);
            let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map_err(spawn_err)?;
            (Box::new(rx), None)
        }
        None => match (child.stdout.take(), child.stderr.take()) {
            (Some(out), Some(err)) => (Box::new(out), Some(Box::new(err))),
            _ => return Err(ShellError::Spawn("pipes missing".into())),
        },
    };
    let input = match child.stdin.take() {
        Some(w) => Input::Pipe(w),
        None => Input::Signals,
    };
    let group = child.id().and_then(|p| i32::try_from(p).ok());
    Ok(Shell {
        output,
        stderr,
        input,
        child,
        group,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_are_read_as_aws_and_airlock_write_them() {
        let aws = json!({"sessionType":"NonInteractiveCommands",
            "properties":{"linux":{"commands":"ls","separateOutputStream":"true"}}});
        let spec = CommandSpec::from_document(&aws).unwrap().unwrap();
        assert!(spec.separate_output && !spec.interactive);
        assert_eq!(spec.session_type(), "NonInteractiveCommands");
        let ours = json!({"sessionType":"InteractiveCommands",
            "properties":{"linux":{"commands":"top","separateOutputStream":true}}});
        let spec = CommandSpec::from_document(&ours).unwrap().unwrap();
        assert!(
            spec.interactive && !spec.separate_output,
            "a PTY has one stream"
        );
        assert_eq!(
            CommandSpec::from_document(&json!({"sessionType":"Standard_Stream"})).unwrap(),
            None
        );
        for bad in [
            json!({"sessionType":"NonInteractiveCommands"}),
            json!({"sessionType":"NonInteractiveCommands","properties":{"linux":{"commands":"  "}}}),
            json!({"sessionType":"InteractiveCommands","properties":{"linux":{"commands":7}}}),
            json!({"sessionType":"InteractiveCommands","properties":{"linux":{"commands":"a\u{0}b"}}}),
        ] {
            assert!(CommandSpec::from_document(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn control_characters_map_to_signals() {
        assert_eq!(control_signal(b"abc"), None);
        assert_eq!(control_signal(b"x\x03y\x1c"), Some(Signal::SIGINT));
        assert_eq!(control_signal(b"\x1c"), Some(Signal::SIGQUIT));
        assert_eq!(control_signal(b"\x1a"), Some(Signal::SIGTSTP));
    }

    #[test]
    fn shell_profile_only_when_it_says_something() {
        let doc = json!({"inputs":{"shellProfile":{"linux":"export A=1"}}});
        assert_eq!(shell_profile(&doc).as_deref(), Some("export A=1"));
        assert_eq!(
            shell_profile(&json!({"inputs":{"shellProfile":{"linux":" "}}})),
            None
        );
        assert_eq!(shell_profile(&json!({})), None);
    }
}
