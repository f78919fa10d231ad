//! The supervisor (crate `gatehouse-backends`) against real processes, started through the
//! real launcher (this crate's `gatehouse backend-launch`): `fake-opencode.mjs` (node) for
//! the fault cases, which needs to misbehave on request, and the real OpenCode server (npm
//! `opencode-ai`, installed by tests/harness/install-deps.sh) where the behaviour depends on
//! OpenCode.
//!
//! Each test has its own port range, uid range and data root, so they run in parallel.
//! Everything a backend's uid must reach (the fake script, the OpenCode binary) is copied
//! to the data root or a temp directory first: the checkout may sit in a 0700 directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gatehouse_backends::{BackendError, PersonId, PoolSettings, RestartPolicy, Status, Supervisor};
use gatehouse_config::{Origin, UidRange};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn uids(first: u32, last: u32) -> Option<UidRange> {
    Some(UidRange {
        first,
        last,
        origin: Origin::Default,
    })
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A fresh data root under the temp dir, removed when dropped.
struct Root(PathBuf);

impl Root {
    fn new(name: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("gatehouse-backends-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create test root");
        // Per-person backends may run as other uids: they must reach their own directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
            .expect("chmod test root");
        // Where a backend's uid can read it, whatever the checkout's directory modes.
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-opencode.mjs"),
            p.join("fake-opencode.mjs"),
        )
        .expect("copy the fake backend");
        Root(p)
    }

    fn fake_script(&self) -> String {
        self.0.join("fake-opencode.mjs").display().to_string()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        // A failed test must not leave backends behind: kill every group named in a pid file.
        if let Ok(entries) = std::fs::read_dir(self.0.join(".gatehouse-pids")) {
            for e in entries.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                if let Some(pid) = text
                    .split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fake_settings(root: &Root, first_port: u16, env: &[(&str, &str)]) -> PoolSettings {
    let mut s = PoolSettings::new("test", root.0.clone());
    s.launcher = PathBuf::from(env!("CARGO_BIN_EXE_gatehouse"));
    s.pool.command = vec![
        "node".into(),
        root.fake_script(),
        "serve".into(),
        "--port".into(),
        "{port}".into(),
    ];
    s.pool.ports = (first_port, first_port + 9);
    s.pool.start_timeout = Duration::from_secs(10);
    s.stop_grace = Duration::from_millis(500);
    s.check_interval = Duration::from_millis(100);
    s.pool.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s.restart = RestartPolicy {
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        max_failures: 3,
    };
    s
}

fn alice() -> PersonId {
    PersonId::new("https://idp.test", "alice")
}
fn bob() -> PersonId {
    PersonId::new("https://idp.test", "bob")
}
fn carol() -> PersonId {
    PersonId::new("https://idp.test", "carol")
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; only count processes that are not zombies.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Pids of live processes in process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // f[0] = state, f[2] = pgrp
        if f.len() > 2 && f[2] == pgid.to_string() && f[0] != "Z" {
            out.push(pid);
        }
    }
    out
}

async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "not true within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET path` on loopback with an optional Authorization; returns (status, body).
async fn get(port: u16, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to backend");
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("send request");
    // Read by Content-Length: OpenCode may keep the connection open despite the header.
    let mut raw = String::new();
    let read = async {
        let mut buf = [0u8; 8192];
        loop {
            let n = s.read(&mut buf).await.expect("read answer");
            if n == 0 {
                break;
            }
            raw.push_str(&String::from_utf8_lossy(&buf[..n]));
            if let Some((head, body)) = raw.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse::<usize>().ok());
                if len.is_some_and(|n| body.len() >= n) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("answer within 20 s");
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn log_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[tokio::test]
async fn concurrent_first_requests_start_exactly_one_process() {
    let root = Root::new("concurrent");
    let log = root.0.join("starts.log");
    let sup = Supervisor::new(fake_settings(
        &root,
        24110,
        &[("FAKE_LOG", log.to_str().unwrap())],
    ));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let sup = sup.clone();
        tasks.push(tokio::spawn(async move {
            sup.ensure(&alice()).await.map(|l| l.port())
        }));
    }
    let mut ports = Vec::new();
    for t in tasks {
        ports.push(t.await.unwrap().unwrap());
    }
    ports.dedup();
    assert_eq!(ports.len(), 1, "all six got the same backend");
    assert_eq!(log_lines(&log), 1, "one process was started");
    assert_eq!(sup.counters().starts, 1);
    sup.stop_all().await;
}

#[tokio::test]
async fn backend_answers_only_with_its_password() {
    let root = Root::new("password");
    let sup = Supervisor::new(fake_settings(&root, 24120, &[]));
    let lease = sup.ensure(&alice()).await.unwrap();
    assert_eq!(get(lease.port(), "/global/health", None).await.0, 401);
    assert_eq!(
        get(
            lease.port(),
            "/global/health",
            Some("Basic b3BlbmNvZGU6d3Jvbmc=")
        )
        .await
        .0,
        401
    );
    assert_eq!(
        get(lease.port(), "/global/health", Some(&lease.authorization()))
            .await
            .0,
        200
    );
    drop(lease);
    // A restart gets a new password: the old one is refused.
    let old = sup.ensure(&alice()).await.unwrap().authorization();
    sup.stop(&alice()).await;
    let lease = sup.ensure(&alice()).await.unwrap();
    assert_ne!(lease.authorization(), old);
    assert_eq!(get(lease.port(), "/global/health", Some(&old)).await.0, 401);
    drop(lease);
    sup.stop_all().await;
}

#[tokio::test]
async fn idle_backend_is_stopped_but_a_busy_or_leased_one_is_kept() {
    let root = Root::new("idle");
    let mut settings = fake_settings(&root, 24130, &[]);
    settings.pool.idle_timeout = Duration::from_millis(300);
    let sup = Supervisor::new(settings);
    let lease = sup.ensure(&alice()).await.unwrap();
    let pid = sup.pid(&alice()).unwrap();

    // A held lease (an open stream) keeps it, however long.
    tokio::time::sleep(Duration::from_millis(600)).await;
    sup.check().await;
    assert!(alive(pid), "a backend with an open stream was stopped");
    drop(lease);

    // A busy session keeps it.
    let busy = root.0.join(alice().as_str()).join("busy");
    std::fs::write(&busy, "").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    sup.check().await;
    assert!(alive(pid), "a backend with a busy session was stopped");
    assert_eq!(sup.counters().idle_stops, 0);

    // Idle and no session busy: stopped, and the port goes back to the pool.
    std::fs::remove_file(&busy).unwrap();
    sup.check().await;
    eventually("idle backend stopped", Duration::from_secs(5), || {
        !alive(pid)
    })
    .await;
    assert_eq!(sup.status(&alice()), Status::Stopped);
    assert_eq!(sup.counters().idle_stops, 1);
    assert_eq!(sup.counters().running, 0);

    // The next request starts it again.
    let lease = sup.ensure(&alice()).await.unwrap();
    assert_ne!(sup.pid(&alice()), Some(pid));
    drop(lease);
    sup.stop_all().await;
}

#[tokio::test]
async fn killed_backend_is_started_again_on_the_next_request() {
    let root = Root::new("crash");
    let sup = Supervisor::new(fake_settings(&root, 24140, &[]));
    drop(sup.ensure(&alice()).await.unwrap());
    let pid = sup.pid(&alice()).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually("exit noticed", Duration::from_secs(5), || {
        !sup.is_running(&alice())
    })
    .await;

    let lease = sup.ensure(&alice()).await.unwrap();
    let new_pid = sup.pid(&alice()).unwrap();
    assert_ne!(new_pid, pid);
    assert_eq!(
        get(lease.port(), "/global/health", Some(&lease.authorization()))
            .await
            .0,
        200
    );
    assert_eq!(sup.counters().crashes, 1);
    assert_eq!(sup.counters().starts, 2);
    drop(lease);
    sup.stop_all().await;
}

#[tokio::test]
async fn a_backend_that_keeps_failing_is_not_restarted_in_a_loop() {
    let root = Root::new("failing");
    let log = root.0.join("starts.log");
    let sup = Supervisor::new(fake_settings(
        &root,
        24150,
        &[
            ("FAKE_MODE", "exit-before-ready"),
            ("FAKE_LOG", log.to_str().unwrap()),
        ],
    ));
    for attempt in 1..=3 {
        match sup.ensure(&alice()).await {
            Err(BackendError::StartFailed(msg)) => {
                assert!(
                    msg.contains("cannot open database"),
                    "attempt {attempt}: {msg}"
                );
                assert!(msg.contains("exit status: 3"), "attempt {attempt}: {msg}");
            }
            other => panic!("attempt {attempt}: expected StartFailed, got {other:?}"),
        }
    }
    // The third failure reached max_failures: refused without spawning.
    match sup.ensure(&alice()).await {
        Err(BackendError::Crashing { failures: 3, last }) => {
            assert!(last.contains("cannot open database"), "{last}")
        }
        other => panic!("expected Crashing, got {other:?}"),
    }
    assert_eq!(log_lines(&log), 3, "no start after the limit");
    assert!(matches!(
        sup.status(&alice()),
        Status::Crashing { failures: 3, .. }
    ));
    assert_eq!(sup.counters().start_failures, 3);
    // Bob is not affected by alice's failures (but his backend fails the same way here).
    assert!(matches!(
        sup.ensure(&bob()).await,
        Err(BackendError::StartFailed(_))
    ));
    sup.stop_all().await;
}

#[tokio::test]
async fn backend_never_ready_is_killed_at_start_timeout() {
    let root = Root::new("never");
    let log = root.0.join("starts.log");
    let mut settings = fake_settings(
        &root,
        24160,
        &[
            ("FAKE_MODE", "never-ready"),
            ("FAKE_LOG", log.to_str().unwrap()),
        ],
    );
    settings.pool.start_timeout = Duration::from_millis(1500);
    let sup = Supervisor::new(settings);
    let started = Instant::now();
    match sup.ensure(&alice()).await {
        Err(BackendError::StartFailed(msg)) => assert!(msg.contains("start_timeout"), "{msg}"),
        other => panic!("expected StartFailed, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let pid: u32 = std::fs::read_to_string(&log)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eventually("timed-out backend gone", Duration::from_secs(3), || {
        !alive(pid)
    })
    .await;
}

#[tokio::test]
async fn full_pool_stops_an_idle_backend_but_never_a_busy_one() {
    let root = Root::new("full");
    let mut settings = fake_settings(&root, 24170, &[]);
    settings.pool.max_backends = 1;
    let sup = Supervisor::new(settings);
    drop(sup.ensure(&alice()).await.unwrap());
    let alice_pid = sup.pid(&alice()).unwrap();

    // Alice is idle (no lease, no busy session): bob's start stops her backend.
    let bob_lease = sup.ensure(&bob()).await.unwrap();
    eventually("alice stopped", Duration::from_secs(3), || {
        !alive(alice_pid)
    })
    .await;
    assert_eq!(sup.status(&alice()), Status::Stopped);

    // Bob holds a lease: carol is refused.
    match sup.ensure(&carol()).await {
        Err(BackendError::PoolFull { running: 1, .. }) => {}
        other => panic!("expected PoolFull, got {other:?}"),
    }
    drop(bob_lease);
    // Bob's agent is busy (no lease): still refused.
    std::fs::write(root.0.join(bob().as_str()).join("busy"), "").unwrap();
    assert!(matches!(
        sup.ensure(&carol()).await,
        Err(BackendError::PoolFull { .. })
    ));
    assert!(sup.is_running(&bob()));
    sup.stop_all().await;
}

#[tokio::test]
async fn stop_ends_the_whole_process_group_even_if_sigterm_is_ignored() {
    let root = Root::new("group");
    let mut settings = fake_settings(&root, 24180, &[("FAKE_MODE", "child")]);
    settings.stop_grace = Duration::from_millis(300);
    let sup = Supervisor::new(settings);
    drop(sup.ensure(&alice()).await.unwrap());
    let pid = sup.pid(&alice()).unwrap();
    eventually("child started", Duration::from_secs(3), || {
        group_members(pid).len() >= 2
    })
    .await;
    sup.stop(&alice()).await;
    eventually("group empty", Duration::from_secs(3), || {
        group_members(pid).is_empty()
    })
    .await;

    let root2 = Root::new("stubborn");
    let mut settings = fake_settings(&root2, 24190, &[("FAKE_MODE", "ignore-sigterm")]);
    settings.stop_grace = Duration::from_millis(300);
    let sup = Supervisor::new(settings);
    drop(sup.ensure(&alice()).await.unwrap());
    let pid = sup.pid(&alice()).unwrap();
    let t = Instant::now();
    sup.stop(&alice()).await;
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "SIGKILL came before the grace"
    );
    assert!(!alive(pid));
}

#[tokio::test]
async fn leftovers_of_a_crashed_gatehouse_are_stopped_at_start() {
    let root = Root::new("leftovers");
    let first = Supervisor::new(fake_settings(&root, 24200, &[]));
    drop(first.ensure(&alice()).await.unwrap());
    drop(first.ensure(&bob()).await.unwrap());
    let pids = [first.pid(&alice()).unwrap(), first.pid(&bob()).unwrap()];
    // The first Gatehouse "crashes": it is forgotten without stopping anything.
    drop(first);
    assert!(pids.iter().all(|p| alive(*p)));

    let second = Supervisor::new(fake_settings(&root, 24200, &[]));
    assert_eq!(second.stop_leftovers().await, 2);
    for p in pids {
        eventually("leftover stopped", Duration::from_secs(3), || !alive(p)).await;
    }
    assert_eq!(second.stop_leftovers().await, 0, "pid files are removed");
}

#[tokio::test]
async fn stop_all_leaves_no_backend_and_refuses_new_starts() {
    let root = Root::new("stopall");
    let sup = Supervisor::new(fake_settings(&root, 24210, &[]));
    drop(sup.ensure(&alice()).await.unwrap());
    drop(sup.ensure(&bob()).await.unwrap());
    let pids = [sup.pid(&alice()).unwrap(), sup.pid(&bob()).unwrap()];
    let (tx, rx) = tokio::sync::watch::channel(false);
    let runner = tokio::spawn({
        let sup = sup.clone();
        async move { sup.run(rx).await }
    });
    tx.send(true).unwrap();
    runner.await.unwrap();
    assert!(pids.iter().all(|p| !alive(*p)));
    assert!(matches!(
        sup.ensure(&carol()).await,
        Err(BackendError::ShuttingDown)
    ));
}

#[tokio::test]
async fn each_person_gets_a_private_home_and_when_root_their_own_uid() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let root = Root::new("homes");
    let mut settings = fake_settings(&root, 24220, &[]);
    settings.pool.uids = uids(61000, 61009);
    let sup = Supervisor::new(settings);
    let a = sup.ensure(&alice()).await.unwrap();
    let b = sup.ensure(&bob()).await.unwrap();
    let (_, who_a) = get(a.port(), "/whoami", Some(&a.authorization())).await;
    let (_, who_b) = get(b.port(), "/whoami", Some(&b.authorization())).await;
    let home_a = root.0.join(alice().as_str());
    assert!(
        who_a.contains(&format!("\"home\":\"{}\"", home_a.display())),
        "{who_a}"
    );
    let meta = std::fs::metadata(&home_a).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    if nix::unistd::Uid::effective().is_root() {
        assert!(sup.isolated());
        let uid_a = meta.uid();
        let uid_b = std::fs::metadata(root.0.join(bob().as_str()))
            .unwrap()
            .uid();
        assert!((61000..=61009).contains(&uid_a));
        assert_ne!(uid_a, uid_b, "alice and bob share a uid");
        assert!(who_a.contains(&format!("\"uid\":{uid_a}")), "{who_a}");
        assert!(who_b.contains(&format!("\"uid\":{uid_b}")), "{who_b}");
        // A restart keeps alice's uid (her old files stay hers).
        drop(a);
        sup.stop(&alice()).await;
        let a = sup.ensure(&alice()).await.unwrap();
        let (_, again) = get(a.port(), "/whoami", Some(&a.authorization())).await;
        assert!(again.contains(&format!("\"uid\":{uid_a}")), "{again}");
    } else {
        eprintln!("not root: uid isolation not checked (CI runs as root)");
        assert!(!sup.isolated());
    }
    sup.stop_all().await;
}

#[test]
fn the_operator_is_told_when_backends_are_not_isolated() {
    let root = Root::new("isolation");
    let shared = Supervisor::new(fake_settings(&root, 24250, &[]));
    assert!(!shared.isolated());
    let why = shared.not_isolated().expect("a reason");
    let mut settings = fake_settings(&root, 24250, &[]);
    settings.pool.uids = uids(61020, 61029);
    let with_uids = Supervisor::new(settings);
    if nix::unistd::Uid::effective().is_root() {
        assert!(why.contains("uids"), "{why}");
        assert!(with_uids.isolated());
        assert_eq!(with_uids.not_isolated(), None);
    } else {
        assert!(why.contains("not running as root"), "{why}");
        assert!(with_uids.not_isolated().is_some());
    }
}

// === the real OpenCode server ===

/// The OpenCode binary, hard-linked (or copied) into a temp directory every uid can reach.
fn opencode_binary() -> PathBuf {
    let source = std::env::var("GATEHOUSE_OPENCODE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/e2e/node_modules/opencode-linux-x64/bin/opencode")
        });
    assert!(
        source.exists(),
        "the OpenCode binary is missing at {}: run tests/harness/install-deps.sh or set \
         GATEHOUSE_OPENCODE_BIN",
        source.display()
    );
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("gatehouse-opencode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("make the OpenCode dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = dir.join("opencode");
    if !bin.exists() && std::fs::hard_link(&source, &bin).is_err() {
        std::fs::copy(&source, &bin).expect("copy the OpenCode binary");
    }
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    bin
}

