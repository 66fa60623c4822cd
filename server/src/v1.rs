//! The page and the `/v1` API: `GET /`, `POST /v1/segment`, `GET /v1/model`,
//! `GET /v1/sample.png` (the served models' routes are [`crate::swap`]'s). Handlers stay
//! short: limits, the time limit, tracing and metrics are layers ([`crate::router`]);
//! decoding, resizing, upsampling and encoding run on the blocking thread pool;
//! inference runs in the worker pool ([`crate::pool`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use image::GrayImage;
use lse_runtime::contract::{self, ModelMeta};
use lse_runtime::{imageio, palette, predict};
use serde::Serialize;

use crate::endpoint::Endpoint;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::models::Served;
use crate::pipeline::{self, Predicted, Source, blocking};
use crate::state::AppState;

/// The web page (self-contained HTML, CSS and JavaScript).
pub const INDEX_HTML: &str = include_str!("../static/index.html");

/// Weight of the colours in `output=overlay`.
pub const OVERLAY_ALPHA: f32 = 0.5;

/// The answer formats of `POST /v1/segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    LabelIds,
    TrainIds,
    Color,
    Overlay,
    Json,
    Confidence,
    Entropy,
}

impl OutputKind {
    pub const NAMES: &'static str = "labelids, trainids, color, overlay, json, confidence, entropy";

    pub fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        Ok(match v {
            None | Some("labelids") => Self::LabelIds,
            Some("trainids") => Self::TrainIds,
            Some("color") => Self::Color,
            Some("overlay") => Self::Overlay,
            Some("json") => Self::Json,
            Some("confidence") => Self::Confidence,
            Some("entropy") => Self::Entropy,
            Some(other) => {
                return Err(ApiError::bad_request(
                    "bad_output",
                    format!(
                        "unknown output `{}`: use one of {}",
                        other.chars().take(64).collect::<String>(),
                        Self::NAMES
                    ),
                ));
            }
        })
    }
}

/// The page and the `/v1` inference routes (`/v1/segment` held to `timeout_ms`).
pub fn endpoints(timeout_ms: u64) -> Vec<Endpoint> {
    vec![
        Endpoint::get("/", index),
        Endpoint::post("/v1/segment", segment).timed(timeout_ms),
        Endpoint::get("/v1/model", model),
        Endpoint::get("/v1/sample.png", sample),
    ]
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// A request's query as one value per key; a key given twice is refused (400
/// `bad_query`) rather than one of its values silently winning.
pub struct SingleQuery(pub HashMap<String, String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for SingleQuery {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map_err(|e: QueryRejection| ApiError::bad_request("bad_query", e.body_text()))?;
        let mut map = HashMap::with_capacity(pairs.len());
        for (k, v) in pairs {
            if map.contains_key(&k) {
                return Err(ApiError::bad_request(
                    "bad_query",
                    format!(
                        "`{}` is given more than once in the query",
                        k.chars().take(64).collect::<String>()
                    ),
                ));
            }
            map.insert(k, v);
        }
        Ok(Self(map))
    }
}

async fn model(
    State(st): State<Arc<AppState>>,
    SingleQuery(q): SingleQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m = st.models.get(q.get("model").map(String::as_str))?;
    let c = &st.cfg;
    Ok(Json(serde_json::json!({
        "name": m.name,
        "model": m.info,
        "contract": {
            "input": {
                "name": contract::INPUT,
                "type": "float32",
                "shape": ["N", 3, "H", "W"],
                "values": "RGB, 0..255 (channel reordering and mean subtraction are inside the graph)",
            },
            "outputs": [
                { "name": contract::OUTPUT_TRAIN_IDS, "type": "uint8", "shape": ["N", "H", "W"] },
                { "name": contract::OUTPUT_SCORES, "type": "float32", "shape": ["N", "C", "H", "W"] },
            ],
            "prediction": "resize to train_size (bicubic), predict, bilinear upsampling of the class probabilities to the image's size, arg-max",
        },
        "metadata": m.meta,
        "server": {
            "workers": c.workers,
            "threads_per_worker": c.threads_per_worker(),
            "max_batch": c.max_batch,
            "batch_wait_ms": c.batch_wait_ms,
            "queue": c.queue,
            "timeout_ms": c.timeout_ms,
            "max_body_bytes": c.max_body_bytes(),
            "max_pixels": c.max_pixels,
            "max_request_pixels": c.max_request_pixels,
            "max_answer_bytes": c.max_answer_bytes(),
            "outputs": OutputKind::NAMES,
            "version": lse_runtime::VERSION,
        },
    })))
}

async fn sample(
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let side = |key: &str, default: u32| -> Result<u32, ApiError> {
        match q.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=crate::sample::MAX_SIDE).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "bad_query",
                        format!("{key} must be 1..={}", crate::sample::MAX_SIDE),
                    )
                }),
        }
    };
    let (w, h) = (side("width", 64)?, side("height", 48)?);
    let png = blocking(move || {
        let img = crate::sample::sample_image(w, h);
        imageio::encode_png(img.as_raw(), w, h, 3).map_err(|e| ApiError::internal(e.to_string()))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

/// The image bytes: the raw body, or the (first) file field of a multipart form.
async fn read_image_body(req: Request) -> Result<Bytes, ApiError> {
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    let body_err = |status: StatusCode, text: String| {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, "body_too_large", text)
        } else {
            ApiError::new(status, "bad_body", text)
        }
    };
    if !multipart {
        return Bytes::from_request(req, &())
            .await
            .map_err(|e| body_err(e.status(), e.body_text()));
    }
    let mut form = Multipart::from_request(req, &())
        .await
        .map_err(|e| body_err(e.status(), e.body_text()))?;
    let mut files = Vec::new();
    let mut first = None;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| body_err(e.status(), e.body_text()))?
    {
        let is_file = field.file_name().is_some();
        let data = field
            .bytes()
            .await
            .map_err(|e| body_err(e.status(), e.body_text()))?;
        if is_file {
            files.push(data);
        } else {
            first.get_or_insert(data);
        }
    }
    if files.len() > 1 {
        return Err(ApiError::bad_request(
            "bad_body",
            format!(
                "the multipart form has {} file fields: send one image per request",
                files.len()
            ),
        ));
    }
    files
        .pop()
        .or(first)
        .ok_or_else(|| ApiError::bad_request("empty_body", "the multipart form has no field"))
}

