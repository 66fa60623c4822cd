//! # lse-server
//!
//! HTTP inference for LSE segmentation models on top of [`lse_runtime`]: the
//! `lse-serve` binary. The model of the service:
//!
//! - a request's image is decoded (after its header has been checked against the
//!   pixel limit) and resized to the model's training size on the blocking thread pool
//!   ([`input`]);
//! - the prepared image joins a bounded queue served by a pool of workers, each owning
//!   one ONNX Runtime session; workers batch waiting images dynamically ([`pool`]);
//! - the class probabilities are upsampled to the image's own size exactly as
//!   `lse segment` does ([`lse_runtime::predict`]) and encoded as the requested answer
//!   ([`v1`]);
//! - every HTTP route is one [`endpoint::Endpoint`] of a route module, and the router
//!   is assembled from them in one place ([`router`]);
//! - a full pipeline answers 503 with `Retry-After`, a slow request 504, a large body
//!   413, bad input 4xx with a JSON `{"error", "detail"}` body ([`error`]);
//! - `/metrics` exposes Prometheus metrics ([`metrics`], [`monitoring`]); SIGTERM/SIGINT
//!   stop accepting connections, finish the requests in progress and exit 0
//!   ([`serve()`]).
//!
//! The HTTP API is described in the README's "HTTP API" section.

pub mod admin;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod grpc;
pub mod grpc_codec;
pub mod input;
pub mod limit;
pub mod listen;
pub mod metrics;
pub mod models;
pub mod monitoring;
pub mod pipeline;
pub mod pool;
pub mod router;
pub mod sample;
pub mod serve;
pub mod state;
pub mod swap;
pub mod v1;
pub mod v2;
pub mod v2_http;

pub use config::Config;
pub use serve::{serve, shutdown_signal};
