//! One backend process: spawn through the launcher ([`crate::launch`]: its own session, the
//! person's uid, limits, Landlock), wait for readiness, watch for exit, stop (SIGTERM to the
//! group, SIGKILL after a grace, then every process of the person's uid), and the pid files
//! that let a restarted Gatehouse stop what a crashed one left behind.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

use crate::launch::{self, LaunchSpec};
use crate::person::{Password, PersonDir, PersonId, RelayToken};
use crate::{PoolSettings, probe};

/// The stdout line OpenCode prints once it answers requests.
pub(crate) const READY_LINE: &str = "server listening";

/// A started, ready backend process.
pub(crate) struct Process {
    pub pid: u32,
    pub port: u16,
    pub uid: Option<u32>,
    pub password: Password,
    /// The token this process presents to the LLM relay, when its pool has one.
    pub relay_token: Option<RelayToken>,
    /// `Some(description)` once the process has exited.
    pub exited: watch::Receiver<Option<String>>,
    pid_file: PathBuf,
    launcher: PathBuf,
}

/// Why a start failed. Shown to the person (without details) and logged (with them).
#[derive(Debug, Clone)]
pub(crate) enum SpawnFailure {
    /// The command could not be run at all (missing file, permissions).
    Spawn(String),
    /// The process ended before it was ready.
    Exited {
        status: String,
        code: Option<i32>,
        stderr: String,
    },
    /// Not ready within `start_timeout`.
    Timeout,
}

impl std::fmt::Display for SpawnFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnFailure::Spawn(e) => write!(f, "could not run the backend command: {e}"),
            SpawnFailure::Exited { status, stderr, .. } if stderr.is_empty() => {
                write!(f, "the backend exited before it was ready ({status})")
            }
            SpawnFailure::Exited { status, stderr, .. } => write!(
                f,
                "the backend exited before it was ready ({status}); its last output: {stderr}"
            ),
            SpawnFailure::Timeout => f.write_str("the backend was not ready within start_timeout"),
        }
    }
}

/// Lines of stderr kept for the error message of a failed start.
const STDERR_TAIL: usize = 5;