#[tokio::test]
#[ignore = "needs the OpenCode binary (tests/run.sh installs it and runs ignored tests)"]
async fn real_opencode_isolates_people_and_refuses_requests_without_password() {
    let bin = opencode_binary();
    let root = Root::new("real");
    let mut settings = PoolSettings::new("real", root.0.clone());
    settings.launcher = PathBuf::from(env!("CARGO_BIN_EXE_gatehouse"));
    settings.pool.command = vec![
        bin.display().to_string(),
        "serve".into(),
        "--hostname".into(),
        "127.0.0.1".into(),
        "--port".into(),
        "{port}".into(),
    ];
    settings.pool.ports = (24230, 24239);
    settings.pool.uids = uids(61010, 61019);
    settings.pool.start_timeout = Duration::from_secs(60);
    let sup = Supervisor::new(settings);
    let (alice, bob) = (alice(), bob());
    let (a, b) = tokio::join!(sup.ensure(&alice), sup.ensure(&bob));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.port(), b.port());
    assert_eq!(get(a.port(), "/global/health", None).await.0, 401);
    assert_eq!(
        get(a.port(), "/global/health", Some(&a.authorization()))
            .await
            .0,
        200
    );
    assert_eq!(
        get(a.port(), "/global/health", Some(&b.authorization()))
            .await
            .0,
        401
    );

    // Bob's file, in his home: alice's OpenCode is asked for it through its file API.
    let bob_home = root.0.join(bob.as_str());
    std::fs::write(bob_home.join("secret.txt"), "bob's secret").unwrap();
    let q = format!(
        "/file/content?path=secret.txt&directory={}",
        bob_home.display()
    );
    let (_, own) = get(b.port(), &q, Some(&b.authorization())).await;
    assert!(
        own.contains("bob's secret"),
        "bob reads his own file: {own}"
    );
    if nix::unistd::Uid::effective().is_root() {
        let (status, body) = get(a.port(), &q, Some(&a.authorization())).await;
        assert!(
            !body.contains("bob's secret"),
            "alice's backend read bob's file (status {status}): {body}"
        );
    } else {
        eprintln!("not root: cross-person file isolation not checked (CI runs as root)");
    }
    let pids = [sup.pid(&alice).unwrap(), sup.pid(&bob).unwrap()];
    drop((a, b));
    sup.stop_all().await;
    assert!(pids.iter().all(|p| group_members(*p).is_empty()));
}

