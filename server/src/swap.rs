//! Several models and swaps without downtime: `GET /v1/models`,
//! `POST /v1/models/{name}/load` and SIGHUP (reload the folders of `--model-dir` whose
//! file changed, load new ones); and holding a model's work:
//! `POST /v1/models/{name}/pause` and `.../resume`.
//!
//! A load opens the new model's sessions and warms them up while the old model keeps
//! answering; only then is the registry entry replaced. Requests in flight hold the
//! old model and finish on it; its workers exit when the last of them is answered.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::endpoint::Endpoint;
use crate::error::ApiError;
use crate::models::{self, Served};
use crate::pipeline::blocking;
use crate::pool::PoolOptions;
use crate::state::AppState;

/// Longest time a new model may take to load and warm up.
const WARM_LIMIT: Duration = Duration::from_secs(300);

/// The served models' routes: the list, and the admin routes that load, pause and
/// resume a model.
pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::get("/v1/models", list),
        Endpoint::post("/v1/models/{name}/load", load_route),
        Endpoint::post("/v1/models/{name}/pause", pause_route),
        Endpoint::post("/v1/models/{name}/resume", resume_route),
    ]
}

fn describe(m: &Served, default: &str) -> Value {
    json!({
        "name": m.name,
        "default": m.name == default,
        "ready": m.pool.ready(),
        "paused": m.pool.paused(),
        "id": m.info.id,
        "path": m.info.path,
        "file_bytes": m.info.file_bytes,
        "provider": m.info.provider,
        "classes": m.meta.num_classes(),
        "train_size": m.meta.train_size,
        "architecture": m.meta.architecture,
        "method": m.meta.method,
    })
}

/// `GET /v1/models`: every served model with its metadata.
pub async fn list(State(st): State<Arc<AppState>>) -> Json<Value> {
    let d = &st.models.default;
    let models: Vec<Value> = st.models.all().iter().map(|m| describe(m, d)).collect();
    Json(json!({ "default": d, "models": models }))
}

/// `POST /v1/models/{name}/load`: loads `--model-dir/NAME/model.onnx`, warms it up and
/// swaps it in; answers with the new and the replaced model's ids.
pub async fn load_route(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    crate::admin::authorize(st.admin_token.as_ref(), &headers)?;
    let (served, previous) = load(&st, &name).await?;
    Ok(Json(json!({
        "name": name,
        "id": served.info.id,
        "previous": previous,
        "ready": served.pool.ready(),
    })))
}

/// `POST /v1/models/{name}/pause`: holds the model's images in its queue until
/// resumed (a batch already running finishes). Its requests keep their admission
/// places, so once `--queue` images wait, further requests answer 503 `queue_full`;
/// each request is still held to `--timeout-ms`. SIGTERM and a load of the same name
/// resume it. Answers `{"name", "id", "paused": true}`.
pub async fn pause_route(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&st, &headers, &name, true)
}

/// `POST /v1/models/{name}/resume`: the model's workers take its queued images
/// again. Answers `{"name", "id", "paused": false}`.
pub async fn resume_route(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&st, &headers, &name, false)
}

/// Pauses or resumes the model `name` (admin only).
fn set_paused(
    st: &AppState,
    headers: &HeaderMap,
    name: &str,
    paused: bool,
) -> Result<Json<Value>, ApiError> {
    crate::admin::authorize(st.admin_token.as_ref(), headers)?;
    let m = st.models.get(Some(name))?;
    if paused {
        m.pool.pause();
    } else {
        m.pool.resume();
    }
    tracing::info!(name, id = %m.info.id, paused, "model paused or resumed");
    Ok(Json(
        json!({ "name": m.name, "id": m.info.id, "paused": paused }),
    ))
}

/// Loads and swaps in the model `name` of `--model-dir`; returns it and the id of
/// the model it replaced.
pub async fn load(
    st: &Arc<AppState>,
    name: &str,
) -> Result<(Arc<Served>, Option<String>), ApiError> {
    let Some(dir) = st.cfg.model_dir.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_model_dir",
            "models can only be loaded when the server was started with --model-dir",
        ));
    };
    let path = {
        let (dir, name) = (dir.clone(), name.to_string());
        blocking(move || models::resolve(&dir, &name)).await?
    };
    let lock = st.models.load_lock(name);
    let _one_load_of_this_name = lock.lock().await;
    let (opts, metrics, name2) = (
        PoolOptions::of(&st.cfg),
        st.metrics.clone(),
        name.to_string(),
    );
    let served = blocking(move || {
        models::load_warm(&name2, &path, &opts, metrics, WARM_LIMIT).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "load_failed",
                format!("{e:#}"),
            )
        })
    })
    .await?;
    let id = served.info.id.clone();
    let old = st.models.replace(served);
    let previous = old.map(|o| o.info.id.clone());
    tracing::info!(name, id = %id, previous = ?previous, "model swapped in");
    Ok((st.models.get(Some(name))?, previous))
}

/// Reloads every folder of `--model-dir` whose file differs from the served one (or
/// that is not served yet); logs each outcome.
pub async fn reload_changed(st: &Arc<AppState>) {
    let Some(dir) = st.cfg.model_dir.clone() else {
        tracing::info!("SIGHUP: no --model-dir, nothing to reload");
        return;
    };
    let found = match blocking(move || {
        models::scan(&dir).map_err(|e| ApiError::internal(format!("{e:#}")))
    })
    .await
    {
        Ok(f) => f,
        Err(e) => return tracing::error!(error = %e, "SIGHUP: cannot scan the model folder"),
    };
    for (name, path) in found {
        let served = st.models.get(Some(&name)).ok().map(|m| m.info.id.clone());
        let current = blocking(move || {
            models::model_id(&path).map_err(|e| ApiError::internal(e.to_string()))
        })
        .await
        .map(|(id, _)| id);
        if current.as_ref().ok() == served.as_ref() {
            continue;
        }
        match load(st, &name).await {
            Ok((m, prev)) => {
                tracing::info!(name, id = %m.info.id, previous = ?prev, "SIGHUP: reloaded")
            }
            Err(e) => {
                tracing::error!(name, error = %e, "SIGHUP: reload failed; the old model stays")
            }
        }
    }
}

/// Reloads changed models on every SIGHUP, until the process stops.
pub async fn on_sighup(st: Arc<AppState>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => return tracing::warn!(error = %e, "cannot listen for SIGHUP"),
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading changed models");
            reload_changed(&st).await;
        }
    }
    #[cfg(not(unix))]
    let _ = st;
}
