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
    request_id: &str,
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
    // Long-term keys (AKIA…) or temporary credentials (ASIA… + session token).
    let (secret, user, temporary) = match &parsed.session_token {
        None => {
            let (key, user) = state
                .store
                .access_key(&parsed.access_key_id)
                .await?
                .ok_or_else(unrecognized)?;
            if key.status != "Active" {
                return Err(unrecognized());
            }
            (key.secret_access_key, user, None)
        }
        Some(token) => {
            let creds = state
                .store
                .session_credentials(&parsed.access_key_id)
                .await?
                .ok_or_else(unrecognized)?;
            use sha2::Digest;
            let presented = hex::encode(sha2::Sha256::digest(token.as_bytes()));
            if !bool::from(subtle::ConstantTimeEq::ct_eq(
                presented.as_bytes(),
                creds.token_hash.as_bytes(),
            )) {
                return Err(unrecognized());
            }
            if creds.expires_at <= crate::store::now_ms() {
                return Err(ApiError::client(
                    "ExpiredTokenException",
                    "The security token included in the request is expired",
                ));
            }
            let user = state
                .store
                .user_by_id(&creds.user_id)
                .await?
                .ok_or_else(unrecognized)?;
            let temp = crate::authz::Temporary {
                issued_at: creds.issued_at,
                mfa: creds.mfa,
            };
            (creds.secret_access_key, user, Some(temp))
        }
    };
    let cfg = airlock_sigv4::VerifyConfig {
        regions: std::slice::from_ref(&state.config.region),
        service: "ssm",
        max_skew: state.config.max_clock_skew,
        now: time::OffsetDateTime::now_utc(),
        normalize_path: true,
        allow_unsigned_session_token: false,
    };
    airlock_sigv4::verify(&req, &parsed, &secret, &cfg).map_err(sig_error)?;
    let operation = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if crate::replay::single_use(operation) {
        match state.replays.check(&parsed.signature) {
            crate::replay::Use::First => {}
            // An identical call signed in the same second (the AWS CLI run twice): SDKs retry
            // throttling with a fresh signature, so the user's second call goes through.
            crate::replay::Use::Again => {
                return Err(ApiError::client(
                    "ThrottlingException",
                    format!("An identical {operation} was signed in the same second; it is accepted once per signature, so retry (SDKs do by themselves)."),
                ))
            }
            crate::replay::Use::Replay => {
                return Err(ApiError::client(
                    "InvalidSignatureException",
                    format!("This request's signature was used before: {operation} is accepted once per signature (sign it again to repeat it)."),
                ))
            }
        }
    }
    if temporary.is_none() {
        if let Err(e) = state.store.touch_access_key(&parsed.access_key_id).await {
            tracing::warn!("could not record key use: {e}");
        }
    }
    let principal = crate::authz::load_principal(
        &state.store,
        &state.policies,
        &state.config.account_id,
        user.clone(),
        temporary,
    )
    .await?;
    Ok(Caller {
        arn: principal.arn.clone(),
        access_key_id: parsed.access_key_id,
        user,
        source_ip,
        principal,
        secure: state.tls,
        request_id: request_id.to_owned(),
        user_agent: parts
            .headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
        audited: std::sync::atomic::AtomicBool::new(false),
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
