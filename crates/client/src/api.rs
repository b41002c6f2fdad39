//! The SigV4-signed API client: AWS JSON 1.1 calls to an Airlock (or AWS) endpoint, with
//! typed wrappers for the session operations and the port-connection record.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::config::Profile;

/// Errors of an API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server answered with an AWS-shaped error.
    #[error("{code}: {message}")]
    Service {
        /// HTTP status.
        status: u16,
        /// AWS error code (`__type`).
        code: String,
        /// Message.
        message: String,
    },
    /// The request could not be made or the answer read.
    #[error("request to {endpoint} failed: {message}")]
    Transport {
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// TLS set-up failed.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// What StartSession and ResumeSession return.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct StreamGrant {
    /// The session.
    pub session_id: String,
    /// Single-use data-channel token.
    pub token_value: String,
    /// Where to open the data channel.
    pub stream_url: String,
}

/// Filters and paging of `Airlock.ListPortConnections`; `None` fields are left out (no filter,
/// the server's default page size, the first page).
#[derive(Clone, Debug, Default, serde::Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ListPortConnectionsInput {
    /// Only this session's connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Only connections through this managed instance (`mi-…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Only sessions of this user (a user name or a principal ARN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Only connections started at or after this time (epoch seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<f64>,
    /// Only connections started at or before this time (epoch seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<f64>,
    /// Largest page (1–1000; the server's default is 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_results: Option<u32>,
    /// Where the previous page stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// One connection a port session forwarded, as the server recorded it when it ended.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortConnectionInfo {
    /// The session that carried it.
    pub session_id: String,
    /// The managed instance the session ran on.
    pub target: String,
    /// Who ran the session (principal ARN).
    pub owner: String,
    /// Stream id within the session.
    pub stream_id: u64,
    /// `host:port` the agent connected to.
    pub destination: String,
    /// How the session carried it: `airlock-mux`, `smux`, `basic` or `stream`.
    pub mode: String,
    /// Bytes from the client to the destination.
    pub bytes_to_target: u64,
    /// Bytes from the destination to the client.
    pub bytes_from_target: u64,
    /// When it started (epoch seconds).
    pub start_date: f64,
    /// When it ended (epoch seconds).
    pub end_date: f64,
    /// How long it lasted, in milliseconds.
    pub duration_ms: u64,
    /// How it ended (`closed`, `session ended`, or the error).
    pub end_reason: String,
    /// Whether it ended in an error.
    pub failed: bool,
}

/// One page of `Airlock.ListPortConnections`, newest first.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ListPortConnectionsOutput {
    /// The records of this page.
    pub connections: Vec<PortConnectionInfo>,
    /// Set when there are more: pass it back as `next_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// A signing client for one profile.
