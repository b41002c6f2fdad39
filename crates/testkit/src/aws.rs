//! The real AWS CLI in tests: found once (`$AIRLOCK_TEST_AWS`, which `scripts/test` installs,
//! else `aws`), run in an environment of the test's own (so a developer's profile, token,
//! endpoint or proxy never leaks in), with `airlock` as its `session-manager-plugin` when a
//! test needs one. One place, so every compatibility test runs the CLI the same way users do.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Whether the tests run under CI, where a missing tool fails a test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Fails (under CI) or says on stderr why a test cannot run here, and returns `None`.
pub fn missing<T>(what: &str) -> Option<T> {
    let msg = format!(
        "{what} is not available: run ./scripts/test (it installs boto3 and awscli in \
         target/pyenv) or set AIRLOCK_TEST_PYTHON / AIRLOCK_TEST_AWS"
    );
    if in_ci() {
        panic!("{msg}");
    }
    eprintln!("NOT RUN: {msg}");
    None
}

/// Whether `program args…` runs and exits 0 within 30 s.
pub async fn runs(program: &Path, args: &[&str]) -> bool {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    matches!(
        tokio::time::timeout(Duration::from_secs(30), child).await,
        Ok(Ok(s)) if s.success()
    )
}

/// The AWS CLI, or `None` outside CI when it is missing (under CI: a panic).
pub async fn aws_cli() -> Option<PathBuf> {
    let candidate = std::env::var_os("AIRLOCK_TEST_AWS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("aws"));
    if runs(&candidate, &["--version"]).await {
        Some(candidate)
    } else {
        missing(&format!("the aws CLI ({})", candidate.display()))
    }
}

/// Gives `cmd` a clean AWS environment under `home`: no profile, token, endpoint or proxy of
/// the caller's; config and credentials files that do not exist; no instance-metadata lookups;
/// no pager; region `us-east-1`; and the SDK's standard retries as users have them (so two
/// identical calls signed in the same second are retried with a fresh signature, see the
/// server's `replay.rs`, rather than failing a test by the clock).
pub fn clean_aws_env<'a>(
    cmd: &'a mut tokio::process::Command,
    home: &Path,
) -> &'a mut tokio::process::Command {
    for var in [
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SSM",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "https_proxy",
        "http_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home)
        .env("AWS_CONFIG_FILE", home.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("aws-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_RETRY_MODE", "standard")
        .env("AWS_MAX_ATTEMPTS", "3")
        .env("AWS_PAGER", "")
        .env("NO_PROXY", "127.0.0.1")
        .kill_on_drop(true)
}

/// A `PATH` on which `session-manager-plugin` is `airlock` (a link in `dir/bin`, made once),
/// ahead of the inherited `PATH`, so the AWS CLI runs Airlock as its plugin.
pub fn plugin_path(dir: &Path, airlock: &Path) -> String {
    let bin = dir.join("bin");
    let link = bin.join("session-manager-plugin");
    if !link.exists() {
        std::fs::create_dir_all(&bin).expect("a directory for the plugin link");
        std::os::unix::fs::symlink(airlock, &link).expect("the plugin link");
    }
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}
