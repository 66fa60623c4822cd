//! The Open Inference Protocol (KServe v2) as this server speaks it, independent of the
//! transport: which tensors a model takes and gives, and one inference from request
//! tensors to answer tensors. [`crate::v2_http`] and [`crate::grpc`] translate their
//! wire formats to and from these types.
//!
//! Inputs (exactly one per request):
//! - `image`, BYTES `[N]`: encoded PNG or JPEG images (our difference from Triton's
//!   usual image models: the client does no preprocessing);
//! - `image_rgb`, UINT8 `[N, H, W, 3]` (or `[H, W, 3]` for one image): RGB pixels.
//!
//! Outputs (requested by name; none requested: `labels`):
//! - `labels`, UINT8 `[N, H, W]` at the images' size: Cityscapes label ids, or train
//!   ids with the parameter `ids` = `train` (on the output or on the request);
//! - `scores`, FP32 `[N, C, h, w]`: the model's class scores (logits) at its training
//!   size `w x h`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use image::RgbImage;

use crate::error::ApiError;
use crate::models::{Served, VERSION};
use crate::pipeline::{self, Predicted, Source};
use crate::state::AppState;

pub const INPUT_ENCODED: &str = "image";
pub const INPUT_PIXELS: &str = "image_rgb";
pub const OUTPUT_LABELS: &str = "labels";
pub const OUTPUT_SCORES: &str = "scores";
/// The parameter that chooses label ids (`label`, the default) or train ids (`train`).
pub const IDS_PARAMETER: &str = "ids";
/// What the model metadata calls the platform.
pub const PLATFORM: &str = "lse_segmentation";

/// A tensor's name, element type and shape (-1: any size), as model metadata lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorMeta {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

/// A model's inputs and outputs.
pub fn model_tensors(m: &Served) -> (Vec<TensorMeta>, Vec<TensorMeta>) {
    let [w, h] = m.meta.train_size;
    let classes = m.meta.num_classes() as i64;
    let t = |name, datatype, shape: &[i64]| TensorMeta {
        name,
        datatype,
        shape: shape.to_vec(),
    };
    (
        vec![
            t(INPUT_ENCODED, "BYTES", &[-1]),
            t(INPUT_PIXELS, "UINT8", &[-1, -1, -1, 3]),
        ],
        vec![
            t(OUTPUT_LABELS, "UINT8", &[-1, -1, -1]),
            t(OUTPUT_SCORES, "FP32", &[-1, classes, h as i64, w as i64]),
        ],
    )
}

/// The elements of a request's input tensor.
#[derive(Debug)]
pub enum InputData {
    /// BYTES elements, one per image.
    Elements(Vec<Bytes>),
    /// Values of a UINT8 tensor (checked against 0..=255 as they were read).
    Numbers(Vec<u8>),
    /// Raw little-endian bytes (the binary-data extension, gRPC's raw contents).
    Raw(Bytes),
}

/// One input tensor of a request.
#[derive(Debug)]
pub struct InputTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: InputData,
}

/// Label ids or train ids in `labels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ids {
    Label,
    Train,
}

impl Ids {
    pub fn parse(v: &str) -> Result<Self, ApiError> {
        match v {
            "label" => Ok(Self::Label),
            "train" => Ok(Self::Train),
            other => Err(bad(format!(
                "parameter `{IDS_PARAMETER}` must be `label` or `train`, got `{}`",
                other.chars().take(64).collect::<String>()
            ))),
        }
    }
}

/// One requested output.
#[derive(Debug, Clone)]
pub struct OutputRequest {
    pub name: String,
    /// `None`: the request's choice.
    pub ids: Option<Ids>,
    /// Whether the answer carries it as binary data (HTTP only).
    pub binary: bool,
}

/// One inference request, whatever the transport.
#[derive(Debug)]
pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<InputTensor>,
    pub outputs: Vec<OutputRequest>,
    /// The request-level `ids` parameter.
    pub ids: Ids,
    /// Whether outputs are binary unless they say otherwise (HTTP's
    /// `binary_data_output` request parameter).
    pub binary_default: bool,
}

