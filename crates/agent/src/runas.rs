//! Who a session's shell runs as. As root the agent never hands out root: it uses the
//! configured run-as user, or creates the unprivileged `airlock-user`. Otherwise it runs
//! shells as its own user.

use std::path::PathBuf;

/// The default unprivileged account the agent creates when running as root.
pub const DEFAULT_RUN_AS: &str = "airlock-user";

/// Errors resolving the run-as user.
#[derive(Debug, thiserror::Error)]
pub enum RunAsError {
    /// The named user does not exist and may not be created.
    #[error("run-as user {0} does not exist")]
    NoSuchUser(String),
    /// Creating the default user failed.
    #[error("could not create user {user}: {message}")]
    Create {
        /// The user.
        user: String,
        /// What went wrong.
        message: String,
    },
    /// Root was asked for without being allowed.
    #[error("refusing to run sessions as root (set --allow-root-sessions to allow it)")]
    Root,
}

/// A resolved account to run a shell as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// Login name.
    pub name: String,
    /// Numeric uid.
    pub uid: u32,
    /// Numeric primary gid.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
    /// Login shell.
    pub shell: PathBuf,
    /// Whether the agent must switch to this user (it runs as root).
    pub switch: bool,
}

fn from_user(u: nix::unistd::User, switch: bool) -> RunAs {
    let shell = if u.shell.as_os_str().is_empty()
        || u.shell.ends_with("nologin")
        || u.shell.ends_with("false")
    {
        PathBuf::from("/bin/sh")
    } else {
        u.shell
    };
    RunAs {
        name: u.name,
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        home: u.dir,
        shell,
        switch,
    }
}

/// Resolves the account for a session. `requested` comes from the session (policy); `configured`
/// from the agent's settings.
pub fn resolve(
    requested: Option<&str>,
    configured: Option<&str>,
    allow_root: bool,
) -> Result<RunAs, RunAsError> {
    let me = nix::unistd::geteuid();
    if !me.is_root() {
        let user = nix::unistd::User::from_uid(me)
            .ok()
            .flatten()
            .ok_or_else(|| RunAsError::NoSuchUser(me.to_string()))?;
        return Ok(from_user(user, false));
    }
    let wanted = requested
        .filter(|r| !r.is_empty())
        .or(configured)
        .unwrap_or(DEFAULT_RUN_AS);
    let lookup = |name: &str| nix::unistd::User::from_name(name).ok().flatten();
    let user = match lookup(wanted) {
        Some(u) => u,
        None if wanted == DEFAULT_RUN_AS => {
            create_default_user()?;
            lookup(wanted).ok_or_else(|| RunAsError::NoSuchUser(wanted.to_owned()))?
        }
        None => return Err(RunAsError::NoSuchUser(wanted.to_owned())),
    };
    if user.uid.is_root() && !allow_root {
        return Err(RunAsError::Root);
    }
    Ok(from_user(user, true))
}

fn create_default_user() -> Result<(), RunAsError> {
    let err = |message: String| RunAsError::Create {
        user: DEFAULT_RUN_AS.to_owned(),
        message,
    };
    let shell = if std::path::Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let out = std::process::Command::new("useradd")
        .args([
            "--create-home",
            "--shell",
            shell,
            "--comment",
            "Airlock session user",
            DEFAULT_RUN_AS,
        ])
        .output()
        .map_err(|e| err(format!("useradd: {e}")))?;
    // Exit 9: it already exists (a concurrent session created it).
    if !out.status.success() && out.status.code() != Some(9) {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    tracing::info!("created the run-as user {DEFAULT_RUN_AS}");
    Ok(())
}

/// Resolves the run-as user a session asks for (from the `SSMSessionRunAs` principal tag).
/// Fails closed: the user must exist, may not be root, and an agent that is not root can only
/// run sessions as itself.
pub fn resolve_requested(name: &str) -> Result<RunAs, RunAsError> {
    let user = nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .ok_or_else(|| RunAsError::NoSuchUser(name.to_owned()))?;
    if user.uid.is_root() {
        return Err(RunAsError::Root);
    }
    let me = nix::unistd::geteuid();
    if me.is_root() {
        Ok(from_user(user, true))
    } else if user.uid == me {
        Ok(from_user(user, false))
    } else {
        Err(RunAsError::NoSuchUser(format!(
            "{name} (the agent does not run as root, so it can only run sessions as itself)"
        )))
    }
}