#[derive(Clone, Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    profile: Profile,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl ApiClient {
    /// Builds a client (TLS trusting the profile's CA file, when set).
    pub fn new(profile: Profile) -> Result<ApiClient, ApiError> {
        let tls = if profile.endpoint.starts_with("https://") {
            Some(crate::tls::client_config(profile.ca_file.as_deref())?)
        } else {
            None
        };
        let mut builder = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")));
        match &tls {
            Some(cfg) => builder = builder.use_preconfigured_tls((**cfg).clone()),
            // A plain-HTTP endpoint (loopback) needs no roots: without this reqwest reads the
            // whole system store (the bundle, then every file of /etc/ssl/certs) at every
            // start, about 4.5 ms of a 23 ms `airlock exec … -- true`.
            None => builder = builder.tls_built_in_root_certs(false),
        }
        let http = builder.build().map_err(|e| ApiError::Transport {
            endpoint: profile.endpoint.clone(),
            message: e.to_string(),
        })?;
        Ok(ApiClient { http, profile, tls })
    }

    /// The profile in use.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// TLS settings for data channels to the same server.
    pub fn tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.clone()
    }

    /// Calls `<target>` (e.g. `AmazonSSM.StartSession`) with a JSON body.
    pub async fn call(&self, target: &str, body: &Value) -> Result<Value, ApiError> {
        let endpoint = self.profile.endpoint.trim_end_matches('/').to_owned();
        let transport = |message: String| ApiError::Transport {
            endpoint: endpoint.clone(),
            message,
        };
        let (host, port, tls) = crate::ws::host_port(&endpoint)
            .ok_or_else(|| transport("endpoint must be an http:// or https:// URL".into()))?;
        let default_port = if tls { 443 } else { 80 };
        let host_header = if port == default_port {
            host
        } else if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let payload = serde_json::to_vec(body).map_err(|e| transport(e.to_string()))?;
        let headers = vec![
            ("host".to_owned(), host_header),
            (
                "content-type".to_owned(),
                "application/x-amz-json-1.1".to_owned(),
            ),
            ("x-amz-target".to_owned(), target.to_owned()),
            // A fresh id per call, signed: two identical calls within one second (the
            // resolution of X-Amz-Date) still carry different signatures, so the server's
            // refusal of a replayed StartSession never refuses a second, genuine one.
            ("x-amz-invocation-id".to_owned(), invocation_id()),
        ];
        let creds = airlock_sigv4::Credentials {
            access_key_id: self.profile.access_key_id.clone(),
            secret_access_key: self.profile.secret_access_key.clone(),
            session_token: self.profile.session_token.clone(),
        };
        let req = airlock_sigv4::Request {
            method: "POST",
            path_and_query: "/",
            headers: &headers,
            body: &payload,
        };
        let signed = airlock_sigv4::sign(
            &req,
            &creds,
            &self.profile.region,
            "ssm",
            time::OffsetDateTime::now_utc(),
        )
        .map_err(|e| transport(format!("signing: {e}")))?;
        let mut rb = self.http.post(format!("{endpoint}/"));
        for (k, v) in headers.iter().skip(1).chain(signed.iter()) {
            rb = rb.header(k.as_str(), v.as_str());
        }
        let resp = rb
            .body(payload)
            .send()
            .await
            .map_err(|e| transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let header_code = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(':').next().unwrap_or(s).to_owned());
        let text = resp.text().await.map_err(|e| transport(e.to_string()))?;
        let value: Value = if text.is_empty() {
            json!({})
        } else {
            serde_json::from_str(&text).map_err(|e| {
                transport(format!(
                    "HTTP {status}: unreadable body ({e}): {}",
                    text.chars().take(200).collect::<String>()
                ))
            })?
        };
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let code = header_code
            .or_else(|| {
                value
                    .get("__type")
                    .and_then(|v| v.as_str())
                    .map(|s| s.rsplit('#').next().unwrap_or(s).to_owned())
            })
            .unwrap_or_else(|| format!("HTTP{status}"));
        let message = ["message", "Message"]
            .iter()
            .find_map(|k| value.get(*k).and_then(|v| v.as_str()))
            .unwrap_or("")
            .to_owned();
        Err(ApiError::Service {
            status,
            code,
            message,
        })
    }

    /// StartSession.
    pub async fn start_session(&self, input: &Value) -> Result<StreamGrant, ApiError> {
        let v = self.call("AmazonSSM.StartSession", input).await?;
        serde_json::from_value(v).map_err(|e| ApiError::Transport {
            endpoint: self.profile.endpoint.clone(),
            message: format!("unexpected StartSession answer: {e}"),
        })
    }

    /// ResumeSession.
    pub async fn resume_session(&self, session_id: &str) -> Result<StreamGrant, ApiError> {
        let v = self
            .call(
                "AmazonSSM.ResumeSession",
                &json!({ "SessionId": session_id }),
            )
            .await?;
        serde_json::from_value(v).map_err(|e| ApiError::Transport {
            endpoint: self.profile.endpoint.clone(),
            message: format!("unexpected ResumeSession answer: {e}"),
        })
    }

    /// `Airlock.ListPortConnections`: one page of the connections port sessions forwarded,
    /// so an SDK user can audit port forwarding and SSH traffic without parsing JSON.
    pub async fn list_port_connections(
        &self,
        input: &ListPortConnectionsInput,
    ) -> Result<ListPortConnectionsOutput, ApiError> {
        let body = serde_json::to_value(input).map_err(|e| ApiError::Transport {
            endpoint: self.profile.endpoint.clone(),
            message: format!("cannot encode the request: {e}"),
        })?;
        let v = self.call("Airlock.ListPortConnections", &body).await?;
        serde_json::from_value(v).map_err(|e| ApiError::Transport {
            endpoint: self.profile.endpoint.clone(),
            message: format!("unexpected ListPortConnections answer: {e}"),
        })
    }

    /// TerminateSession.
    pub async fn terminate_session(&self, session_id: &str) -> Result<(), ApiError> {
        self.call(
            "AmazonSSM.TerminateSession",
            &json!({ "SessionId": session_id }),
        )
        .await
        .map(|_| ())
    }
}

/// 128 random bits as hex, as the AWS SDKs' invocation ids are unique per call.
fn invocation_id() -> String {
    use rand::RngCore;
    let mut raw = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut raw);
    hex::encode(raw)
}