/// Starts the backend through the launcher and returns once it answers
/// `GET /global/health` with the password.
pub(crate) async fn spawn(
    settings: &PoolSettings,
    id: &PersonId,
    dir: &PersonDir,
    port: u16,
    uid: Option<u32>,
) -> Result<Process, SpawnFailure> {
    let password = Password::random();
    let port_text = port.to_string();
    if settings.pool.command.is_empty() {
        return Err(SpawnFailure::Spawn("the command is empty".into()));
    }
    let spec = LaunchSpec {
        uid,
        home: dir.home.clone(),
        port,
        processes: settings.pool.limits.processes,
        memory_bytes: settings.pool.limits.memory_bytes,
        open_files: settings.pool.limits.open_files,
        oom_score_adj: launch::BACKEND_OOM_SCORE_ADJ,
        landlock_required: settings.landlock_required,
        command: settings
            .pool
            .command
            .iter()
            .map(|a| a.replace("{port}", &port_text))
            .collect(),
        workspace: Some(settings.pool.workspace.clone()),
    };
    let spec = serde_json::to_string(&spec).map_err(|e| SpawnFailure::Spawn(e.to_string()))?;
    // With a relay: a token of this process's own, and the relayed providers pointed at
    // Gatehouse in the OpenCode config (merged into the operator's).
    let mut env: Vec<(String, String)> = settings.pool.env.clone();
    let relay_token = match (&settings.pool.relay, &settings.relay_url) {
        (Some(relay), Some(url)) => {
            let token = RelayToken::random();
            let operator = env
                .iter()
                .find(|(k, _)| k == "OPENCODE_CONFIG_CONTENT")
                .map(|(_, v)| v.as_str());
            let content = crate::relay::opencode_config(operator, relay, url, token.expose())
                .map_err(SpawnFailure::Spawn)?;
            env.retain(|(k, _)| k != "OPENCODE_CONFIG_CONTENT");
            env.push(("OPENCODE_CONFIG_CONTENT".into(), content));
            Some(token)
        }
        _ => None,
    };
    let mut cmd = Command::new(&settings.launcher);
    cmd.arg(launch::LAUNCH_SUBCOMMAND)
        .arg(spec)
        .current_dir("/")
        .env_clear()
        .env("PATH", crate::preflight::BACKEND_PATH)
        .env("LANG", "C.UTF-8")
        .env("HOME", &dir.home)
        .envs(dir.xdg())
        // Offline by default (docs/opencode.md §2): no models.dev fetch, no plugin install.
        .env("OPENCODE_DISABLE_MODELS_FETCH", "1")
        .env("OPENCODE_DISABLE_AUTOUPDATE", "1")
        .env("npm_config_registry", "http://127.0.0.1:9/")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("OPENCODE_SERVER_PASSWORD", password.expose())
        .env("GATEHOUSE_BACKEND_PORT", &port_text)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let program = settings.launcher.display().to_string();
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| SpawnFailure::Spawn(format!("{program}: {e}")))?;
    let Some(pid) = child.id() else {
        return Err(SpawnFailure::Spawn("the process ended at once".into()));
    };
    let pid_file = pid_file(&settings.pool.data_root, id);
    if let Err(e) = write_pid_file(&pid_file, pid) {
        tracing::warn!(file = %pid_file.display(), error = %e, "cannot write the backend's pid file; a crashed Gatehouse would leave this backend running");
    }

    let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
    if let Some(err) = child.stderr.take() {
        let tail = stderr_tail.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut t) = tail.lock() {
                    if t.len() == STDERR_TAIL {
                        t.pop_front();
                    }
                    t.push_back(line.chars().take(300).collect::<String>());
                }
            }
        });
    }
    let (line_tx, mut line_rx) = watch::channel(false);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(async move {
            // Keep reading to the end so a chatty backend never blocks on a full pipe.
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(READY_LINE) {
                    let _ = line_tx.send(true);
                }
            }
        });
    }

    let (exit_tx, exit_rx) = watch::channel(None);
    let (code_tx, code_rx) = watch::channel(None);
    tokio::spawn(async move {
        let status = match child.wait().await {
            Ok(s) => {
                let _ = code_tx.send(s.code());
                s.to_string()
            }
            Err(e) => format!("wait failed: {e}"),
        };
        // Whatever the leader left in its group goes with it.
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        let _ = exit_tx.send(Some(status));
    });

    let process = Process {
        pid,
        port,
        uid,
        password,
        relay_token,
        exited: exit_rx,
        pid_file,
        launcher: settings.launcher.clone(),
    };
    let deadline = started + settings.pool.start_timeout;
    let ready = async {
        // 1. The stdout line (connections before it hang forever).
        let mut exited = process.exited.clone();
        tokio::select! {
            r = line_rx.wait_for(|seen| *seen) => { if r.is_err() { return Err(()); } }
            _ = exited.wait_for(Option::is_some) => return Err(()),
        }
        // 2. A health answer, each try short.
        let auth = process.password.basic_authorization();
        loop {
            if process.exited.borrow().is_some() {
                return Err(());
            }
            if let Ok(a) =
                probe::get(port, "/global/health", &auth, Duration::from_millis(300)).await
                && a.status == 200
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let outcome = tokio::time::timeout_at(deadline.into(), ready).await;
    match outcome {
        Ok(Ok(())) => Ok(process),
        Ok(Err(())) => {
            let mut exited = process.exited.clone();
            let status = exited
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|s| s.clone())
                .unwrap_or_else(|| "unknown status".into());
            // Give the stderr reader a moment to take the last lines.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let stderr = stderr_tail
                .lock()
                .map(|t| t.iter().cloned().collect::<Vec<_>>().join(" | "))
                .unwrap_or_default();
            process.stop(Duration::from_millis(0)).await;
            let code = *code_rx.borrow();
            Err(SpawnFailure::Exited {
                status,
                code,
                stderr,
            })
        }
        Err(_) => {
            process.stop(settings.stop_grace).await;
            Err(SpawnFailure::Timeout)
        }
    }
}

