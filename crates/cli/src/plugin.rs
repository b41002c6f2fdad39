//! `airlock` as `session-manager-plugin`: the AWS CLI runs the plugin after its own
//! StartSession call, with the argument layout of protocol.md §1.2, so putting `airlock` on
//! PATH under that name lets `aws ssm start-session --endpoint-url …` use Airlock's client.
//!
//! The request parameters (argv\[5\]) name the document, and so what the session is:
//! - `AWS-StartPortForwardingSession[ToRemoteHost]`: listen on `localPortNumber` (0 or absent:
//!   any free port) and carry every connection over the session, on the engine of `airlock
//!   port-forward`, printing the real plugin's lines; Ctrl-C tells the agent and exits 0;
//! - `AWS-StartSSHSession`: stdin and stdout are the connection, as `airlock ssh-proxy`;
//! - anything else: a shell.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use airlock_client::{ApiClient, Profile, StreamGrant};

/// What the AWS CLI asked the plugin to run, from the document of the request parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionKind {
    /// A shell (the default document, or any other).
    Shell,
    /// Port forwarding from a local TCP port (0: any free port).
    PortForward {
        /// `localPortNumber`.
        local_port: u16,
    },
    /// One connection on stdin/stdout (`AWS-StartSSHSession`).
    Stream,
}

/// The first value of document parameter `name` (the API form is a list of strings; a bare
/// string or number is taken too).
fn parameter(params: &Value, name: &str) -> Option<String> {
    let v = params.get("Parameters")?.get(name)?;
    let v = match v {
        Value::Array(items) => items.first()?,
        other => other,
    };
    match v {
        Value::String(s) => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads the session kind from the StartSession request parameters (argv\[5\]).
pub fn session_kind(params: &Value) -> anyhow::Result<SessionKind> {
    let document = params
        .get("DocumentName")
        .and_then(Value::as_str)
        .unwrap_or("");
    // A document may be named by ARN (`arn:aws:ssm:<region>::document/NAME`), as the server
    // accepts it.
    let document = document.rsplit('/').next().unwrap_or(document);
    match document {
        "AWS-StartPortForwardingSession" | "AWS-StartPortForwardingSessionToRemoteHost" => {
            if parameter(params, "localConnectionType").is_some_and(|t| t == "unix") {
                anyhow::bail!(
                    "localConnectionType unix is not supported by Airlock's plugin; forward a TCP port (localPortNumber)"
                );
            }
            let local_port = match parameter(params, "localPortNumber") {
                None => 0,
                Some(p) if p.is_empty() => 0,
                Some(p) => p.parse::<u16>().map_err(|_| {
                    anyhow::anyhow!(
                        "localPortNumber must be a port number from 0 to 65535 (0: any free port), not '{p}'"
                    )
                })?,
            };
            Ok(SessionKind::PortForward { local_port })
        }
        "AWS-StartSSHSession" => Ok(SessionKind::Stream),
        _ => Ok(SessionKind::Shell),
    }
}

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

/// Runs a session handed over by the AWS CLI: a shell, a port forward or an SSH stream.
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
    let params: Value = serde_json::from_str(&arg(5)).unwrap_or_default();
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
        // The AWS CLI trusted the endpoint through AWS_CA_BUNDLE: the data channel to the same
        // server must trust what it trusted.
        ca_file: ["AIRLOCK_CA_FILE", "AWS_CA_BUNDLE"]
            .into_iter()
            .find_map(|v| std::env::var_os(v).filter(|p| !p.is_empty()))
            .map(Into::into),
        session_token,
    })?;
    // Exactly the real plugin's line: for SSH it comes before the server's banner on stdout.
    print!("\nStarting session with SessionId: {}\n", grant.session_id);
    let session_id = grant.session_id.clone();
    let kind = match session_kind(&params) {
        Ok(k) => k,
        Err(e) => {
            // The AWS CLI started the session; do not leave it waiting for nobody.
            let _ = api.terminate_session(&session_id).await;
            return Err(e);
        }
    };
    match kind {
        SessionKind::Shell => {}
        SessionKind::Stream => return crate::port::stdio_stream(grant, api).await,
        SessionKind::PortForward { local_port } => {
            return port_forward(grant, api, local_port).await
        }
    }
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

