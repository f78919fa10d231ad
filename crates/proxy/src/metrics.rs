//! Counters and gauges in the Prometheus text format, served on `metrics_address` (a
//! separate plain-HTTP listener, as in Pomerium) at `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `result` label of [`Metrics::config_reloads`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `success` or `failure`.
    pub result: &'static str,
}

/// The labels of [`Metrics::requests`]: the route (`-` when none matched), the status, and
/// the access log's `decision`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's label (`https://host[/prefix]`).
    pub route: String,
    /// The HTTP status answered (0 when none was).
    pub status: u16,
    /// The decision code (policy reason or refusal code).
    pub decision: &'static str,
}

/// The `route` label of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The route's label.
    pub route: String,
}

/// The `result` and `reason` labels of [`Metrics::sign_ins`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignInLabels {
    /// `success` or `failure`.
    pub result: &'static str,
    /// Why it failed (`-` for a success).
    pub reason: &'static str,
}

/// The `version` label of `build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Gatehouse's version.
    pub version: &'static str,
}

/// The `pool` label of the backend metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    /// The pool's name (config `backends.<name>`).
    pub pool: String,
}

/// The labels of [`Metrics::backends`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolStateLabels {
    /// The pool's name.
    pub pool: String,
    /// `starting`, `running` or `stopping`.
    pub state: &'static str,
}

/// The labels of [`Metrics::certificate_not_after`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    /// The certificate file, as configured.
    pub file: String,
    /// Its subject's first DNS name (or common name), for the alert's text.
    pub name: String,
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
    /// Per-person backends by pool and state (`starting`, `running`, `stopping`).
    pub backends: Family<PoolStateLabels, Gauge>,
    /// Unix time at which each served certificate expires (its `notAfter`).
    pub certificate_not_after: Family<CertificateLabels, Gauge>,
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
    /// Requests answered, by route, status and decision.
    pub requests: Family<RequestLabels, Counter>,
    /// Time to the end of each request (a stream counts until it ends), by route.
    pub request_duration_seconds: Family<RouteLabel, Histogram>,
    /// Sign-ins finished, by result and (for failures) reason.
    pub sign_ins: Family<SignInLabels, Counter>,
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
            backends: Family::default(),
            certificate_not_after: Family::default(),
            backend_starts: Family::default(),
            backend_start_failures: Family::default(),
            backend_crashes: Family::default(),
            backend_idle_stops: Family::default(),
            backend_last_start_seconds: Family::default(),
            requests: Family::default(),
            request_duration_seconds: Family::new_with_constructor(|| {
                // 1 ms to ~33 s: Gatehouse's own answers, proxied calls, backend starts.
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.001, 2.0, 16,
                ))
            }),
            sign_ins: Family::default(),
            registry: Registry::default(),
        };
        let build_info: Family<BuildLabels, Gauge> = Family::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "Gatehouse's version (the value is always 1)",
            build_info,
        );
        registry.register(
            "requests",
            "Requests answered, by route, status and decision (the access log's decision code)",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's start to its end (a stream counts until it ends), by route",
            m.request_duration_seconds.clone(),
        );
        registry.register(
            "sign_ins",
            "Sign-ins finished at the callback, by result and failure reason",
            m.sign_ins.clone(),
        );
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
            "backends",
            "Per-person backends by state (starting, running, stopping)",
            m.backends.clone(),
        );
        registry.register(
            "certificate_not_after_timestamp_seconds",
            "Unix time at which each served TLS certificate expires (alert on this minus time())",
            m.certificate_not_after.clone(),
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
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.backends_running
            .get_or_create(&label)
            .set(count(c.running));
        for (state, n) in [
            ("starting", c.starting),
            ("running", c.running),
            ("stopping", c.stopping),
        ] {
            self.backends
                .get_or_create(&PoolStateLabels {
                    pool: pool.to_string(),
                    state,
                })
                .set(count(n));
        }
        catch_up(&self.backend_starts, c.starts);
        catch_up(&self.backend_start_failures, c.start_failures);
        catch_up(&self.backend_crashes, c.crashes);
        catch_up(&self.backend_idle_stops, c.idle_stops);
        self.backend_last_start_seconds
            .get_or_create(&label)
            .set(c.last_start_ms as f64 / 1000.0);
    }

    /// Sets the served certificates' expiry times (the ones no longer served disappear).
    pub fn certificates(&self, expiries: &[crate::tls::Expiry]) {
        self.certificate_not_after.clear();
        for e in expiries {
            self.certificate_not_after
                .get_or_create(&CertificateLabels {
                    file: e.file.clone(),
                    name: e.name.clone(),
                })
                .set(e.not_after);
        }
    }

    /// Counts one finished request.
    pub fn request(&self, route: &str, status: u16, decision: &'static str, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                status,
                decision,
            })
            .inc();
        self.request_duration_seconds
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// Counts a finished sign-in: `Ok` or the failure's reason code.
    pub fn sign_in(&self, result: Result<(), &'static str>) {
        let labels = match result {
            Ok(()) => SignInLabels {
                result: "success",
                reason: "-",
            },
            Err(reason) => SignInLabels {
                result: "failure",
                reason,
            },
        };
        self.sign_ins.get_or_create(&labels).inc();
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
            starting: 1,
            stopping: 0,
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
        for line in [
            "gatehouse_backends{pool=\"assistant\",state=\"starting\"} 1",
            "gatehouse_backends{pool=\"assistant\",state=\"running\"} 2",
            "gatehouse_backends{pool=\"assistant\",state=\"stopping\"} 0",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
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
