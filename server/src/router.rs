//! The HTTP port's router, assembled here and nowhere else: the endpoints of the page
//! and `/v1` ([`crate::v1`]), of the served models and their admin routes
//! ([`crate::swap`]), of monitoring ([`crate::monitoring`]) and of the Open Inference
//! Protocol ([`crate::v2_http`]), with the layers every request passes (the body limit,
//! the request metrics, tracing) and the answers for an unknown route (404, naming
//! every route of the same list) or method (405).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use tower_http::trace::TraceLayer;

use crate::endpoint::Endpoint;
use crate::error::ApiError;
use crate::state::AppState;
use crate::{monitoring, swap, v1, v2_http};

/// Every route of the HTTP port; the inference routes are held to `timeout_ms`.
pub fn endpoints(timeout_ms: u64) -> Vec<Endpoint> {
    [
        v1::endpoints(timeout_ms),
        swap::endpoints(),
        monitoring::endpoints(),
        v2_http::endpoints(timeout_ms),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `METHOD path` of each endpoint, comma-separated: what the 404 answer lists.
pub fn listing(endpoints: &[Endpoint]) -> String {
    endpoints
        .iter()
        .map(|e| format!("{} {}", e.method, e.path))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds the router of [`endpoints`] with every layer.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.max_body_bytes();
    let endpoints = endpoints(state.cfg.timeout_ms);
    let known: Arc<str> = listing(&endpoints).into();
    let routes = endpoints
        .into_iter()
        .fold(Router::new(), |r, e| r.route(e.path, e.handler));
    routes
        .fallback(move |method: Method, uri: Uri| async move { not_found(&known, &method, &uri) })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            crate::limit::limit_body(limit, req, next)
        }))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Counts requests by route and status and times them.
async fn track(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().clone();
    let resp = next.run(req).await;
    st.metrics.observe_request(
        &route,
        method.as_str(),
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}

/// The 404 answer: the request's method and path, and `known`, the routes.
fn not_found(known: &str, method: &Method, uri: &Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {method} {}; the routes are {known}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not accept {method}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use lse_runtime::engine::Provider;
    use tokio::sync::Semaphore;
    use tower::ServiceExt;

    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::models::Registry;

    /// A server's state with no model: every route can be asked, none can infer.
    fn state() -> Arc<AppState> {
        let cfg = Config {
            model: None,
            model_dir: None,
            addr: "127.0.0.1:0".into(),
            grpc_addr: None,
            provider: Provider::Cpu,
            ort_lib: None,
            workers: 1,
            devices: None,
            workers_per_device: None,
            threads: 1,
            max_batch: 1,
            batch_wait_ms: 0,
            queue: 1,
            timeout_ms: 60_000,
            max_body_mb: 1.0,
            header_timeout_ms: 60_000,
            idle_timeout_ms: 60_000,
            max_connections: 8,
            max_streams: 8,
            max_pixels: 1_000_000,
            max_request_pixels: 1_000_000,
            max_answer_mb: 1.0,
            admin_token_file: None,
        };
        Arc::new(AppState {
            admission: Arc::new(Semaphore::new(cfg.queue as usize)),
            models: Registry::new(Vec::new()),
            metrics: Arc::new(Metrics::default()),
            admin_token: None,
            cfg,
        })
    }

    /// The status of `method path` and its JSON answer's `error` and `detail`, if any.
    async fn ask(
        router: &Router,
        method: Method,
        path: &str,
    ) -> (StatusCode, Option<String>, Option<String>) {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let json = serde_json::from_slice::<serde_json::Value>(&body).ok();
        let field = |k: &str| json.as_ref().and_then(|v| v[k].as_str().map(String::from));
        (status, field("error"), field("detail"))
    }

    /// A path of the template `path`: `{name}` is `default`, `{version}` is `1`.
    fn concrete(path: &str) -> String {
        path.replace("{name}", "default").replace("{version}", "1")
    }

    #[tokio::test]
    async fn the_404_lists_exactly_the_routes_the_router_has() {
        let st = state();
        let endpoints = endpoints(st.cfg.timeout_ms);
        let router = router(st);
        let (status, code, detail) = ask(&router, Method::GET, "/no/such/route").await;
        assert_eq!(
            (status, code.as_deref()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
        let detail = detail.expect("the 404 has a detail");
        assert!(
            detail.starts_with("no route GET /no/such/route;"),
            "{detail}"
        );
        let listed: Vec<(String, String)> = detail
            .split_once("; the routes are ")
            .expect("the 404 names the routes")
            .1
            .split(", ")
            .map(|r| {
                let (m, p) = r.split_once(' ').expect("METHOD path");
                (m.to_string(), p.to_string())
            })
            .collect();
        let table: Vec<(String, String)> = endpoints
            .iter()
            .map(|e| (e.method.to_string(), e.path.to_string()))
            .collect();
        assert_eq!(listed, table);
        for e in &endpoints {
            let path = concrete(e.path);
            // Routed: whatever it answers (no model is loaded here), never the fallback.
            let (status, code, _) = ask(&router, e.method.clone(), &path).await;
            assert_ne!(code.as_deref(), Some("not_found"), "{} {path}", e.method);
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{} {path}",
                e.method
            );
            // The path is routed for its method only: another one is 405, not 404.
            let (status, code, _) = ask(&router, Method::DELETE, &path).await;
            assert_eq!(
                (status, code.as_deref()),
                (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")),
                "DELETE {path}"
            );
        }
    }
}