/// Where the real plugin listens: `SSM_PLUGIN_LOCAL_HOST` when set, else the loopback address.
fn listen_host() -> String {
    match std::env::var("SSM_PLUGIN_LOCAL_HOST") {
        Ok(h) if !h.trim().is_empty() => h.trim().to_owned(),
        _ => "127.0.0.1".to_owned(),
    }
}

/// A port session as the real plugin runs it: listen, say where, serve every connection over
/// the session until Ctrl-C (or the session's end), then say goodbye and exit 0.
async fn port_forward(grant: StreamGrant, api: ApiClient, local_port: u16) -> anyhow::Result<i32> {
    let session_id = grant.session_id.clone();
    let host = listen_host();
    let listener = match tokio::net::TcpListener::bind((host.as_str(), local_port)).await {
        Ok(l) => l,
        Err(e) => {
            let _ = api.terminate_session(&session_id).await;
            return Err(e).with_context(|| {
                format!("cannot listen on {host}:{local_port} for session {session_id}")
            });
        }
    };
    let port = listener
        .local_addr()
        .map(|a: SocketAddr| a.port())
        .unwrap_or(local_port);
    print!("Port {port} opened for sessionId {session_id}.\nWaiting for connections...\n");
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    let signals = tokio::spawn(async move {
        crate::port::end_signal().await;
        println!("Terminate signal received, exiting.");
        on_signal.cancel();
    });
    let voice = crate::port::Voice::Plugin {
        session_id: session_id.clone(),
    };
    let served = crate::port::serve(grant, api, listener, stop, voice).await;
    signals.abort();
    let served = served?;
    if served.stopped || served.outcome.reason.is_empty() {
        println!("\n\nExiting session with sessionId: {session_id}.\n");
    } else {
        println!("\n\nSessionId: {session_id} : {}\n", served.outcome.reason);
    }
    Ok(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{session_kind, SessionKind};
    use serde_json::json;

    #[test]
    fn the_document_chooses_the_kind_of_session() {
        let kind = |v| session_kind(&v).map_err(|e| e.to_string());
        assert_eq!(kind(json!({"Target": "mi-1"})), Ok(SessionKind::Shell));
        assert_eq!(
            kind(
                json!({"Target": "mi-1", "DocumentName": "AWS-StartPortForwardingSession",
                "Parameters": {"portNumber": ["80"], "localPortNumber": ["8080"]}})
            ),
            Ok(SessionKind::PortForward { local_port: 8080 })
        );
        assert_eq!(
            kind(
                json!({"DocumentName": "AWS-StartPortForwardingSessionToRemoteHost",
                "Parameters": {"host": ["db"], "portNumber": ["5432"]}})
            ),
            Ok(SessionKind::PortForward { local_port: 0 })
        );
        assert_eq!(
            kind(json!({"DocumentName": "AWS-StartPortForwardingSession",
                "Parameters": {"localPortNumber": "0"}})),
            Ok(SessionKind::PortForward { local_port: 0 })
        );
        assert_eq!(
            kind(
                json!({"DocumentName": "AWS-StartSSHSession", "Parameters": {"portNumber": ["22"]}})
            ),
            Ok(SessionKind::Stream)
        );
        assert_eq!(
            kind(json!({"DocumentName": "arn:aws:ssm:us-east-1::document/AWS-StartSSHSession"})),
            Ok(SessionKind::Stream)
        );
        let bad = kind(json!({"DocumentName": "AWS-StartPortForwardingSession",
            "Parameters": {"localPortNumber": ["70000"]}}))
        .unwrap_err();
        assert!(bad.contains("not '70000'"), "{bad}");
        let unix = kind(json!({"DocumentName": "AWS-StartPortForwardingSession",
            "Parameters": {"localConnectionType": ["unix"], "localUnixSocket": ["/tmp/s"]}}))
        .unwrap_err();
        assert!(unix.contains("unix is not supported"), "{unix}");
    }
}