// === the tenancy boundary (issue 9) ===

/// Pids of live processes whose real uid is `uid`.
fn processes_of(uid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let real = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok());
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'));
        if real == Some(uid) && !zombie {
            out.push(pid);
        }
    }
    out
}

#[tokio::test]
async fn the_launcher_confines_the_backend_before_it_runs() {
    let root = Root::new("confined");
    let mut settings = fake_settings(&root, 24260, &[]);
    settings.pool.limits.processes = 200;
    settings.pool.limits.memory_bytes = 6 << 30;
    settings.pool.limits.open_files = 1000;
    if is_root() {
        settings.pool.uids = uids(61030, 61039);
    }
    let sup = Supervisor::new(settings);
    let a = sup.ensure(&alice()).await.unwrap();
    let auth = a.authorization();
    let (_, who) = get(a.port(), "/whoami", Some(&auth)).await;
    let pid = sup.pid(&alice()).unwrap();
    // Its own session (setsid), umask 077, a private TMPDIR, no core files.
    assert!(who.contains(&format!("\"sid\":{pid}")), "{who}");
    assert!(who.contains("\"umask\":63"), "{who}");
    let home = root.0.join(alice().as_str());
    assert!(
        who.contains(&format!("\"tmpdir\":\"{}/.tmp\"", home.display())),
        "{who}"
    );
    assert!(home.join(".tmp").is_dir() && home.join(".local/share").is_dir());
    for (name, value) in [
        ("Max processes", "200"),
        ("Max data size", &(6u64 << 30).to_string()),
        ("Max open files", "1000"),
        ("Max core file size", "0"),
    ] {
        let line = who
            .split("\\n")
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not in {who}"));
        assert!(
            line.split_whitespace().filter(|w| *w == value).count() == 2,
            "{name}: soft and hard should be {value}: {line}"
        );
    }
    assert!(who.contains("\"oom_score_adj\":800"), "{who}");
    if is_root() {
        assert!(
            who.contains("\"groups\":\"\""),
            "supplementary groups kept: {who}"
        );
        assert!(who.contains("\"uid\":6103"), "{who}");
    }
    // Landlock: it may bind its own port only.
    let other = a.port() + 5;
    let (_, bind) = get(a.port(), &format!("/bind?port={other}"), Some(&auth)).await;
    assert!(
        bind.contains("refused: EACCES"),
        "binding port {other}: {bind}"
    );
    drop(a);
    sup.stop_all().await;
}