/// The elements of an answer tensor (serialised as a flat JSON array).
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum OutputData {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

impl OutputData {
    /// Little-endian bytes (a UINT8 tensor's own buffer, without a copy).
    pub fn into_le_bytes(self) -> Vec<u8> {
        match self {
            Self::U8(v) => v,
            Self::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// One answer tensor.
#[derive(Debug)]
pub struct OutputTensor {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
    pub data: OutputData,
    pub binary: bool,
}

/// An error of the protocol's request checks: 400 `bad_tensor`.
pub fn bad(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request("bad_tensor", detail)
}

/// The model version a request names, checked against the one served.
pub fn check_version(version: &str) -> Result<(), ApiError> {
    if version.is_empty() || version == VERSION {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_version",
        format!(
            "version `{}` is not served: each model has version {VERSION}",
            version.chars().take(64).collect::<String>()
        ),
    ))
}

/// The error for a request without exactly one input.
pub fn input_count_error(n: usize) -> ApiError {
    bad(format!(
        "a request has exactly one input (`{INPUT_ENCODED}`, BYTES, or `{INPUT_PIXELS}`, UINT8), got {n}"
    ))
}

/// The images of a request: its one input tensor, checked.
pub fn images(req: &mut InferRequest) -> Result<Vec<Source>, ApiError> {
    if req.inputs.len() != 1 {
        return Err(input_count_error(req.inputs.len()));
    }
    let input = req.inputs.remove(0);
    let sources = match input.name.as_str() {
        INPUT_ENCODED => encoded_images(input)?,
        INPUT_PIXELS => pixel_images(input)?,
        other => {
            return Err(bad(format!(
                "unknown input `{}`: the model takes `{INPUT_ENCODED}` (BYTES) or `{INPUT_PIXELS}` (UINT8)",
                other.chars().take(64).collect::<String>()
            )));
        }
    };
    if sources.is_empty() {
        return Err(bad("the input holds no image"));
    }
    Ok(sources)
}

fn check_datatype(input: &InputTensor, want: &str) -> Result<(), ApiError> {
    if input.datatype == want {
        return Ok(());
    }
    Err(bad(format!(
        "input `{}` must be {want}, got datatype `{}`",
        input.name,
        input.datatype.chars().take(32).collect::<String>()
    )))
}

fn encoded_images(input: InputTensor) -> Result<Vec<Source>, ApiError> {
    check_datatype(&input, "BYTES")?;
    let n = match input.shape.as_slice() {
        [n] | [n, 1] if *n >= 0 => *n as usize,
        s => {
            return Err(bad(format!(
                "input `{INPUT_ENCODED}` has shape {s:?}: it must be [N] (one encoded image per element)"
            )));
        }
    };
    let elements = match input.data {
        InputData::Elements(e) => e,
        InputData::Raw(raw) => split_bytes_elements(&raw)?,
        InputData::Numbers(_) => return Err(bad("BYTES input given as numbers")),
    };
    if elements.len() != n {
        return Err(bad(format!(
            "input `{INPUT_ENCODED}` has shape [{n}] but {} elements",
            elements.len()
        )));
    }
    Ok(elements.into_iter().map(Source::Encoded).collect())
}

/// Splits the serialised BYTES tensor of the binary-data extension: each element is a
/// 4-byte little-endian length followed by that many bytes.
pub fn split_bytes_elements(raw: &Bytes) -> Result<Vec<Bytes>, ApiError> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while i < raw.len() {
        let Some(len) = raw.get(i..i + 4) else {
            return Err(bad("a BYTES element's 4-byte length prefix is cut short"));
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let start = i + 4;
        if raw.len() - start < len {
            return Err(bad(format!(
                "a BYTES element declares {len} bytes but only {} follow",
                raw.len() - start
            )));
        }
        out.push(raw.slice(start..start + len));
        i = start + len;
    }
    Ok(out)
}

fn pixel_images(input: InputTensor) -> Result<Vec<Source>, ApiError> {
    check_datatype(&input, "UINT8")?;
    let (n, h, w) = match input.shape.as_slice() {
        &[n, h, w, 3] if n >= 0 && h > 0 && w > 0 => (n as usize, h as usize, w as usize),
        &[h, w, 3] if h > 0 && w > 0 => (1, h as usize, w as usize),
        s => {
            return Err(bad(format!(
                "input `{INPUT_PIXELS}` has shape {s:?}: it must be [N, H, W, 3] or [H, W, 3]"
            )));
        }
    };
    let (w32, h32) = (u32::try_from(w), u32::try_from(h));
    let (Ok(w32), Ok(h32)) = (w32, h32) else {
        return Err(bad(format!("input `{INPUT_PIXELS}` is {w}x{h} pixels")));
    };
    // Raw bytes are read in place; only JSON numbers need converting.
    let bytes: std::borrow::Cow<'_, [u8]> = match &input.data {
        InputData::Raw(raw) => raw.as_ref().into(),
        InputData::Numbers(v) => v.as_slice().into(),
        InputData::Elements(_) => return Err(bad("UINT8 input given as BYTES elements")),
    };
    let per_image = h * w * 3;
    if Some(bytes.len()) != per_image.checked_mul(n) {
        return Err(bad(format!(
            "input `{INPUT_PIXELS}` has shape {:?} ({} values) but {} values",
            input.shape,
            per_image.saturating_mul(n),
            bytes.len()
        )));
    }
    bytes
        .chunks_exact(per_image)
        .map(|c| {
            RgbImage::from_raw(w32, h32, c.to_vec())
                .map(Source::Pixels)
                .ok_or_else(|| bad(format!("input `{INPUT_PIXELS}`: {w}x{h} pixels do not fit")))
        })
        .collect()
}

/// The outputs to produce: those requested, or `labels`.
pub fn requested(req: &InferRequest) -> Result<Vec<OutputRequest>, ApiError> {
    if req.outputs.is_empty() {
        return Ok(vec![OutputRequest {
            name: OUTPUT_LABELS.into(),
            ids: None,
            binary: req.binary_default,
        }]);
    }
    for o in &req.outputs {
        if o.name != OUTPUT_LABELS && o.name != OUTPUT_SCORES {
            return Err(bad(format!(
                "unknown output `{}`: the model gives `{OUTPUT_LABELS}` and `{OUTPUT_SCORES}`",
                o.name.chars().take(64).collect::<String>()
            )));
        }
    }
    Ok(req.outputs.clone())
}

/// The width and height of each image: from the header of an encoded one (nothing is
/// decoded), from the tensor for pixels. Blocking.
fn image_sizes(sources: &[Source]) -> Result<Vec<(u64, u64)>, ApiError> {
    sources
        .iter()
        .map(|s| match s {
            Source::Encoded(b) => {
                crate::input::header_dimensions(b).map(|(_, w, h)| (w as u64, h as u64))
            }
            Source::Pixels(img) => Ok((img.width() as u64, img.height() as u64)),
        })
        .collect()
}

/// Bytes per element of an answer tensor: binary, or JSON text (`255,` for UINT8; a
/// shortest-form float and its comma, at most 16 characters, for FP32).
fn element_bytes(datatype_bytes: u64, binary: bool) -> u64 {
    match (datatype_bytes, binary) {
        (n, true) => n,
        (1, false) => 4,
        _ => 16,
    }
}

/// Refuses, before anything is decoded or computed, a request whose images have more
/// pixels in all than `--max-request-pixels`, or whose answer would be larger than
/// `--max-answer-mb` (413, naming the limit and the estimate).
pub fn check_budget(
    cfg: &crate::config::Config,
    model: &Served,
    sizes: &[(u64, u64)],
    outputs: &[OutputRequest],
) -> Result<(), ApiError> {
    let n = sizes.len() as u64;
    let pixels: u64 = sizes.iter().map(|(w, h)| w.saturating_mul(*h)).sum();
    if pixels > cfg.max_request_pixels {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_pixels",
            format!(
                "the request's {n} images have {pixels} pixels in all, more than --max-request-pixels {}",
                cfg.max_request_pixels
            ),
        ));
    }
    let [tw, th] = model.meta.train_size;
    let classes = model.meta.num_classes() as u64;
    let mut total = 0u64;
    let mut parts = Vec::new();
    for o in outputs {
        let form = if o.binary { "binary" } else { "JSON" };
        let (values, what) = if o.name == OUTPUT_SCORES {
            let v = n * classes * th as u64 * tw as u64;
            let what = format!(
                "`{OUTPUT_SCORES}` for {n} images: {n} x {classes} x {th} x {tw} FP32 values as {form}"
            );
            (v.saturating_mul(element_bytes(4, o.binary)), what)
        } else {
            let what = format!("`{OUTPUT_LABELS}` for {n} images: {pixels} UINT8 values as {form}");
            (pixels.saturating_mul(element_bytes(1, o.binary)), what)
        };
        total = total.saturating_add(values);
        parts.push(what);
    }
    let limit = cfg.max_answer_bytes();
    if total > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "answer_too_large",
            format!(
                "the answer would take about {:.1} MiB ({}), more than --max-answer-mb {}",
                total as f64 / (1024.0 * 1024.0),
                parts.join("; "),
                cfg.max_answer_mb
            ),
        ));
    }
    Ok(())
}

