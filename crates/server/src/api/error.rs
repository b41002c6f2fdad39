//! API errors in the AWS JSON 1.1 shape, mapped in one place: `__type`, `message` and the
//! modelled `Message` in the body, and the `x-amzn-ErrorType` header the Rust SDK reads first.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An error an API operation returns to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status (400 for client faults, 500 for server faults).
    pub status: StatusCode,
    /// AWS error code, e.g. `TargetNotConnected`.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// A client fault (HTTP 400).
    pub fn client(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }

    /// `ValidationException` with AWS's wording.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::client("ValidationException", message)
    }

    /// `SerializationException`: the body is not the JSON the operation expects.
    pub fn serialization(message: impl Into<String>) -> Self {
        Self::client("SerializationException", message)
    }

    /// A server fault; the detail is logged, not shown.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {detail}");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "InternalServerError",
            message: "An internal error occurred.".to_owned(),
        }
    }

    /// The response, with the request id the caller can quote.
    pub fn into_response_with_id(self, request_id: &str) -> Response {
        let body = serde_json::json!({
            "__type": self.code,
            "Message": self.message,
            "message": self.message,
        });
        let mut resp = (
            self.status,
            [("content-type", "application/x-amz-json-1.1")],
            body.to_string(),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(self.code) {
            resp.headers_mut().insert("x-amzn-ErrorType", v);
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            resp.headers_mut().insert("x-amzn-RequestId", v);
        }
        resp
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::internal(e)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}
