//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, from
//! proto/inference.proto): the same models and the same inference as `/v2` over HTTP
//! ([`crate::v2`]), on its own address (`--grpc-addr`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::models::VERSION;
use crate::state::AppState;
use crate::v2::{self, IDS_PARAMETER, Ids, InferRequest, InputData, InputTensor, OutputRequest};
use crate::v2_http::DataLimits;

/// The code generated from proto/inference.proto.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::infer_parameter::ParameterChoice;
use proto::model_infer_response::InferOutputTensor;
use proto::model_metadata_response::TensorMetadata;
use proto::*;

/// The service, sharing the HTTP server's state.
pub struct Service {
    pub st: Arc<AppState>,
}

/// The tonic service with message limits: requests up to the body limit, answers
/// unbounded (their size follows from the request's).
pub fn server(st: Arc<AppState>) -> GrpcInferenceServiceServer<Service> {
    let limit = st.cfg.max_body_bytes();
    GrpcInferenceServiceServer::new(Service { st })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX)
}

/// The gRPC service as a router for [`crate::listen::serve`]. tonic refuses an
/// over-size request message with `OUT_OF_RANGE`; the convention (and what gRPC's own
/// implementations answer) is `RESOURCE_EXHAUSTED`, which the router's answers are
/// rewritten to (this service answers `OUT_OF_RANGE` for nothing else).
pub fn router(st: Arc<AppState>) -> axum::Router {
    let limit = st.cfg.max_body_bytes();
    tonic::service::Routes::new(server(st))
        .into_axum_router()
        .layer(axum::middleware::map_response(
            move |resp: axum::response::Response| async move { resource_exhausted(resp, limit) },
        ))
}

/// `grpc-status: 11` (OUT_OF_RANGE, tonic's over-size refusal) as 8
/// (RESOURCE_EXHAUSTED) with our sentence.
fn resource_exhausted(
    mut resp: axum::response::Response,
    limit: usize,
) -> axum::response::Response {
    let h = resp.headers_mut();
    let out_of_range = h.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11");
    if out_of_range {
        let msg = format!(
            "body_too_large: the request message is larger than the limit of {limit} bytes (--max-body-mb)"
        );
        h.insert("grpc-status", axum::http::HeaderValue::from_static("8"));
        if let Ok(v) = axum::http::HeaderValue::from_str(&msg) {
            h.insert("grpc-message", v);
        }
    }
    resp
}

/// An HTTP-style error as a gRPC status with the same sentence.
pub fn status(e: ApiError) -> Status {
    let msg = format!("{}: {}", e.code, e.detail);
    match e.status {
        StatusCode::NOT_FOUND => Status::not_found(msg),
        StatusCode::SERVICE_UNAVAILABLE => Status::unavailable(msg),
        StatusCode::GATEWAY_TIMEOUT => Status::deadline_exceeded(msg),
        StatusCode::PAYLOAD_TOO_LARGE => Status::resource_exhausted(msg),
        s if s.is_client_error() => Status::invalid_argument(msg),
        _ => Status::internal(msg),
    }
}

fn string_param(
    p: &HashMap<String, InferParameter>,
    key: &str,
) -> Result<Option<String>, ApiError> {
    match p.get(key).and_then(|v| v.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ParameterChoice::StringParam(s)) => Ok(Some(s.clone())),
        Some(other) => Err(v2::bad(format!(
            "parameter `{key}` must be a string, got {other:?}"
        ))),
    }
}

fn ids_param(p: &HashMap<String, InferParameter>) -> Result<Option<Ids>, ApiError> {
    string_param(p, IDS_PARAMETER)?
        .map(|s| Ids::parse(&s))
        .transpose()
}

