//! The state every handler shares (HTTP and gRPC): settings, the served models, the
//! metrics, the admission semaphore and the admin token. Its own module, so that the
//! route modules depend on it and not on each other.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::metrics::{Gauges, Metrics};
use crate::models::{Registry, Served};

/// Shared state of the handlers.
pub struct AppState {
    pub cfg: Config,
    pub models: Registry,
    pub metrics: Arc<Metrics>,
    /// One permit per image in progress (`--queue`).
    pub admission: Arc<Semaphore>,
    /// The admin routes' token (`--admin-token-file`); none: they answer 403.
    pub admin_token: Option<crate::admin::AdminToken>,
}

impl AppState {
    /// The gauges of `/metrics` and `/healthz`, read now.
    pub fn gauges(&self) -> Gauges {
        let cap = self.cfg.queue as usize;
        let models = self.models.all();
        let sum = |f: &dyn Fn(&Served) -> usize| models.iter().map(|m| f(m)).sum::<usize>();
        Gauges {
            queue_depth: sum(&|m| m.pool.queue_depth()),
            queue_capacity: cap,
            in_progress: cap.saturating_sub(self.admission.available_permits()),
            workers: sum(&|m| m.pool.workers()),
            workers_ready: sum(&|m| {
                m.pool
                    .shared
                    .ready
                    .load(std::sync::atomic::Ordering::SeqCst)
            }),
        }
    }
}
