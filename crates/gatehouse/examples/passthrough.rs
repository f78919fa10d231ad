//! The floor of our own engine, for `bench/run.sh`: a bare Pingora reverse proxy built with
//! the same release profile, allocator, Pingora features and server settings as Gatehouse,
//! with none of Gatehouse's work (no routing, sign-in, policy, headers, logs or metrics). It
//! forwards every request to one upstream and adds only `X-Forwarded-For` and
//! `X-Forwarded-Proto`, as the nginx it is compared with does.
//!
//!   cargo build --release -p gatehouse --example passthrough
//!   target/release/examples/passthrough LISTEN UPSTREAM THREADS [CERT KEY]
//!
//! With CERT and KEY it listens over TLS (HTTP/1.1 and HTTP/2, as Gatehouse does), otherwise
//! over plain HTTP. Not shipped: the bench builds it on demand.

use async_trait::async_trait;
use pingora::listeners::ListenerConfig;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Passthrough {
    upstream: String,
    tls: bool,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()) {
            req.insert_header("x-forwarded-for", ip.ip().to_string())?;
        }
        req.insert_header("x-forwarded-proto", if self.tls { "https" } else { "http" })?;
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, upstream, threads, cert) = match args.as_slice() {
        [l, u, t] => (l, u, t, None),
        [l, u, t, c, k] => (l, u, t, Some((c, k))),
        _ => anyhow::bail!("usage: passthrough LISTEN UPSTREAM THREADS [CERT KEY]"),
    };
    let threads: usize = threads
        .parse()
        .map_err(|e| anyhow::anyhow!("THREADS {threads:?}: {e}"))?;
    // Gatehouse's own server settings (and below, its TLS listener's buffers).
    let mut server = Server::new_with_opt_and_conf(None, gatehouse_proxy::server_conf(threads));
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Passthrough {
            upstream: upstream.clone(),
            tls: cert.is_some(),
        },
        "passthrough",
    );
    match cert {
        Some((c, k)) => {
            let mut tls = TlsSettings::intermediate(c, k)?;
            tls.enable_h2();
            proxy.add_listener(
                ListenerConfig::tcp(listen.as_str())
                    .tls(tls)
                    .l4_buffer(gatehouse_proxy::downstream_buffers()),
            );
        }
        None => proxy.add_tcp(listen),
    }
    server.add_service(proxy);
    server.run_forever()
}
