//! The launcher: the few steps between fork and exec that confine one backend (issue 9).
//!
//! Gatehouse has no `unsafe`, so no `pre_exec` hook. Instead the supervisor starts
//! Gatehouse's own binary again as `gatehouse backend-launch '<spec json>'`; that process
//! confines **itself** and then `exec`s OpenCode, which keeps its pid, its pipes and every
//! limit. In order:
//!
//! 1. `setsid`: a session and process group of its own, no controlling terminal;
//! 2. `oom_score_adj` (the kernel kills a backend before Gatehouse) and the rlimits:
//!    processes (`RLIMIT_NPROC`, counted per uid, so per person), memory (`RLIMIT_DATA`),
//!    open files (`RLIMIT_NOFILE`), no core files;
//! 3. the person's uid: `setgroups([])`, `setresgid`, `setresuid`, checked afterwards;
//! 4. `umask 077`, then the home's own directories (`.config`, `.local/share`,
//!    `.local/state`, `.cache`, `.tmp`) made **as the person**: a link where one of them
//!    should be is refused ([`HOME_REFUSED`]), never followed by root;
//! 5. Landlock: TCP `bind` only on the backend's own port, no connecting to abstract Unix
//!    sockets and no signals outside its own processes;
//! 6. `exec` of the backend command.
//!
//! Any failure ends the launcher with a one-line reason on stderr (the supervisor shows
//! the last lines of stderr in its log) and exit code [`HOME_REFUSED`] or [`LAUNCH_FAILED`].
//! The spec holds no secret: the backend's password travels in the environment only.
//!
//! [`reap_main`] is the other helper: `gatehouse backend-reap <uid>` becomes that uid and
//! sends `SIGKILL` to every process of it (`kill(-1)`), again until none is left, so a
//! `setsid`'d or forking process of a stopped backend is caught too.

use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::{Mode, SFlag, lstat, umask};
use nix::unistd::{Gid, Pid, Uid, getresgid, getresuid, mkdir, setgroups, setresgid, setresuid};
use serde::{Deserialize, Serialize};

/// The subcommand of the `gatehouse` binary that runs [`launch_main`].
pub const LAUNCH_SUBCOMMAND: &str = "backend-launch";
/// The subcommand of the `gatehouse` binary that runs [`reap_main`].
pub const REAP_SUBCOMMAND: &str = "backend-reap";

/// What starts the launcher's one line on stderr when it fails.
fn launch_prefix() -> String {
    format!("gatehouse {LAUNCH_SUBCOMMAND}: ")
}

/// The reason in a launcher's stderr line for [`HOME_REFUSED`] (the supervisor keeps the
/// last lines of a failed start's stderr, joined by ` | `): the text after the prefix the
/// launcher writes, or the line as it is.
pub(crate) fn home_refusal_reason(stderr_tail: &str) -> String {
    let last = stderr_tail.rsplit(" | ").next().unwrap_or_default();
    let prefix = format!(
        "{}{}",
        launch_prefix(),
        LaunchError::HomeRefused(String::new())
    );
    last.strip_prefix(&prefix).unwrap_or(last).to_string()
}

/// Exit code: the person's home holds a link (or a file) where one of its own directories
/// should be. The backend is not started; the person sees a page saying so.
pub const HOME_REFUSED: i32 = 65;
/// Exit code: any other step failed (bad spec, a limit, the uid switch, Landlock).
pub const LAUNCH_FAILED: i32 = 71;

/// The `oom_score_adj` of every backend: well above Gatehouse's own (0), so under memory
/// pressure the kernel ends a backend, not the proxy everyone depends on.
pub const BACKEND_OOM_SCORE_ADJ: i32 = 800;

/// The home's own directories, made by the launcher as the person (relative to the home).
pub const HOME_DIRS: &[&str] = &[".config", ".local/share", ".local/state", ".cache", ".tmp"];

