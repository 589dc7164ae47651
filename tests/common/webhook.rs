//! A push gateway's webhook on loopback, for the push notification tests.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{Router, extract::State, http::StatusCode, routing::post};
use serde_json::Value;

/// A webhook on loopback that records what it is sent and fails the first `fail` calls.
#[derive(Clone, Default)]
pub struct Receiver {
    calls: Arc<Mutex<Vec<Value>>>,
    fail: Arc<Mutex<u32>>,
}

impl Receiver {
    pub async fn start(fail: u32) -> (Receiver, SocketAddr) {
        let receiver = Receiver::default();
        *receiver.fail.lock().unwrap() = fail;
        async fn hook(State(r): State<Receiver>, body: axum::body::Bytes) -> StatusCode {
            let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            r.calls.lock().unwrap().push(value);
            let mut fail = r.fail.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            }
        }
        let app = Router::new()
            .route("/push", post(hook))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook");
        let addr = listener.local_addr().expect("webhook address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (receiver, addr)
    }

    pub fn calls(&self) -> Vec<Value> {
        self.calls.lock().unwrap().clone()
    }
}
