//! The HTTP accept loop: hyper's connection builder with a header-read timeout, an
//! idle timeout, a cap on open connections, and a graceful shutdown that lets requests
//! in progress finish.
//!
//! Hand-written rather than `axum::serve`, which offers none of these: a client that
//! sends half a request header, or connects and sends nothing, would keep its
//! connection (and a file descriptor) forever. Both timeouts are kept here, per
//! connection ([`Activity`]), rather than by hyper: hyper's header-read timer also runs
//! while a kept-alive HTTP/1 connection waits for its next request (so it would cut
//! every idle period to the header timeout), and it runs neither before a connection's
//! first byte nor for HTTP/2. A connection with no request in progress is held to the
//! idle timeout until bytes arrive, then (HTTP/1) to the header timeout until hyper
//! hands the request over. The connection cap stops accepting (the kernel's backlog
//! holds further clients) until one closes. Each port reports its open connections and
//! the connections its timeouts closed ([`PortMetrics`]).

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::{Builder, UpgradeableConnection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// Limits of the HTTP connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Longest time to receive a request's header, from its first byte.
    pub header_timeout: Duration,
    /// Longest time a connection may sit idle: accepted or done with its last answer,
    /// and nothing received since.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Requests (HTTP/2 streams) one connection may have in progress at once.
    pub max_streams: u32,
}

/// A port's name in the metrics (`http`, `grpc`) and the metrics it reports to.
#[derive(Clone)]
pub struct PortMetrics {
    pub port: &'static str,
    pub metrics: Arc<Metrics>,
}

/// An open connection: its place under the connection cap, counted in the metrics
/// while it lives. The count goes down before the place is given back, so the
/// `lse_connections_open` gauge never exceeds the cap.
struct OpenConnection {
    port: PortMetrics,
    _place: OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(port: PortMetrics, place: OwnedSemaphorePermit) -> Self {
        port.metrics.connection_opened(port.port);
        Self {
            port,
            _place: place,
        }
    }

    /// Counts the expiry of `timeout`.
    fn timed_out(&self, timeout: Timeout) {
        let p = &self.port;
        p.metrics.connection_timed_out(p.port, timeout.label());
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.port.metrics.connection_closed(self.port.port);
    }
}

/// Which limit a connection ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timeout {
    /// A begun request header was not complete in time.
    Header,
    /// Nothing arrived in time, between requests or since the connection opened.
    Idle,
}

impl Timeout {
    fn label(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Idle => "idle",
        }
    }
}

/// hyper's own header-read timer is off: [`Activity`] keeps the header and idle
/// timeouts apart (see the module documentation). HTTP/2 connections get at most
/// `max_streams` concurrent streams.
fn builder(max_streams: u32) -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    b.http1().timer(TokioTimer::new()).header_read_timeout(None);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(max_streams);
    b
}

/// Serves `app` on `listener` until `stop` turns true, then waits for the
/// connections' requests in progress to finish; counts the connections in `metrics`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
    metrics: PortMetrics,
) {
    let builder = builder(limits.max_streams);
    let cap = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let open = Arc::new(Semaphore::new(cap as usize));
    loop {
        let permit = tokio::select! {
            p = open.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stopped(&mut stop) => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    // Small answers (gRPC's especially) go out at once.
                    let _ = s.set_nodelay(true);
                    s
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let open = OpenConnection::new(metrics.clone(), permit);
        spawn_connection(&builder, stream, app.clone(), limits, stop.clone(), open);
    }
    drop(listener);
    // Each open connection holds a permit until it has closed.
    let _ = open.acquire_many(cap).await;
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves one connection on its own task until it closes (see [`drive`]); `open` is
/// released then.
fn spawn_connection(
    builder: &Builder<TokioExecutor>,
    stream: TcpStream,
    app: Router,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
    open: OpenConnection,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(IdleIo {
        inner: stream,
        activity: activity.clone(),
    });
    let svc = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let busy = Busy::begin(&activity, req.version());
            let app = app.clone();
            async move {
                let Ok(resp) = app.oneshot(req).await;
                Ok::<_, Infallible>(resp.map(|body| Body::new(TrackedBody { body, _busy: busy })))
            }
        })
    };
    let conn = builder.serve_connection_with_upgrades(io, svc).into_owned();
    tokio::spawn(async move {
        let conn = std::pin::pin!(conn);
        let shutdown = UpgradeableConnection::graceful_shutdown;
        let timed_out = |t| open.timed_out(t);
        if let Err(e) = drive(conn, shutdown, timed_out, &activity, limits, &mut stop).await {
            tracing::debug!(error = %e, "connection closed with an error");
        }
        drop(open);
    });
}

