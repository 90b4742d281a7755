//! The HTTP sidecar: an inbound reverse proxy in front of a service's own HTTP API.
//!
//! A request that matches one of the configured rules (method and path) and carries no XID
//! runs in a global transaction of its own: Tandem begins it, passes the XID to the service
//! in the `x-tandem-xid` header, and when the service's response headers arrive commits on a
//! 2xx status and rolls back on any other (or when the service cannot be reached). The
//! service's statements join the transaction by carrying that XID to Tandem's MySQL listeners
//! (`/*+ XID('…') */` or `SET tandem_xid`). A request that carries an XID to the prepare
//! endpoint of one of the service's TCC resources becomes a TCC branch (see
//! [`tcc`](super::tcc)). Other requests that already carry an XID, and requests no rule
//! matches, pass through untouched. Bodies stream both ways; connections to clients and to
//! the service are kept alive.
//!
//! The decision is taken when the response headers arrive: a service that keeps writing to
//! its database while it streams a response body must do so before it sends the headers.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use regex::Regex;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::tcc::{RequestContext, TccResource, MAX_PREPARE_BODY};
use crate::config::{HttpSidecar, PathMatch};
use crate::coordinator::{
    Branch, BranchKind, BranchStatus, Coordinator, GlobalStatus, RegisterError,
};

/// The header that carries the XID to the service (and back to the client).
pub const XID_HEADER: &str = "x-tandem-xid";
/// The header that tells the client how the global transaction ended.
pub const STATUS_HEADER: &str = "x-tandem-status";

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("invalid rule: {0}")]
    Rule(#[from] regex::Error),
}

/// One configured sidecar, ready to serve.
pub struct Sidecar {
    name: String,
    upstream: String,
    rules: Vec<Rule>,
    tcc: Vec<Arc<TccResource>>,
    coordinator: Arc<Coordinator>,
    client: Client<HttpConnector, Body>,
}

struct Rule {
    method: Option<Method>,
    path: PathRule,
    timeout: Option<Duration>,
}

enum PathRule {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl Rule {
    fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && match &self.path {
                PathRule::Exact(p) => path == p,
                PathRule::Prefix(p) => path.starts_with(p.as_str()),
                PathRule::Regex(r) => r.is_match(path),
            }
    }
}

impl Sidecar {
    pub fn new(
        cfg: &HttpSidecar,
        tcc: Vec<Arc<TccResource>>,
        coordinator: Arc<Coordinator>,
    ) -> Result<Self, SidecarError> {
        let rules = cfg
            .transactions
            .iter()
            .map(|r| {
                Ok(Rule {
                    method: (r.method != "*")
                        .then(|| Method::from_bytes(r.method.as_bytes()).ok())
                        .flatten(),
                    path: match r.matching {
                        PathMatch::Exact => PathRule::Exact(r.path.clone()),
                        PathMatch::Prefix => PathRule::Prefix(r.path.clone()),
                        PathMatch::Regex => {
                            PathRule::Regex(Regex::new(&format!("^(?:{})$", r.path))?)
                        }
                    },
                    timeout: r.timeout.map(|t| t.0),
                })
            })
            .collect::<Result<_, SidecarError>>()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Sidecar {
            name: cfg.name.clone(),
            upstream: cfg.upstream.trim_end_matches('/').to_string(),
            rules,
            tcc,
            coordinator,
            client,
        })
    }

    /// The TCC resource whose prepare endpoint this is.
    fn tcc_for(&self, method: &Method, path: &str) -> Option<Arc<TccResource>> {
        self.tcc
            .iter()
            .find(|t| t.prepare.method == *method && t.prepare.path == path)
            .cloned()
    }

    /// A TCC prepare inside global transaction `xid`: recorded as a branch before it
    /// reaches the service, confirmed when the service agrees, and undone if the transaction
    /// was rolled back meanwhile.
    async fn prepare(&self, tcc: &TccResource, xid: String, req: Request) -> Response {
        let (mut parts, body) = req.into_parts();
        let Ok(body) = axum::body::to_bytes(body, MAX_PREPARE_BODY).await else {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                Some(&xid),
                format!("a TCC prepare body is at most {MAX_PREPARE_BODY} bytes"),
            );
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let ctx = RequestContext::new(&parts.method, path, &parts.headers, &body);
        let branch = Branch {
            xid: xid.clone(),
            branch_id: self.coordinator.new_branch_id(),
            kind: BranchKind::Tcc,
            resource: tcc.identity().to_string(),
            status: BranchStatus::Registering,
            lock_keys: Vec::new(),
            application_data: serde_json::to_string(&ctx).ok(),
            attention: None,
            seq: 0,
        };
        match self.coordinator.register_branch(&branch).await {
            Ok(()) => {}
            Err(e @ (RegisterError::NotActive { .. } | RegisterError::UnknownXid(_))) => {
                // Anti-suspension: too late, the service never sees this prepare.
                return error(StatusCode::CONFLICT, Some(&xid), e.to_string());
            }
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, Some(&xid), e.to_string()),
        }
        if let Ok(v) = HeaderValue::from_str(&branch.branch_id.to_string()) {
            parts.headers.insert("x-tandem-branch-id", v);
        }
        let store = self.coordinator.store();
        let resp = match self
            .forward(Request::from_parts(parts, Body::from(body)))
            .await
        {
            Ok(resp) if resp.status().is_success() => resp,
            other => {
                if let Err(e) = store.abandon_registration(&xid, branch.branch_id).await {
                    tracing::warn!(%xid, branch = branch.branch_id, error = %e, "could not remove a failed TCC prepare; it goes with the transaction");
                }
                return other.unwrap_or_else(|e| error(StatusCode::BAD_GATEWAY, Some(&xid), e));
            }
        };
        match store.complete_registration(&xid, branch.branch_id).await {
            Ok(()) => resp,
            Err(e) => {
                // The transaction ended while the service prepared: undo the prepare now
                // (the rollback already counted this branch as never prepared).
                tracing::info!(%xid, branch = branch.branch_id, "TCC prepare answered after the transaction ended; cancelling it");
                let mut cancelled = tcc.call(&branch, "cancel").await;
                for wait in [100, 500, 2000] {
                    if cancelled.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    cancelled = tcc.call(&branch, "cancel").await;
                }
                if let Err(c) = cancelled {
                    tracing::error!(%xid, branch = branch.branch_id, error = %c, "a TCC prepare that came too late could not be cancelled: a person must look");
                }
                error(StatusCode::CONFLICT, Some(&xid), e.to_string())
            }
        }
    }

    /// The timeout of the global transaction `method` and `path` begin, when a rule matches.
    fn rule_for(&self, method: &Method, path: &str) -> Option<Option<Duration>> {
        self.rules
            .iter()
            .find(|r| r.matches(method, path))
            .map(|r| r.timeout)
    }

    /// Sends the request on to the service, streaming its body.
    async fn forward(&self, mut req: Request) -> Result<Response, String> {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let uri: Uri = format!("{}{path}", self.upstream)
            .parse()
            .map_err(|e| format!("bad upstream URI: {e}"))?;
        *req.uri_mut() = uri;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("the service at {} did not answer: {e}", self.upstream))?;
        Ok(resp.map(Body::new))
    }
}

