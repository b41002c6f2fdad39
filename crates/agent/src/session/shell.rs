//! The shell process of a session: in a real PTY (interactive clients), or on pipes when the
//! client's input is not a terminal, as the run-as user, with a login environment. Command
//! sessions ([`super::command`]) run their command through the same spawners.

use std::process::Stdio;

use tokio::io::AsyncRead;

use crate::runas::RunAs;

/// A running shell and its byte streams.
pub struct Shell {
    /// The terminal's output, or the shell's stdout.
    pub output: Box<dyn AsyncRead + Send + Unpin>,
    /// The shell's stderr when on pipes (a PTY merges it into `output`).
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    pub(crate) input: Input,
    /// The process.
    pub child: tokio::process::Child,
    /// The process group the command leads (command sessions), signalled and killed as a
    /// whole so a pipeline's members go too; `None` for shells (their jobs are their own).
    pub(crate) group: Option<i32>,
}

impl Input {
    /// One write of at most `data.len()` bytes to the terminal or pipe; returns how many went.
    /// Cancel-safe (nothing is written unless it returns), so the session can wait for room
    /// in the pipe and for output at once.
    pub(crate) async fn write_some(&mut self, data: &[u8]) -> std::io::Result<usize> {
        use tokio::io::AsyncWriteExt;
        match self {
            Input::Pty(w) => w.write(data).await,
            Input::Pipe(w) => w.write(data).await,
            Input::Signals | Input::Closed => Ok(data.len()),
        }
    }
}

pub(crate) enum Input {
    Pty(pty_process::OwnedWritePty),
    Pipe(tokio::process::ChildStdin),
    /// A command that reads no input (NonInteractiveCommands with an AWS client): control
    /// characters in the client's bytes become signals to the command, the rest is dropped,
    /// as the AWS agent does.
    Signals,
    Closed,
}

impl Shell {
    /// Writes keystrokes or piped bytes; input after close is dropped.
    pub async fn write_input(&mut self, data: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        match &mut self.input {
            Input::Pty(w) => w.write_all(data).await,
            Input::Pipe(w) => w.write_all(data).await,
            Input::Signals => {
                if let Some(sig) = super::command::control_signal(data) {
                    self.signal(sig);
                }
                Ok(())
            }
            Input::Closed => Ok(()),
        }
    }

    /// Whether client bytes go to a file descriptor that can fill up (a terminal or a pipe),
    /// so the session must write them without stopping its other work.
    pub fn takes_bytes(&self) -> bool {
        matches!(self.input, Input::Pty(_) | Input::Pipe(_))
    }

    /// Sends `sig` to the command's process group (or to the shell alone when it leads none).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let target = self
            .group
            .or_else(|| self.child.id().and_then(|p| i32::try_from(p).ok()));
        let Some(pid) = target else { return };
        let pid = nix::unistd::Pid::from_raw(pid);
        let r = if self.group.is_some() {
            nix::sys::signal::killpg(pid, sig)
        } else {
            nix::sys::signal::kill(pid, sig)
        };
        if let Err(e) = r {
            tracing::debug!("signal {sig} failed: {e}");
        }
    }

    /// Ends the process (its whole group for commands) when the session closes under it.
    pub fn kill(&mut self) {
        if self.group.is_some() {
            self.signal(nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.start_kill();
    }

    /// Resizes the terminal (no-op on pipes).
    pub fn resize(&self, cols: u16, rows: u16) {
        if let Input::Pty(w) = &self.input {
            if let Err(e) = w.resize(pty_process::Size::new(rows, cols)) {
                tracing::debug!("resize failed: {e}");
            }
        }
    }

    /// Closes piped input so the shell sees end-of-file (a PTY stays open).
    pub fn close_input(&mut self) {
        if matches!(self.input, Input::Pipe(_)) {
            self.input = Input::Closed;
        }
    }
}

/// Errors starting a shell.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The PTY could not be opened or the process not started.
    #[error("could not start the shell: {0}")]
    Spawn(String),
}

fn login_arg0(user: &RunAs) -> String {
    let base = user
        .shell
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sh".into());
    format!("-{base}")
}

pub(crate) fn environment(user: &RunAs, term: bool) -> Vec<(String, String)> {
    let mut env = vec![
        ("HOME".to_owned(), user.home.display().to_string()),
        ("USER".to_owned(), user.name.clone()),
        ("LOGNAME".to_owned(), user.name.clone()),
        ("SHELL".to_owned(), user.shell.display().to_string()),
        (
            "PATH".to_owned(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        ),
        (
            "LANG".to_owned(),
            std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".to_owned()),
        ),
    ];
    if term {
        env.push(("TERM".to_owned(), "xterm-256color".to_owned()));
    }
    env
}

/// Starts a login shell in a new PTY of the given size.
pub fn spawn_pty(user: &RunAs, cols: u16, rows: u16) -> Result<Shell, ShellError> {
    spawn_pty_command(user, cols, rows, None)
}

/// Starts, in a new PTY of the given size, a login shell or, with `command`, the user's shell
/// running `command` (`$SHELL -c`, the login environment) as the leader of its own session.
pub fn spawn_pty_command(
    user: &RunAs,
    cols: u16,
    rows: u16,
    command: Option<&str>,
) -> Result<Shell, ShellError> {
    let err = |e: pty_process::Error| ShellError::Spawn(e.to_string());
    let (pty, pts) = pty_process::open().map_err(err)?;
    pty.resize(pty_process::Size::new(rows, cols))
        .map_err(err)?;
    let mut cmd = pty_process::Command::new(&user.shell);
    cmd = match command {
        Some(c) => cmd.arg("-c").arg(c),
        None => cmd.arg0(login_arg0(user)),
    };
    let mut cmd = cmd
        .env_clear()
        .envs(environment(user, true))
        .current_dir(if user.home.is_dir() {
            user.home.clone()
        } else {
            "/".into()
        })
        .kill_on_drop(true);
    if user.switch {
        cmd = cmd.uid(user.uid).gid(user.gid);
    }
    let child = cmd.spawn(pts).map_err(err)?;
    let (read, write) = pty.into_split();
    // The PTY's child calls setsid: it leads its own process group.
    let group = command.and(child.id()).and_then(|p| i32::try_from(p).ok());
    Ok(Shell {
        output: Box::new(read),
        stderr: None,
        input: Input::Pty(write),
        child,
        group,
    })
}

/// Starts a non-interactive login shell reading its commands from a pipe.
pub fn spawn_pipes(user: &RunAs) -> Result<Shell, ShellError> {
    let mut cmd = tokio::process::Command::new(&user.shell);
    cmd.arg0(login_arg0(user))
        .env_clear()
        .envs(environment(user, false))
        .current_dir(if user.home.is_dir() {
            user.home.clone()
        } else {
            "/".into()
        })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if user.switch {
        cmd.uid(user.uid).gid(user.gid);
    }
    let mut child = cmd.spawn().map_err(|e| ShellError::Spawn(e.to_string()))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(ShellError::Spawn("pipes missing".into()));
    };
    Ok(Shell {
        output: Box::new(stdout),
        stderr: Some(Box::new(stderr)),
        input: Input::Pipe(stdin),
        child,
        group: None,
    })
}

/// Exit status as a shell reports it: the code, or 128 + the signal.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}