/// Polls the connection `conn` until it closes. On `stop`, or once its header or idle
/// timeout expires (told to `timed_out`), it is shut down gracefully with `shutdown` (an
/// HTTP/1 connection between requests closes at once; HTTP/2 sends GOAWAY and finishes
/// its streams); one still open after a further idle period is dropped.
async fn drive<C, E>(
    mut conn: Pin<&mut C>,
    shutdown: impl Fn(Pin<&mut C>),
    timed_out: impl Fn(Timeout),
    activity: &Activity,
    limits: ConnLimits,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => return r,
            timeout = activity.expired(limits) => {
                if closing {
                    // Shut down but still open, idle all along (an HTTP/2 client that
                    // does not answer the GOAWAY's ping): drop it.
                    tracing::debug!("dropping a connection that outlived its shutdown");
                    return Ok(());
                }
                tracing::debug!(timeout = timeout.label(), "closing a connection: its timeout expired");
                timed_out(timeout);
                shutdown(conn.as_mut());
                closing = true;
                activity.restart_idle();
            }
            _ = stop.wait_for(|s| *s), if !closing => {
                shutdown(conn.as_mut());
                closing = true;
                activity.restart_idle();
            }
        }
    }
}

/// What one connection is doing, shared by its socket ([`IdleIo`]), its requests
/// ([`Busy`]) and its idle timer ([`Activity::expired`]).
struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
}

#[derive(Debug)]
struct ActivityState {
    /// Requests whose answer has not been sent to its end.
    busy: usize,
    /// When the connection was accepted, its last answer ended, or its shutdown began.
    idle_since: Instant,
    /// When bytes arrived with no request in progress: an HTTP/1 request header has
    /// begun, and the header-read timeout takes over from the idle one.
    head_since: Option<Instant>,
    /// An HTTP/2 connection (seen in its first bytes, the connection preface, or in a
    /// request's version): frames between requests (settings, pings, window updates)
    /// begin no header and leave the idle timer running.
    http2: bool,
    /// Whether any byte has arrived.
    read_any: bool,
}

/// The start of HTTP/2's connection preface (no HTTP/1 request begins so).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new(ActivityState {
                busy: 0,
                idle_since: Instant::now(),
                head_since: None,
                http2: false,
                read_any: false,
            }),
            changed: Notify::new(),
        }
    }

    /// Changes the state; `f` tells whether the idle timer must look again.
    fn update(&self, f: impl FnOnce(&mut ActivityState) -> bool) {
        if f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner)) {
            self.changed.notify_one();
        }
    }

    /// When the connection is due to close, and by which timeout: `None` while a
    /// request is in progress; a begun header that has not become a request yet is
    /// held to the header-read timeout, an idle connection to the idle timeout.
    fn deadline(&self, limits: ConnLimits) -> Option<(Instant, Timeout)> {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match (s.busy, s.head_since) {
            (0, None) => Some((s.idle_since + limits.idle_timeout, Timeout::Idle)),
            (0, Some(t)) => Some((t + limits.header_timeout, Timeout::Header)),
            _ => None,
        }
    }

    /// Resolves once the connection is due to close (see [`Activity::deadline`]), with
    /// the timeout that expired.
    async fn expired(&self, limits: ConnLimits) -> Timeout {
        loop {
            let changed = self.changed.notified();
            match self.deadline(limits) {
                None => changed.await,
                Some((d, timeout)) if d <= Instant::now() => return timeout,
                Some((d, _)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(d) => {}
                        _ = changed => {}
                    }
                }
            }
        }
    }

    /// Starts the idle time anew (when a shutdown begins).
    fn restart_idle(&self) {
        self.update(|s| {
            s.idle_since = Instant::now();
            true
        });
    }

    /// `bytes` arrived from the client.
    fn on_read(&self, bytes: &[u8]) {
        self.update(|s| {
            if !s.read_any {
                s.read_any = true;
                s.http2 = bytes.starts_with(H2_PREFACE);
            }
            let begins = s.busy == 0 && !s.http2 && s.head_since.is_none();
            if begins {
                s.head_since = Some(Instant::now());
            }
            begins
        });
    }
}

/// One request in progress; it ends when its answer's body has been sent (or dropped).
struct Busy(Arc<Activity>);

impl Busy {
    fn begin(activity: &Arc<Activity>, version: hyper::Version) -> Self {
        activity.update(|s| {
            s.busy += 1;
            s.head_since = None;
            s.http2 |= version == hyper::Version::HTTP_2;
            true
        });
        Self(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.update(|s| {
            s.busy = s.busy.saturating_sub(1);
            if s.busy == 0 {
                s.idle_since = Instant::now();
            }
            true
        });
    }
}

/// An answer's body that ends its request's [`Busy`] when hyper drops it (sent or
/// abandoned); the frames and the size hint pass through unchanged.
struct TrackedBody {
    body: Body,
    _busy: Busy,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client's socket, telling its [`Activity`] when bytes arrive.
struct IdleIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for IdleIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read(&buf.filled()[before..]);
        }
        r
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
