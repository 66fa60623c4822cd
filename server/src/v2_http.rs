//! The Open Inference Protocol's HTTP/REST routes (`/v2/...`), with JSON tensors and
//! the binary-data extension: a request or answer body may be a JSON header of
//! `Inference-Header-Content-Length` bytes followed by the tensors' raw bytes, each
//! tensor saying its share in its `binary_data_size` parameter.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::app::AppState;
use crate::error::ApiError;
use crate::models::{Served, VERSION};
use crate::v2::{
    self, IDS_PARAMETER, Ids, InferRequest, InputData, InputTensor, OutputData, OutputRequest,
    OutputTensor, bad,
};

/// The header that splits a body into its JSON part and its binary part.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The protocol's error answer: `{"error": SENTENCE}` (plus our stable `code`).
pub struct V2Error(pub ApiError);

impl From<ApiError> for V2Error {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        let e = self.0;
        let mut resp = e.clone().into_response();
        *resp.body_mut() =
            axum::body::Body::from(json!({ "error": e.detail, "code": e.code }).to_string());
        resp.headers_mut().remove(header::CONTENT_LENGTH);
        resp
    }
}

/// The `/v2` routes; `infer` wraps the inference route in the request time limit.
pub fn routes(
    infer: impl FnOnce(MethodRouter<Arc<AppState>>) -> MethodRouter<Arc<AppState>>,
) -> Router<Arc<AppState>> {
    let infer_route = infer(post(infer_handler));
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{name}/infer", infer_route.clone())
        .route("/v2/models/{name}/versions/{version}/infer", infer_route)
}

/// The model a `/v2/models/{name}[/versions/{version}]` path names.
#[derive(Debug, Deserialize)]
struct ModelPath {
    name: String,
    version: Option<String>,
}

fn lookup(st: &AppState, p: &ModelPath) -> Result<Arc<Served>, V2Error> {
    v2::check_version(p.version.as_deref().unwrap_or(""))?;
    Ok(st.models.get(Some(&p.name))?)
}

/// The server's name, version and protocol extensions.
pub fn server_metadata_json() -> Value {
    json!({
        "name": "lse-serve",
        "version": lse_runtime::VERSION,
        "extensions": ["binary_tensor_data"],
    })
}

async fn server_metadata() -> Json<Value> {
    Json(server_metadata_json())
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(st): State<Arc<AppState>>) -> StatusCode {
    if st.models.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn model_ready(
    State(st): State<Arc<AppState>>,
    Path(p): Path<ModelPath>,
) -> Result<StatusCode, V2Error> {
    let m = lookup(&st, &p)?;
    Ok(if m.pool.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    })
}

async fn model_metadata(
    State(st): State<Arc<AppState>>,
    Path(p): Path<ModelPath>,
) -> Result<Json<Value>, V2Error> {
    let m = lookup(&st, &p)?;
    let (inputs, outputs) = v2::model_tensors(&m);
    Ok(Json(json!({
        "name": m.name,
        "versions": [VERSION],
        "platform": v2::PLATFORM,
        "inputs": inputs,
        "outputs": outputs,
    })))
}

