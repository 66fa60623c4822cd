//! The inference pool: N worker threads, each owning one [`Engine`] (ONNX Runtime
//! sessions need `&mut` to run and are never shared), fed by one bounded queue.
//!
//! Batching is dynamic: a worker takes the first waiting job, then keeps taking jobs
//! until it has `max_batch` of them, the queue is empty and no other request is being
//! decoded, or `batch_wait` has passed since the first job. A request alone on the
//! server therefore never waits, and concurrent requests share one session run. Every
//! image is resized to the model's training size before it is queued, so all jobs have
//! the same input shape and any of them can share a batch.
//!
//! A paused pool ([`Pool::pause`]) holds its jobs at a [`Gate`] before they run; the
//! requests waiting on them keep their admission places.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lse_runtime::contract::ModelMeta;
use lse_runtime::engine::{Device, Engine, EngineError, EngineOptions, Output, Provider};
use lse_runtime::predict;
use ndarray::{Array4, ArrayView2, ArrayView3, Axis};
use tokio::sync::oneshot;

use crate::config::Config;
use crate::metrics::Metrics;

/// One image waiting for inference: its model input at the training size (RGB CHW).
pub struct Job {
    pub input: Vec<f32>,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Result<JobOutput, String>>,
}

/// The model's answer for one image: its slot in the batch's output (shared, not copied).
#[derive(Debug)]
pub struct JobOutput {
    batch: Arc<Output>,
    index: usize,
    /// How many images shared the session run.
    pub batch_size: usize,
    /// Time spent in the queue.
    pub queued: Duration,
    /// Time of the session run (for the whole batch).
    pub inference: Duration,
}

impl JobOutput {
    /// `C x h x w` logits at the training size.
    pub fn scores(&self) -> ArrayView3<'_, f32> {
        self.batch.scores.index_axis(Axis(0), self.index)
    }

    /// `h x w` arg-max train ids at the training size.
    pub fn train_ids(&self) -> ArrayView2<'_, u8> {
        self.batch.train_ids.index_axis(Axis(0), self.index)
    }
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    Full,
    Closed,
}

/// Counters shared by the request side and the workers.
#[derive(Debug, Default)]
pub struct Shared {
    /// Jobs in the queue.
    pub queued: AtomicUsize,
    /// Requests admitted and still being decoded (workers wait for them to fill a batch).
    pub preparing: AtomicUsize,
    /// Workers whose session is loaded and warmed up.
    pub ready: AtomicUsize,
    /// The error of the first worker whose warm-up failed.
    pub warm_up_failed: Mutex<Option<String>>,
    /// Closed while the pool is paused ([`Pool::pause`]).
    pub gate: Gate,
}