/// Everything the launcher needs, as one JSON argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// The person's uid and gid; `None` keeps Gatehouse's (`isolation: none`).
    pub uid: Option<u32>,
    /// The person's home: must already exist as a directory they own.
    pub home: PathBuf,
    /// The only TCP port the backend may bind.
    pub port: u16,
    /// `RLIMIT_NPROC`: processes the uid may have (per person when isolated).
    pub processes: u64,
    /// `RLIMIT_DATA`: the data segment's size, in bytes.
    pub memory_bytes: u64,
    /// `RLIMIT_NOFILE`: open file descriptors.
    pub open_files: u64,
    /// Written to `/proc/self/oom_score_adj` ([`BACKEND_OOM_SCORE_ADJ`]).
    pub oom_score_adj: i32,
    /// Landlock must apply fully (`true`), or as far as the kernel allows.
    pub landlock_required: bool,
    /// The backend command, program first.
    pub command: Vec<String>,
    /// The project directory in the home (a plain name): made, `git init`ed when it is not
    /// a repository yet, and the backend's working directory. `None`: the home itself.
    #[serde(default)]
    pub workspace: Option<String>,
}

/// Why a launch failed, as the launcher prints it.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The home cannot be used (exit code [`HOME_REFUSED`]); the text says what is in the
    /// way.
    #[error("home refused: {0}")]
    HomeRefused(String),
    /// Any other step failed (exit code [`LAUNCH_FAILED`]); the text names the step.
    #[error("{0}")]
    Failed(String),
}

impl LaunchError {
    fn code(&self) -> i32 {
        match self {
            LaunchError::HomeRefused(_) => HOME_REFUSED,
            LaunchError::Failed(_) => LAUNCH_FAILED,
        }
    }
}

fn failed(what: &str) -> impl Fn(Errno) -> LaunchError + '_ {
    move |e| LaunchError::Failed(format!("{what}: {e}"))
}

/// Entry point of `gatehouse backend-launch <spec>`: confines this process and execs the
/// backend. Returns only on failure, with the exit code to use.
pub fn launch_main(spec_json: &str) -> i32 {
    let result = serde_json::from_str::<LaunchSpec>(spec_json)
        .map_err(|e| LaunchError::Failed(format!("bad launch spec: {e}")))
        .and_then(|spec| launch(&spec));
    // `launch` only returns on failure.
    let e = match result {
        Ok(never) => match never {},
        Err(e) => e,
    };
    eprintln!("{}{e}", launch_prefix());
    e.code()
}

fn launch(spec: &LaunchSpec) -> Result<std::convert::Infallible, LaunchError> {
    let Some((program, args)) = spec.command.split_first() else {
        return Err(LaunchError::Failed("the command is empty".into()));
    };
    nix::unistd::setsid().map_err(failed("setsid"))?;
    std::fs::write("/proc/self/oom_score_adj", spec.oom_score_adj.to_string())
        .map_err(|e| LaunchError::Failed(format!("oom_score_adj: {e}")))?;
    set_limit(Resource::RLIMIT_NPROC, spec.processes, "processes")?;
    set_limit(Resource::RLIMIT_DATA, spec.memory_bytes, "memory")?;
    set_limit(Resource::RLIMIT_NOFILE, spec.open_files, "open_files")?;
    set_limit(Resource::RLIMIT_CORE, 0, "core files")?;
    if let Some(uid) = spec.uid {
        become_uid(uid)?;
    }
    umask(Mode::from_bits_truncate(0o077));
    prepare_home_dirs(&spec.home, spec.workspace.as_deref())?;
    let cwd = match &spec.workspace {
        Some(name) => {
            let dir = spec.home.join(name);
            init_workspace(&dir);
            dir
        }
        None => spec.home.clone(),
    };
    confine_network(spec)?;
    let e = std::process::Command::new(program)
        .args(args)
        .current_dir(&cwd)
        .exec();
    Err(LaunchError::Failed(format!("cannot run {program}: {e}")))
}

