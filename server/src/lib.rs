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
//!   ([`app`]);
//! - a full pipeline answers 503 with `Retry-After`, a slow request 504, a large body
//!   413, bad input 4xx with a JSON `{"error", "detail"}` body ([`error`]);
//! - `/metrics` exposes Prometheus metrics ([`metrics`]); SIGTERM/SIGINT stop
//!   accepting connections, finish the requests in progress and exit 0 ([`serve`]).
//!
//! The HTTP API is described in the README's "HTTP API" section.

pub mod app;
pub mod config;
pub mod error;
pub mod input;
pub mod metrics;
pub mod pool;
pub mod sample;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lse_runtime::engine::EngineOptions;

pub use config::Config;

/// A stable identity of a model file: `<name>-<16 hex digits of FNV-1a 64 of its bytes>`,
/// where the name is the folder's name for `.../<name>/model.onnx`, else the file stem.
pub fn model_id(path: &Path) -> std::io::Result<(String, u64)> {
    let bytes = std::fs::read(path)?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in &bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let name = if stem == "model" {
        path.canonicalize()
            .ok()
            .and_then(|p| {
                p.parent()
                    .and_then(|d| d.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or(stem)
    } else {
        stem
    };
    Ok((format!("{name}-{h:016x}"), bytes.len() as u64))
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT: shutting down"),
        _ = term => tracing::info!("SIGTERM: shutting down"),
    }
}

/// Loads the model into the worker pool, listens, and serves until SIGTERM/SIGINT;
/// then finishes the requests in progress and returns.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    cfg.validate()?;
    let model_path = cfg.model_path()?;
    let (id, file_bytes) = model_id(&model_path)
        .with_context(|| format!("cannot read model {}", model_path.display()))?;
    let metrics = Arc::new(metrics::Metrics::default());
    let opts = pool::PoolOptions {
        workers: cfg.workers as usize,
        max_batch: cfg.max_batch as usize,
        batch_wait: Duration::from_millis(cfg.batch_wait_ms),
        queue: cfg.queue as usize,
        engine: EngineOptions {
            provider: cfg.provider,
            ort_lib: cfg.ort_lib.clone(),
            threads: cfg.threads_per_worker(),
            device_id: 0,
            ..Default::default()
        },
    };
    let (pool, meta, provider) = {
        let (path, metrics) = (model_path.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || pool::Pool::start(&path, &opts, metrics))
            .await
            .context("the model loader failed")??
    };
    let listener = tokio::net::TcpListener::bind(&cfg.addr)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.addr))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(app::AppState {
        admission: Arc::new(tokio::sync::Semaphore::new(cfg.queue as usize)),
        model: app::ModelInfo {
            id,
            path: model_path.display().to_string(),
            file_bytes,
            provider,
        },
        label_lut: meta.label_lut(),
        color_lut: meta.color_lut(),
        meta,
        pool,
        metrics,
        cfg,
    });
    tracing::info!(%addr, model = %state.model.id, provider = %provider, workers = state.cfg.workers, "serving");
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {addr}");
        let _ = out.flush();
    }
    let app = app::router(state.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the server failed")?;
    tracing::info!("stopped accepting connections; finishing the queued work");
    tokio::task::spawn_blocking(move || state.pool.close())
        .await
        .context("stopping the workers failed")?;
    tracing::info!("stopped");
    Ok(())
}
