//! Counters and gauges in the Prometheus text format, served on `metrics_address` (a
//! separate plain-HTTP listener, as in Pomerium) at `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Gatehouse's metrics. Cheap to update from any thread.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// 1 when the last config reload (or the start) succeeded, 0 when it failed.
    pub config_last_reload_successful: Gauge,
    /// Unix time of the last successful load.
    pub config_last_reload_success_timestamp_seconds: Gauge<f64, AtomicU64>,
    /// Reloads tried, by result (`success`, `failure`).
    pub config_reloads: Family<ResultLabel, Counter>,
    /// Streams (SSE, WebSocket) open now.
    pub streams_open: Gauge,
    /// Streams ended by Gatehouse (policy change after a reload, sign-out).
    pub streams_ended: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gatehouse");
        let m = Metrics {
            config_last_reload_successful: Gauge::default(),
            config_last_reload_success_timestamp_seconds: Gauge::default(),
            config_reloads: Family::default(),
            streams_open: Gauge::default(),
            streams_ended: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "config_last_reload_successful",
            "Whether the last configuration reload succeeded (1) or failed and the previous configuration is still serving (0)",
            m.config_last_reload_successful.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load",
            m.config_last_reload_success_timestamp_seconds.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads tried, by result",
            m.config_reloads.clone(),
        );
        registry.register(
            "streams_open",
            "Long-lived responses (SSE, WebSocket) open now",
            m.streams_open.clone(),
        );
        registry.register(
            "streams_ended",
            "Streams Gatehouse ended because their person was no longer allowed or signed out",
            m.streams_ended.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Records the outcome of a load (the first one at start, then each reload).
    pub fn loaded(&self, ok: bool) {
        self.config_last_reload_successful.set(i64::from(ok));
        if ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            self.config_last_reload_success_timestamp_seconds.set(now);
        }
    }

    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
        self.loaded(ok);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_reload_shows_in_the_text() {
        let m = Metrics::default();
        m.loaded(true);
        m.reloaded(false);
        let text = m.render();
        assert!(
            text.contains("gatehouse_config_last_reload_successful 0"),
            "{text}"
        );
        assert!(
            text.contains("gatehouse_config_reloads_total{result=\"failure\"} 1"),
            "{text}"
        );
        m.reloaded(true);
        assert!(
            m.render()
                .contains("gatehouse_config_last_reload_successful 1")
        );
    }
}
