//! What the sessions tests share: a service on a temp dir with its router and an
//! in-process bus, and a JSON request helper.
#![allow(dead_code)] // each test binary uses part of this module

use std::{path::Path, sync::Arc};

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use http_body_util::BodyExt;
use natter_bus::InProcessBus;
use natter_sessions::{Config, Sessions, router};
use serde_json::Value;
use tower::ServiceExt;

pub fn config(dir: &Path, secret: Option<&[u8]>) -> Config {
    Config {
        data_dir: dir.to_owned(),
        jwt_secret: secret.map(<[u8]>::to_vec),
        argon2_memory_kib: 256,
        ..Config::default()
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub sessions: Sessions,
    pub bus: InProcessBus,
    pub app: Router,
}

pub fn harness(secret: Option<&[u8]>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let sessions = Sessions::open(config(dir.path(), secret)).unwrap();
    let bus = InProcessBus::new();
    let app = router(sessions.clone(), Arc::new(bus.clone()));
    Harness {
        dir,
        sessions,
        bus,
        app,
    }
}

pub async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(token) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(v) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    send(app, req.body(body).unwrap()).await
}

pub async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("non-JSON body {bytes:?}: {e}"))
    };
    (status, value)
}

pub fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

/// `POST /v1/sessions/refresh` with `token`.
pub async fn refresh(app: &Router, token: &str) -> (StatusCode, Value) {
    call(
        app,
        Method::POST,
        "/v1/sessions/refresh",
        None,
        Some(serde_json::json!({ "refresh_token": token })),
    )
    .await
}
