//! What the generated OpenAPI document does not say on its own, added
//! once at start-up: request bodies refuse unknown members (the parser
//! answers 422 for them, so the schema says `additionalProperties: false`),
//! a 405 names the methods the path does allow (`Allow`, RFC 9110), and
//! every operation that reads or writes the database documents the 503 it
//! answers when the database cannot.

use poem::http::{header, HeaderValue, StatusCode};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use serde_json::Value;

/// The spec with every request body schema closed to unknown members.
pub fn close_request_bodies(spec: &str) -> Value {
    let mut doc: Value = serde_json::from_str(spec).unwrap_or(Value::Null);
    let mut names = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for ops in paths.values() {
            for op in ops.as_object().into_iter().flat_map(|o| o.values()) {
                for media in op["requestBody"]["content"]
                    .as_object()
                    .into_iter()
                    .flat_map(|c| c.values())
                {
                    if let Some(r) = media["schema"]["$ref"].as_str() {
                        names.push(r.trim_start_matches("#/components/schemas/").to_owned());
                    }
                }
            }
        }
    }
    for name in names {
        if let Some(schema) = doc["components"]["schemas"].get_mut(&name) {
            schema["additionalProperties"] = Value::Bool(false);
        }
    }
    doc
}

/// Adds to every operation that can fail on the server (it documents a
/// 500) the 503 it answers when the database cannot answer now, with its
/// `Retry-After` header (`ApiError::Unavailable`). Added here rather than
/// to each response enum: it is one answer for the whole API.
pub fn document_unavailable(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for ops in paths.values_mut() {
        // A path item also holds members that are no operation (a path's
        // `parameters` array, say): only objects with `responses` are.
        for op in ops.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            let Some(content) = responses.get("500").and_then(|r| r.get("content")).cloned() else {
                continue;
            };
            responses.insert(
                "503".to_owned(),
                serde_json::json!({
                    "description": "The database is unavailable or too busy to answer \
                        (down, out of connections, a statement timed out or waited too \
                        long for a lock). Retry after `Retry-After` seconds; the body \
                        carries a correlation id.",
                    "headers": {
                        "Retry-After": {
                            "description": "Seconds to wait before repeating the request.",
                            "required": true,
                            "schema": { "type": "integer", "minimum": 0 }
                        }
                    },
                    "content": content,
                }),
            );
        }
    }
}

/// Each path template's segments (`None` for a `{parameter}`) and the
/// methods it serves, static paths first so that `/sagas/stats` wins over
/// `/sagas/{id}`.
#[derive(Debug, Clone, Default)]
pub struct AllowedMethods(Vec<(Vec<Option<String>>, String)>);

impl AllowedMethods {
    /// Reads the paths of `doc`.
    pub fn from_spec(doc: &Value) -> Self {
        let mut routes: Vec<(Vec<Option<String>>, String)> = doc["paths"]
            .as_object()
            .into_iter()
            .flat_map(|p| p.iter())
            .map(|(path, ops)| {
                let segments = path
                    .split('/')
                    .skip(1)
                    .map(|s| (!s.starts_with('{')).then(|| s.to_owned()))
                    .collect();
                let mut methods: Vec<String> = ops
                    .as_object()
                    .into_iter()
                    .flat_map(|o| o.keys())
                    .map(|m| m.to_uppercase())
                    .collect();
                methods.sort();
                (segments, methods.join(", "))
            })
            .collect();
        routes.sort_by_key(|(segs, _)| segs.iter().filter(|s| s.is_none()).count());
        Self(routes)
    }

    fn for_path(&self, path: &str) -> Option<&str> {
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        self.0
            .iter()
            .find(|(segs, _)| {
                segs.len() == parts.len()
                    && segs
                        .iter()
                        .zip(&parts)
                        .all(|(s, p)| s.as_deref().is_none_or(|s| s == *p))
            })
            .map(|(_, m)| m.as_str())
    }
}

impl<E: Endpoint> Middleware<E> for AllowedMethods {
    type Output = AllowEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        AllowEndpoint {
            inner: ep,
            allowed: self.clone(),
        }
    }
}

/// The endpoint produced by [`AllowedMethods`].
#[derive(Debug)]
pub struct AllowEndpoint<E> {
    inner: E,
    allowed: AllowedMethods,
}

impl<E: Endpoint> Endpoint for AllowEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Self::Output> {
        let path = req.uri().path().to_owned();
        let mut resp = self.inner.call(req).await?.into_response();
        if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
            if let Some(v) = self
                .allowed
                .for_path(&path)
                .and_then(|m| HeaderValue::from_str(m).ok())
            {
                resp.headers_mut().insert(header::ALLOW, v);
            }
        }
        Ok(resp)
    }
}