/// Where the workers wait before they run a job: while it is closed, jobs stay
/// queued (and their requests keep their admission places) until it opens.
#[derive(Debug, Default)]
pub struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    /// Closes or opens the gate; opening lets every waiting worker go on.
    fn set_closed(&self, closed: bool) {
        *self.closed.lock().unwrap_or_else(PoisonError::into_inner) = closed;
        if !closed {
            self.opened.notify_all();
        }
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once the gate is open.
    fn wait_open(&self) {
        let mut closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
        while *closed {
            closed = self
                .opened
                .wait(closed)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Decrements a counter when dropped.
pub struct CountGuard(Arc<Shared>, fn(&Shared) -> &AtomicUsize);

impl CountGuard {
    pub fn preparing(shared: &Arc<Shared>) -> Self {
        shared.preparing.fetch_add(1, Ordering::SeqCst);
        Self(shared.clone(), |s| &s.preparing)
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::SeqCst);
    }
}

/// Settings of the pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub workers: usize,
    /// The device of each worker's session; empty: the engine options' device for all.
    pub devices: Vec<Device>,
    pub max_batch: usize,
    pub batch_wait: Duration,
    pub queue: usize,
    pub engine: EngineOptions,
}

impl PoolOptions {
    /// The settings of each model's worker pool under `cfg`.
    pub fn of(cfg: &Config) -> Self {
        let devices = cfg.worker_devices();
        Self {
            workers: devices.len(),
            devices,
            max_batch: cfg.max_batch as usize,
            batch_wait: Duration::from_millis(cfg.batch_wait_ms),
            queue: cfg.queue as usize,
            engine: EngineOptions {
                provider: cfg.provider,
                ort_lib: cfg.ort_lib.clone(),
                threads: cfg.threads_per_worker(),
                device_id: 0,
                // TensorRT's shape profile covers the largest batch a worker forms.
                max_batch: cfg.max_batch as usize,
                ..Default::default()
            },
        }
    }
}

/// The worker pool. Dropping the sender (via [`Pool::close`]) lets the workers finish
/// the jobs already queued and exit.
pub struct Pool {
    tx: Mutex<Option<SyncSender<Job>>>,
    pub shared: Arc<Shared>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    workers: usize,
}

impl Pool {
    /// Loads one engine per worker (in parallel) and starts the workers; returns the
    /// pool, the model's contract and the provider that runs it, or an error if any
    /// session cannot be opened. Warm-up runs in the workers afterwards;
    /// [`Pool::ready`] tells when it is done.
    pub fn start(
        model: &std::path::Path,
        opts: &PoolOptions,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, ModelMeta, Provider), EngineError> {
        // Open sessions in parallel threads: TensorRT or CUDA set-up can be slow.
        let loads: Vec<_> = (0..opts.workers)
            .map(|i| {
                let model = model.to_path_buf();
                let mut eo = opts.engine.clone();
                if let Some(&d) = opts.devices.get(i) {
                    eo.device = d;
                }
                std::thread::spawn(move || Engine::load(&model, &eo))
            })
            .collect();
        let mut engines = Vec::new();
        for h in loads {
            let engine = h
                .join()
                .map_err(|_| EngineError::Run("a session loader thread panicked".into()))??;
            engines.push(engine);
        }
        let meta = engines[0].meta().clone();
        let provider = engines[0].provider();
        let (tx, rx) = mpsc::sync_channel::<Job>(opts.queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared::default());
        let mut handles = Vec::new();
        for (i, engine) in engines.into_iter().enumerate() {
            let w = Worker {
                id: i,
                engine,
                rx: rx.clone(),
                shared: shared.clone(),
                metrics: metrics.clone(),
                max_batch: opts.max_batch.max(1),
                batch_wait: opts.batch_wait,
            };
            let h = std::thread::Builder::new()
                .name(format!("lse-worker-{i}"))
                .spawn(move || w.run())
                .map_err(|e| EngineError::Run(format!("cannot start a worker thread: {e}")))?;
            handles.push(h);
        }
        Ok((
            Self {
                tx: Mutex::new(Some(tx)),
                shared,
                handles: Mutex::new(handles),
                workers: opts.workers,
            },
            meta,
            provider,
        ))
    }

    /// Queues a job without waiting.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = guard.as_ref() else {
            return Err(SubmitError::Closed);
        };
        // Count before sending so a fast worker never sees the counter go below zero.
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Full,
                    TrySendError::Disconnected(_) => SubmitError::Closed,
                })
            }
        }
    }

    /// The error of a worker whose warm-up failed, if one did.
    pub fn warm_up_error(&self) -> Option<String> {
        let failed = self
            .shared
            .warm_up_failed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        failed.clone()
    }

    /// Whether every worker is loaded and warmed up.
    pub fn ready(&self) -> bool {
        self.shared.ready.load(Ordering::SeqCst) >= self.workers
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Jobs waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.shared.queued.load(Ordering::SeqCst)
    }

    /// Holds every job in the queue, from the next one a worker takes: the jobs wait
    /// (their requests keep their admission places, so a full queue answers 503) until
    /// [`Pool::resume`]. Batches already running finish.
    pub fn pause(&self) {
        self.shared.gate.set_closed(true);
    }

    /// Lets the workers take jobs again after [`Pool::pause`].
    pub fn resume(&self) {
        self.shared.gate.set_closed(false);
    }

    /// Whether the pool is paused.
    pub fn paused(&self) -> bool {
        self.shared.gate.is_closed()
    }

    /// Stops taking jobs, lets the workers finish the queued ones (resuming a paused
    /// pool) and joins them.
    pub fn close(&self) {
        self.resume();
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let handles: Vec<_> =
            std::mem::take(&mut *self.handles.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }
}

