//! The control socket: how an administrator's commands reach the running Gatehouse
//! (`gatehouse sign-out`). A Unix socket in `state_dir` (mode 0700, owned by Gatehouse's
//! user), itself mode 0600: only that user (root, for a server with backends) can connect;
//! no backend can, since backends run as other uids and the directory is closed to them.
//!
//! One JSON line in, one JSON line out:
//! `{"sign_out": "alice@example.com"}` → `{"ok": true, "tokens_revoked": 2, "streams_ended": 1}`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::Live;

/// The socket's file name in `state_dir`.
pub const SOCKET_FILE: &str = "control.sock";
/// The longest command line read.
const MAX_LINE: usize = 4096;

/// A command sent to the control socket.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Sign out every session and access token of the person with this address.
    pub sign_out: String,
}

/// The control socket as a background service of `serve`.
pub(crate) struct ControlSocket {
    pub(crate) live: Arc<Live>,
    pub(crate) path: PathBuf,
}

impl ControlSocket {
    fn bind(&self) -> std::io::Result<UnixListener> {
        // A socket left by an earlier run (the state store's lock keeps two from running).
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&self.path)?;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600))?;
        Ok(listener)
    }

    async fn serve(&self, stream: UnixStream) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        let mut reader = BufReader::new(read.take(MAX_LINE as u64));
        reader.read_line(&mut line).await?;
        let answer = match serde_json::from_str::<Command>(line.trim()) {
            Ok(c) => self.sign_out(&c.sign_out),
            Err(e) => {
                serde_json::json!({"error": format!("not a command ({e}); send {{\"sign_out\": \"<email>\"}}")})
            }
        };
        write.write_all(format!("{answer}\n").as_bytes()).await?;
        write.shutdown().await
    }

    fn sign_out(&self, email: &str) -> serde_json::Value {
        let email = email.trim();
        if !email.contains('@') {
            return serde_json::json!({"error": "give the person's email address"});
        }
        let st = self.live.state.load();
        match st.auth.sign_out_email(email, gatehouse_auth::now()) {
            Ok(tokens) => {
                let ended = self.live.end_streams(|s| {
                    s.identity
                        .email()
                        .eq_ignore_ascii_case(email)
                        .then(|| "signed out by an administrator".to_string())
                });
                tracing::info!(user = %email, tokens_revoked = tokens.len(), streams_ended = ended, "signed out by an administrator (every session and access token)");
                serde_json::json!({"ok": true, "tokens_revoked": tokens.len(), "streams_ended": ended})
            }
            Err(e) => {
                tracing::error!(user = %email, error = %e, "an administrator's sign-out could not be recorded");
                serde_json::json!({"error": format!("not recorded, nothing changed: {e}")})
            }
        }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for ControlSocket {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let listener = match self.bind() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "the control socket could not be opened; `gatehouse sign-out` will not reach this process");
                return;
            }
        };
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        // One command at a time, each given a few seconds.
                        match tokio::time::timeout(std::time::Duration::from_secs(5), self.serve(stream)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::warn!(error = %e, "a control-socket command failed"),
                            Err(_) => tracing::warn!("a control-socket client sent no command in 5 s"),
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
                },
                _ = shutdown.changed() => {
                    let _ = std::fs::remove_file(&self.path);
                    return;
                }
            }
        }
    }
}
