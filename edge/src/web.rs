//! The web client (`clients/web/`): plain ES modules and CSS embedded in the binary, so
//! `natter serve` serves it from any directory. `GET /` is the page, `GET /web/<file>`
//! its assets; only the files listed here exist (no file system access, no traversal).

use axum::{
    Router,
    extract::Path,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every asset under `/web/`: name, content type, contents.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", JS, include_str!("../../clients/web/app.js")),
    (
        "protocol.js",
        JS,
        include_str!("../../clients/web/protocol.js"),
    ),
    ("ui.js", JS, include_str!("../../clients/web/ui.js")),
    (
        "style.css",
        CSS,
        include_str!("../../clients/web/style.css"),
    ),
];

const INDEX: &str = include_str!("../../clients/web/index.html");

/// `GET /` and `GET /web/{file}`.
pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { file(HTML, INDEX) }))
        .route("/web/{file}", get(asset))
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => file(content_type, body),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
