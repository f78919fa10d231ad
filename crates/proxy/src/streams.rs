//! Long-lived responses (SSE, WebSocket) that are open right now, so Gatehouse can end the
//! ones whose person is no longer allowed after a config reload, or who signed out.
//!
//! A stream is ended by shutting down its **upstream** TCP socket: Pingora then sees the
//! upstream end mid-response and closes the client's side of that one request (an HTTP/2
//! connection's other requests carry on). Pingora owns the socket; Gatehouse only has its
//! file descriptor number, which the kernel may give to another connection once Pingora
//! closes it. Two things keep a shutdown on the right socket:
//! - a stream is registered only while its response is being relayed and is removed when
//!   the upstream's body ends and again when the request is logged, and
//! - before the shutdown, the socket's kernel cookie (`SO_COOKIE`, unique for the life of
//!   the system and never reused) must still be the one recorded when it connected.

use std::collections::HashMap;
use std::os::unix::io::RawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use gatehouse_auth::VerifiedIdentity;

/// One open stream and what is needed to decide it again.
#[derive(Debug)]
pub struct OpenStream {
    /// The signed-in person it was admitted for (with their groups).
    pub identity: VerifiedIdentity,
    /// The request's host, as routes match it (lower-case, no port).
    pub host: String,
    /// The request's port, as routes match it (from `Host`, else the main listener's
    /// default).
    pub port: u16,
    /// The request path, without the query.
    pub path: String,
    /// The request method.
    pub method: String,
    /// The route label it was admitted on, for the log.
    pub route: String,
    /// The access token it was opened with (its id), so revoking the token ends it.
    pub token: Option<String>,
    /// The socket to shut down to end it.
    pub upstream: UpstreamSocket,
}

/// The upstream socket of a request: its descriptor and its kernel cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamSocket {
    /// The file descriptor, as Pingora holds it.
    pub fd: RawFd,
    /// The socket's `SO_COOKIE`: it tells whether `fd` still names the same socket.
    pub cookie: u64,
}

impl UpstreamSocket {
    /// The socket behind `fd` as it is now, if the kernel can name it.
    pub fn current(fd: RawFd) -> Option<Self> {
        pingora::protocols::l4::ext::get_socket_cookie(fd)
            .ok()
            .filter(|c| *c != 0)
            .map(|cookie| UpstreamSocket { fd, cookie })
    }

    /// Shuts the socket down, if `fd` still names the same socket.
    fn shutdown(self) -> bool {
        if Self::current(self.fd) != Some(self) {
            return false;
        }
        nix::sys::socket::shutdown(self.fd, nix::sys::socket::Shutdown::Both).is_ok()
    }
}

/// The registry of open streams.
#[derive(Debug, Default)]
pub struct Streams {
    next: AtomicU64,
    open: Mutex<HashMap<u64, OpenStream>>,
}

impl Streams {
    /// Adds `stream`; the id returned removes it.
    pub fn register(&self, stream: OpenStream) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, stream);
        id
    }

    /// Forgets the stream `id` (its response ended); nothing happens if it is gone already.
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// How many streams are open now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends every stream for which `why` gives a reason, logs each, and returns how many
    /// were ended. Runs under the registry's lock, so no stream can finish (and its socket
    /// be reused) half-way through.
    pub fn end_where(&self, mut why: impl FnMut(&OpenStream) -> Option<String>) -> usize {
        let mut open = self.lock();
        let mut ended = Vec::new();
        for (id, s) in open.iter() {
            let Some(reason) = why(s) else { continue };
            if s.upstream.shutdown() {
                tracing::info!(
                    user = %s.identity.email(),
                    route = %s.route,
                    path = %s.path,
                    reason = %reason,
                    "ended an open stream"
                );
            }
            ended.push(*id);
        }
        for id in &ended {
            open.remove(id);
        }
        ended.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OpenStream>> {
        // A panic while holding the lock leaves a usable map; carry on with it.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}
