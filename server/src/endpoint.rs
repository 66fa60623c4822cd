//! One route of the HTTP port: its method, its path template and its handler. Each
//! route module lists its own ([`crate::v1`], [`crate::swap`], [`crate::monitoring`],
//! [`crate::v2_http`]); [`crate::router`] assembles the router from those lists, and
//! the 404 answer names the routes from the same lists, so neither can drift.

use std::sync::Arc;
use std::time::Duration;

use axum::BoxError;
use axum::error_handling::HandleErrorLayer;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodRouter, get, post};
use tower::ServiceBuilder;

use crate::error::ApiError;
use crate::state::AppState;

/// A method and path template and what answers them.
#[derive(Clone)]
pub struct Endpoint {
    pub method: Method,
    /// The path template, as axum matches it (`/v2/models/{name}`).
    pub path: &'static str,
    pub handler: MethodRouter<Arc<AppState>>,
}

impl Endpoint {
    /// `GET path`, answered by `handler`.
    pub fn get<H, T>(path: &'static str, handler: H) -> Self
    where
        H: Handler<T, Arc<AppState>>,
        T: 'static,
    {
        Self {
            method: Method::GET,
            path,
            handler: get(handler),
        }
    }

    /// `POST path`, answered by `handler`.
    pub fn post<H, T>(path: &'static str, handler: H) -> Self
    where
        H: Handler<T, Arc<AppState>>,
        T: 'static,
    {
        Self {
            method: Method::POST,
            path,
            handler: post(handler),
        }
    }

    /// The same route held to the request time limit (`--timeout-ms`, then 504).
    pub fn timed(self, timeout_ms: u64) -> Self {
        Self {
            handler: with_timeout(self.handler, timeout_ms),
            ..self
        }
    }
}

/// Wraps a route in the request time limit: past `timeout_ms` the request is dropped
/// and answered 504 `timeout`.
fn with_timeout(
    route: MethodRouter<Arc<AppState>>,
    timeout_ms: u64,
) -> MethodRouter<Arc<AppState>> {
    route.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(move |e: BoxError| async move {
                if e.is::<tower::timeout::error::Elapsed>() {
                    ApiError::timeout(timeout_ms)
                } else {
                    ApiError::internal(e.to_string())
                }
            }))
            .timeout(Duration::from_millis(timeout_ms)),
    )
}
