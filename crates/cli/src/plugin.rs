//! `airlock` as `session-manager-plugin`: the AWS CLI runs the plugin after its own
//! StartSession call, with the argument layout of protocol.md §1.2, so putting `airlock` on
//! PATH under that name lets `aws ssm start-session --endpoint-url …` use Airlock's client.

use std::path::Path;

use airlock_client::{ApiClient, Profile, StreamGrant};

/// Whether this process was started as the plugin (by name, or by its argument layout).
pub fn is_plugin_invocation(args: &[String]) -> bool {
    let by_name = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == "session-manager-plugin");
    let by_layout = args.len() >= 4 && args.get(3).is_some_and(|a| a == "StartSession");
    by_name || by_layout
}

fn aws_credentials(profile: &str) -> Option<(String, String)> {
    if let (Ok(id), Ok(secret)) = (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        return Some((id, secret));
    }
    let home = std::env::var_os("HOME")?;
    let path = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(&home).join(".aws").join("credentials"));
    let text = std::fs::read_to_string(path).ok()?;
    let want = if profile.is_empty() {
        "default"
    } else {
        profile
    };
    let mut current = String::new();
    let (mut id, mut secret) = (None, None);
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = n.trim().to_owned();
        } else if current == want {
            if let Some((k, v)) = line.split_once('=') {
                match k.trim() {
                    "aws_access_key_id" => id = Some(v.trim().to_owned()),
                    "aws_secret_access_key" => secret = Some(v.trim().to_owned()),
                    _ => {}
                }
            }
        }
    }
    Some((id?, secret?))
}

/// Runs a shell session handed over by the AWS CLI.
pub async fn main(args: Vec<String>) -> anyhow::Result<i32> {
    match args.len() {
        1 => {
            println!("\nThe Session Manager plugin (Airlock) was installed successfully. Use the AWS CLI to start a session.\n");
            return Ok(0);
        }
        2 if args.get(1).is_some_and(|a| a == "--version") => {
            println!("1.2.9999.0");
            return Ok(0);
        }
        _ => {}
    }
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let mut response = arg(1);
    if response.starts_with("AWS_SSM_START_SESSION_RESPONSE") {
        let name = response.clone();
        response = std::env::var(&name)
            .map_err(|_| anyhow::anyhow!("environment variable {name} is not set"))?;
        std::env::remove_var(&name);
    }
    let grant: StreamGrant = serde_json::from_str(&response)
        .map_err(|e| anyhow::anyhow!("cannot read the StartSession response: {e}"))?;
    let region = if arg(2).is_empty() {
        "us-east-1".to_owned()
    } else {
        arg(2)
    };
    let params: serde_json::Value = serde_json::from_str(&arg(5)).unwrap_or_default();
    if params.get("Target").and_then(|t| t.as_str()).is_none() && args.len() > 5 {
        anyhow::bail!("the request parameters carry no Target");
    }
    let endpoint = arg(6);
    let (access_key_id, secret_access_key) = aws_credentials(&arg(4)).unwrap_or_default();
    let session_token = std::env::var("AWS_SESSION_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let api = ApiClient::new(Profile {
        endpoint: if endpoint.is_empty() {
            format!("https://ssm.{region}.amazonaws.com")
        } else {
            endpoint
        },
        access_key_id,
        secret_access_key,
        region,
        ca_file: std::env::var_os("AIRLOCK_CA_FILE").map(Into::into),
        session_token,
    })?;
    println!("\nStarting session with SessionId: {}\n", grant.session_id);
    let session_id = grant.session_id.clone();
    let outcome = crate::session::attach(grant, api).await?;
    if outcome.reason.is_empty() {
        println!("\n\nExiting session with sessionId: {session_id}.\n");
    } else {
        println!("\n\nSessionId: {session_id} : {}\n", outcome.reason);
    }
    // Like the real plugin: a session that closed normally is a success for the AWS CLI
    // (which reports any other status as its own failure); the remote status is not passed on.
    let _ = outcome.exit_code;
    Ok(0)
}
