//! Prometheus metrics: recorded through the `metrics` facade's types into the recorder
//! of `metrics-exporter-prometheus`, which writes the text exposition format. The
//! recorder belongs to the server (it is not installed process-wide), so each
//! [`Metrics`] counts on its own.
//!
//! Families: requests by route, method and status; request latency by route; batch
//! sizes and session-run times; the time of each image in each stage of the pipeline
//! (`decode`, `queue`, `postprocess`, `encode`; inference is per batch); the open
//! connections of each port and those its header or idle timeout closed; and gauges
//! read at scrape time (queue depth, requests in progress, workers).

use std::time::Duration;

use metrics::{Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

const LATENCY_BOUNDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BATCH_BOUNDS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static META: Metadata<'static> = Metadata::new("lse_server", Level::INFO, Some(module_path!()));

const REQUESTS: &str = "lse_http_requests_total";
const LATENCY: &str = "lse_http_request_duration_seconds";
const BATCH: &str = "lse_batch_size";
const INFERENCE: &str = "lse_inference_seconds";
const STAGE: &str = "lse_stage_seconds";
const CONNECTIONS_OPEN: &str = "lse_connections_open";
const CONNECTIONS_TIMED_OUT: &str = "lse_connections_timed_out_total";

/// The HTTP methods counted by name; any other is counted as `other`.
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

/// The `method` label of a request's method: one of [`METHODS`], else `other`.
pub fn method_label(method: &str) -> &'static str {
    METHODS
        .into_iter()
        .find(|m| *m == method)
        .unwrap_or("other")
}

/// The server's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Values read at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub in_progress: usize,
    pub workers: usize,
    pub workers_ready: usize,
}

const GAUGES: [(&str, &str); 5] = [
    ("lse_queue_depth", "Images waiting for a worker."),
    (
        "lse_queue_capacity",
        "Images that may be in progress before 503.",
    ),
    (
        "lse_requests_in_progress",
        "Images being decoded, queued, inferred or encoded.",
    ),
    ("lse_workers", "Inference workers."),
    (
        "lse_workers_ready",
        "Workers whose session is loaded and warmed up.",
    ),
];

impl Default for Metrics {
    fn default() -> Self {
        // Histograms with fixed buckets (the exporter's default is a summary). The
        // bucket lists are constants and not empty, the only thing these calls check.
        let recorder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BOUNDS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH.into()), &BATCH_BOUNDS))
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        let m = Self { recorder, handle };
        m.describe();
        m
    }
}

fn key(name: &'static str, labels: Vec<Label>) -> Key {
    Key::from_parts(name, labels)
}

impl Metrics {
    fn describe(&self) {
        let help = |name: &'static str, text: &'static str| {
            (KeyName::from(name), SharedString::from(text))
        };
        let (n, t) = help(REQUESTS, "HTTP requests by route, method and status.");
        self.recorder.describe_counter(n, None, t);
        let (n, t) = help(
            CONNECTIONS_TIMED_OUT,
            "Connections closed by the header-read or the idle timeout, by port.",
        );
        self.recorder.describe_counter(n, None, t);
        let (n, t) = help(CONNECTIONS_OPEN, "Open connections, by port.");
        self.recorder.describe_gauge(n, None, t);
        for (name, text) in [
            (LATENCY, "Time from request to response, by route."),
            (BATCH, "Images per session run."),
            (INFERENCE, "Time of one session run (a whole batch)."),
            (STAGE, "Time of one image in one stage of the pipeline."),
        ] {
            let (n, t) = help(name, text);
            self.recorder.describe_histogram(n, None, t);
        }
        for (name, text) in GAUGES {
            let (n, t) = help(name, text);
            self.recorder.describe_gauge(n, None, t);
        }
    }

