//! Counters, gauges and histograms, rendered in the Prometheus text format (version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::engine::{Done, Finish};

/// Latency buckets in seconds (upper bounds).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Batch-size buckets.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A cumulative histogram.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    state: Mutex<HistState>,
}

#[derive(Debug, Default)]
struct HistState {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            state: Mutex::new(HistState {
                counts: vec![0; bounds.len()],
                ..Default::default()
            }),
        }
    }

    fn observe(&self, v: f64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            s.counts[i] += 1;
        }
        s.sum += v;
        s.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&s.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", s.count);
        let _ = writeln!(out, "{name}_sum {}", s.sum);
        let _ = writeln!(out, "{name}_count {}", s.count);
    }
}

/// Everything `/metrics` reports; shared by the HTTP side and the engine thread.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    finished: Mutex<BTreeMap<&'static str, u64>>,
    queue_depth: AtomicU64,
    batch_size: AtomicU64,
    in_flight: AtomicU64,
    prompt_cache: [AtomicU64; 5],
    steps: Histogram,
    step_seconds: Histogram,
    admit_seconds: Histogram,
    ttft: Histogram,
    per_token: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            finished: Mutex::default(),
            queue_depth: AtomicU64::new(0),
            batch_size: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            prompt_cache: Default::default(),
            steps: Histogram::new(BATCH_BUCKETS),
            step_seconds: Histogram::new(LATENCY_BUCKETS),
            admit_seconds: Histogram::new(LATENCY_BUCKETS),
            ttft: Histogram::new(LATENCY_BUCKETS),
            per_token: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl Metrics {
    /// Counts a finished HTTP request by route and status.
    pub fn request(&self, route: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((route.to_string(), status)).or_default() += 1;
    }

    /// A request started (+1) or ended (-1).
    pub fn in_flight(&self, started: bool) {
        if started {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
        } else {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Prompt tokens of admitted sequences.
    pub fn prompt_tokens(&self, n: usize) {
        self.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Generated tokens.
    pub fn completion_tokens(&self, n: usize) {
        self.completion_tokens
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A sequence left the batch.
    pub fn finished(&self, done: &Done) {
        let reason = match (&done.error, done.finish) {
            (Some(_), _) => "error",
            (None, f) => f.as_str(),
        };
        self.count_finished(reason, 1);
        if done.finish != Finish::Cancelled || done.error.is_some() {
            self.prompt_tokens(done.prompt_tokens);
        }
    }

    /// Sequences whose client left before they were admitted.
    pub fn cancelled_before_start(&self, n: usize) {
        self.count_finished("cancelled", n as u64);
    }

    fn count_finished(&self, reason: &'static str, n: u64) {
        let mut m = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(reason).or_default() += n;
    }

    /// Sequences waiting.
    pub fn set_queue(&self, n: usize) {
        self.queue_depth.store(n as u64, Ordering::Relaxed);
    }

    /// Sequences decoding.
    pub fn set_batch(&self, n: usize) {
        self.batch_size.store(n as u64, Ordering::Relaxed);
    }

    /// One decoding step over `batch` sequences.
    pub fn step(&self, took: Duration, batch: usize) {
        self.step_seconds.observe(took.as_secs_f64());
        self.steps.observe(batch as f64);
    }

    /// Adding sequences to the batch (validation and prefill).
    pub fn admit(&self, took: Duration) {
        self.admit_seconds.observe(took.as_secs_f64());
    }

    /// The prompt cache's counters and contents (`dera::Realigner::prompt_cache_stats`).
    pub fn prompt_cache(&self, s: &dera::PromptCacheStats) {
        let values = [
            s.hits,
            s.misses,
            s.entries as u64,
            s.bytes as u64,
            s.prefix_hits,
        ];
        for (a, v) in self.prompt_cache.iter().zip(values) {
            a.store(v, Ordering::Relaxed);
        }
    }

    /// Time from a request's arrival to its first token.
    pub fn first_token(&self, d: Duration) {
        self.ttft.observe(d.as_secs_f64());
    }

    /// Time between two tokens of a sequence.
    pub fn next_token(&self, d: Duration) {
        self.per_token.observe(d.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP dera_requests_total HTTP requests by route and status.\n# TYPE dera_requests_total counter"
        );
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "dera_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut out,
            "dera_prompt_tokens_total",
            "Prompt tokens of decoded sequences.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "dera_completion_tokens_total",
            "Generated tokens.",
            self.completion_tokens.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP dera_sequences_total Sequences that ended, by reason (stop, length, cancelled, error).\n# TYPE dera_sequences_total counter"
        );
        let finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        for reason in ["stop", "length", "cancelled", "error"] {
            let n = finished.get(reason).copied().unwrap_or(0);
            let _ = writeln!(out, "dera_sequences_total{{reason=\"{reason}\"}} {n}");
        }
        drop(finished);
        gauge(
            &mut out,
            "dera_queue_depth",
            "Sequences waiting for a place in the batch.",
            self.queue_depth.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "dera_batch_size",
            "Sequences decoding now.",
            self.batch_size.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "dera_requests_in_flight",
            "HTTP requests being answered.",
            self.in_flight.load(Ordering::Relaxed),
        );
        let kept = |i: usize| self.prompt_cache[i].load(Ordering::Relaxed);
        counter(
            &mut out,
            "dera_prompt_cache_hits_total",
            "Prefills of one model and prompt joined from the prompt cache.",
            kept(0),
        );
        counter(
            &mut out,
            "dera_prompt_cache_prefix_hits_total",
            "Prefills that ran only the rest of a prompt continuing a kept one.",
            kept(4),
        );
        counter(
            &mut out,
            "dera_prompt_cache_misses_total",
            "Prefills of one model and prompt that ran (whole, or the rest after a kept prefix).",
            kept(1),
        );
        gauge(
            &mut out,
            "dera_prompt_cache_entries",
            "Prompt rows kept (one per model and prompt).",
            kept(2),
        );
        gauge(
            &mut out,
            "dera_prompt_cache_bytes",
            "Bytes of kept prompt rows.",
            kept(3),
        );
        self.steps.render(
            &mut out,
            "dera_step_batch_size",
            "Sequences per decoding step.",
        );
        self.step_seconds.render(
            &mut out,
            "dera_step_seconds",
            "Duration of one decoding step (all live sequences).",
        );
        self.admit_seconds.render(
            &mut out,
            "dera_admit_seconds",
            "Adding requests to the running batch (prefill of their prompts).",
        );
        self.ttft.render(
            &mut out,
            "dera_time_to_first_token_seconds",
            "From a request's arrival to its first generated token.",
        );
        self.per_token.render(
            &mut out,
            "dera_time_per_output_token_seconds",
            "Between two generated tokens of a sequence.",
        );
        out
    }
}

/// Escapes a label value.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.first_token(Duration::from_millis(3));
        m.first_token(Duration::from_millis(30));
        m.first_token(Duration::from_secs(100));
        let text = m.render();
        assert!(text.contains("dera_time_to_first_token_seconds_bucket{le=\"0.001\"} 0"));
        assert!(text.contains("dera_time_to_first_token_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("dera_time_to_first_token_seconds_bucket{le=\"0.05\"} 2"));
        assert!(text.contains("dera_time_to_first_token_seconds_bucket{le=\"60\"} 2"));
        assert!(text.contains("dera_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("dera_time_to_first_token_seconds_count 3"));
    }

    #[test]
    fn requests_by_route_and_status() {
        let m = Metrics::default();
        m.request("/v1/completions", 200);
        m.request("/v1/completions", 200);
        m.request("/v1/completions", 400);
        let text = m.render();
        assert!(text.contains("dera_requests_total{route=\"/v1/completions\",status=\"200\"} 2"));
        assert!(text.contains("dera_requests_total{route=\"/v1/completions\",status=\"400\"} 1"));
    }
}
