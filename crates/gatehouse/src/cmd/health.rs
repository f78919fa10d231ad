//! `gatehouse health`: asks the running Gatehouse whether it is alive (or ready, or started)
//! through `health_check_addr`, for a container's `HEALTHCHECK` or a systemd watchdog script.
//!
//! One plain-HTTP GET to a loopback (or local) address, written here with `std::net`: the
//! image's health check must not need curl or a shell, and an HTTP client crate with its
//! own runtime would be more code than the request itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// Which check.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Check {
    /// The process answers (`/healthz`).
    Alive,
    /// It can serve sign-ins now (`/readyz`).
    Ready,
    /// It has been ready once (`/startupz`).
    Started,
}

impl Check {
    fn path(self) -> &'static str {
        match self {
            Check::Alive => "/healthz",
            Check::Ready => "/readyz",
            Check::Started => "/startupz",
        }
    }
}

/// Exit 0 when the answer is 200, 1 when Gatehouse answers otherwise or not at all, 2 when
/// the config has no `health_check_addr`.
pub fn run(path: &Path, check: Check) -> ExitCode {
    let config = match gatehouse_config::load_offline(path, &gatehouse_config::ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let Some(addr) = config.health_check_addr else {
        eprintln!(
            "gatehouse health: {} has no health_check_addr; add one (like `health_check_addr: 127.0.0.1:9090`) and restart",
            path.display()
        );
        return ExitCode::from(2);
    };
    match get(addr, check.path()) {
        Ok((200, body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprint!(
                "gatehouse health: {status} from http://{addr}{}\n{body}",
                check.path()
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!(
                "gatehouse health: no answer from http://{addr}{} ({e}); is `gatehouse serve` running with this config?",
                check.path()
            );
            ExitCode::from(1)
        }
    }
}

/// `GET path` on `addr`: the status and the body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    // An unspecified listen address (0.0.0.0 / ::) is reached on loopback.
    let target = if addr.ip().is_unspecified() {
        let lo: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(lo, addr.port())
    } else {
        addr
    };
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\nUser-Agent: gatehouse-health\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