/// Per-class pixel counts of a train-id map, for `output=json`.
#[derive(Debug, Serialize)]
struct ClassShare {
    train_id: u8,
    label_id: u8,
    name: String,
    color: [u8; 3],
    pixels: u64,
    share: f64,
}

fn class_shares(meta: &ModelMeta, train: &GrayImage) -> Vec<ClassShare> {
    let mut counts = [0u64; 256];
    for &t in train.as_raw() {
        counts[t as usize] += 1;
    }
    let total = train.as_raw().len().max(1) as f64;
    let mut out: Vec<ClassShare> = counts
        .iter()
        .enumerate()
        .filter(|&(_, &n)| n > 0)
        .map(|(t, &n)| {
            let known = t < meta.num_classes();
            ClassShare {
                train_id: t as u8,
                label_id: if known { meta.label_ids[t] } else { 0 },
                name: if known {
                    meta.class_names[t].clone()
                } else {
                    "ignore".into()
                },
                color: if known { meta.colors[t] } else { [0, 0, 0] },
                pixels: n,
                share: n as f64 / total,
            }
        })
        .collect();
    out.sort_by(|a, b| b.pixels.cmp(&a.pixels).then(a.train_id.cmp(&b.train_id)));
    out
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Everything the answer is made from.
struct Done {
    metrics: Arc<Metrics>,
    model: Arc<Served>,
    p: Predicted,
    started: Instant,
}

/// Upsamples the prediction to the image's size and encodes the answer.
fn render(kind: OutputKind, d: Done) -> Result<Response, ApiError> {
    let post_started = Instant::now();
    let train = pipeline::train_ids(&d.p)?;
    d.metrics
        .observe_stage("postprocess", post_started.elapsed());
    let encode_started = Instant::now();
    let (body, content_type) = match picture(kind, &d, &train) {
        Some((pixels, channels)) => (encode_picture(&d, &pixels, channels)?, "image/png"),
        None => (
            json_answer(&d, &train, post_started.elapsed())?,
            "application/json",
        ),
    };
    d.metrics.observe_stage("encode", encode_started.elapsed());
    let mut resp = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    add_answer_headers(&mut resp, &d, post_started.elapsed());
    Ok(resp)
}

/// The pixels of a picture answer and their channels (1: grey, 3: RGB), at the
/// image's size; `None` for `output=json`.
fn picture<'a>(kind: OutputKind, d: &Done, train: &'a GrayImage) -> Option<(Cow<'a, [u8]>, u8)> {
    let m = &d.model;
    // Label ids and colours come from the model's own metadata, as in `lse segment`.
    let colors = || palette::colorize_with(train, &m.color_lut);
    Some(match kind {
        OutputKind::LabelIds => {
            let ids = train.as_raw().iter().map(|&t| m.label_lut[t as usize]);
            (Cow::Owned(ids.collect()), 1)
        }
        OutputKind::TrainIds => (Cow::Borrowed(train.as_raw().as_slice()), 1),
        OutputKind::Confidence | OutputKind::Entropy => {
            let (w, h) = train.dimensions();
            let (conf, ent) = predict::confidence_entropy(d.p.out.scores(), w, h);
            let map = if kind == OutputKind::Confidence {
                conf
            } else {
                ent
            };
            (Cow::Owned(map.into_raw()), 1)
        }
        OutputKind::Color => (Cow::Owned(colors().into_raw()), 3),
        OutputKind::Overlay => {
            let blended = palette::blend(&d.p.image, &colors(), OVERLAY_ALPHA);
            (Cow::Owned(blended.into_raw()), 3)
        }
        OutputKind::Json => return None,
    })
}

