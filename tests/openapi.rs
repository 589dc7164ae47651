//! The public REST API's OpenAPI document, `GET /v1/openapi.json`: every route is in it,
//! and everything in it is served.
//!
//! How "every route is documented" is held, in three parts:
//!
//! 1. Structurally: the crates register their `/v1` routes with `utoipa_axum`'s
//!    `OpenApiRouter::routes(routes!(handler))`, which takes the path and methods from the
//!    handler's `#[utoipa::path]`. A route registered that way is in its crate's document
//!    by construction, and `src/openapi.rs` merges the crates' documents.
//! 2. [`no_route_bypasses_the_document`] fails on the way around that: a plain axum
//!    `.route("/v1/...")` (or `.route_service`, `.nest`, `.nest_service`) with a `/v1` or
//!    `/admin` literal anywhere in the workspace's non-test sources. (A path held in a
//!    constant or built at run time would get past it; nothing does that, and review
//!    should keep it so.)
//! 3. [`the_served_document_matches_the_server`] starts the real `natter serve` and
//!    checks the other direction: every documented operation answers (not the router's
//!    404 or 405) with a status the document lists for it, so the document has no
//!    phantom routes, no stale methods and no undocumented unauthenticated answers. It
//!    also checks the document itself: OpenAPI 3, title and version, the security
//!    schemes, every `$ref` resolving, unique operation ids, and the routes this test
//!    knows the API has.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use common::*;
use serde_json::Value;

/// Operations the public API has: one dropped from the document fails the test.
const EXPECTED: &[(&str, &str)] = &[
    ("POST", "/v1/accounts"),
    ("POST", "/v1/sessions"),
    ("POST", "/v1/sessions/refresh"),
    ("DELETE", "/v1/sessions/current"),
    ("DELETE", "/v1/sessions/all"),
    ("GET", "/v1/users/{username}"),
    ("GET", "/v1/users/by-id/{user_id}"),
    ("PUT", "/v1/devices/current/push"),
    ("DELETE", "/v1/devices/current/push"),
    ("PUT", "/v1/conversations/{conversation_id}/mute"),
    ("GET", "/v1/mutes"),
    ("GET", "/v1/announcements"),
    ("POST", "/v1/media"),
    ("GET", "/v1/media/usage"),
    ("POST", "/v1/media/uploads"),
    ("GET", "/v1/media/uploads/{id}"),
    ("HEAD", "/v1/media/uploads/{id}"),
    ("PATCH", "/v1/media/uploads/{id}"),
    ("DELETE", "/v1/media/uploads/{id}"),
    ("POST", "/v1/media/uploads/{id}/complete"),
    ("GET", "/v1/media/{id}"),
    ("GET", "/v1/media/{id}/thumbnail"),
    ("GET", "/v1/media/{id}/info"),
    ("GET", "/v1/calls/ice-servers"),
    ("GET", "/v1/ws"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/partitions"),
];

/// Operations tagged so are served by a cluster role only (`natter messages`), not by
/// `natter serve`: the probe below skips them.
const CLUSTER_TAG: &str = "cluster";

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// `(METHOD, path) -> operation` of a document.
fn operations(doc: &Value) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths").iter() {
        for (method, op) in item.as_object().expect("a path item").iter() {
            if METHODS.contains(&method.as_str()) {
                out.insert((method.to_uppercase(), path.clone()), op.clone());
            }
        }
    }
    out
}