/// Sets soft and hard limit to `value`, or to the current hard limit if that is lower
/// (a root without CAP_SYS_RESOURCE cannot raise it).
fn set_limit(resource: Resource, value: u64, what: &str) -> Result<(), LaunchError> {
    let (_, hard) = getrlimit(resource).map_err(failed(what))?;
    let value = value.min(hard);
    setrlimit(resource, value, value).map_err(failed(what))
}

/// Drops every supplementary group and becomes `uid`:`uid` for real, effective and saved
/// ids; fails unless all six ids are `uid` afterwards.
fn become_uid(uid: u32) -> Result<(), LaunchError> {
    if uid == 0 {
        return Err(LaunchError::Failed(
            "refusing to run a backend as root".into(),
        ));
    }
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(uid));
    if Uid::effective().is_root() {
        setgroups(&[]).map_err(failed("setgroups"))?;
    }
    setresgid(g, g, g).map_err(failed("setresgid"))?;
    setresuid(u, u, u).map_err(failed("setresuid"))?;
    let r = getresuid().map_err(failed("getresuid"))?;
    let rg = getresgid().map_err(failed("getresgid"))?;
    if [r.real, r.effective, r.saved] != [u, u, u] || [rg.real, rg.effective, rg.saved] != [g, g, g]
    {
        return Err(LaunchError::Failed(format!(
            "the switch to uid {uid} did not hold"
        )));
    }
    Ok(())
}

/// Makes the home's own directories, as the person, refusing a link or a file where a
/// directory belongs. The home itself must be a directory this uid owns.
pub fn prepare_home_dirs(home: &Path, workspace: Option<&str>) -> Result<(), LaunchError> {
    let me = Uid::effective().as_raw();
    match lstat(home) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
            if st.st_uid != me {
                return Err(LaunchError::HomeRefused(format!(
                    "{} belongs to uid {}, not to this backend's uid {me}",
                    home.display(),
                    st.st_uid
                )));
            }
        }
        Ok(_) => {
            return Err(LaunchError::HomeRefused(format!(
                "{} is not a directory",
                home.display()
            )));
        }
        Err(e) => return Err(LaunchError::Failed(format!("{}: {e}", home.display()))),
    }
    for dir in HOME_DIRS.iter().copied().chain(workspace) {
        let mut path = home.to_path_buf();
        for part in Path::new(dir).components() {
            let Component::Normal(part) = part else {
                continue;
            };
            path.push(part);
            match lstat(&path) {
                Ok(st) => {
                    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
                    if kind == SFlag::S_IFLNK {
                        let target = std::fs::read_link(&path)
                            .map(|t| t.display().to_string())
                            .unwrap_or_else(|_| "?".into());
                        return Err(LaunchError::HomeRefused(format!(
                            "{} is a link (to {target}); a home's own directories must be \
                             directories. Remove the link (`rm {}`) and start again",
                            path.display(),
                            path.display()
                        )));
                    }
                    if kind != SFlag::S_IFDIR {
                        return Err(LaunchError::HomeRefused(format!(
                            "{} is not a directory; remove it and start again",
                            path.display()
                        )));
                    }
                }
                Err(Errno::ENOENT) => {
                    mkdir(&path, Mode::from_bits_truncate(0o700))
                        .map_err(|e| LaunchError::Failed(format!("{}: {e}", path.display())))?;
                }
                Err(e) => return Err(LaunchError::Failed(format!("{}: {e}", path.display()))),
            }
        }
    }
    Ok(())
}

/// Makes the workspace a git repository of its own (no commit), unless it is one: OpenCode
/// takes the enclosing repository as the project, so a `data_root` inside some checkout
/// would otherwise show the person that checkout. Without git the workspace stays a plain
/// directory (OpenCode works, without version control), which is said on stderr.
fn init_workspace(dir: &Path) {
    if dir.join(".git").exists() {
        return;
    }
    let result = std::process::Command::new("git")
        .args(["-c", "init.defaultBranch=main", "init", "--quiet"])
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status();
    match result {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!(
            "{}git init in {} failed ({status}); the workspace is a plain directory",
            launch_prefix(),
            dir.display()
        ),
        Err(e) => eprintln!(
            "{}git init in {}: {e}; the workspace is a plain directory",
            launch_prefix(),
            dir.display()
        ),
    }
}