/// Encodes a picture answer of the image's size as PNG.
fn encode_picture(d: &Done, pixels: &[u8], channels: u8) -> Result<Vec<u8>, ApiError> {
    let (w, h) = d.p.image.dimensions();
    imageio::encode_png(pixels, w, h, channels)
        .map_err(|e| ApiError::internal(format!("cannot encode the answer: {e}")))
}

/// The `output=json` answer; `post` is the post-processing time so far.
fn json_answer(d: &Done, train: &GrayImage, post: Duration) -> Result<Vec<u8>, ApiError> {
    let (w, h) = d.p.image.dimensions();
    let m = &d.model;
    let v = serde_json::json!({
        "width": w,
        "height": h,
        "model": m.info.id,
        "classes": class_shares(&m.meta, train),
        "batch_size": d.p.out.batch_size,
        "timings_ms": {
            "decode": ms(d.p.decode),
            "queue": ms(d.p.out.queued),
            "inference": ms(d.p.out.inference),
            "postprocess": ms(post),
            "total": ms(d.started.elapsed()),
        },
    });
    serde_json::to_vec(&v).map_err(|e| ApiError::internal(e.to_string()))
}

/// `Server-Timing` (with `post`, the post-processing and encoding time), the model id
/// and the batch size.
fn add_answer_headers(resp: &mut Response, d: &Done, post: Duration) {
    let timing = format!(
        "decode;dur={}, queue;dur={}, infer;dur={}, post;dur={}",
        ms(d.p.decode),
        ms(d.p.out.queued),
        ms(d.p.out.inference),
        ms(post)
    );
    let hdrs = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&timing) {
        hdrs.insert("server-timing", v);
    }
    if let Ok(v) = HeaderValue::from_str(&d.model.info.id) {
        hdrs.insert("x-lse-model", v);
    }
    hdrs.insert("x-lse-batch-size", HeaderValue::from(d.p.out.batch_size));
}

/// `POST /v1/segment?output=...&model=...`
async fn segment(
    State(st): State<Arc<AppState>>,
    SingleQuery(q): SingleQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let kind = OutputKind::parse(q.get("output").map(String::as_str))?;
    let model = st.models.get(q.get("model").map(String::as_str))?;
    let bytes = read_image_body(req).await?;
    let _permit = pipeline::admit(&st, 1)?;
    let p = pipeline::predict(&st, &model, Source::Encoded(bytes)).await?;
    let metrics = st.metrics.clone();
    blocking(move || {
        render(
            kind,
            Done {
                metrics,
                model,
                p,
                started,
            },
        )
    })
    .await
}