/// Runs one inference: every image through the shared pipeline (the pool batches
/// them), then the requested tensors.
pub async fn infer(
    st: &AppState,
    model: &Arc<Served>,
    mut req: InferRequest,
) -> Result<Vec<OutputTensor>, ApiError> {
    let outputs = requested(&req)?;
    let sources = images(&mut req)?;
    let (sources, sizes) = pipeline::blocking(move || {
        let sizes = image_sizes(&sources)?;
        Ok((sources, sizes))
    })
    .await?;
    check_budget(&st.cfg, model, &sizes, &outputs)?;
    let _permit = pipeline::admit(st, sources.len())?;
    let preds = futures_util::future::try_join_all(
        sources.into_iter().map(|s| pipeline::predict(st, model, s)),
    )
    .await?;
    let preds = Arc::new(preds);
    let mut tensors = Vec::with_capacity(outputs.len());
    for o in outputs {
        let (preds, model) = (preds.clone(), model.clone());
        let ids = o.ids.unwrap_or(req.ids);
        let t = pipeline::blocking(move || match o.name.as_str() {
            OUTPUT_LABELS => labels_tensor(&model, &preds, ids, o.binary),
            _ => Ok(scores_tensor(&preds, o.binary)),
        })
        .await?;
        tensors.push(t);
    }
    Ok(tensors)
}

