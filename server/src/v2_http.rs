//! The Open Inference Protocol's HTTP/REST routes (`/v2/...`), with JSON tensors and
//! the binary-data extension: a request or answer body may be a JSON header of
//! `Inference-Header-Content-Length` bytes followed by the tensors' raw bytes, each
//! tensor saying its share in its `binary_data_size` parameter.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::endpoint::Endpoint;
use crate::error::ApiError;
use crate::models::{Served, VERSION};
use crate::state::AppState;
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

/// The `/v2` routes; the inference routes are held to `timeout_ms`.
pub fn endpoints(timeout_ms: u64) -> Vec<Endpoint> {
    let infer = |path| Endpoint::post(path, infer_handler).timed(timeout_ms);
    vec![
        Endpoint::get("/v2", server_metadata),
        Endpoint::get("/v2/health/live", live),
        Endpoint::get("/v2/health/ready", ready),
        Endpoint::get("/v2/models/{name}", model_metadata),
        Endpoint::get("/v2/models/{name}/versions/{version}", model_metadata),
        Endpoint::get("/v2/models/{name}/ready", model_ready),
        Endpoint::get("/v2/models/{name}/versions/{version}/ready", model_ready),
        infer("/v2/models/{name}/infer"),
        infer("/v2/models/{name}/versions/{version}/infer"),
    ]
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
    let (req, id) = parse_off_runtime(headers, body, DataLimits::of(&st.cfg)).await?;
    let outputs = v2::infer(&st, &m, req).await?;
    Ok(crate::pipeline::blocking(move || answer(&m, id, outputs)).await?)
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

/// The JSON request header as the protocol defines it. Tensor data and parameters
/// stay raw slices of the body until they are read with their bounds (a JSON tree of
/// a large request would take many times its size).
#[derive(Debug, Deserialize)]
struct RequestJson<'a> {
    id: Option<String>,
    #[serde(default, borrow)]
    parameters: Params<'a>,
    #[serde(borrow)]
    inputs: Vec<&'a RawValue>,
    #[serde(default, borrow)]
    outputs: Vec<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct InputJson<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default, borrow)]
    parameters: Params<'a>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct OutputJson<'a> {
    name: String,
    #[serde(default, borrow)]
    parameters: Params<'a>,
}

/// The parameters this server reads; others are skipped without being kept.
#[derive(Debug, Default, Deserialize)]
struct Params<'a> {
    #[serde(borrow)]
    binary_data_size: Option<&'a RawValue>,
    #[serde(borrow)]
    binary_data: Option<&'a RawValue>,
    #[serde(borrow)]
    binary_data_output: Option<&'a RawValue>,
    #[serde(borrow)]
    ids: Option<&'a RawValue>,
}

/// The most outputs one request may list (the model gives two).
pub const MAX_OUTPUTS: usize = 8;

/// Bounds of a request's JSON tensor data, from the server's settings.
#[derive(Debug, Clone, Copy)]
pub struct DataLimits {
    /// UINT8 values (`--max-request-pixels` x 3).
    pub values: usize,
    /// BYTES elements (`--queue`: one image each).
    pub elements: usize,
}

impl DataLimits {
    pub fn of(cfg: &crate::config::Config) -> Self {
        Self {
            values: usize::try_from(cfg.max_request_pixels.saturating_mul(3)).unwrap_or(usize::MAX),
            elements: cfg.queue as usize,
        }
    }
}

fn bad_json(e: serde_json::Error) -> ApiError {
    ApiError::bad_request(
        "bad_json",
        format!("the inference request is not valid JSON: {e}"),
    )
}

