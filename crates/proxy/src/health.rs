//! Health for orchestrators (issue 14): alive, ready, started.
//!
//! - `/healthz`: the process answers (liveness; nothing else is checked).
//! - `/readyz`: it can serve sign-ins now: the config is loaded, the listeners are up (this
//!   answer comes from one of them), the IdP's discovery document and keys are fetched and
//!   the IdP answers, and the Google directory gives a token when it is configured. 503
//!   with one reason per line otherwise.
//! - `/startupz`: it has been ready once (a start that never gets there stays 503).
//!
//! They are served on `health_check_addr` at those paths, and on every route host as
//! `/.gatehouse/healthz`, `/.gatehouse/readyz` and `/.gatehouse/startupz` (beside the
//! older `/.gatehouse/health`). A background probe ([`Prober`]) checks every
//! [`PROBE_EVERY`], so an answer never waits on the IdP.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};

use crate::Live;
use crate::pages::Page;
use crate::service::write_page;

/// How often readiness is checked.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// What the last probe found.
#[derive(Debug)]
pub struct Readiness {
    /// Why it is not ready (empty: ready). Before the first probe: "not checked yet".
    problems: Vec<String>,
    /// Whether it has been ready once.
    started: bool,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            problems: vec!["starting: the first readiness check has not finished".into()],
            started: false,
        }
    }
}

/// The readiness Gatehouse reports, shared by the prober and the listeners.
#[derive(Debug, Default)]
pub struct Health(Mutex<Readiness>);

impl Health {
    fn record(&self, problems: Vec<String>) {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if problems.is_empty() {
            if !r.started {
                tracing::info!("ready: the identity provider (and directory) answer");
            }
            r.started = true;
        } else if r.problems.is_empty() {
            tracing::warn!(problems = ?problems, "not ready");
        }
        r.problems = problems;
    }

    /// The answer for `name` (`healthz`, `readyz`, `startupz`), or `None` for another.
    pub(crate) fn answer(&self, name: &str) -> Option<Page> {
        let r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Some(match name {
            "healthz" => Page::text(200, "ok\n"),
            "readyz" if r.problems.is_empty() => Page::text(200, "ready\n"),
            "readyz" => {
                Page::text(503, "").with_body(&format!("not ready:\n{}\n", r.problems.join("\n")))
            }
            "startupz" if r.started => Page::text(200, "started\n"),
            "startupz" => Page::text(503, "")
                .with_body(&format!("not started yet:\n{}\n", r.problems.join("\n"))),
            _ => return None,
        })
    }
}

/// Checks readiness every [`PROBE_EVERY`] against the state serving now.
pub(crate) struct Prober(pub(crate) Arc<Live>);

impl Prober {
    async fn probe(&self) -> Vec<String> {
        let st = self.0.state.load_full();
        let mut problems = Vec::new();
        if let Err(e) = st.auth.oidc.probe().await {
            problems.push(e);
        }
        if let Some(d) = &st.directory
            && let Err(e) = d.probe().await
        {
            problems.push(e);
        }
        problems
    }
}

#[async_trait]
impl pingora::services::background::BackgroundService for Prober {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let problems = self.probe().await;
            self.0.health.record(problems);
        }
    }
}

/// The `health_check_addr` listener: `/healthz`, `/readyz`, `/startupz`, plain HTTP.
pub struct HealthEndpoint {
    /// Where readiness is read from.
    pub live: Arc<Live>,
}

#[async_trait]
impl ProxyHttp for HealthEndpoint {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let path = session.req_header().uri.path().trim_start_matches('/');
        let page = self.live.health.answer(path).unwrap_or_else(|| {
            Page::text(404, "not found: /healthz, /readyz and /startupz are here\n")
        });
        write_page(session, page).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        crate::listeners::proxies_nothing("the health listener")
    }
}
