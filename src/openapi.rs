//! The public REST API's OpenAPI document, `GET /v1/openapi.json`.
//!
//! Each crate that serves `/v1` routes builds them with `utoipa_axum`'s `OpenApiRouter`
//! and `routes!`, which take a route's path and methods from its handler's
//! `#[utoipa::path]`: a route is registered together with its documentation, and each
//! crate exposes the document of its routes next to its `router()`. [`document`] merges
//! them (sessions, media, calls, the edge, and the two routes of this binary: this
//! document and the messages role's `/v1/partitions`) and adds what they share: the
//! title and version and the security schemes. `tests/openapi.rs` checks that no `/v1`
//! route is served outside a documented registration and that every documented
//! operation is served.
//!
//! `/healthz`, `/readyz` and `/metrics` are operational endpoints, not API, and are not
//! in the document (docs/operations.md describes them); nor are the web client's static
//! files (`/`, `/web/{file}`).

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json, Router,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use utoipa::openapi::{
    Components, InfoBuilder, OpenApi, OpenApiBuilder,
    security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    tag::TagBuilder,
};
use utoipa_axum::{router::OpenApiRouter, routes};

/// The documents merged into the public one, by where they come from.
pub(crate) fn parts() -> Vec<(&'static str, OpenApi)> {
    vec![
        ("sessions", natter_sessions::openapi()),
        ("media", natter_media::openapi()),
        ("calls", natter_calls::ice::openapi()),
        ("edge", natter_edge::openapi()),
        ("openapi", document_routes().into_openapi()),
        ("partitions", partitions_routes().into_openapi()),
    ]
}

/// The public `/v1` API's document: every part merged, with the security schemes and
/// the tags' descriptions.
pub(crate) fn document() -> OpenApi {
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("natter")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "natter's public REST API (`/v1`). Live messaging runs over the \
                     WebSocket `GET /v1/ws`; its frames are described in \
                     docs/protocol.md and proto/schema/natter/v1/client.proto. \
                     64-bit ids are decimal strings; every error is \
                     `{\"error\": {\"code\", \"message\"}}`.",
                ))
                .build(),
        )
        .build();
    for (_, part) in parts() {
        doc.merge(part);
    }
    let components = doc.components.get_or_insert_with(Components::new);
    components.add_security_scheme(
        natter_sessions::openapi::BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "`Authorization: Bearer <access_token>`: the access token of \
                     `POST /v1/sessions` (or `/v1/sessions/refresh`).",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        natter_sessions::openapi::ACCESS_TOKEN_QUERY,
        SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
            "access_token",
            "The access token as `?access_token=`, for browser elements that cannot \
             set headers (`<img>`, `<video>`, `new WebSocket`). Media and `/v1/ws` only.",
        ))),
    );
    let tags = [
        ("accounts", "Registration, login, token refresh, logout"),
        ("users", "Looking users up by name or id"),
        ("push", "The calling device's push token"),
        ("mutes", "Muted conversations"),
        ("announcements", "Announcements from the operators"),
        ("media", "Uploads (single-shot and resumable) and downloads"),
        ("calls", "STUN and TURN servers for WebRTC calls"),
        ("websocket", "The device's WebSocket"),
        ("meta", "This document"),
        (
            "cluster",
            "Served by cluster roles only, not by `natter serve`",
        ),
    ];
    doc.tags = Some(
        tags.into_iter()
            .map(|(name, description)| {
                TagBuilder::new()
                    .name(name)
                    .description(Some(description))
                    .build()
            })
            .collect(),
    );
    doc
}

/// `GET /v1/openapi.json`: the public document, rendered once.
pub(crate) fn router() -> Router {
    let json = document()
        .to_json()
        .expect("an OpenAPI document always serialises");
    let (router, _) = document_routes().split_for_parts();
    router.with_state(Rendered(json.into()))
}

#[derive(Clone)]
struct Rendered(Arc<str>);

fn document_routes() -> OpenApiRouter<Rendered> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// This document: the public REST API of natter.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json")),
)]
async fn openapi_json(State(Rendered(json)): State<Rendered>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
        .into_response()
}

/// `GET /v1/partitions` of the messages role.
pub(crate) fn partitions(owned: natter_messages::Owned) -> Router {
    let (router, _) = partitions_routes().split_for_parts();
    router.with_state(owned)
}

fn partitions_routes() -> OpenApiRouter<natter_messages::Owned> {
    OpenApiRouter::new().routes(routes!(get_partitions))
}

/// The message partitions this messages instance owns right now, with their lease
/// epochs. Served by the `natter messages` role of a cluster (on its own listener), not
/// by `natter serve`; no authentication: keep that listener internal.
#[utoipa::path(
    get,
    path = "/v1/partitions",
    tag = "cluster",
    responses((status = 200, description = "Partition index (a decimal string key) to lease epoch",
        body = BTreeMap<String, u64>, example = json!({"0": 3, "1": 3, "7": 4}))),
)]
async fn get_partitions(State(owned): State<natter_messages::Owned>) -> Json<BTreeMap<u16, u64>> {
    Json(owned.snapshot())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The merge keeps the first of two same-named schemas and merges paths: a name
    /// or an operation defined twice, differently, would silently lose one. Each schema
    /// name means one thing, and each path and method is documented by one crate.
    #[test]
    fn parts_do_not_collide() {
        let mut schemas = BTreeMap::new();
        let mut operations = BTreeMap::new();
        for (part, doc) in parts() {
            let json = serde_json::to_value(&doc).expect("a document serialises");
            let defined = json["components"]["schemas"].as_object().cloned();
            for (name, schema) in defined.unwrap_or_default() {
                if let Some((first, earlier)) = schemas.insert(name.clone(), (part, schema.clone()))
                {
                    assert_eq!(
                        earlier, schema,
                        "schema {name} of {part} differs from {first}'s"
                    );
                }
            }
            for (path, item) in json["paths"].as_object().cloned().unwrap_or_default() {
                for method in item.as_object().into_iter().flat_map(|m| m.keys()) {
                    let key = format!("{} {path}", method.to_uppercase());
                    if let Some(first) = operations.insert(key.clone(), part) {
                        panic!("{key} is documented by {first} and {part}");
                    }
                }
            }
        }
        // The merged document has them all.
        let merged = serde_json::to_value(document()).expect("serialises");
        let merged_ops: usize = merged["paths"]
            .as_object()
            .expect("paths")
            .values()
            .map(|item| item.as_object().map_or(0, |m| m.len()))
            .sum();
        assert_eq!(merged_ops, operations.len());
    }
}