/// Landlock: TCP bind only on `spec.port`; no abstract Unix sockets or signals outside.
fn confine_network(spec: &LaunchSpec) -> Result<(), LaunchError> {
    use landlock::{AccessNet, CompatLevel, NetPort, RulesetCreatedAttr, RulesetStatus};
    let level = if spec.landlock_required {
        CompatLevel::HardRequirement
    } else {
        CompatLevel::BestEffort
    };
    let status = ruleset(level)
        .and_then(|r| r.add_rule(NetPort::new(spec.port, AccessNet::BindTcp)))
        .and_then(|r| r.restrict_self())
        .map_err(|e| LaunchError::Failed(format!("Landlock: {e}")))?;
    if spec.landlock_required && status.ruleset != RulesetStatus::FullyEnforced {
        return Err(LaunchError::Failed(format!(
            "Landlock is not fully enforced ({:?})",
            status.ruleset
        )));
    }
    Ok(())
}

/// The launcher's ruleset before its one rule: TCP bind handled (so denied but for the
/// rule added), and the ABI 6 scopes (abstract Unix sockets, signals).
fn ruleset(
    level: landlock::CompatLevel,
) -> Result<landlock::RulesetCreated, landlock::RulesetError> {
    use landlock::{ABI, Access, AccessNet, Compatible, Ruleset, RulesetAttr, Scope};
    Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessNet::BindTcp)
        .and_then(|r| r.scope(Scope::from_all(ABI::V6)))
        .and_then(|r| r.create())
}

/// Whether this kernel can enforce the launcher's Landlock rules fully: creates (without
/// applying) the same ruleset. `Err` says what is missing.
pub fn landlock_check() -> Result<(), String> {
    ruleset(landlock::CompatLevel::HardRequirement)
        .map(|_| ())
        .map_err(|e| format!("Landlock (ABI 6: TCP bind rules and scopes) is not available: {e}"))
}

