//! The server's life: load the models, listen on the HTTP (and gRPC) port, serve
//! until SIGTERM/SIGINT, then finish the requests in progress and stop the workers.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::listen::PortMetrics;
use crate::metrics::Metrics;
use crate::models::{self, Served};
use crate::pool::PoolOptions;
use crate::state::AppState;
use crate::{admin, grpc, listen, router, swap};

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

/// Loads the served models (blocking): every folder of `--model-dir` under its name,
/// or `--model` (else the default model) as `default`.
fn load_models(cfg: &Config, metrics: &Arc<Metrics>) -> anyhow::Result<Vec<Served>> {
    let opts = PoolOptions::of(cfg);
    let Some(dir) = &cfg.model_dir else {
        let path = cfg.model_path()?;
        let served = Served::load(models::DEFAULT_NAME, &path, &opts, metrics.clone())?;
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
        .map(|(name, path)| Served::load(name, path, &opts, metrics.clone()))
        .collect()
}

/// Starts the gRPC service on `listener` until `stop` turns true; prints its address.
/// It runs on the same accept loop as HTTP ([`listen::serve`]), so the header and idle
/// timeouts, the connection cap and the per-connection stream limit hold for it too.
fn spawn_grpc(
    state: Arc<AppState>,
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
    let metrics = PortMetrics {
        port: "grpc",
        metrics: state.metrics.clone(),
    };
    let router = grpc::router(state);
    Ok(tokio::spawn(listen::serve(
        listener, router, limits, stop, metrics,
    )))
}

/// Loads the models into their worker pools, listens, and serves until SIGTERM/SIGINT;
/// then finishes the requests in progress and returns.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    cfg.validate()?;
    let admin_token = match &cfg.admin_token_file {
        Some(f) => Some(admin::AdminToken::read(f)?),
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
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
    let state = Arc::new(AppState {
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
    {
        let state = state.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            // The requests in progress are to finish: paused models run them too.
            for m in state.models.all() {
                m.pool.resume();
            }
            let _ = stop_tx.send(true);
        });
    }
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
    let app = router::router(state.clone());
    let metrics = PortMetrics {
        port: "http",
        metrics: state.metrics.clone(),
    };
    listen::serve(listener, app, limits, stop_rx, metrics).await;
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
