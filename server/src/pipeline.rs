//! The prediction path every protocol shares (`/v1`, the Open Inference Protocol over
//! HTTP and gRPC): admission, decoding and resizing on the blocking pool, the worker
//! pool, and upsampling to the image's size as `lse segment` does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use image::{GrayImage, RgbImage};
use lse_runtime::predict;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::error::ApiError;
use crate::input;
use crate::models::Served;
use crate::pool::{CountGuard, Job, JobOutput, SubmitError};
use crate::state::AppState;

/// An image to predict: encoded bytes (PNG or JPEG), or decoded RGB pixels.
pub enum Source {
    Encoded(Bytes),
    Pixels(RgbImage),
}

/// A prediction at the model's resolution, with the image it was made from.
pub struct Predicted {
    pub image: RgbImage,
    pub out: JobOutput,
    /// Time to decode and resize the image.
    pub decode: Duration,
}

/// Runs CPU work on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a processing task failed: {e}")))?
}

/// Admits `images` images into the pipeline (one `--queue` permit each), or refuses
/// with 503 when the pipeline is full.
///
/// Hand-written rather than tower's `LoadShed` + `ConcurrencyLimit`: those count
/// requests, while a `/v2` request may carry a batch of images that each take a place
/// in the pipeline, and the 503 must carry our JSON body and `Retry-After`. Permits are
/// taken after the body is read, so slow uploads do not hold places.
pub fn admit(st: &AppState, images: usize) -> Result<OwnedSemaphorePermit, ApiError> {
    let n = u32::try_from(images).unwrap_or(u32::MAX);
    if n > st.cfg.queue {
        return Err(ApiError::bad_request(
            "batch_too_large",
            format!(
                "the request has {images} images, more than the server's --queue of {}",
                st.cfg.queue
            ),
        ));
    }
    st.admission
        .clone()
        .try_acquire_many_owned(n)
        .map_err(|_| ApiError::queue_full(st.cfg.queue))
}

/// Decodes (if needed) and resizes the image, queues it for `model`'s workers and
/// waits for the answer. The caller holds an admission permit.
pub async fn predict(
    st: &AppState,
    model: &Arc<Served>,
    src: Source,
) -> Result<Predicted, ApiError> {
    let started = Instant::now();
    let preparing = CountGuard::preparing(&model.pool.shared);
    let max_pixels = st.cfg.max_pixels.min(st.cfg.max_request_pixels);
    let size = model.meta.train_size;
    let (image, input) = blocking(move || {
        let image = match src {
            Source::Encoded(bytes) => input::decode(&bytes, max_pixels)?,
            Source::Pixels(image) => image,
        };
        let input = predict::prepare(&image, size)
            .map_err(|e| ApiError::internal(format!("cannot prepare the image: {e}")))?;
        Ok((image, input))
    })
    .await?;
    let decode = started.elapsed();
    st.metrics.observe_stage("decode", decode);
    let (tx, rx) = oneshot::channel();
    model
        .pool
        .submit(Job {
            input,
            enqueued: Instant::now(),
            reply: tx,
        })
        .map_err(|e| match e {
            SubmitError::Full => ApiError::queue_full(st.cfg.queue),
            SubmitError::Closed => ApiError::shutting_down(),
        })?;
    // Only now: a worker that sees no request in preparation finds this one queued.
    drop(preparing);
    let out = rx
        .await
        .map_err(|_| ApiError::internal("the inference worker stopped"))?
        .map_err(|e| ApiError::internal(format!("inference failed: {e}")))?;
    st.metrics.observe_stage("queue", out.queued);
    Ok(Predicted { image, out, decode })
}

/// The train-id map at the image's size (softmax, bilinear upsampling of the
/// probabilities, arg-max: the prediction of `lse segment`).
pub fn train_ids(p: &Predicted) -> Result<GrayImage, ApiError> {
    let (w, h) = p.image.dimensions();
    predict::to_train_ids(
        p.out.scores(),
        p.out.train_ids(),
        w,
        h,
        predict::Upsample::Probabilities,
    )
    .map_err(|e| ApiError::internal(e.to_string()))
}
