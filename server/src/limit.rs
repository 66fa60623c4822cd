//! The request body limit (`--max-body-mb`) as a middleware whose 413 answer reaches
//! clients that write their whole body before reading the answer.
//!
//! Hand-written rather than tower-http's `RequestBodyLimitLayer`: that layer (like
//! answering at once) replies while the client is still sending, and a client that
//! writes its whole body before reading (Python's `requests`, `urllib` and
//! `http.client`) then sees the connection reset instead of the 413. So the rest of an
//! over-limit body is read and discarded first, up to [`DRAIN_MAX_BYTES`] and
//! [`DRAIN_MAX_TIME`], as production servers do; past either bound the answer goes out
//! with `Connection: close`.
//!
//! A declared `Content-Length` over the limit is refused before any handler runs. A
//! body without one (`Transfer-Encoding: chunked`, or HTTP/2) is counted as the
//! handler reads it: past the limit the handler's reads fail, and the answer is the
//! same 413, whatever the handler made of the failed read.
//!
//! The same holds for every answer given before the body was read (an unknown model,
//! a bad `output`, an unknown route, a wrong method, a refused admin request): the
//! rest of the body is read and discarded within the same bounds before the answer
//! goes out, so the client reads it and a kept-alive connection stays usable; past
//! the bounds the answer says `Connection: close`.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};

use crate::error::ApiError;

/// How much of an over-limit body is read (in all) and thrown away before the 413
/// answer, and for how long at most.
pub const DRAIN_MAX_BYTES: u64 = 256 << 20;
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(10);

/// The middleware: refuses a body over `limit` bytes with 413 `body_too_large`.
pub async fn limit_body(limit: usize, req: Request, next: Next) -> Response {
    let limit = limit as u64;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => {
            let drained = n <= DRAIN_MAX_BYTES && drain(req.into_body(), n).await;
            too_large(limit, drained)
        }
        _ if req.body().is_end_stream() => next.run(req).await,
        _ => counted(limit, req, next).await,
    }
}

/// Runs the handler on a body that fails past `limit` bytes; if it went past,
/// discards the rest and answers 413. If the handler answered without reading the
/// whole body, discards the rest before its answer goes out.
async fn counted(limit: u64, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let shared = Arc::new(Mutex::new(Counted {
        body: Some(body),
        read: 0,
    }));
    let req = Request::from_parts(
        parts,
        Body::new(CountedBody {
            shared: shared.clone(),
            limit,
        }),
    );
    let mut resp = next.run(req).await;
    let (rest, read) = {
        let mut c = shared.lock().unwrap_or_else(PoisonError::into_inner);
        (c.body.take(), c.read)
    };
    let unread = rest.filter(|b| !b.is_end_stream());
    let drained = match unread {
        Some(b) => drain(b, DRAIN_MAX_BYTES.saturating_sub(read)).await,
        None => true,
    };
    if read > limit {
        return too_large(limit, drained);
    }
    if !drained {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The 413 answer; `Connection: close` unless the body was read to its end.
fn too_large(limit: u64, drained: bool) -> Response {
    let mut resp = ApiError::body_too_large(limit as usize).into_response();
    if !drained {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Reads a body and keeps nothing, for at most [`DRAIN_MAX_TIME`]: whether it ended
/// (without an error) within `max` bytes.
async fn drain(body: Body, max: u64) -> bool {
    use futures_util::StreamExt;
    let read_all = async {
        let mut stream = body.into_data_stream();
        let mut read = 0u64;
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { return false };
            read += chunk.len() as u64;
            if read > max {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_MAX_TIME, read_all)
        .await
        .unwrap_or(false)
}

/// A request body and the bytes read from it so far, shared by the handler's
/// [`CountedBody`] and the middleware, which drains the rest after the handler.
struct Counted {
    body: Option<Body>,
    read: u64,
}

/// The handler's view of a [`Counted`] body: frames pass through until more than
/// `limit` bytes have been read, then it fails.
struct CountedBody {
    shared: Arc<Mutex<Counted>>,
    limit: u64,
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut c = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if c.read > self.limit {
            return Poll::Ready(Some(Err(over_limit())));
        }
        let Some(body) = c.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(Pin::new(body).poll_frame(cx));
        if frame.is_none() {
            // Read to its end: nothing is left to discard.
            c.body = None;
        }
        if let Some(Ok(f)) = &frame {
            c.read += f.data_ref().map_or(0, |d| d.len() as u64);
            if c.read > self.limit {
                return Poll::Ready(Some(Err(over_limit())));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        let c = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        c.read <= self.limit && c.body.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let c = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        c.body
            .as_ref()
            .map_or_else(SizeHint::default, HttpBody::size_hint)
    }
}

fn over_limit() -> axum::Error {
    axum::Error::new("the request body is larger than the limit")
}