#[tokio::test]
async fn stopping_a_backend_ends_every_process_of_its_uid() {
    if !is_root() {
        eprintln!("not root: backends share Gatehouse's uid, nothing to reap (CI runs as root)");
        return;
    }
    let root = Root::new("reap");
    let mut settings = fake_settings(&root, 24270, &[("FAKE_MODE", "escape")]);
    settings.pool.uids = uids(61040, 61049);
    let sup = Supervisor::new(settings);
    drop(sup.ensure(&alice()).await.unwrap());
    let uid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(root.0.join(alice().as_str()))
            .unwrap()
            .uid()
    };
    let pid = sup.pid(&alice()).unwrap();
    eventually("escaped children started", Duration::from_secs(5), || {
        processes_of(uid).len() >= 4 && group_members(pid).len() < processes_of(uid).len()
    })
    .await;
    sup.stop(&alice()).await;
    let left = processes_of(uid);
    assert!(
        left.is_empty(),
        "processes of uid {uid} outlived the stop: {left:?}"
    );

    // The same after a restart and after stop_all (Gatehouse's shutdown).
    sup.restart(&alice()).await;
    eventually("restarted", Duration::from_secs(10), || {
        sup.is_running(&alice())
    })
    .await;
    eventually("escaped again", Duration::from_secs(5), || {
        processes_of(uid).len() >= 4
    })
    .await;
    sup.stop_all().await;
    assert!(processes_of(uid).is_empty(), "{:?}", processes_of(uid));
}

