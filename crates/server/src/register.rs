//! Agent registration (`POST /v1/agent/register`): an activation id and code buy one
//! managed-instance id for the agent's Ed25519 public key. Only the public key is sent.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::api::ApiError;
use crate::state::AppState;
use crate::store::{now_ms, Instance};

/// The registration request an agent sends.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RegisterInput {
    activation_id: String,
    activation_code: String,
    public_key: String,
    #[serde(default)]
    computer_name: String,
    #[serde(default)]
    platform_name: String,
    #[serde(default)]
    platform_version: String,
    #[serde(default)]
    agent_version: String,
}

fn new_instance_id() -> String {
    use rand::Rng;
    let hex: String = (0..17)
        .map(|_| char::from(b"0123456789abcdef"[rand::thread_rng().gen_range(0..16)]))
        .collect();
    format!("mi-{hex}")
}

/// Handles a registration.
pub async fn register(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    // Refused before it is buffered, in the API's shape (axum's own limit answers in plain text).
    let max_body = state.config.limits.max_body_bytes;
    let result = match to_bytes(body, max_body).await {
        Ok(body) => register_inner(&state, peer, &body).await,
        Err(_) => Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "ValidationException",
            message: format!("Request body exceeds the limit of {max_body} bytes."),
        }),
    };
    match result {
        Ok(v) => (
            StatusCode::OK,
            [("content-type", "application/json")],
            v.to_string(),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(%peer, code = e.code, "registration refused: {}", e.message);
            e.into_response_with_id(&request_id)
        }
    }
}

async fn register_inner(
    state: &AppState,
    peer: SocketAddr,
    body: &[u8],
) -> Result<serde_json::Value, ApiError> {
    let input: RegisterInput = serde_json::from_slice(body)
        .map_err(|e| ApiError::serialization(format!("Malformed registration request: {e}")))?;
    let key: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(&input.public_key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| {
            ApiError::validation("PublicKey must be a base64 Ed25519 public key (32 bytes).")
        })?;
    ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|_| ApiError::validation("PublicKey is not a valid Ed25519 point."))?;
    let invalid = || {
        ApiError::client(
            "InvalidActivation",
            "The activation ID or code is not valid.",
        )
    };
    let activation = state
        .store
        .activation(&input.activation_id)
        .await?
        .ok_or_else(invalid)?;
    let given = crate::api::instances::hash_code(&input.activation_code);
    if !bool::from(given.as_bytes().ct_eq(activation.code_hash.as_bytes())) {
        return Err(invalid());
    }
    if activation.expiration_date <= now_ms() {
        return Err(ApiError::client(
            "InvalidActivation",
            "The activation has expired.",
        ));
    }
    let inst = Instance {
        instance_id: new_instance_id(),
        public_key: input.public_key,
        activation_id: activation.activation_id.clone(),
        name: activation.default_instance_name.clone(),
        computer_name: input.computer_name,
        platform_type: "Linux".to_owned(),
        platform_name: input.platform_name,
        platform_version: input.platform_version,
        agent_version: input.agent_version,
        ip_address: peer.ip().to_string(),
        iam_role: activation.iam_role.clone(),
        registered_at: now_ms(),
        last_ping_at: None,
        deregistered_at: None,
    };
    if !state
        .store
        .register_instance(&activation.activation_id, &inst)
        .await?
    {
        return Err(ApiError::client(
            "InvalidActivation",
            "The activation has reached its registration limit or has expired.",
        ));
    }
    tracing::info!(
        instance_id = inst.instance_id,
        activation_id = activation.activation_id,
        "instance registered"
    );
    Ok(json!({ "InstanceId": inst.instance_id }))
}
