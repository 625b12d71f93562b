//! The viewer web page, embedded in the binary (no CDN, no files on disk), and its
//! `/config.json` telling the page where signaling is.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::{Arc, RwLock};

const INDEX_HTML: &str = include_str!("../web/index.html");
const VIEWER_JS: &str = include_str!("../web/viewer.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

/// The JSON served at `/config.json`, filled in once the service is listening.
#[derive(Clone, Default)]
pub struct PageConfig(Arc<RwLock<serde_json::Value>>);

impl PageConfig {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&self, value: serde_json::Value) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = value;
    }

    fn get(&self) -> serde_json::Value {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Routes for the page and its configuration.
pub fn routes(config: PageConfig) -> Router {
    Router::new()
        .route("/index.html", get(|| async { html() }))
        .route(
            "/viewer.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    VIEWER_JS,
                )
            }),
        )
        .route(
            "/style.css",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
                    STYLE_CSS,
                )
            }),
        )
        .route(
            "/config.json",
            get(move || async move { Json(config.get()) }),
        )
}

/// The page itself; the signaling service serves it at `/` for plain GETs.
pub fn html() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
}
