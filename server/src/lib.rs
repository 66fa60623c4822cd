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

pub mod admin;
pub mod app;
pub mod config;
pub mod error;
pub mod grpc;
pub mod grpc_codec;
pub mod input;
pub mod limit;
pub mod listen;
pub mod metrics;
pub mod models;
pub mod pipeline;
pub mod pool;
pub mod sample;
pub mod state;
pub mod swap;
pub mod v2;
pub mod v2_http;

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

/// The settings of each model's worker pool.
pub fn pool_options(cfg: &Config) -> pool::PoolOptions {
    let devices = cfg.worker_devices();
    pool::PoolOptions {
        workers: devices.len(),
        devices,
        max_batch: cfg.max_batch as usize,
        batch_wait: Duration::from_millis(cfg.batch_wait_ms),
        queue: cfg.queue as usize,
        engine: EngineOptions {
            provider: cfg.provider,
            ort_lib: cfg.ort_lib.clone(),
            threads: cfg.threads_per_worker(),
            device_id: 0,
            // TensorRT's shape profile covers the largest batch a worker forms.
            max_batch: cfg.max_batch as usize,
            ..Default::default()
        },
    }
}

/// Loads the served models (blocking): every folder of `--model-dir` under its name,
/// or `--model` (else the default model) as `default`.
fn load_models(
    cfg: &Config,
    metrics: &Arc<metrics::Metrics>,
) -> anyhow::Result<Vec<models::Served>> {
    let opts = pool_options(cfg);
    let Some(dir) = &cfg.model_dir else {
        let path = cfg.model_path()?;
        let served = models::Served::load(models::DEFAULT_NAME, &path, &opts, metrics.clone())?;
        return Ok(vec![served]);
    };
    let found = models::scan(dir)?;
    anyhow::ensure!(
        !found.is_empty(),
        "--model-dir {} has no model folder (NAME/model.onnx)",
        dir.display()
    );
    found
        .iter()
        .map(|(name, path)| models::Served::load(name, path, &opts, metrics.clone()))
        .collect()
}

/// Starts the gRPC service on `listener` until `stop` turns true; prints its address.
/// It runs on the same accept loop as HTTP ([`listen::serve`]), so the header and idle
/// timeouts, the connection cap and the per-connection stream limit hold for it too.
fn spawn_grpc(
    state: Arc<state::AppState>,
    listener: tokio::net::TcpListener,
    limits: listen::ConnLimits,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving the Open Inference Protocol over gRPC");
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "grpc listening on {addr}");
        let _ = out.flush();
    }
    let router = grpc::router(state);
    Ok(tokio::spawn(listen::serve(listener, router, limits, stop)))
}

/// Loads the models into their worker pools, listens, and serves until SIGTERM/SIGINT;
/// then finishes the requests in progress and returns.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    cfg.validate()?;
    let admin_token = match &cfg.admin_token_file {
        Some(f) => Some(admin::AdminToken::read(f)?),
        None => None,
    };
    let metrics = Arc::new(metrics::Metrics::default());
    let loaded = {
        let (cfg, metrics) = (cfg.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || load_models(&cfg, &metrics))
            .await
            .context("the model loader failed")??
    };
    let listener = tokio::net::TcpListener::bind(&cfg.addr)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.addr))?;
    let addr = listener.local_addr()?;
    let grpc_listener = match &cfg.grpc_addr {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on --grpc-addr {a}"))?,
        ),
        None => None,
    };
    let state = Arc::new(state::AppState {
        admission: Arc::new(tokio::sync::Semaphore::new(cfg.queue as usize)),
        models: models::Registry::new(loaded),
        metrics,
        admin_token,
        cfg,
    });
    for m in state.models.all() {
        tracing::info!(%addr, name = %m.name, model = %m.info.id, file = %m.info.path, provider = %m.info.provider, workers = m.pool.workers(), "serving");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    tokio::spawn(swap::on_sighup(state.clone()));
    let limits = listen::ConnLimits {
        header_timeout: Duration::from_millis(state.cfg.header_timeout_ms),
        idle_timeout: Duration::from_millis(state.cfg.idle_timeout_ms),
        max_connections: state.cfg.max_connections as usize,
        max_streams: state.cfg.max_streams,
    };
    let grpc = match grpc_listener {
        Some(l) => Some(spawn_grpc(state.clone(), l, limits, stop_rx.clone())?),
        None => None,
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {addr}");
        let _ = out.flush();
    }
    let app = app::router(state.clone());
    listen::serve(listener, app, limits, stop_rx).await;
    if let Some(g) = grpc {
        g.await.context("the gRPC server failed")?;
    }
    tracing::info!("stopped accepting connections; finishing the queued work");
    tokio::task::spawn_blocking(move || {
        for m in state.models.all() {
            m.pool.close();
        }
    })
    .await
    .context("stopping the workers failed")?;
    tracing::info!("stopped");
    Ok(())
}