async fn infer_handler(
    State(st): State<Arc<AppState>>,
    Path(p): Path<ModelPath>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, V2Error> {
    let m = lookup(&st, &p)?;
    let (req, id) = parse_request(&headers, body)?;
    let outputs = v2::infer(&st, &m, req).await?;
    Ok(answer(&m, id, outputs)?)
}

/// Splits the body at `Inference-Header-Content-Length` (absent: all JSON).
fn split_body(headers: &HeaderMap, body: Bytes) -> Result<(Bytes, Bytes), ApiError> {
    let Some(v) = headers.get(HEADER_LENGTH) else {
        return Ok((body, Bytes::new()));
    };
    let n = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .ok_or_else(|| bad(format!("{HEADER_LENGTH} must be a byte count, got {v:?}")))?;
    if n > body.len() {
        return Err(bad(format!(
            "{HEADER_LENGTH} is {n} but the body has {} bytes",
            body.len()
        )));
    }
    Ok((body.slice(..n), body.slice(n..)))
}

/// The JSON request header as the protocol defines it.
#[derive(Debug, Deserialize)]
struct RequestJson {
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Vec<OutputJson>,
}

#[derive(Debug, Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

fn parse_request(
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(InferRequest, Option<String>), ApiError> {
    let (head, mut binary) = split_body(headers, body)?;
    let r: RequestJson = serde_json::from_slice(&head).map_err(|e| {
        ApiError::bad_request(
            "bad_json",
            format!("the inference request is not valid JSON: {e}"),
        )
    })?;
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for i in r.inputs {
        inputs.push(parse_input(i, &mut binary)?);
    }
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes of binary data follow the JSON header that no input claims (binary_data_size)",
            binary.len()
        )));
    }
    let binary_default = bool_param(&r.parameters, "binary_data_output")?.unwrap_or(false);
    let outputs = r
        .outputs
        .into_iter()
        .map(|o| {
            Ok(OutputRequest {
                ids: ids_param(&o.parameters)?,
                binary: bool_param(&o.parameters, "binary_data")?.unwrap_or(binary_default),
                name: o.name,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    let req = InferRequest {
        id: r.id.clone(),
        inputs,
        outputs,
        ids: ids_param(&r.parameters)?.unwrap_or(Ids::Label),
        binary_default,
    };
    Ok((req, r.id))
}

fn bool_param(p: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match p.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(bad(format!(
            "parameter `{key}` must be true or false, got {v}"
        ))),
    }
}

fn ids_param(p: &Map<String, Value>) -> Result<Option<Ids>, ApiError> {
    match p.get(IDS_PARAMETER) {
        None => Ok(None),
        Some(Value::String(s)) => Ids::parse(s).map(Some),
        Some(v) => Err(bad(format!(
            "parameter `{IDS_PARAMETER}` must be a string, got {v}"
        ))),
    }
}

/// One input: its binary share (taken from the front of `binary`) or its JSON data.
fn parse_input(i: InputJson, binary: &mut Bytes) -> Result<InputTensor, ApiError> {
    let data = match i.parameters.get("binary_data_size") {
        Some(v) => {
            let n = v.as_u64().map(|n| n as usize).ok_or_else(|| {
                bad(format!(
                    "input `{}`: binary_data_size must be a byte count, got {v}",
                    i.name
                ))
            })?;
            if n > binary.len() {
                return Err(bad(format!(
                    "input `{}` declares {n} bytes of binary data but {} remain",
                    i.name,
                    binary.len()
                )));
            }
            InputData::Raw(binary.split_to(n))
        }
        None => json_data(&i)?,
    };
    Ok(InputTensor {
        name: i.name,
        datatype: i.datatype,
        shape: i.shape,
        data,
    })
}

/// JSON tensor data, flat or nested: strings for BYTES, else non-negative integers.
fn json_data(i: &InputJson) -> Result<InputData, ApiError> {
    let Some(data) = &i.data else {
        return Err(bad(format!(
            "input `{}` has neither `data` nor a binary_data_size parameter",
            i.name
        )));
    };
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    if i.datatype == "BYTES" {
        let elements = flat
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(Bytes::from(s.clone().into_bytes())),
                other => Err(bad(format!(
                    "input `{}`: BYTES element {other} is not a string",
                    i.name
                ))),
            })
            .collect::<Result<_, _>>()?;
        return Ok(InputData::Elements(elements));
    }
    let numbers = flat
        .into_iter()
        .map(|v| {
            v.as_u64().ok_or_else(|| {
                bad(format!(
                    "input `{}`: element {v} is not a non-negative integer",
                    i.name
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(InputData::Numbers(numbers))
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|x| flatten(x, out)),
        other => out.push(other),
    }
}

/// The answer: JSON, or a JSON header followed by the binary outputs.
fn answer(
    m: &Served,
    id: Option<String>,
    outputs: Vec<OutputTensor>,
) -> Result<Response, ApiError> {
    let mut binary = Vec::new();
    let tensors: Vec<Value> = outputs
        .into_iter()
        .map(|t| {
            let mut o = json!({ "name": t.name, "datatype": t.datatype, "shape": t.shape });
            if t.binary {
                let bytes = t.data.into_le_bytes();
                o["parameters"] = json!({ "binary_data_size": bytes.len() });
                binary.extend_from_slice(&bytes);
            } else {
                o["data"] = match t.data {
                    OutputData::U8(v) => json!(v),
                    OutputData::F32(v) => json!(v),
                };
            }
            o
        })
        .collect();
    let mut head = json!({ "model_name": m.name, "model_version": VERSION, "outputs": tensors });
    if let Some(id) = id {
        head["id"] = json!(id);
    }
    let head = serde_json::to_vec(&head).map_err(|e| ApiError::internal(e.to_string()))?;
    if binary.is_empty() {
        return Ok(([(header::CONTENT_TYPE, "application/json")], head).into_response());
    }
    let header_len = head.len();
    let mut body = head;
    body.extend_from_slice(&binary);
    let mut resp = ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response();
    resp.headers_mut()
        .insert(HEADER_LENGTH, HeaderValue::from(header_len));
    Ok(resp)
}