impl Process {
    /// SIGTERM to the process group, SIGKILL to it after `grace`; returns once the leader
    /// has exited. Removes the pid file.
    pub(crate) async fn stop(&self, grace: Duration) {
        let group = Pid::from_raw(self.pid as i32);
        let mut exited = self.exited.clone();
        if exited.borrow().is_none() {
            let _ = killpg(group, Signal::SIGTERM);
            if tokio::time::timeout(grace, exited.wait_for(Option::is_some))
                .await
                .is_err()
            {
                tracing::warn!(
                    pid = self.pid,
                    grace_ms = grace.as_millis() as u64,
                    "backend did not stop on SIGTERM; sending SIGKILL"
                );
                let _ = killpg(group, Signal::SIGKILL);
                let _ = exited.wait_for(Option::is_some).await;
            }
        }
        let _ = killpg(group, Signal::SIGKILL);
        // What left the group (`setsid`, double forks) still has the person's uid.
        if let Some(uid) = self.uid {
            reap(&self.launcher, uid).await;
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }

    pub(crate) fn has_exited(&self) -> Option<String> {
        self.exited.borrow().clone()
    }
}

/// Ends every process of `uid` (the person's alone): `gatehouse backend-reap <uid>`
/// becomes that uid and signals `kill(-1)` until none is left ([`launch::reap_main`]).
pub(crate) async fn reap(launcher: &Path, uid: u32) {
    let run = Command::new(launcher)
        .arg(launch::REAP_SUBCOMMAND)
        .arg(uid.to_string())
        .current_dir("/")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(out)) if out.status.success() => {}
        Ok(Ok(out)) => {
            tracing::error!(uid, status = %out.status, stderr = %String::from_utf8_lossy(&out.stderr).trim(), "could not end every process of a backend's uid");
        }
        Ok(Err(e)) => tracing::error!(uid, error = %e, "could not run the reaper"),
        Err(_) => tracing::error!(uid, "the reaper did not finish within 10 s"),
    }
}

// === pid files ===

/// The directory of pid files under `data_root` (mode 0700, Gatehouse's).
pub(crate) const PID_DIR: &str = ".gatehouse-pids";

fn pid_dir(root: &Path) -> PathBuf {
    root.join(PID_DIR)
}

fn pid_file(root: &Path, id: &PersonId) -> PathBuf {
    pid_dir(root).join(format!("{id}.pid"))
}

/// `<pid> <start time in clock ticks since boot>`: the start time tells a leftover backend
/// from an unrelated process that got the same pid later.
fn write_pid_file(path: &Path, pid: u32) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    let start = start_time(pid).unwrap_or_default();
    std::fs::write(path, format!("{pid} {start}\n"))
}

/// Field 22 of `/proc/<pid>/stat` (the process's start time), if the process exists.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Stops the backends a previous Gatehouse left running (it crashed or was SIGKILLed) and
/// removes their pid files. Returns how many were stopped.
pub(crate) async fn stop_leftovers(root: &Path, grace: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(pid_dir(root)) else {
        return 0;
    };
    let mut stopped = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".pid").and_then(PersonId::parse) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut parts = text.split_whitespace();
        let pid = parts.next().and_then(|p| p.parse::<u32>().ok());
        let recorded = parts.next().and_then(|s| s.parse::<u64>().ok());
        if let (Some(pid), Some(recorded)) = (pid, recorded)
            && pid > 1
            && start_time(pid) == Some(recorded)
        {
            let group = Pid::from_raw(pid as i32);
            let _ = killpg(group, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while start_time(pid) == Some(recorded) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = killpg(group, Signal::SIGKILL);
            tracing::warn!(person = %id, pid, "stopped a backend left running by an earlier Gatehouse");
            stopped += 1;
        }
        let _ = std::fs::remove_file(&path);
    }
    stopped
}
