//! The admin API: `/live`, `/ready`, `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::backend::Pool;
use crate::metrics::Metrics;

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub pools: Vec<Pool>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the admin API until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}

/// The process is up and serving.
async fn live() -> &'static str {
    "ok\n"
}

/// Ready only when every data source answers.
async fn ready(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    // Check all data sources at once, so one slow source does not delay the others.
    let handles: Vec<_> = state
        .pools
        .iter()
        .cloned()
        .map(|p| {
            (
                p.name().to_string(),
                tokio::spawn(async move { p.check().await }),
            )
        })
        .collect();
    let mut all_ok = true;
    let mut body = serde_json::Map::new();
    for (name, handle) in handles {
        let result = handle
            .await
            .unwrap_or_else(|e| Err(format!("check failed: {e}")));
        all_ok &= result.is_ok();
        let v = match result {
            Ok(()) => json!({"ok": true}),
            Err(e) => json!({"ok": false, "error": e}),
        };
        body.insert(name, v);
    }
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": all_ok, "data_sources": body })),
    )
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