    /// Records one finished HTTP request. `route` is a route template (never a
    /// request's own path) or `unmatched`; a method outside [`METHODS`] counts as
    /// `other`, so clients cannot add series.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let labels = vec![
            Label::new("route", route.to_string()),
            Label::new("method", method_label(method)),
            Label::new("status", status.to_string()),
        ];
        self.recorder
            .register_counter(&key(REQUESTS, labels), &META)
            .increment(1);
        let route = vec![Label::new("route", route.to_string())];
        self.recorder
            .register_histogram(&key(LATENCY, route), &META)
            .record(elapsed.as_secs_f64());
    }

    /// Records one session run.
    pub fn observe_batch(&self, size: usize, inference: Duration) {
        self.recorder
            .register_histogram(&key(BATCH, vec![]), &META)
            .record(size as f64);
        self.recorder
            .register_histogram(&key(INFERENCE, vec![]), &META)
            .record(inference.as_secs_f64());
    }

    /// A connection was accepted on `port` (`http`, `grpc`).
    pub fn connection_opened(&self, port: &'static str) {
        self.open_connections(port).increment(1.0);
    }

    /// A connection of `port` has closed.
    pub fn connection_closed(&self, port: &'static str) {
        self.open_connections(port).decrement(1.0);
    }

    fn open_connections(&self, port: &'static str) -> metrics::Gauge {
        let labels = vec![Label::new("port", port)];
        self.recorder
            .register_gauge(&key(CONNECTIONS_OPEN, labels), &META)
    }

    /// The `timeout` (`header`, `idle`) of a connection of `port` expired: the server
    /// is closing it.
    pub fn connection_timed_out(&self, port: &'static str, timeout: &'static str) {
        let labels = vec![Label::new("port", port), Label::new("timeout", timeout)];
        self.recorder
            .register_counter(&key(CONNECTIONS_TIMED_OUT, labels), &META)
            .increment(1);
    }

    /// Records the time of one stage of one image (decode, queue, postprocess, encode).
    pub fn observe_stage(&self, stage: &'static str, elapsed: Duration) {
        let labels = vec![Label::new("stage", stage)];
        self.recorder
            .register_histogram(&key(STAGE, labels), &META)
            .record(elapsed.as_secs_f64());
    }

    /// The exposition text, with the gauges set to `gauges`.
    pub fn render(&self, gauges: Gauges) -> String {
        let values = [
            gauges.queue_depth,
            gauges.queue_capacity,
            gauges.in_progress,
            gauges.workers,
            gauges.workers_ready,
        ];
        for ((name, _), v) in GAUGES.into_iter().zip(values) {
            self.recorder
                .register_gauge(&key(name, vec![]), &META)
                .set(v as f64);
        }
        self.handle.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    #[test]
    fn unknown_methods_share_one_series() {
        let m = Metrics::default();
        for i in 0..1000 {
            m.observe_request("unmatched", &format!("M{i}"), 405, Duration::ZERO);
        }
        m.observe_request("unmatched", "GET", 404, Duration::ZERO);
        let text = m.render(Gauges {
            queue_depth: 0,
            queue_capacity: 1,
            in_progress: 0,
            workers: 1,
            workers_ready: 1,
        });
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("lse_http_requests_total{"))
            .collect();
        assert_eq!(series.len(), 2, "{series:?}");
        let other = "lse_http_requests_total{route=\"unmatched\",method=\"other\",status=\"405\"}";
        assert_eq!(value(&text, other), Some(1000.0), "{text}");
    }

    #[test]
    fn render_has_every_family_with_buckets() {
        let m = Metrics::default();
        m.observe_request("/v1/segment", "POST", 200, Duration::from_millis(12));
        m.observe_batch(3, Duration::from_millis(4));
        m.observe_stage("decode", Duration::from_millis(2));
        let text = m.render(Gauges {
            queue_depth: 2,
            queue_capacity: 64,
            in_progress: 3,
            workers: 1,
            workers_ready: 1,
        });
        let requests =
            "lse_http_requests_total{route=\"/v1/segment\",method=\"POST\",status=\"200\"}";
        assert_eq!(value(&text, requests), Some(1.0), "{text}");
        assert_eq!(
            value(
                &text,
                "lse_http_request_duration_seconds_count{route=\"/v1/segment\"}"
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                "lse_http_request_duration_seconds_bucket{route=\"/v1/segment\",le=\"0.025\"}"
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                "lse_http_request_duration_seconds_bucket{route=\"/v1/segment\",le=\"0.01\"}"
            ),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "lse_batch_size_bucket{le=\"4\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "lse_batch_size_bucket{le=\"2\"}"),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "lse_stage_seconds_count{stage=\"decode\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "lse_inference_seconds_count"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(value(&text, "lse_queue_depth"), Some(2.0), "{text}");
        assert!(text.contains("# TYPE lse_batch_size histogram"), "{text}");
        assert!(
            text.contains("# HELP lse_workers_ready Workers whose"),
            "{text}"
        );
    }
}