/// Every `$ref` in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_matches_the_server() {
    bounded(60, async {
        let server = Server::start().await;
        let base = server.base_url();
        let response = reqwest::get(format!("{base}/v1/openapi.json"))
            .await
            .expect("GET /v1/openapi.json");
        assert_eq!(response.status(), 200);
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        let doc: Value = response.json().await.expect("the document is JSON");

        // An OpenAPI 3 document of natter, at this version.
        let version = doc["openapi"].as_str().expect("an `openapi` version");
        assert!(version.starts_with("3."), "OpenAPI {version}");
        assert_eq!(doc["info"]["title"], "natter");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["type"], "http", "{schemes}");
        assert_eq!(schemes["bearer"]["scheme"], "bearer", "{schemes}");
        assert_eq!(schemes["access_token"]["type"], "apiKey", "{schemes}");
        assert_eq!(schemes["access_token"]["in"], "query", "{schemes}");

        // Every reference resolves.
        let mut all_refs = Vec::new();
        refs(&doc, &mut all_refs);
        assert!(!all_refs.is_empty());
        for r in &all_refs {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected $ref {r}"));
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "$ref {r} does not resolve"
            );
        }

        let ops = operations(&doc);
        let mut operation_ids = BTreeSet::new();
        let client = reqwest::Client::new();
        for ((method, path), op) in &ops {
            let id = op["operationId"].as_str().expect("an operationId");
            assert!(
                operation_ids.insert(id.to_owned()),
                "operationId {id} twice"
            );
            let documented: BTreeSet<&str> = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path} has no responses"))
                .keys()
                .map(String::as_str)
                .collect();
            let tags: Vec<&str> = op["tags"]
                .as_array()
                .map(|t| t.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            assert!(!tags.is_empty(), "{method} {path} has no tag");
            if tags.contains(&CLUSTER_TAG) {
                continue;
            }

            // The probe: no token, no body, every path parameter "1". Every route answers
            // that with something it documents (mostly 401, or 400 for a missing body);
            // a route that is not served gets the router's 404 (empty) or 405.
            let url = format!("{base}{}", fill_path(path));
            let method_ = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
            let response = client
                .request(method_, &url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            assert_ne!(status, 405, "{method} {path} is documented but not served");
            if status == 404 {
                let json: Option<Value> = serde_json::from_str(&body).ok();
                assert!(
                    json.is_some_and(|j| j["error"]["code"].is_string()),
                    "{method} {path} is documented but not served (404 {body:?})"
                );
            }
            assert!(
                documented.contains(status.to_string().as_str()),
                "{method} {path} answered {status} {body:?}, which it does not document \
                 ({documented:?})"
            );
            // A route that refuses an anonymous caller says how to authenticate.
            if status == 401 {
                let security = op["security"].as_array().map_or(0, Vec::len);
                assert!(
                    security > 0,
                    "{method} {path} answers 401 but documents no security"
                );
            }
        }

        // And the routes this test knows are all there (new ones need not be added
        // here: the probe above covers every documented operation).
        let listed: BTreeSet<(String, String)> = ops.keys().cloned().collect();
        let missing: Vec<_> = EXPECTED
            .iter()
            .filter(|(m, p)| !listed.contains(&(m.to_string(), p.to_string())))
            .collect();
        assert!(missing.is_empty(), "not in the document: {missing:?}");
    })
    .await;
}

/// `path` with every `{param}` replaced by `1`.
fn fill_path(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').expect("a closed parameter") + open;
        out.push('1');
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The registrations that bypass the OpenAPI document: an axum route or nest whose path
/// is a string literal starting with `/v1` or `/admin`, as `(line, code)`. Comment lines
/// are skipped; the literal may be on a later line than the call.
fn bypassing_routes(source: &str) -> Vec<(usize, String)> {
    // Comment lines blanked (same length, so byte offsets still give line numbers).
    let code: String = source
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("//") {
                " ".repeat(l.len())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    for call in [".route(", ".route_service(", ".nest(", ".nest_service("] {
        for (at, _) in code.match_indices(call) {
            let after = code[at + call.len()..].trim_start();
            let literal = after
                .strip_prefix("r#\"")
                .or_else(|| after.strip_prefix("r\""))
                .or_else(|| after.strip_prefix('"'));
            let Some(literal) = literal else { continue };
            if literal.starts_with("/v1") || literal.starts_with("/admin") {
                let line = code[..at].matches('\n').count() + 1;
                let path: String = literal.chars().take_while(|c| *c != '"').collect();
                found.push((line, format!("{call}\"{path}\"")));
            }
        }
    }
    found
}

/// The workspace's non-test Rust sources: `src/` trees, not `tests/`, `benches/`,
/// `examples/` (test doubles and mock servers register plain routes legitimately),
/// `target/` or hidden directories.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.expect("a directory entry");
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let file_type = entry.file_type().expect("a file type");
        if file_type.is_dir() {
            let skip = name.starts_with('.')
                || matches!(
                    name.as_str(),
                    "target" | "tests" | "benches" | "examples" | "node_modules"
                );
            if !skip {
                sources(&path, out);
            }
        } else if file_type.is_file() && name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_route_bypasses_the_document() {
    // The scanner finds what it must (and not comments or other paths).
    let sample = "Router::new()\n    .route(\n        \"/v1/x\",\n        get(h),\n    )\n    // .route(\"/v1/commented\", get(h))\n    .route(\"/healthz\", get(h))\n    .nest(\"/admin/v1\", admin)\n    .routes(routes!(documented))";
    assert_eq!(
        bypassing_routes(sample),
        vec![
            (2, ".route(\"/v1/x\"".to_owned()),
            (8, ".nest(\"/admin/v1\"".to_owned())
        ]
    );

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(root, &mut files);
    // The walk reaches the crates that serve routes.
    for must in [
        "sessions/src/api.rs",
        "media/src/http.rs",
        "calls/src/ice.rs",
        "edge/src/lib.rs",
        "src/roles.rs",
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(must)),
            "the scan missed {must}"
        );
    }
    let mut bypassing = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).expect("a readable source");
        for (line, code) in bypassing_routes(&source) {
            let file = file.strip_prefix(root).unwrap_or(file);
            bypassing.push(format!("{}:{line}: {code}", file.display()));
        }
    }
    assert!(
        bypassing.is_empty(),
        "routes registered outside the OpenAPI document (use OpenApiRouter::routes with \
         routes!(handler) and #[utoipa::path] on the handler):\n{}",
        bypassing.join("\n")
    );
}
