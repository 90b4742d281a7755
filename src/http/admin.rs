//! The admin API: `/live`, `/ready`, `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::{Path, Query};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::backend::Pool;
use crate::coordinator::mesh::Mesh;
use crate::coordinator::{Coordinator, CoordinatorError, GlobalStatus};
use crate::metrics::Metrics;

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub pools: Vec<Pool>,
    pub coordinator: Arc<Coordinator>,
    /// Set when sidecars share an etcd store.
    pub mesh: Option<Arc<Mesh>>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/cluster", get(cluster))
        .route("/v1/transactions", post(tx_begin).get(tx_list))
        .route("/v1/transactions/{xid}", get(tx_show))
        .route("/v1/transactions/{xid}/commit", post(tx_commit))
        .route("/v1/transactions/{xid}/rollback", post(tx_rollback))
        .route("/v1/transactions/{xid}/retry", post(tx_retry))
        .route("/v1/transactions/{xid}/finish", post(tx_finish))
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

type ApiResult = Result<Json<serde_json::Value>, (StatusCode, Json<serde_json::Value>)>;

fn api_error(e: CoordinatorError) -> (StatusCode, Json<serde_json::Value>) {
    let status = match e {
        CoordinatorError::UnknownXid(_) => StatusCode::NOT_FOUND,
        CoordinatorError::InvalidXid(_) => StatusCode::BAD_REQUEST,
        CoordinatorError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(json!({ "error": e.to_string() })))
}

fn bad_request(msg: &str) -> (StatusCode, Json<serde_json::Value>) {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": msg })))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BeginRequest {
    timeout_ms: Option<u64>,
}

/// `POST /v1/transactions` with an optional `{"timeout_ms": N}` body: begins a global
/// transaction.
async fn tx_begin(State(state): State<Arc<AdminState>>, body: axum::body::Bytes) -> ApiResult {
    let req: BeginRequest = if body.iter().all(|b| b.is_ascii_whitespace()) {
        BeginRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| bad_request(&format!("invalid JSON body: {e}")))?
    };
    let timeout = match req.timeout_ms {
        Some(0) => return Err(bad_request("timeout_ms must be at least 1")),
        Some(ms) => Some(std::time::Duration::from_millis(ms)),
        None => None,
    };
    let tx = state.coordinator.begin(timeout).await.map_err(api_error)?;
    Ok(Json(
        json!({ "xid": tx.xid, "status": tx.status.name(), "timeout_ms": tx.timeout_ms }),
    ))
}

async fn tx_commit(State(state): State<Arc<AdminState>>, Path(xid): Path<String>) -> ApiResult {
    let status = state.coordinator.commit(&xid).await.map_err(api_error)?;
    Ok(Json(json!({ "xid": xid, "status": status.name() })))
}

async fn tx_rollback(State(state): State<Arc<AdminState>>, Path(xid): Path<String>) -> ApiResult {
    let status = state.coordinator.rollback(&xid).await.map_err(api_error)?;
    Ok(Json(json!({ "xid": xid, "status": status.name() })))
}

/// `POST /v1/transactions/{xid}/retry`: runs phase 2 again for branches that needed a person.
async fn tx_retry(State(state): State<Arc<AdminState>>, Path(xid): Path<String>) -> ApiResult {
    let status = state.coordinator.retry(&xid).await.map_err(api_error)?;
    Ok(Json(json!({ "xid": xid, "status": status.name() })))
}

/// `POST /v1/transactions/{xid}/finish`: ends a stuck transaction after a person fixed the data.
async fn tx_finish(State(state): State<Arc<AdminState>>, Path(xid): Path<String>) -> ApiResult {
    let status = state
        .coordinator
        .force_finish(&xid)
        .await
        .map_err(api_error)?;
    Ok(Json(json!({ "xid": xid, "status": status.name() })))
}

/// `GET /v1/transactions/{xid}`: status, timing, branches and the locks they hold.
async fn tx_show(State(state): State<Arc<AdminState>>, Path(xid): Path<String>) -> ApiResult {
    let tx = state.coordinator.get(&xid).await.map_err(api_error)?;
    let branches = state
        .coordinator
        .store()
        .branches(&xid)
        .await
        .map_err(|e| api_error(e.into()))?;
    Ok(Json(json!({
        "xid": tx.xid,
        "status": tx.status.name(),
        "begun_at_ms": tx.begun_at_ms,
        "timeout_ms": tx.timeout_ms,
        "force_finished": tx.forced,
        "retries": tx.retries,
        "branches": branches,
    })))
}

#[derive(serde::Deserialize)]
struct ListQuery {
    status: Option<String>,
}

/// `GET /v1/transactions[?status=Name]`.
async fn tx_list(State(state): State<Arc<AdminState>>, Query(q): Query<ListQuery>) -> ApiResult {
    let filter = match q.status.as_deref() {
        Some(name) => Some(
            GlobalStatus::from_name(name)
                .ok_or_else(|| bad_request(&format!("unknown status '{name}'")))?,
        ),
        None => None,
    };
    let txs = state
        .coordinator
        .store()
        .list()
        .await
        .map_err(|e| api_error(e.into()))?;
    let items: Vec<_> = txs
        .into_iter()
        .filter(|t| filter.is_none_or(|f| t.status == f))
        .map(|t| json!({ "xid": t.xid, "status": t.status.name(), "begun_at_ms": t.begun_at_ms, "timeout_ms": t.timeout_ms }))
        .collect();
    Ok(Json(json!({ "transactions": items })))
}

/// `GET /v1/cluster`: the live sidecars and the data sources each owns (runs phase 2 for).
/// Alone with an embedded store, that is this process and all its data sources.
async fn cluster(State(st): State<Arc<AdminState>>) -> impl IntoResponse {
    let Some(mesh) = &st.mesh else {
        let sources: Vec<String> = st.pools.iter().map(|p| p.dsn().identity()).collect();
        return (
            StatusCode::OK,
            Json(
                json!({ "nodes": [{ "node": "local", "data_sources": sources, "owns": sources }] }),
            ),
        );
    };
    match mesh.members().await {
        Ok(members) => {
            let nodes: Vec<_> = members
                .into_iter()
                .map(|(info, owns)| {
                    json!({
                        "node": info.node,
                        "admin": info.admin,
                        "data_sources": info.resources,
                        "owns": owns,
                        "self": info.node == mesh.node(),
                    })
                })
                .collect();
            (StatusCode::OK, Json(json!({ "nodes": nodes })))
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        ),
    }
}
