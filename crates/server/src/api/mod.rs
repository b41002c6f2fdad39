//! The HTTP API in AWS JSON 1.1 form: `POST /`, `X-Amz-Target: AmazonSSM.<Op>` (and
//! `Airlock.<Op>` for administration AWS has no operation for), SigV4 on every request.
//!
//! This module authenticates and routes; each operation lives in a module named for what it
//! manages.

pub mod admin;
pub mod error;
pub mod instances;
pub mod sessions;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use error::ApiError;

use crate::state::AppState;
use crate::store::User;

/// Largest request body the API reads; anything bigger is refused before it is buffered.
pub const MAX_BODY: usize = 256 * 1024;

/// Who made a request, established by SigV4.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The signing user.
    pub user: User,
    /// The access key used.
    pub access_key_id: String,
    /// `arn:aws:iam::<account>:user/<name>`.
    pub arn: String,
    /// The socket peer.
    pub source_ip: std::net::IpAddr,
}

/// The one route of the API.
pub async fn handle(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let (parts, body) = req.into_parts();
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let result = async {
        if parts.method != axum::http::Method::POST {
            return Err(ApiError::client(
                "UnknownOperationException",
                "The API accepts POST / only.",
            ));
        }
        let body = to_bytes(body, MAX_BODY).await.map_err(|_| ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "ValidationException",
            message: format!("Request body exceeds the limit of {MAX_BODY} bytes."),
        })?;
        let caller = crate::auth::authenticate(&state, &parts, &body, peer.ip()).await?;
        let input: Value = if body.is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| ApiError::serialization(format!("Malformed JSON body: {e}")))?
        };
        if !input.is_object() {
            return Err(ApiError::serialization(
                "The request body must be a JSON object.",
            ));
        }
        let out = dispatch(&state, &caller, &target, input).await;
        tracing::info!(
            request_id,
            user = caller.user.name,
            op = target,
            outcome = out.as_ref().map(|_| "ok").unwrap_or_else(|e| e.code),
            "api call"
        );
        out
    }
    .await;
    match result {
        Ok(v) => {
            let mut resp = (
                StatusCode::OK,
                [("content-type", "application/x-amz-json-1.1")],
                v.to_string(),
            )
                .into_response();
            if let Ok(h) = HeaderValue::from_str(&request_id) {
                resp.headers_mut().insert("x-amzn-RequestId", h);
            }
            resp
        }
        Err(e) => {
            if e.status.is_client_error() {
                tracing::info!(
                    request_id,
                    op = target,
                    code = e.code,
                    "api call refused: {}",
                    e.message
                );
            }
            e.into_response_with_id(&request_id)
        }
    }
}

async fn dispatch(
    state: &Arc<AppState>,
    caller: &Caller,
    target: &str,
    input: Value,
) -> Result<Value, ApiError> {
    let (prefix, op) = target.split_once('.').unwrap_or(("", target));
    match (prefix, op) {
        ("AmazonSSM", "StartSession") => sessions::start(state, caller, parse(input)?).await,
        ("AmazonSSM", "ResumeSession") => sessions::resume(state, caller, parse(input)?).await,
        ("AmazonSSM", "TerminateSession") => {
            sessions::terminate(state, caller, parse(input)?).await
        }
        ("AmazonSSM", "DescribeSessions") => sessions::describe(state, caller, parse(input)?).await,
        ("AmazonSSM", "DescribeInstanceInformation") => {
            instances::describe(state, caller, parse(input)?).await
        }
        ("AmazonSSM", "GetConnectionStatus") => {
            instances::connection_status(state, caller, parse(input)?).await
        }
        ("AmazonSSM", "CreateActivation") => {
            instances::create_activation(state, caller, parse(input)?).await
        }
        ("AmazonSSM", "DescribeActivations") => {
            instances::describe_activations(state, caller, parse(input)?).await
        }
        ("AmazonSSM", "DeleteActivation") => {
            instances::delete_activation(state, caller, parse(input)?).await
        }
        ("AmazonSSM", "DeregisterManagedInstance") => {
            instances::deregister(state, caller, parse(input)?).await
        }
        ("Airlock", _) => admin::dispatch(state, caller, op, input).await,
        _ => Err(ApiError::client(
            "UnknownOperationException",
            format!("Unknown operation {target}"),
        )),
    }
}

/// Deserialises an operation's input; wrong member types are `SerializationException`.
pub fn parse<T: DeserializeOwned>(input: Value) -> Result<T, ApiError> {
    serde_json::from_value(input).map_err(|e| ApiError::serialization(e.to_string()))
}

/// Until the policy engine is wired in: admins may do everything, anyone else nothing.
pub fn authorize(
    state: &AppState,
    caller: &Caller,
    action: &str,
    resource: &str,
) -> Result<(), ApiError> {
    if caller.user.is_admin {
        return Ok(());
    }
    let _ = state;
    Err(ApiError::client(
        "AccessDeniedException",
        format!(
            "User: {} is not authorized to perform: {action} on resource: {resource} because no identity-based policy allows the {action} action",
            caller.arn
        ),
    ))
}

/// AWS's validation message for one failed constraint.
pub fn invalid(value: &str, member: &str, constraint: &str) -> ApiError {
    ApiError::validation(format!(
        "1 validation error detected: Value '{value}' at '{member}' failed to satisfy constraint: {constraint}"
    ))
}

/// Epoch ms to the epoch-seconds JSON number AWS JSON 1.1 uses for timestamps.
pub fn timestamp(ms: i64) -> Value {
    serde_json::Number::from_f64(ms as f64 / 1000.0)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Decodes an opaque NextToken (an offset we handed out) or fails with `InvalidNextToken`.
pub fn decode_next_token(token: Option<&str>) -> Result<i64, ApiError> {
    use base64::Engine;
    let Some(t) = token else { return Ok(0) };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.strip_prefix("offset:")
                .and_then(|n| n.parse::<i64>().ok())
        })
        .filter(|n| *n >= 0)
        .ok_or_else(|| ApiError::client("InvalidNextToken", "The specified token isn't valid."))
}

/// Encodes a NextToken for an offset.
pub fn encode_next_token(offset: i64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("offset:{offset}"))
}
