//! The monitoring routes: liveness (`/healthz`), readiness (`/readyz`: every worker
//! has loaded and warmed up its model) and the Prometheus metrics (`/metrics`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::endpoint::Endpoint;
use crate::error::ApiError;
use crate::state::AppState;

/// The monitoring routes.
pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::get("/healthz", healthz),
        Endpoint::get("/readyz", readyz),
        Endpoint::get("/metrics", metrics),
    ]
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let g = st.gauges();
    if st.models.ready() {
        Json(serde_json::json!({ "status": "ready", "workers": g.workers })).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!(
                "{} of {} workers have loaded and warmed up their model",
                g.workers_ready, g.workers
            ),
        )
        .into_response()
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let text = st.metrics.render(st.gauges());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