#[tokio::test]
async fn a_link_in_the_home_is_refused_and_its_target_stays_roots() {
    if !is_root() {
        eprintln!("not root: no uid switch, so no link can raise anyone (CI runs as root)");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let root = Root::new("homelink");
    let target = Root::new("homelink-target");
    let mut settings = fake_settings(&root, 24280, &[]);
    settings.pool.uids = uids(61050, 61059);
    let sup = Supervisor::new(settings);
    drop(sup.ensure(&alice()).await.unwrap());
    sup.stop(&alice()).await;
    // Alice's agent replaces ~/.local with a link to a directory of root's.
    let home = root.0.join(alice().as_str());
    std::fs::remove_dir_all(home.join(".local")).unwrap();
    std::os::unix::fs::symlink(&target.0, home.join(".local")).unwrap();
    let uid = std::fs::metadata(&home).unwrap().uid();
    std::os::unix::fs::lchown(home.join(".local"), Some(uid), Some(uid)).unwrap();

    match sup.ensure(&alice()).await {
        Err(BackendError::HomeRefused(why)) => {
            assert!(why.contains(".local is a link"), "{why}");
        }
        other => panic!("expected HomeRefused, got {other:?}"),
    }
    let meta = std::fs::metadata(&target.0).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (0, 0),
        "the link's target changed hands"
    );
    assert!(
        !target.0.join("share").exists(),
        "something was made through the link"
    );
    // Bob is not affected.
    drop(sup.ensure(&bob()).await.unwrap());
    sup.stop_all().await;
}
