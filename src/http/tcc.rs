//! TCC branches over HTTP: a service's try/confirm/cancel API as branches of a global
//! transaction.
//!
//! A prepare request that reaches the HTTP sidecar with an XID is recorded first, as a
//! branch still `Registering`, with the request itself (method, path, body and the `x-`
//! headers) as the branch's context; then it goes to the service; on a 2xx answer the branch
//! becomes `Registered`, otherwise it is removed. Phase 2 calls the service's commit or cancel
//! endpoint with the original body and headers, plus `x-tandem-xid`, `x-tandem-branch-id` and
//! `x-tandem-action`. Tandem itself provides what TCC services usually build by hand:
//!
//! * **Idempotent phase 2**: a branch is called until it answers 2xx, then its record goes
//!   in the same write as its outcome, so it is not called again (a crash between the call
//!   and the record repeats the call once: services can dedupe on `x-tandem-branch-id`).
//! * **Empty rollback**: a rollback that finds the prepare still under way records the branch
//!   as rolled back without calling cancel; when the prepare then answers 2xx, the sidecar
//!   sees the transaction gone and calls cancel itself.
//! * **Anti-suspension**: a prepare that arrives once the transaction is decided is refused
//!   (409) and never reaches the service.
//!
//! Failed or slow calls (each limited by the resource's `timeout`) are retried by the
//! coordinator with backoff.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use crate::config;
use crate::coordinator::service::{BoxFuture, Phase2Error, ResourceManager, RollbackOutcome};
use crate::coordinator::Branch;

/// Largest prepare body Tandem keeps as a branch's context.
pub const MAX_PREPARE_BODY: usize = 64 * 1024;

/// One TCC resource of a service.
pub struct TccResource {
    identity: String,
    upstream: String,
    pub prepare: Endpoint,
    commit: Endpoint,
    cancel: Endpoint,
    timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
}

pub struct Endpoint {
    pub method: Method,
    pub path: String,
}

impl Endpoint {
    fn new(e: &config::HttpEndpoint) -> Self {
        Endpoint {
            method: Method::from_bytes(e.method.as_bytes()).unwrap_or(Method::POST),
            path: e.path.clone(),
        }
    }
}

/// The prepare request, kept with the branch for phase 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestContext {
    pub method: String,
    /// Path and query of the prepare request.
    pub path: String,
    /// `content-type` and the `x-` headers (not Tandem's own).
    pub headers: Vec<(String, String)>,
    /// The body, hex-encoded.
    pub body: String,
}

impl RequestContext {
    pub fn new(method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Self {
        let headers = headers
            .iter()
            .filter(|(k, _)| {
                let k = k.as_str();
                k == "content-type" || (k.starts_with("x-") && !k.starts_with("x-tandem-"))
            })
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect();
        RequestContext {
            method: method.to_string(),
            path: path.to_string(),
            headers,
            body: body.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    fn body(&self) -> Vec<u8> {
        (0..self.body.len() / 2)
            .filter_map(|i| u8::from_str_radix(self.body.get(2 * i..2 * i + 2)?, 16).ok())
            .collect()
    }
}

/// The resource name branches of resource `name` of sidecar `sidecar` carry.
pub fn identity(sidecar: &str, name: &str) -> String {
    format!("tcc:{sidecar}/{name}")
}

impl TccResource {
    pub fn new(sidecar: &config::HttpSidecar, cfg: &config::TccResource) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        TccResource {
            identity: identity(&sidecar.name, &cfg.name),
            upstream: sidecar.upstream.trim_end_matches('/').to_string(),
            prepare: Endpoint::new(&cfg.prepare),
            commit: Endpoint::new(&cfg.commit),
            cancel: Endpoint::new(&cfg.cancel),
            timeout: cfg.timeout.0,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Calls the commit or cancel endpoint for `branch`; Ok once the service answered 2xx.
    pub async fn call(&self, branch: &Branch, action: &str) -> Result<(), Phase2Error> {
        let endpoint = if action == "commit" {
            &self.commit
        } else {
            &self.cancel
        };
        let ctx: RequestContext = branch
            .application_data
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .ok_or_else(|| Phase2Error("the branch has no readable request context".into()))?;
        let mut req = Request::builder()
            .method(endpoint.method.clone())
            .uri(format!("{}{}", self.upstream, endpoint.path));
        for (k, v) in &ctx.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                req = req.header(k, v);
            }
        }
        let req = req
            .header("x-tandem-xid", &branch.xid)
            .header("x-tandem-branch-id", branch.branch_id.to_string())
            .header("x-tandem-action", action)
            .header("x-tandem-prepare-path", &ctx.path)
            .body(Full::new(Bytes::from(ctx.body())))
            .map_err(|e| Phase2Error(format!("cannot build the {action} request: {e}")))?;
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{} did not answer: {e}", self.upstream))?;
            let status = resp.status();
            // Read the answer to the end, so the connection can be used again.
            let _ = resp.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("{action} answered {status}"))
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Phase2Error(format!("TCC {}: {e}", self.identity))),
            Err(_) => Err(Phase2Error(format!(
                "TCC {}: {action} took longer than {:?}",
                self.identity, self.timeout
            ))),
        }
    }
}

impl ResourceManager for TccResource {
    fn commit<'a>(&'a self, branch: &'a Branch) -> BoxFuture<'a, Result<(), Phase2Error>> {
        Box::pin(self.call(branch, "commit"))
    }

    fn rollback<'a>(
        &'a self,
        branch: &'a Branch,
    ) -> BoxFuture<'a, Result<RollbackOutcome, Phase2Error>> {
        Box::pin(async move {
            self.call(branch, "cancel").await?;
            Ok(RollbackOutcome::RolledBack)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_context_round_trips() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("x-request-id", HeaderValue::from_static("r1"));
        h.insert("x-tandem-xid", HeaderValue::from_static("x"));
        h.insert("authorization", HeaderValue::from_static("secret"));
        let body = b"{\"qty\": 3}\x00\xff";
        let ctx = RequestContext::new(&Method::POST, "/stock/reserve?sku=7", &h, body);
        assert_eq!(ctx.body(), body);
        let mut names: Vec<&str> = ctx.headers.iter().map(|(k, _)| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["content-type", "x-request-id"]);
        let json = serde_json::to_string(&ctx).unwrap();
        assert_eq!(serde_json::from_str::<RequestContext>(&json).unwrap(), ctx);
    }
}