pub async fn serve(
    listener: TcpListener,
    sidecar: Arc<Sidecar>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let router = Router::new().fallback(proxy).with_state(sidecar);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}

fn error(status: StatusCode, xid: Option<&str>, message: String) -> Response {
    let mut resp = (status, Json(json!({ "error": message, "xid": xid }))).into_response();
    if let Some(v) = xid.and_then(|x| HeaderValue::from_str(x).ok()) {
        resp.headers_mut().insert(XID_HEADER, v);
    }
    resp
}

async fn proxy(State(s): State<Arc<Sidecar>>, mut req: Request) -> Response {
    let carried = req
        .headers()
        .get(XID_HEADER)
        .map(|v| v.to_str().map(str::to_string));
    let timeout = match carried {
        // Part of a transaction someone else began: a TCC prepare, or passed through.
        Some(xid) => {
            if let (Ok(xid), Some(tcc)) = (xid, s.tcc_for(req.method(), req.uri().path())) {
                return s.prepare(&tcc, xid, req).await;
            }
            None
        }
        None => s.rule_for(req.method(), req.uri().path()),
    };
    let Some(timeout) = timeout else {
        // Not a transaction boundary: pass through.
        return s
            .forward(req)
            .await
            .unwrap_or_else(|e| error(StatusCode::BAD_GATEWAY, None, e));
    };
    let xid = match s.coordinator.begin(timeout).await {
        Ok(tx) => tx.xid,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                format!("could not begin a global transaction: {e}"),
            )
        }
    };
    let Ok(xid_value) = HeaderValue::from_str(&xid) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(&xid),
            "unusable XID".into(),
        );
    };
    req.headers_mut().insert(XID_HEADER, xid_value.clone());
    tracing::debug!(sidecar = %s.name, %xid, path = %req.uri().path(), "request runs in a global transaction");

    let (mut resp, commit) = match s.forward(req).await {
        Ok(resp) => {
            let commit = resp.status().is_success();
            (resp, commit)
        }
        Err(e) => (error(StatusCode::BAD_GATEWAY, Some(&xid), e), false),
    };
    let ended = if commit {
        s.coordinator.commit(&xid).await
    } else {
        s.coordinator.rollback(&xid).await
    };
    match ended {
        Ok(status) if commit && status != GlobalStatus::Committed => {
            // The service succeeded but the transaction did not commit (it timed out):
            // the client must not believe its request took effect.
            error(
                StatusCode::CONFLICT,
                Some(&xid),
                format!("the global transaction ended {}", status.name()),
            )
        }
        Ok(status) => {
            resp.headers_mut().insert(XID_HEADER, xid_value);
            if let Ok(v) = HeaderValue::from_str(status.name()) {
                resp.headers_mut().insert(STATUS_HEADER, v);
            }
            resp
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(&xid),
            format!("could not end the global transaction: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(path: PathRule, method: Option<Method>) -> Rule {
        Rule {
            method,
            path,
            timeout: None,
        }
    }

    #[test]
    fn rules_match_method_and_path() {
        let exact = rule(PathRule::Exact("/orders".into()), Some(Method::POST));
        assert!(exact.matches(&Method::POST, "/orders"));
        assert!(!exact.matches(&Method::GET, "/orders"));
        assert!(!exact.matches(&Method::POST, "/orders/1"));
        let prefix = rule(PathRule::Prefix("/orders/".into()), None);
        assert!(prefix.matches(&Method::DELETE, "/orders/7"));
        assert!(!prefix.matches(&Method::DELETE, "/order"));
        let re = rule(
            PathRule::Regex(Regex::new("^(?:/orders/[0-9]+/pay)$").unwrap()),
            Some(Method::PUT),
        );
        assert!(re.matches(&Method::PUT, "/orders/12/pay"));
        assert!(
            !re.matches(&Method::PUT, "/orders/12/pay/extra"),
            "whole path"
        );
        assert!(!re.matches(&Method::PUT, "/orders/x/pay"));
    }
}
