//! Counters and gauges in the Prometheus text format, served on `metrics_address` (a
//! separate plain-HTTP listener, as in Pomerium) at `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The `result` label of [`Metrics::config_reloads`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `success` or `failure`.
    pub result: &'static str,
}

/// The `pool` label of the backend metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    /// The pool's name (config `backends.<name>`).
    pub pool: String,
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
    /// Streams (SSE, WebSocket) open now (set from the registry when the metrics are read).
    pub streams_open: Gauge,
    /// Streams ended by Gatehouse (policy change after a reload, sign-out).
    pub streams_ended: Counter,
    /// Per-person backends running now, by pool.
    pub backends_running: Family<PoolLabel, Gauge>,
    /// Backend starts that became ready, by pool.
    pub backend_starts: Family<PoolLabel, Counter>,
    /// Backend starts that failed (exited early, not ready in time), by pool.
    pub backend_start_failures: Family<PoolLabel, Counter>,
    /// Running backends that exited on their own, by pool.
    pub backend_crashes: Family<PoolLabel, Counter>,
    /// Backends stopped for being idle, by pool.
    pub backend_idle_stops: Family<PoolLabel, Counter>,
    /// Spawn-to-ready time of the last start, by pool.
    pub backend_last_start_seconds: Family<PoolLabel, Gauge<f64, AtomicU64>>,
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
            backends_running: Family::default(),
            backend_starts: Family::default(),
            backend_start_failures: Family::default(),
            backend_crashes: Family::default(),
            backend_idle_stops: Family::default(),
            backend_last_start_seconds: Family::default(),
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
        registry.register(
            "backends_running",
            "Per-person backends running now",
            m.backends_running.clone(),
        );
        registry.register(
            "backend_starts",
            "Backend starts that became ready",
            m.backend_starts.clone(),
        );
        registry.register(
            "backend_start_failures",
            "Backend starts that failed (exited before ready, or not ready within start_timeout)",
            m.backend_start_failures.clone(),
        );
        registry.register(
            "backend_crashes",
            "Running backends that exited on their own",
            m.backend_crashes.clone(),
        );
        registry.register(
            "backend_idle_stops",
            "Backends stopped for being idle",
            m.backend_idle_stops.clone(),
        );
        registry.register(
            "backend_last_start_seconds",
            "Spawn-to-ready time of the last backend start",
            m.backend_last_start_seconds.clone(),
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

    /// Records a reload's outcome: counted by result, and as a load ([`Metrics::loaded`]).
    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
        self.loaded(ok);
    }

    /// Copies a pool's supervisor counters into the metrics (at each scrape: the supervisor
    /// keeps its own counters and knows nothing of Prometheus).
    pub fn sync_backends(&self, pool: &str, c: &gatehouse_backends::CountersSnapshot) {
        let label = PoolLabel {
            pool: pool.to_string(),
        };
        let catch_up = |family: &Family<PoolLabel, Counter>, total: u64| {
            let counter = family.get_or_create(&label);
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        };
        self.backends_running
            .get_or_create(&label)
            .set(i64::try_from(c.running).unwrap_or(i64::MAX));
        catch_up(&self.backend_starts, c.starts);
        catch_up(&self.backend_start_failures, c.start_failures);
        catch_up(&self.backend_crashes, c.crashes);
        catch_up(&self.backend_idle_stops, c.idle_stops);
        self.backend_last_start_seconds
            .get_or_create(&label)
            .set(c.last_start_ms as f64 / 1000.0);
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
    fn backend_counters_are_copied_and_only_ever_grow() {
        let m = Metrics::default();
        let mut c = gatehouse_backends::CountersSnapshot {
            running: 2,
            starts: 3,
            start_failures: 1,
            crashes: 0,
            idle_stops: 1,
            last_start_ms: 2500,
        };
        m.sync_backends("assistant", &c);
        m.sync_backends("assistant", &c);
        let text = m.render();
        assert!(
            text.contains("gatehouse_backends_running{pool=\"assistant\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("gatehouse_backend_starts_total{pool=\"assistant\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("gatehouse_backend_idle_stops_total{pool=\"assistant\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gatehouse_backend_last_start_seconds{pool=\"assistant\"} 2.5"),
            "{text}"
        );
        c.starts = 5;
        c.running = 0;
        m.sync_backends("assistant", &c);
        let text = m.render();
        assert!(
            text.contains("gatehouse_backend_starts_total{pool=\"assistant\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("gatehouse_backends_running{pool=\"assistant\"} 0"),
            "{text}"
        );
    }

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