/// Entry point of `gatehouse backend-reap <uid>`: becomes `uid` and kills every process of
/// it until none is left (at most 5 s). Returns the exit code: 0 when none is left.
pub fn reap_main(uid: &str) -> i32 {
    let Ok(uid) = uid.parse::<u32>() else {
        eprintln!("gatehouse {REAP_SUBCOMMAND}: `{uid}` is not a uid");
        return LAUNCH_FAILED;
    };
    if let Err(e) = become_uid(uid) {
        eprintln!("gatehouse {REAP_SUBCOMMAND}: {e}");
        return LAUNCH_FAILED;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // kill(-1) as this uid reaches every process whose real or saved uid is this uid,
        // except the caller itself. It also "succeeds" on zombies, which only their parent
        // (often init) can take away, so what counts is whether a live one is left.
        match kill(Pid::from_raw(-1), Signal::SIGKILL) {
            Err(Errno::ESRCH) => return 0,
            Err(e) => {
                eprintln!("gatehouse {REAP_SUBCOMMAND}: kill: {e}");
                return LAUNCH_FAILED;
            }
            Ok(()) => {}
        }
        let left = live_processes_of(uid);
        if left.is_empty() {
            return 0;
        }
        if Instant::now() > deadline {
            eprintln!(
                "gatehouse {REAP_SUBCOMMAND}: processes of uid {uid} remain after 5 s: {left:?}"
            );
            return LAUNCH_FAILED;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Pids of processes whose real uid is `uid`, neither zombie nor already dead, except this
/// one.
fn live_processes_of(uid: u32) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return false;
            };
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
                    .unwrap_or("")
            };
            let state = field("State:");
            let real = field("Uid:").split_whitespace().next();
            real == Some(uid.to_string().as_str())
                && !state.starts_with('Z')
                && !state.starts_with('X')
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_json() {
        let spec = LaunchSpec {
            uid: Some(200001),
            home: "/var/lib/gatehouse/backends/ab".into(),
            port: 4101,
            processes: 512,
            memory_bytes: 8 << 30,
            open_files: 4096,
            oom_score_adj: BACKEND_OOM_SCORE_ADJ,
            landlock_required: true,
            command: vec!["opencode".into(), "serve".into()],
            workspace: Some("workspace".into()),
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<LaunchSpec>(&json).unwrap(), spec);
    }

    #[test]
    fn a_home_refusal_is_read_back_from_the_line_the_launcher_writes() {
        let line = format!(
            "{}{}",
            launch_prefix(),
            LaunchError::HomeRefused("/h/.local is a link (to /usr)".into())
        );
        assert_eq!(
            home_refusal_reason(&format!("earlier output | {line}")),
            "/h/.local is a link (to /usr)"
        );
    }

    #[test]
    fn a_bad_spec_fails_with_launch_failed() {
        assert_eq!(launch_main("{not json"), LAUNCH_FAILED);
    }

    fn temp_home(name: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("gatehouse-launch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn home_dirs_are_made_private() {
        let home = temp_home("ok");
        let old = umask(Mode::from_bits_truncate(0o077));
        prepare_home_dirs(&home, None).unwrap();
        umask(old);
        for d in HOME_DIRS {
            let st = lstat(&home.join(d)).unwrap();
            assert_eq!(st.st_mode & 0o777, 0o700, "{d}");
        }
        // Again: existing directories are fine.
        prepare_home_dirs(&home, None).unwrap();
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn the_workspace_is_made_private_and_becomes_a_repository_of_its_own() {
        let home = temp_home("workspace");
        let old = umask(Mode::from_bits_truncate(0o077));
        prepare_home_dirs(&home, Some("workspace")).unwrap();
        umask(old);
        let ws = home.join("workspace");
        assert_eq!(lstat(&ws).unwrap().st_mode & 0o777, 0o700);
        init_workspace(&ws);
        assert!(ws.join(".git/HEAD").is_file(), "git init ran");
        // A repository already there is left as it is.
        std::fs::write(ws.join(".git/description"), "mine").unwrap();
        init_workspace(&ws);
        assert_eq!(
            std::fs::read_to_string(ws.join(".git/description")).unwrap(),
            "mine"
        );
        // A link in its place is refused like any home directory.
        std::fs::remove_dir_all(&ws).unwrap();
        let outside = temp_home("workspace-outside");
        std::os::unix::fs::symlink(&outside, &ws).unwrap();
        let err = prepare_home_dirs(&home, Some("workspace")).unwrap_err();
        assert!(err.to_string().contains("workspace is a link"), "{err}");
        std::fs::remove_dir_all(&home).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn a_link_in_place_of_a_home_dir_is_refused_and_not_followed() {
        let home = temp_home("link");
        let outside = temp_home("outside");
        std::os::unix::fs::symlink(&outside, home.join(".local")).unwrap();
        let err = prepare_home_dirs(&home, None).unwrap_err();
        assert!(matches!(err, LaunchError::HomeRefused(_)), "{err}");
        assert!(err.to_string().contains(".local is a link"), "{err}");
        assert_eq!(err.code(), HOME_REFUSED);
        // Nothing was made through the link.
        assert!(!outside.join("share").exists());
        // A file where a directory belongs is refused too.
        std::fs::remove_file(home.join(".local")).unwrap();
        std::fs::write(home.join(".cache"), "x").unwrap();
        let err = prepare_home_dirs(&home, None).unwrap_err();
        assert!(
            err.to_string().contains(".cache is not a directory"),
            "{err}"
        );
        std::fs::remove_dir_all(&home).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn a_link_as_the_home_itself_is_refused() {
        let base = temp_home("homelink");
        let target = temp_home("homelink-target");
        let home = base.join("home");
        std::os::unix::fs::symlink(&target, &home).unwrap();
        let err = prepare_home_dirs(&home, None).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
        std::fs::remove_dir_all(&base).unwrap();
        std::fs::remove_dir_all(&target).unwrap();
    }
}