/// `labels`: `[N, H, W]` label or train ids at the images' (shared) size.
fn labels_tensor(
    model: &Served,
    preds: &[Predicted],
    ids: Ids,
    binary: bool,
) -> Result<OutputTensor, ApiError> {
    let (w, h) = preds[0].image.dimensions();
    if let Some(p) = preds.iter().find(|p| p.image.dimensions() != (w, h)) {
        let (w2, h2) = p.image.dimensions();
        return Err(bad(format!(
            "the images of one request must share a size for `{OUTPUT_LABELS}` [N, H, W]: got {w}x{h} and {w2}x{h2}"
        )));
    }
    let mut data = Vec::with_capacity(preds.len() * (w * h) as usize);
    for p in preds {
        let train = pipeline::train_ids(p)?;
        match ids {
            Ids::Train => data.extend_from_slice(train.as_raw()),
            Ids::Label => data.extend(train.as_raw().iter().map(|&t| model.label_lut[t as usize])),
        }
    }
    Ok(OutputTensor {
        name: OUTPUT_LABELS,
        datatype: "UINT8",
        shape: vec![preds.len() as i64, h as i64, w as i64],
        data: OutputData::U8(data),
        binary,
    })
}

/// `scores`: `[N, C, h, w]` logits at the model's training size.
fn scores_tensor(preds: &[Predicted], binary: bool) -> OutputTensor {
    let dims = preds[0].out.scores().dim();
    let mut data = Vec::with_capacity(preds.len() * dims.0 * dims.1 * dims.2);
    for p in preds {
        data.extend(p.out.scores().iter().copied());
    }
    OutputTensor {
        name: OUTPUT_SCORES,
        datatype: "FP32",
        shape: vec![
            preds.len() as i64,
            dims.0 as i64,
            dims.1 as i64,
            dims.2 as i64,
        ],
        data: OutputData::F32(data),
        binary,
    }
}
