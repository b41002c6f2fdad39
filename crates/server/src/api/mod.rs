//! The HTTP API in AWS JSON 1.1 form: `POST /`, `X-Amz-Target: AmazonSSM.<Op>` (and
//! `Airlock.<Op>` for administration AWS has no operation for), SigV4 on every request.
//!
//! This module authenticates and routes; each operation lives in a module named for what it
//! manages.

pub mod admin;
pub mod documents;
pub mod documents_api;
pub mod error;
pub mod iam;
pub mod instances;
pub mod port_connections;
pub mod recordings;
pub mod search;
pub mod sessions;
pub mod webhooks;

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

/// Who made a request, established by SigV4, with what the policy engine needs about them.
#[derive(Debug)]
pub struct Caller {
    /// The signing user.
    pub user: User,
    /// The access key used.
    pub access_key_id: String,
    /// `arn:aws:iam::<account>:user/<name>`.
    pub arn: String,
    /// The socket peer.
    pub source_ip: std::net::IpAddr,
    /// Policies, boundary and tags, loaded for this request.
    pub principal: crate::authz::Principal,
    /// Whether the request came over TLS.
    pub secure: bool,
    /// This request's id.
    pub request_id: String,
    /// The caller's User-Agent.
    pub user_agent: String,
    /// Set once an audit record for this request has been written.
    pub audited: std::sync::atomic::AtomicBool,
}

/// The one route of the API.
pub async fn handle(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let (parts, body) = req.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let target = header("x-amz-target");
    let user_agent = header("user-agent");
    let mut audit_principal = String::from("anonymous");
    let mut audited = false;
    // A source that has spent its budget of failed authentications waits its turn: its
    // requests are served one at a time (limits.rs), valid ones included.
    let _penalty = if state.auth_failures.over_budget(peer.ip()) {
        let permit = state.auth_failures.penalty_box.acquire().await.ok();
        tokio::time::sleep(crate::limits::PENALTY_DELAY).await;
        permit
    } else {
        None
    };
    let result = async {
        if parts.method != axum::http::Method::POST {
            return Err(ApiError::client(
                "UnknownOperationException",
                "The API accepts POST / only.",
            ));
        }
        let max_body = state.config.limits.max_body_bytes;
        let too_large = || ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "ValidationException",
            message: format!("Request body exceeds the limit of {max_body} bytes."),
        };
        // A declared length past the limit is refused before a byte of it is waited for.
        if axum::body::HttpBody::size_hint(&body).lower() > max_body as u64 {
            return Err(too_large());
        }
        let body = to_bytes(body, max_body).await.map_err(|_| too_large())?;
        let caller =
            crate::auth::authenticate(&state, &parts, &body, peer.ip(), &request_id).await?;
        audit_principal = caller.arn.clone();
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
        // Access may have been taken away: live sessions are decided again (revocation.rs).
        if out.is_ok() && crate::revocation::may_revoke(&target) {
            crate::revocation::nudge(&state, target.split_once('.').map_or(&*target, |t| t.1));
        }
        audited = caller.audited.load(std::sync::atomic::Ordering::Relaxed);
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
    // Every call is on the record: those that failed before a decision are written here.
    let result = if audited {
        result
    } else if let (true, Err(e)) = (audit_principal == "anonymous", &result) {
        // Refused before anyone was authenticated: recorded by the refusal writer, off this
        // path, one record each while the source is within its failure budget and counted
        // into a summary beyond it (refusals.rs). A flood of these never delays signed calls.
        if state.auth_failures.note(peer.ip()) {
            state.refusals.itemise(crate::store::audit::AuditEvent {
                event: "api".into(),
                principal: audit_principal,
                source_ip: peer.ip().to_string(),
                action: target.clone(),
                resource: String::new(),
                decision: e.code.to_owned(),
                statement: e.message.clone(),
                request_id: request_id.clone(),
                user_agent: user_agent.clone(),
                detail: String::new(),
            });
        } else {
            state.refusals.count(peer.ip(), e.code);
        }
        result
    } else {
        let event = crate::store::audit::AuditEvent {
            event: "api".into(),
            principal: audit_principal,
            source_ip: peer.ip().to_string(),
            action: target.clone(),
            resource: String::new(),
            decision: match &result {
                Ok(_) => "Allow".into(),
                Err(e) => e.code.to_owned(),
            },
            statement: match &result {
                Ok(_) => String::new(),
                Err(e) => e.message.clone(),
            },
            request_id: request_id.clone(),
            user_agent: user_agent.clone(),
            detail: String::new(),
        };
        match state.store.append_audit(&event).await {
            Ok(_) => result,
            Err(e) => Err(ApiError::internal(format!(
                "audit record could not be written: {e}"
            ))),
        }
    };
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
        ("AmazonSSM", "AddTagsToResource") => {
            instances::add_tags(state, caller, parse(input)?).await
        }
        ("AmazonSSM", "RemoveTagsFromResource") => {
            instances::remove_tags(state, caller, parse(input)?).await
        }
        ("AmazonSSM", "ListTagsForResource") => {
            instances::list_tags(state, caller, parse(input)?).await
        }
        ("AmazonSSM", "DeregisterManagedInstance") => {
            instances::deregister(state, caller, parse(input)?).await
        }
        ("Airlock", _) => admin::dispatch(state, caller, op, input).await,
        ("AmazonSSM", _) => match documents_api::dispatch(state, caller, op, input).await {
            Some(r) => r,
            None => Err(ApiError::client(
                "UnknownOperationException",
                format!("Unknown operation {target}"),
            )),
        },
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

/// Authorises `action` on one untagged resource and writes the audit record.
pub async fn authorize(
    state: &AppState,
    caller: &Caller,
    action: &str,
    resource: &str,
) -> Result<(), ApiError> {
    crate::authz::authorize(
        state,
        caller,
        action,
        &[crate::authz::Resource::new(resource)],
        &[],
    )
    .await
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
