//! Counters the daemon keeps and `GET /metrics` renders in the Prometheus
//! text format. Plain atomics and a mutex-guarded map: no IO here.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the build duration histogram.
pub const BUILD_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

/// Labelled counters by metric name and label set.
type Counters = BTreeMap<(&'static str, Vec<(&'static str, String)>), u64>;

/// The daemon's metrics.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
    build_buckets: Mutex<Vec<u64>>,
    build_sum_ms: AtomicU64,
    build_count: AtomicU64,
    queue_depth: AtomicU64,
    rate_limit: Mutex<BTreeMap<String, u64>>,
    gauges: Mutex<Counters>,
}

const GAUGE_HELP: &[(&str, &str)] = &[
    ("rebased_images", "Managed images by the state they are shown in (fresh, stale, queued, building, failing, held)."),
    ("rebased_images_unchecked", "Images with a base whose last check failed."),
    ("rebased_bases_unchecked", "Watched bases whose last check failed."),
    ("rebased_audit_drift", "Findings of each image's last immutability audit that were not repaired, by image."),
    ("rebased_notify_outbox_depth", "Events logged after a notifier's cursor: not yet delivered (or passed over), by notifier."),
    ("rebased_engine_up", "Remote build engines: 1 when the engine answered its last health check, else 0, by engine."),
    ("rebased_engine_running", "Builds running on each remote build engine."),
];

const HELP: &[(&str, &str, &str)] = &[
    ("rebased_polls_total", "counter", "Base checks, by registry and outcome (ok, error)."),
    ("rebased_source_checks_total", "counter", "Git source look-ups, by outcome (ok, unreachable, auth, missing_ref, missing_dir, timeout, error)."),
    ("rebased_registry_requests_total", "counter", "HTTP requests rebased sent to registries (polls, native builds' pulls and pushes, tag moves, tokens; each retry counted), by registry, kind (manifest_head, manifest_get, manifest_put, tags, blob_head, blob_get, blob_mount, blob_upload, token, other) and outcome (ok, unauthorized, not_found, rate_limited, error, unreachable)."),
    ("rebased_builds_total", "counter", "Build attempts, by outcome (published, fresh, failed, interrupted)."),
    ("rebased_engine_builds_total", "counter", "Builds on remote engines, by engine and outcome (done, failed, lost: run again elsewhere)."),
    ("rebased_versions_published_total", "counter", "Versions published, by image."),
    ("rebased_audit_findings_total", "counter", "Immutability audit findings, by kind (version_tag_moved, version_tag_missing, floating_tag_moved, signature_missing, signature_invalid) and whether they were repaired."),
    ("rebased_notify_deliveries_total", "counter", "Notifier deliveries, by notifier and outcome (delivered: events sent; failed: attempts that failed; dropped: events given up after 24 h or trimmed from the log first)."),
    ("rebased_webhook_deliveries_total", "counter", "Webhook deliveries, by source and outcome (accepted, ignored, unauthorized, malformed, too_large)."),
];

impl Metrics {
    /// Adds `n` to counter `name` with `labels`.
    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], n: u64) {
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        *c.entry(key).or_insert(0) += n;
    }

    /// Adds one.
    pub fn inc(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        self.add(name, labels, 1);
    }

    /// Records a build's duration.
    pub fn observe_build(&self, seconds: f64) {
        let mut b = self.build_buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() != BUILD_BUCKETS.len() {
            *b = vec![0; BUILD_BUCKETS.len()];
        }
        for (i, le) in BUILD_BUCKETS.iter().enumerate() {
            if seconds <= *le {
                b[i] += 1;
            }
        }
        self.build_sum_ms
            .fetch_add((seconds * 1000.0) as u64, Ordering::Relaxed);
        self.build_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets gauge `name` with `labels` to `value`.
    pub fn set_gauge(&self, name: &'static str, labels: &[(&'static str, &str)], value: u64) {
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        let mut g = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
        g.insert(key, value);
    }

    /// Sets the queue depth gauge.
    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth.store(depth as u64, Ordering::Relaxed);
    }

    /// Records a registry's remaining rate limit (Docker Hub's `ratelimit-remaining`).
    pub fn set_rate_limit_remaining(&self, registry: &str, remaining: u64) {
        let mut r = self.rate_limit.lock().unwrap_or_else(|p| p.into_inner());
        r.insert(registry.to_owned(), remaining);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((n, labels), v) in counters.iter().filter(|((n, _), _)| n == name) {
                let _ = writeln!(out, "{n}{} {v}", render_labels(labels));
            }
        }
        let gauges = self
            .gauges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (name, help) in GAUGE_HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for ((n, labels), v) in gauges.iter().filter(|((n, _), _)| n == name) {
                let _ = writeln!(out, "{n}{} {v}", render_labels(labels));
            }
        }
        let _ = writeln!(
            out,
            "# HELP rebased_queue_depth Jobs waiting in the queue.\n# TYPE rebased_queue_depth gauge\nrebased_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP rebased_registry_rate_limit_remaining Requests left in the registry's rate-limit window, when it says.\n# TYPE rebased_registry_rate_limit_remaining gauge");
        for (registry, v) in self
            .rate_limit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "rebased_registry_rate_limit_remaining{} {v}",
                render_labels(&[("registry", registry.clone())])
            );
        }
        let _ = writeln!(out, "# HELP rebased_build_duration_seconds Time from build start to push.\n# TYPE rebased_build_duration_seconds histogram");
        let buckets = self
            .build_buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let count = self.build_count.load(Ordering::Relaxed);
        for (i, le) in BUILD_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "rebased_build_duration_seconds_bucket{{le=\"{le}\"}} {}",
                buckets.get(i).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            out,
            "rebased_build_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "rebased_build_duration_seconds_sum {}\nrebased_build_duration_seconds_count {count}",
            self.build_sum_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
        out
    }
}

fn render_labels(labels: &[(&'static str, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.inc(
            "rebased_polls_total",
            &[("registry", "127.0.0.1:5000"), ("outcome", "ok")],
        );
        m.inc(
            "rebased_polls_total",
            &[("registry", "127.0.0.1:5000"), ("outcome", "ok")],
        );
        m.inc(
            "rebased_webhook_deliveries_total",
            &[("source", "generic"), ("outcome", "bad \"x\"")],
        );
        m.observe_build(3.0);
        m.observe_build(400.0);
        m.set_queue_depth(4);
        let text = m.render();
        assert!(
            text.contains("rebased_polls_total{registry=\"127.0.0.1:5000\",outcome=\"ok\"} 2"),
            "{text}"
        );
        assert!(text.contains("outcome=\"bad \\\"x\\\"\""), "{text}");
        assert!(
            text.contains("rebased_build_duration_seconds_bucket{le=\"5\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rebased_build_duration_seconds_bucket{le=\"600\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("rebased_build_duration_seconds_count 2"),
            "{text}"
        );
        assert!(text.contains("rebased_queue_depth 4"), "{text}");
        assert!(
            text.contains("# TYPE rebased_builds_total counter"),
            "{text}"
        );
    }
}
