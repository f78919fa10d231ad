//! The Pingora `ProxyHttp` implementation: each hook is a few lines that call plain
//! functions. See the crate docs for the request flow.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::compression::{ResponseCompression, ResponseCompressionBuilder};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use crate::Live;
use crate::endpoints;
use crate::flow::{self, Ctx, Step, ctx_label};
use crate::pages::{self, Page};
use crate::refusal::{Outcome, Refusal};
use crate::streams::{OpenStream, UpstreamSocket};
use crate::upstream::{self, COMPRESSION_LEVEL, compressible};

/// Gatehouse's proxy service.
pub struct Gatehouse {
    /// The state it serves with, shared with the reloader and the metrics listener.
    pub live: Arc<Live>,
}

const MAX_FORM_BYTES: usize = 8 * 1024;

/// Seconds an HTTP/1.1 client connection may sit idle between requests before Gatehouse
/// closes it. A browser reconnects without the person noticing.
pub(crate) const KEEPALIVE_IDLE_SECS: u64 = 75;

/// One of Gatehouse's own forms, its fields in order (a name may come more than once); a
/// body over [`MAX_FORM_BYTES`] is an empty form.
async fn read_form(session: &mut Session) -> Result<Vec<(String, String)>> {
    Ok(match read_body(session, MAX_FORM_BYTES).await? {
        Some(body) => form_urlencoded::parse(&body).into_owned().collect(),
        None => Vec::new(),
    })
}

/// The request body, up to `max` bytes (`None` if larger). Zeroized when dropped: it may
/// hold a provider key.
async fn read_body(
    session: &mut Session,
    max: usize,
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
    let mut body = zeroize::Zeroizing::new(Vec::new());
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

pub(crate) async fn write_page(session: &mut Session, page: Page) -> Result<u16> {
    let mut resp = ResponseHeader::build(page.status, Some(page.headers.len() + 1))?;
    for (k, v) in page.headers {
        resp.append_header(k, v)?;
    }
    resp.insert_header("content-length", page.body.len().to_string())?;
    let head_only = session.req_header().method == Method::HEAD;
    let end = page.body.is_empty() || head_only;
    session.write_response_header(Box::new(resp), end).await?;
    if !end {
        session.write_response_body(Some(page.body), true).await?;
    }
    Ok(page.status)
}

impl Gatehouse {
    /// Registers a signed-in person's long-lived response (SSE, WebSocket) so a reload or a
    /// sign-out can end it.
    fn track_stream(&self, session: &Session, resp: &ResponseHeader, ctx: &mut Ctx) {
        let is_stream = resp.status == http::StatusCode::SWITCHING_PROTOCOLS
            || resp
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.trim_start().starts_with("text/event-stream"));
        let (Some(identity), Some(fd), None) = (&ctx.identity, ctx.upstream_fd, ctx.stream) else {
            return;
        };
        if !is_stream {
            return;
        }
        let Some(upstream) = UpstreamSocket::current(fd) else {
            return;
        };
        let req = session.req_header();
        let id = self.live.streams.register(OpenStream {
            identity: identity.clone(),
            host: ctx.host.clone(),
            port: ctx.port,
            path: req.uri.path().to_string(),
            method: req.method.to_string(),
            route: ctx_label(&ctx.state, ctx).to_string(),
            token: match &ctx.credential {
                Some(crate::credentials::Credential::Token { id, .. }) => Some(id.clone()),
                _ => None,
            },
            upstream,
        });
        ctx.stream = Some(id);
    }

    fn untrack_stream(&self, ctx: &mut Ctx) {
        if let Some(id) = ctx.stream.take() {
            self.live.streams.remove(id);
        }
    }
}

