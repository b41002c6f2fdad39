//! Request authentication: SigV4 verified against the signer's access key, as AWS does it,
//! with AWS's error codes so SDKs report them as they would against AWS.

use axum::http::request::Parts;

use crate::api::{ApiError, Caller};
use crate::state::AppState;

/// Verifies the SigV4 signature of an API request and returns who made it.
pub async fn authenticate(
    state: &AppState,
    parts: &Parts,
    body: &[u8],
    source_ip: std::net::IpAddr,
) -> Result<Caller, ApiError> {
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let req = airlock_sigv4::Request {
        method: parts.method.as_str(),
        path_and_query,
        headers: &headers,
        body,
    };
    let parsed = airlock_sigv4::parse(&req).map_err(sig_error)?;
    let (key, user) = state
        .store
        .access_key(&parsed.access_key_id)
        .await?
        .ok_or_else(unrecognized)?;
    if key.status != "Active" {
        return Err(unrecognized());
    }
    if parsed.session_token.is_some() {
        // Temporary credentials are not issued yet, so no token can be valid.
        return Err(unrecognized());
    }
    let cfg = airlock_sigv4::VerifyConfig {
        regions: std::slice::from_ref(&state.config.region),
        service: "ssm",
        max_skew: state.config.max_clock_skew,
        now: time::OffsetDateTime::now_utc(),
        normalize_path: true,
        allow_unsigned_session_token: false,
    };
    airlock_sigv4::verify(&req, &parsed, &key.secret_access_key, &cfg).map_err(sig_error)?;
    if let Err(e) = state.store.touch_access_key(&key.access_key_id).await {
        tracing::warn!("could not record key use: {e}");
    }
    Ok(Caller {
        arn: user_arn(&state.config.account_id, &user.name),
        access_key_id: key.access_key_id,
        user,
        source_ip,
    })
}

/// The ARN of a user, as AWS writes it.
pub fn user_arn(account: &str, name: &str) -> String {
    format!("arn:aws:iam::{account}:user/{name}")
}

fn unrecognized() -> ApiError {
    ApiError::client(
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    )
}

fn sig_error(e: airlock_sigv4::SigV4Error) -> ApiError {
    ApiError::client(e.aws_code(), e.to_string())
}