/// Parses a request body (blocking: CPU work proportional to the body; see
/// [`parse_off_runtime`]).
pub fn parse_request(
    headers: &HeaderMap,
    body: Bytes,
    limits: DataLimits,
) -> Result<(InferRequest, Option<String>), ApiError> {
    let (head, mut binary) = split_body(headers, body)?;
    let r: RequestJson<'_> = serde_json::from_slice(&head).map_err(bad_json)?;
    if r.inputs.len() != 1 {
        return Err(v2::input_count_error(r.inputs.len()));
    }
    if r.outputs.len() > MAX_OUTPUTS {
        return Err(bad(format!(
            "a request lists at most {MAX_OUTPUTS} outputs, got {}",
            r.outputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(1);
    for raw in r.inputs {
        let i: InputJson<'_> = serde_json::from_str(raw.get()).map_err(bad_json)?;
        inputs.push(parse_input(i, &mut binary, limits)?);
    }
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes of binary data follow the JSON header that no input claims (binary_data_size)",
            binary.len()
        )));
    }
    let binary_default =
        bool_param(r.parameters.binary_data_output, "binary_data_output")?.unwrap_or(false);
    let outputs = r
        .outputs
        .into_iter()
        .map(|raw| {
            let o: OutputJson<'_> = serde_json::from_str(raw.get()).map_err(bad_json)?;
            Ok(OutputRequest {
                ids: ids_param(o.parameters.ids)?,
                binary: bool_param(o.parameters.binary_data, "binary_data")?
                    .unwrap_or(binary_default),
                name: o.name,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    let req = InferRequest {
        id: r.id.clone(),
        inputs,
        outputs,
        ids: ids_param(r.parameters.ids)?.unwrap_or(Ids::Label),
        binary_default,
    };
    Ok((req, r.id))
}

/// [`parse_request`] on the blocking pool, so a large JSON body never holds up the
/// async threads that serve other connections.
pub async fn parse_off_runtime(
    headers: HeaderMap,
    body: Bytes,
    limits: DataLimits,
) -> Result<(InferRequest, Option<String>), ApiError> {
    crate::pipeline::blocking(move || parse_request(&headers, body, limits)).await
}

fn bool_param(p: Option<&RawValue>, key: &str) -> Result<Option<bool>, ApiError> {
    p.map(|v| {
        serde_json::from_str::<bool>(v.get()).map_err(|_| {
            bad(format!(
                "parameter `{key}` must be true or false, got {}",
                clip(v.get())
            ))
        })
    })
    .transpose()
}

fn ids_param(p: Option<&RawValue>) -> Result<Option<Ids>, ApiError> {
    p.map(|v| match serde_json::from_str::<&str>(v.get()) {
        Ok(s) => Ids::parse(s),
        Err(_) => Err(bad(format!(
            "parameter `{IDS_PARAMETER}` must be a string, got {}",
            clip(v.get())
        ))),
    })
    .transpose()
}

/// At most 64 characters of a client's text, for an error sentence.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// One input: its binary share (taken from the front of `binary`) or its JSON data,
/// never both.
fn parse_input(
    i: InputJson<'_>,
    binary: &mut Bytes,
    limits: DataLimits,
) -> Result<InputTensor, ApiError> {
    let data = match (i.parameters.binary_data_size, i.data) {
        (Some(_), Some(_)) => {
            return Err(bad(format!(
                "input `{}` has both `data` and a binary_data_size parameter: send one",
                clip(&i.name)
            )));
        }
        (Some(v), None) => {
            let n: usize = serde_json::from_str(v.get()).map_err(|_| {
                bad(format!(
                    "input `{}`: binary_data_size must be a byte count, got {}",
                    clip(&i.name),
                    clip(v.get())
                ))
            })?;
            if n > binary.len() {
                return Err(bad(format!(
                    "input `{}` declares {n} bytes of binary data but {} remain",
                    clip(&i.name),
                    binary.len()
                )));
            }
            InputData::Raw(binary.split_to(n))
        }
        (None, Some(data)) => json_data(&i.name, &i.datatype, data, limits)?,
        (None, None) => {
            return Err(bad(format!(
                "input `{}` has neither `data` nor a binary_data_size parameter",
                clip(&i.name)
            )));
        }
    };
    Ok(InputTensor {
        name: i.name,
        datatype: i.datatype,
        shape: i.shape,
        data,
    })
}

/// JSON tensor data, flat or nested, read straight into its elements: strings for
/// BYTES (at most `limits.elements`), else UINT8 values (at most `limits.values`).
fn json_data(
    name: &str,
    datatype: &str,
    data: &RawValue,
    limits: DataLimits,
) -> Result<InputData, ApiError> {
    let (mut out, max) = if datatype == "BYTES" {
        (InputData::Elements(Vec::new()), limits.elements)
    } else {
        (InputData::Numbers(Vec::new()), limits.values)
    };
    let mut de = serde_json::Deserializer::from_str(data.get());
    serde::de::DeserializeSeed::deserialize(Flat { out: &mut out, max }, &mut de)
        .map_err(|e| bad(format!("input `{}`: {e}", clip(name))))?;
    Ok(out)
}

/// Reads nested JSON arrays into the flat elements of `out`, refusing more than `max`.
struct Flat<'o> {
    out: &'o mut InputData,
    max: usize,
}

impl Flat<'_> {
    fn len(&self) -> usize {
        match &*self.out {
            InputData::Elements(v) => v.len(),
            InputData::Numbers(v) => v.len(),
            InputData::Raw(r) => r.len(),
        }
    }

    fn room<E: serde::de::Error>(&self) -> Result<(), E> {
        if self.len() >= self.max {
            return Err(E::custom(format!(
                "more than {} elements (the server's limit for this datatype)",
                self.max
            )));
        }
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Flat<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Flat<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.out {
            InputData::Elements(_) => f.write_str("strings (BYTES elements)"),
            _ => f.write_str("integers 0..=255 (UINT8 values)"),
        }
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let max = self.max;
        while seq
            .next_element_seed(Flat {
                out: &mut *self.out,
                max,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.room()?;
        match self.out {
            InputData::Numbers(out) => {
                let b = u8::try_from(v)
                    .map_err(|_| E::custom(format!("UINT8 value {v} is out of range 0..=255")))?;
                out.push(b);
                Ok(())
            }
            _ => Err(E::custom(format!("BYTES element {v} is not a string"))),
        }
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        match u64::try_from(v) {
            Ok(u) => self.visit_u64(u),
            Err(_) => Err(E::custom(format!(
                "element {v} is not a non-negative integer"
            ))),
        }
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        Err(E::custom(format!("element {v} is not an integer")))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.room()?;
        match self.out {
            InputData::Elements(out) => {
                out.push(Bytes::copy_from_slice(v.as_bytes()));
                Ok(())
            }
            _ => Err(E::custom(format!(
                "element \"{}\" is not a non-negative integer",
                clip(v)
            ))),
        }
    }
}

/// The answer's JSON header, serialised straight from the tensors (a JSON tree of a
/// large answer would take many times its size).
#[derive(serde::Serialize)]
struct AnswerJson<'a> {
    model_name: &'a str,
    model_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: Vec<AnswerTensor>,
}

#[derive(serde::Serialize)]
struct AnswerTensor {
    name: &'static str,
    datatype: &'static str,
    shape: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<OutputData>,
}

#[derive(serde::Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

/// The answer: JSON, or a JSON header followed by the binary outputs (blocking: CPU
/// work proportional to the answer).
fn answer(
    m: &Served,
    id: Option<String>,
    outputs: Vec<OutputTensor>,
) -> Result<Response, ApiError> {
    let mut binary = Vec::new();
    let tensors: Vec<AnswerTensor> = outputs
        .into_iter()
        .map(|t| {
            let (parameters, data) = if t.binary {
                let bytes = t.data.into_le_bytes();
                let size = BinarySize {
                    binary_data_size: bytes.len(),
                };
                binary.extend_from_slice(&bytes);
                (Some(size), None)
            } else {
                (None, Some(t.data))
            };
            AnswerTensor {
                name: t.name,
                datatype: t.datatype,
                shape: t.shape,
                parameters,
                data,
            }
        })
        .collect();
    let head = AnswerJson {
        model_name: &m.name,
        model_version: VERSION,
        id,
        outputs: tensors,
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DataLimits = DataLimits {
        values: 12,
        elements: 2,
    };

    fn parse(json: &str) -> Result<InferRequest, ApiError> {
        parse_request(&HeaderMap::new(), Bytes::from(json.to_string()), LIMITS).map(|(r, _)| r)
    }

    fn pixels(req: &InferRequest) -> &[u8] {
        match &req.inputs[0].data {
            InputData::Numbers(v) => v,
            other => panic!("not numbers: {other:?}"),
        }
    }

    #[test]
    fn nested_data_is_read_flat_within_the_limit() {
        let r = parse(
            r#"{"id":"x","parameters":{"unknown":{"deep":[1,2,3]}},"inputs":[{"name":"image_rgb","shape":[2,2,3],"datatype":"UINT8","data":[[[1,2,3],[4,5,6]],[[7,8,9],[10,11,255]]]}]}"#,
        )
        .unwrap();
        assert_eq!(pixels(&r), (1..=11).chain([255]).collect::<Vec<u8>>());
        let r = parse(
            r#"{"inputs":[{"name":"image","shape":[2],"datatype":"BYTES","data":["ab","c"]}]}"#,
        )
        .unwrap();
        match &r.inputs[0].data {
            InputData::Elements(e) => assert_eq!(e, &[Bytes::from("ab"), Bytes::from("c")]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn element_counts_are_bounded_while_reading() {
        let thirteen = format!(
            r#"{{"inputs":[{{"name":"image_rgb","shape":[13],"datatype":"UINT8","data":[{}]}}]}}"#,
            vec!["0"; 13].join(",")
        );
        let e = parse(&thirteen).unwrap_err();
        assert!(e.detail.contains("more than 12 elements"), "{e}");
        let e = parse(
            r#"{"inputs":[{"name":"image","shape":[3],"datatype":"BYTES","data":["","",""]}]}"#,
        )
        .unwrap_err();
        assert!(e.detail.contains("more than 2 elements"), "{e}");
        let e = parse(
            r#"{"inputs":[{"name":"image_rgb","shape":[3],"datatype":"UINT8","data":[1,300,2]}]}"#,
        )
        .unwrap_err();
        assert!(e.detail.contains("300"), "{e}");
        let e = parse(
            r#"{"inputs":[{"name":"image_rgb","shape":[2],"datatype":"UINT8","data":[1,"a"]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, "bad_tensor", "{e}");
    }

    #[test]
    fn data_and_binary_data_size_together_are_refused() {
        let head = r#"{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":5},"data":["x"]}]}"#;
        let mut h = HeaderMap::new();
        h.insert(HEADER_LENGTH, HeaderValue::from(head.len()));
        let mut body = head.as_bytes().to_vec();
        body.extend_from_slice(&[1, 0, 0, 0, 7]);
        let e = parse_request(&h, Bytes::from(body), LIMITS).unwrap_err();
        assert!(
            e.detail.contains("both `data` and a binary_data_size"),
            "{e}"
        );
    }

    #[test]
    fn input_and_output_counts_are_bounded() {
        let two = r#"{"inputs":[{"name":"a","shape":[],"datatype":"x"},{"name":"b","shape":[],"datatype":"x"}]}"#;
        assert!(parse(two).unwrap_err().detail.contains("exactly one input"));
        let outputs = [r#"{"name":"labels"}"#; MAX_OUTPUTS + 1].join(",");
        let many = format!(
            r#"{{"inputs":[{{"name":"image","shape":[1],"datatype":"BYTES","data":["x"]}}],"outputs":[{outputs}]}}"#
        );
        assert!(
            parse(&many)
                .unwrap_err()
                .detail
                .contains("at most 8 outputs")
        );
    }

    /// The parse runs on the blocking pool: with the pool's only thread held, the
    /// async thread still runs other tasks while the parse waits for its turn (parsed
    /// on the async thread, it would have finished before the other task ran).
    #[test]
    fn parsing_runs_off_the_async_threads() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .build()
            .unwrap();
        rt.block_on(async {
            let (release, held) = std::sync::mpsc::channel::<()>();
            let hold = tokio::task::spawn_blocking(move || held.recv());
            let parsed = std::sync::atomic::AtomicBool::new(false);
            let body = Bytes::from(
                r#"{"inputs":[{"name":"image_rgb","shape":[1,1,3],"datatype":"UINT8","data":[1,2,3]}]}"#,
            );
            let parse = async {
                let r = parse_off_runtime(HeaderMap::new(), body, LIMITS).await;
                parsed.store(true, std::sync::atomic::Ordering::SeqCst);
                r
            };
            let other = async {
                let before = parsed.load(std::sync::atomic::Ordering::SeqCst);
                release.send(()).unwrap();
                before
            };
            let (r, parsed_before_other) = tokio::join!(parse, other);
            assert!(!parsed_before_other, "the parse ran on the async thread");
            assert_eq!(pixels(&r.unwrap().0), [1, 2, 3]);
            hold.await.unwrap().unwrap();
        });
    }
}