#[async_trait]
impl ProxyHttp for Gatehouse {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(self.live.state.load_full())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Only the number: the socket's cookie is read if the response turns out to be a
        // stream (the request owns the connection until then).
        ctx.upstream_fd = Some(fd);
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        // The upstream finished: its connection may go back to the pool and serve
        // another request, so this one must no longer be ended through it.
        if end_of_stream {
            self.untrack_stream(ctx);
        }
        Ok(None)
    }

    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        // With backend pools: enabled so the module reads the request's Accept-Encoding (it
        // ignores it when disabled); `request_filter` turns it off for every response and
        // `response_filter` back on for backend assets only. Without: Pingora's default,
        // present and off (pools are restart-only, so this never changes while serving).
        let level = if self.live.backends.is_empty() {
            0
        } else {
            COMPRESSION_LEVEL
        };
        modules.add_module(ResponseCompressionBuilder::enable(level));
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        // Pingora keeps an idle HTTP/1.1 keep-alive connection open for ever; each holds
        // ~50 KB (docs/pingora.md, "Memory per connection"). Close it after a while, as
        // nginx does (its keepalive_timeout is also 75 s). Applies after each response.
        session.set_keepalive(Some(KEEPALIVE_IDLE_SECS));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if !self.live.backends.is_empty()
            && let Some(c) = session
                .downstream_modules_ctx
                .get_mut::<ResponseCompression>()
        {
            c.adjust_level(0);
        }
        let st = Arc::clone(&ctx.state);
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            match self.live.clients.admit(ip, st.max_connections_per_client) {
                Some(slot) => ctx.client = Some(slot),
                None => {
                    tracing::warn!(client = %ip, max = st.max_connections_per_client, "too many open requests from one address; refused");
                    let refusal = Refusal::TooManyConnections;
                    ctx.outcome = Some(Outcome::from(&refusal));
                    write_page(session, pages::refusal(&refusal)).await?;
                    return Ok(true);
                }
            }
        }
        let mut step = flow::decide(&st, &self.live, session.req_header(), ctx).await;
        loop {
            step = match step {
                Step::Continue => return Ok(false),
                Step::Respond(page) => {
                    write_page(session, page).await?;
                    return Ok(true);
                }
                Step::ReadForm(action) => {
                    // The only request body Gatehouse itself reads.
                    let form = read_form(session).await?;
                    let req = session.req_header();
                    Step::Respond(endpoints::submit(&st, &self.live, req, action, &form, ctx).await)
                }
                Step::Backend => flow::backend_step(&st, session.req_header(), ctx).await,
                Step::ReadTokenBody => {
                    let body = read_body(session, crate::access_tokens::MAX_BODY_BYTES).await?;
                    let req = session.req_header();
                    Step::Respond(match (body, ctx.identity.as_ref()) {
                        (Some(b), Some(id)) => {
                            crate::access_tokens::api_mint(&st, req, &b, id, ctx)
                        }
                        (None, _) => {
                            Page::json(413, &serde_json::json!({"error": "the body is too large"}))
                        }
                        (_, None) => {
                            Page::json(401, &serde_json::json!({"error": "unauthenticated"}))
                        }
                    })
                }
                Step::ReadKeyBody(what) => {
                    // Read here, never proxied: the key must not reach the backend.
                    let body = read_body(session, crate::providers::MAX_BODY_BYTES).await?;
                    let req = session.req_header();
                    Step::Respond(match body {
                        Some(b) => crate::providers::submit(&st, &self.live, req, what, &b, ctx),
                        None => {
                            Page::json(413, &serde_json::json!({"error": "the body is too large"}))
                        }
                    })
                }
            };
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        upstream::peer(ctx)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string());
        upstream::prepare_request(req, ctx, client_ip)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.track_stream(session, resp, ctx);
        // OpenCode serves its 2.7 MB of scripts uncompressed (docs/opencode.md §6):
        // compress them for browsers that accept gzip/br. Never an event stream.
        if ctx.lease.is_some()
            && compressible(resp)
            && let Some(c) = session
                .downstream_modules_ctx
                .get_mut::<ResponseCompression>()
        {
            c.adjust_level(COMPRESSION_LEVEL);
        }
        upstream::strip_own_set_cookies(resp, ctx)
    }

    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        // Pingora's default includes the query string, which may hold an authorization code.
        format!(
            "{} {} host={}",
            session.req_header().method,
            session.req_header().uri.path(),
            ctx.host
        )
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        // A client that went away is not an operator problem.
        error.esource() == &ErrorSource::Downstream
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let request_id = ctx.request_id.clone();
        // The client went away (a closed tab resets its HTTP/2 stream; an HTTP/1 socket
        // closes): nobody to answer, and nothing an operator should act on.
        if matches!(e.esource(), ErrorSource::Downstream)
            && matches!(
                e.etype(),
                ErrorType::WriteError
                    | ErrorType::ReadError
                    | ErrorType::ConnectionClosed
                    | ErrorType::H2Error
            )
        {
            tracing::debug!(route = ctx_label(&ctx.state, ctx), request_id = %request_id, error = e.etype().as_str(), "the client went away");
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let refusal = match (e.esource(), e.etype()) {
            (ErrorSource::Downstream, _) => Refusal::RequestUnreadable,
            (_, ErrorType::HTTPStatus(code)) if *code < 500 => Refusal::RequestRefused,
            (
                _,
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
            ) => Refusal::UpstreamTimeout { request_id },
            (ErrorSource::Upstream, _)
            | (
                _,
                ErrorType::ConnectRefused | ErrorType::ConnectError | ErrorType::ConnectNoRoute,
            ) => Refusal::UpstreamDown { request_id },
            _ => Refusal::Internal { request_id },
        };
        tracing::warn!(route = ctx_label(&ctx.state, ctx), request_id = %ctx.request_id, error = e.etype().as_str(), source = ?e.esource(), "request failed");
        ctx.outcome = Some(Outcome::from(&refusal));
        // A response already under way (an upstream that failed mid-stream) cannot become a
        // page: the connection is closed instead, which the client sees as a cut response.
        let code = match session.response_written() {
            Some(sent) => sent.status.as_u16(),
            None => {
                let page = pages::refusal(&refusal);
                let status = page.status;
                let _ = write_page(session, page).await;
                status
            }
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        self.untrack_stream(ctx);
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let req = session.req_header();
        let route = ctx_label(&ctx.state, ctx);
        let user = ctx.identity.as_ref().map(|i| i.email()).unwrap_or("-");
        let credential = ctx
            .credential
            .as_ref()
            .map(|c| c.label())
            .unwrap_or("-".into());
        let decision = ctx.outcome.map(Outcome::code).unwrap_or("-");
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|| "-".into());
        let user_agent = req
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let seconds = ctx.start.elapsed().as_secs_f64();
        // The path only: the query may hold an authorization code or a handoff token.
        tracing::info!(
            target: "gatehouse::access",
            method = %req.method,
            host = %ctx.host,
            path = %req.uri.path(),
            status,
            route,
            user,
            decision,
            credential = credential.as_ref(),
            client = client.as_str(),
            request_id = ctx.request_id.as_str(),
            user_agent,
            bytes = session.body_bytes_sent(),
            duration_ms = seconds * 1000.0,
        );
        self.live.metrics.request(route, status, decision, seconds);
        if let Some(result) = ctx.sign_in {
            self.live.metrics.sign_in(result);
        }
    }
}
