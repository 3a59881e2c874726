//! Every error a client can get, each with its HTTP status and OpenAI's error shape:
//! `{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}` (what the official clients
//! parse into their exception types).
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A request the server refuses or could not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or not the JSON of a chat completion request.
    #[error("invalid JSON body: {0}")]
    BadJson(String),
    /// A field has a value the server does not accept (`param` names it, OpenAI style).
    #[error("{message}")]
    Invalid { param: Option<String>, message: String },
    /// An image part could not be fetched, read or decoded, or is over a limit.
    #[error("{param}: {message}")]
    Image { param: String, message: String },
    /// The body is over `--max-body-bytes`.
    #[error("the request body is larger than the limit of {limit} bytes (--max-body-bytes)")]
    BodyTooLarge { limit: usize },
    /// The body did not arrive in time (see `limits::BodyDeadline`).
    #[error("the request body arrived too slowly: {0}")]
    BodyTimeout(String),
    /// The prompt (history, images, question) does not fit a session's context.
    #[error("{0}")]
    ContextLength(String),
    #[error("missing API key: send `Authorization: Bearer <key>`")]
    MissingKey,
    #[error("invalid API key")]
    WrongKey,
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    /// Every session is busy and the queue is full.
    #[error("the server is busy: all {sessions} session(s) are in use and {limit} request(s) are already waiting; retry later")]
    QueueFull { sessions: usize, limit: usize },
    /// No session became free within `--queue-timeout`.
    #[error("no session became free within {secs:.1} s (--queue-timeout); retry later")]
    QueueTimeout { secs: f64 },
    /// Generation ran past `--timeout`.
    #[error("the request ran past the time limit of {secs:.1} s (--timeout)")]
    Timeout { secs: f64 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 about the field `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            param: Some(param.into()),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadJson(_) | ApiError::Invalid { .. } | ApiError::Image { .. } | ApiError::ContextLength(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::MissingKey | ApiError::WrongKey => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::QueueFull { .. } | ApiError::QueueTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::MissingKey | ApiError::WrongKey => "authentication_error",
            ApiError::QueueFull { .. }
            | ApiError::QueueTimeout { .. }
            | ApiError::Timeout { .. }
            | ApiError::Internal(_) => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// OpenAI's `code` (where OpenAI has one, its spelling).
    pub fn code(&self) -> Option<&'static str> {
        Some(match self {
            ApiError::BadJson(_) => "invalid_json",
            ApiError::Invalid { .. } => "invalid_value",
            ApiError::Image { .. } => "invalid_image",
            ApiError::BodyTooLarge { .. } => "request_too_large",
            ApiError::BodyTimeout(_) => "request_timeout",
            ApiError::ContextLength(_) => "context_length_exceeded",
            ApiError::MissingKey => "missing_api_key",
            ApiError::WrongKey => "invalid_api_key",
            ApiError::NotFound { .. } => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::QueueFull { .. } => "queue_full",
            ApiError::QueueTimeout { .. } => "queue_timeout",
            ApiError::Timeout { .. } => "timeout",
            ApiError::Internal(_) => return None,
        })
    }

    pub fn param(&self) -> Option<&str> {
        match self {
            ApiError::Invalid { param, .. } => param.as_deref(),
            ApiError::Image { param, .. } => Some(param),
            _ => None,
        }
    }

    /// The JSON body, `{"error": {...}}`.
    pub fn body(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct Inner<'a> {
            message: String,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: Option<&'a str>,
        }
        serde_json::json!({
            "error": Inner { message: self.to_string(), kind: self.kind(), param: self.param(), code: self.code() }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            // A busy server: clients (the official ones included) back off and retry.
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, ApiError::BodyTimeout(_)) {
            // The rest of the body may still come: the connection cannot carry another request.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if matches!(self, ApiError::MissingKey | ApiError::WrongKey) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let e = ApiError::invalid("temperature", "temperature must be between 0 and 2, got 3");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let b = e.body();
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["param"], "temperature");
        assert_eq!(b["error"]["code"], "invalid_value");
        assert!(b["error"]["message"].as_str().unwrap().contains("got 3"));
        let b = ApiError::Internal("x".into()).body();
        assert!(b["error"]["code"].is_null() && b["error"]["param"].is_null());
        assert_eq!(
            ApiError::QueueFull { sessions: 2, limit: 4 }.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