struct Worker {
    id: usize,
    engine: Engine,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    max_batch: usize,
    batch_wait: Duration,
}

impl Worker {
    fn input_shape(&self) -> (usize, usize, usize) {
        let [w, h] = self.engine.meta().train_size;
        (3, h as usize, w as usize)
    }

    /// Runs the largest batch once (allocations, kernel selection) and once a single image.
    fn warm_up(&mut self) -> Result<(), EngineError> {
        let (c, h, w) = self.input_shape();
        for n in [self.max_batch, 1] {
            let batch = Array4::<f32>::zeros((n, c, h, w));
            self.engine.run(batch.view())?;
        }
        Ok(())
    }

    fn next_batch(&self) -> Option<Vec<Job>> {
        let rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        let first = rx.recv().ok()?;
        // Paused: the job waits here, still counted as queued.
        self.shared.gate.wait_open();
        self.shared.queued.fetch_sub(1, Ordering::SeqCst);
        let mut batch = vec![first];
        let deadline = Instant::now() + self.batch_wait;
        while batch.len() < self.max_batch {
            match rx.try_recv() {
                Ok(j) => {
                    self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                    batch.push(j);
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {}
            }
            // Nothing queued: wait only for requests that are on their way.
            let now = Instant::now();
            if self.shared.preparing.load(Ordering::SeqCst) == 0 || now >= deadline {
                break;
            }
            let slice = (deadline - now).min(Duration::from_micros(500));
            match rx.recv_timeout(slice) {
                Ok(j) => {
                    self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                    batch.push(j);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        Some(batch)
    }

    fn run(mut self) {
        match self.warm_up() {
            Ok(()) => {
                self.shared.ready.fetch_add(1, Ordering::SeqCst);
                tracing::info!(worker = self.id, provider = %self.engine.provider(), "worker ready");
            }
            Err(e) => {
                tracing::error!(worker = self.id, error = %e, "warm-up failed");
                let mut failed = self
                    .shared
                    .warm_up_failed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                failed.get_or_insert_with(|| e.to_string());
            }
        }
        while let Some(mut batch) = self.next_batch() {
            // Requests that timed out or whose client left are not worth running.
            batch.retain(|j| !j.reply.is_closed());
            if batch.is_empty() {
                continue;
            }
            self.run_batch(batch);
        }
        tracing::debug!(worker = self.id, "worker stopped");
    }

    fn run_batch(&mut self, batch: Vec<Job>) {
        let n = batch.len();
        let size = self.engine.meta().train_size;
        let (input, wrong) = predict::stack_inputs(batch.iter().map(|j| j.input.as_slice()), size);
        let started = Instant::now();
        let result = self.engine.run(input.view());
        let inference = started.elapsed();
        self.metrics.observe_batch(n, inference);
        match result {
            Ok(out) => {
                let out = Arc::new(out);
                for (i, job) in batch.into_iter().enumerate() {
                    let answer = if wrong.contains(&i) {
                        Err(format!(
                            "the job's input has {} values, the model takes {}",
                            job.input.len(),
                            input.len() / n
                        ))
                    } else {
                        Ok(JobOutput {
                            batch: out.clone(),
                            index: i,
                            batch_size: n,
                            queued: started.saturating_duration_since(job.enqueued),
                            inference,
                        })
                    };
                    let _ = job.reply.send(answer);
                }
            }
            Err(e) => {
                tracing::error!(worker = self.id, error = %e, batch = n, "inference failed");
                for job in batch {
                    let _ = job.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}