/// Translates a gRPC inference request; `raw_input_contents`, when given, holds one
/// entry per input.
fn to_request(r: ModelInferRequest, limits: DataLimits) -> Result<InferRequest, ApiError> {
    if !r.raw_input_contents.is_empty() && r.raw_input_contents.len() != r.inputs.len() {
        return Err(v2::bad(format!(
            "{} raw_input_contents for {} inputs",
            r.raw_input_contents.len(),
            r.inputs.len()
        )));
    }
    if r.inputs.len() != 1 {
        return Err(v2::input_count_error(r.inputs.len()));
    }
    let mut raw = r.raw_input_contents.into_iter();
    let inputs = r
        .inputs
        .into_iter()
        .map(|i| {
            let data = match raw.next() {
                Some(bytes) => InputData::Raw(Bytes::from(bytes)),
                None => contents(&i.datatype, i.contents.unwrap_or_default(), limits)?,
            };
            Ok(InputTensor {
                name: i.name,
                datatype: i.datatype,
                shape: i.shape,
                data,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    let outputs = r
        .outputs
        .into_iter()
        .map(|o| {
            Ok(OutputRequest {
                ids: ids_param(&o.parameters)?,
                binary: true,
                name: o.name,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(InferRequest {
        id: Some(r.id).filter(|s| !s.is_empty()),
        inputs,
        outputs,
        ids: ids_param(&r.parameters)?.unwrap_or(Ids::Label),
        binary_default: true,
    })
}

/// Typed contents: BYTES elements, or the unsigned integers UINT8 travels in
/// (each checked against 0..=255).
fn contents(
    datatype: &str,
    c: InferTensorContents,
    limits: DataLimits,
) -> Result<InputData, ApiError> {
    let (n, max) = if datatype == "BYTES" {
        (c.bytes_contents.len(), limits.elements)
    } else {
        (c.uint_contents.len(), limits.values)
    };
    if n > max {
        return Err(v2::bad(format!(
            "the input has {n} elements, more than {max} (the server's limit for this datatype)"
        )));
    }
    if datatype == "BYTES" {
        return Ok(InputData::Elements(
            c.bytes_contents.into_iter().map(Bytes::from).collect(),
        ));
    }
    let values = c
        .uint_contents
        .into_iter()
        .map(|x| {
            u8::try_from(x).map_err(|_| v2::bad(format!("UINT8 value {x} is out of range 0..=255")))
        })
        .collect::<Result<_, _>>()?;
    Ok(InputData::Numbers(values))
}

fn tensor_meta(t: v2::TensorMeta) -> TensorMetadata {
    TensorMetadata {
        name: t.name.into(),
        datatype: t.datatype.into(),
        shape: t.shape,
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        let ready = self.st.models.ready();
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        r: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = r.into_inner();
        v2::check_version(&r.version).map_err(status)?;
        let m = self.st.models.get(Some(&r.name)).map_err(status)?;
        Ok(Response::new(ModelReadyResponse {
            ready: m.pool.ready(),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "lse-serve".into(),
            version: lse_runtime::VERSION.into(),
            extensions: vec!["binary_tensor_data".into()],
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = r.into_inner();
        v2::check_version(&r.version).map_err(status)?;
        let m = self.st.models.get(Some(&r.name)).map_err(status)?;
        let (inputs, outputs) = v2::model_tensors(&m);
        Ok(Response::new(ModelMetadataResponse {
            name: m.name.clone(),
            versions: vec![VERSION.into()],
            platform: v2::PLATFORM.into(),
            inputs: inputs.into_iter().map(tensor_meta).collect(),
            outputs: outputs.into_iter().map(tensor_meta).collect(),
        }))
    }

    async fn model_infer(
        &self,
        r: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let r = r.into_inner();
        v2::check_version(&r.model_version).map_err(status)?;
        let m = self.st.models.get(Some(&r.model_name)).map_err(status)?;
        let id = r.id.clone();
        let limits = crate::v2_http::DataLimits::of(&self.st.cfg);
        let req = to_request(r, limits).map_err(status)?;
        let ms = self.st.cfg.timeout_ms;
        let outputs = tokio::time::timeout(Duration::from_millis(ms), v2::infer(&self.st, &m, req))
            .await
            .map_err(|_| status(ApiError::timeout(ms)))?
            .map_err(status)?;
        let mut raw = Vec::with_capacity(outputs.len());
        let tensors = outputs
            .into_iter()
            .map(|t| {
                raw.push(t.data.into_le_bytes());
                InferOutputTensor {
                    name: t.name.into(),
                    datatype: t.datatype.into(),
                    shape: t.shape,
                    ..Default::default()
                }
            })
            .collect();
        Ok(Response::new(ModelInferResponse {
            model_name: m.name.clone(),
            model_version: VERSION.into(),
            id,
            outputs: tensors,
            raw_output_contents: raw,
            ..Default::default()
        }))
    }
}
