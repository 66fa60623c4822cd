//! Prometheus metrics in the text exposition format (version 0.0.4), written by hand:
//! requests by route and status, request latency, queue depth, batch sizes and
//! inference time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// A histogram with fixed upper bounds (the `+Inf` bucket is implicit).
#[derive(Debug, Clone)]
struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    /// Appends the `_bucket`, `_sum` and `_count` lines; `labels` is `k="v",` or empty.
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", self.count);
        let plain = labels.trim_end_matches(',');
        let braces = if plain.is_empty() {
            String::new()
        } else {
            format!("{{{plain}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

const LATENCY_BOUNDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BATCH_BOUNDS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

#[derive(Debug)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    batch_size: Histogram,
    inference: Histogram,
    stages: BTreeMap<&'static str, Histogram>,
}

/// The server's metrics. Gauges (queue depth, readiness) are read at scrape time.
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                requests: BTreeMap::new(),
                latency: BTreeMap::new(),
                batch_size: Histogram::new(&BATCH_BOUNDS),
                inference: Histogram::new(&LATENCY_BOUNDS),
                stages: BTreeMap::new(),
            }),
        }
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

/// Escapes a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one finished HTTP request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let mut g = self.lock();
        *g.requests
            .entry((route.to_string(), method.to_string(), status))
            .or_insert(0) += 1;
        g.latency
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(&LATENCY_BOUNDS))
            .observe(elapsed.as_secs_f64());
    }

    /// Records one session run.
    pub fn observe_batch(&self, size: usize, inference: Duration) {
        let mut g = self.lock();
        g.batch_size.observe(size as f64);
        g.inference.observe(inference.as_secs_f64());
    }

    /// Records the time of one stage of one image (decode, queue, postprocess, encode).
    pub fn observe_stage(&self, stage: &'static str, elapsed: Duration) {
        self.lock()
            .stages
            .entry(stage)
            .or_insert_with(|| Histogram::new(&LATENCY_BOUNDS))
            .observe(elapsed.as_secs_f64());
    }

    /// The exposition text.
    pub fn render(&self, gauges: Gauges) -> String {
        let g = self.lock();
        let mut out = String::new();
        out.push_str("# HELP lse_http_requests_total HTTP requests by route, method and status.\n");
        out.push_str("# TYPE lse_http_requests_total counter\n");
        for ((route, method, status), n) in &g.requests {
            let _ = writeln!(
                out,
                "lse_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                esc(route),
                esc(method)
            );
        }
        out.push_str(
            "# HELP lse_http_request_duration_seconds Time from request to response, by route.\n",
        );
        out.push_str("# TYPE lse_http_request_duration_seconds histogram\n");
        for (route, h) in &g.latency {
            h.write(
                &mut out,
                "lse_http_request_duration_seconds",
                &format!("route=\"{}\",", esc(route)),
            );
        }
        out.push_str("# HELP lse_batch_size Images per session run.\n");
        out.push_str("# TYPE lse_batch_size histogram\n");
        g.batch_size.write(&mut out, "lse_batch_size", "");
        out.push_str("# HELP lse_inference_seconds Time of one session run (a whole batch).\n");
        out.push_str("# TYPE lse_inference_seconds histogram\n");
        g.inference.write(&mut out, "lse_inference_seconds", "");
        out.push_str("# HELP lse_stage_seconds Time of one image in one stage of the pipeline.\n");
        out.push_str("# TYPE lse_stage_seconds histogram\n");
        for (stage, h) in &g.stages {
            h.write(
                &mut out,
                "lse_stage_seconds",
                &format!("stage=\"{stage}\","),
            );
        }
        let gauge = |out: &mut String, name: &str, help: &str, v: usize| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut out,
            "lse_queue_depth",
            "Images waiting for a worker.",
            gauges.queue_depth,
        );
        gauge(
            &mut out,
            "lse_queue_capacity",
            "Requests that may be in progress before 503.",
            gauges.queue_capacity,
        );
        gauge(
            &mut out,
            "lse_requests_in_progress",
            "Segmentation requests being decoded, queued, inferred or encoded.",
            gauges.in_progress,
        );
        gauge(
            &mut out,
            "lse_workers",
            "Inference workers.",
            gauges.workers,
        );
        gauge(
            &mut out,
            "lse_workers_ready",
            "Workers whose session is loaded and warmed up.",
            gauges.workers_ready,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[1.0, 2.0, 4.0]);
        for v in [0.5, 1.0, 3.0, 9.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, vec![2, 2, 3]);
        let mut s = String::new();
        h.write(&mut s, "x", "a=\"b\",");
        assert!(s.contains("x_bucket{a=\"b\",le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"+Inf\"} 4\n"), "{s}");
        assert!(s.contains("x_sum{a=\"b\"} 13.5\n"), "{s}");
        assert!(s.contains("x_count{a=\"b\"} 4\n"), "{s}");
    }

    #[test]
    fn render_has_every_family() {
        let m = Metrics::default();
        m.observe_request("/v1/segment", "POST", 200, Duration::from_millis(12));
        m.observe_batch(3, Duration::from_millis(4));
        let text = m.render(Gauges {
            queue_depth: 2,
            queue_capacity: 64,
            in_progress: 3,
            workers: 1,
            workers_ready: 1,
        });
        for needle in [
            "lse_http_requests_total{route=\"/v1/segment\",method=\"POST\",status=\"200\"} 1",
            "lse_http_request_duration_seconds_bucket{route=\"/v1/segment\",le=\"0.025\"} 1",
            "lse_batch_size_bucket{le=\"4\"} 1",
            "lse_batch_size_bucket{le=\"2\"} 0",
            "lse_inference_seconds_count 1",
            "lse_queue_depth 2",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
