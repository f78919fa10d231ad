//! Checks of the pools against this host, run by `check` and before serving (issue 9): no
//! pool runs unisolated by accident, uid ranges belong to nobody else, the backend's uids
//! can reach what they must, and confinement is there (or explicitly waived).
//!
//! The host's facts come in through [`Host`], so tests pass their own.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use gatehouse_config::{BackendPool, Confinement, Origin};

/// What the checks need to know about the machine.
#[derive(Debug, Clone)]
pub struct Host {
    /// Gatehouse's effective uid.
    pub euid: u32,
    /// The text of `/etc/passwd`, to find users in a pool's uid range.
    pub passwd: String,
    /// The text of `/etc/group`, to find groups in a pool's uid range.
    pub group: String,
    /// Why nftables cannot be used here, if it cannot.
    pub nftables: Result<(), String>,
    /// Why Landlock cannot be used here, if it cannot.
    pub landlock: Result<(), String>,
}

impl Host {
    /// This machine, now.
    pub fn current() -> Self {
        let euid = nix::unistd::Uid::effective().as_raw();
        Host {
            euid,
            passwd: std::fs::read_to_string("/etc/passwd").unwrap_or_default(),
            group: std::fs::read_to_string("/etc/group").unwrap_or_default(),
            nftables: if euid == 0 {
                crate::firewall::check_available_blocking()
            } else {
                Err(format!(
                    "outbound connections can only be confined when Gatehouse runs as root \
                     (it runs as uid {euid})"
                ))
            },
            landlock: crate::launch::landlock_check(),
        }
    }
}

/// What the checks found: errors refuse the config, warnings are logged and printed.
#[derive(Debug, Default)]
pub struct Findings {
    /// Problems that refuse the config: where in the config, and what is wrong.
    pub errors: Vec<(Origin, String)>,
    /// Problems that are only reported: where in the config, and what is wrong.
    pub warnings: Vec<(Origin, String)>,
}

/// The PATH a backend gets (and the launcher uses to find its command).
pub const BACKEND_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Checks every pool against `host`.
pub fn check(pools: &[BackendPool], host: &Host) -> Findings {
    let mut f = Findings::default();
    for (i, pool) in pools.iter().enumerate() {
        let name = &pool.name;
        if host.euid == 0 {
            if let Some(at) = &pool.isolation_none {
                f.errors.push((
                    at.clone(),
                    format!(
                        "backends.{name}.isolation: `none` would run every backend as root \
                         (Gatehouse runs as root); remove it and set `uids: 200000-200999`"
                    ),
                ));
            } else if pool.uids.is_none() {
                f.errors.push((
                    pool.origin.clone(),
                    format!(
                        "backends.{name}: Gatehouse runs as root, so each person's backend \
                         needs a uid of their own: add `uids: 200000-200999` (a range no \
                         account or group on this host uses)"
                    ),
                ));
            }
        } else if let Some(r) = &pool.uids {
            f.errors.push((
                r.origin.clone(),
                format!(
                    "backends.{name}.uids: only a Gatehouse running as root can run backends \
                     as other uids (it runs as uid {}); run it as root, or remove `uids` and \
                     set `isolation: none`",
                    host.euid
                ),
            ));
        } else if let Some(at) = &pool.isolation_none {
            f.warnings.push((
                at.clone(),
                format!(
                    "backends.{name}.isolation: none: every backend runs as Gatehouse's own uid \
                     {}, so each person's assistant can read every other person's files and \
                     signal their processes; run Gatehouse as root with `uids:` to isolate them",
                    host.euid
                ),
            ));
        } else {
            f.errors.push((
                pool.origin.clone(),
                format!(
                    "backends.{name}: Gatehouse is not running as root (uid {}), so backends \
                     would share its uid and could read each other's files; run it as root \
                     with `uids: 200000-200999`, or set `isolation: none` to accept that",
                    host.euid
                ),
            ));
        }

        if let Some(r) = &pool.uids {
            for other in &pools[..i] {
                if let Some(o) = other.uids.as_ref().filter(|o| o.overlaps(r)) {
                    f.errors.push((
                        r.origin.clone(),
                        format!(
                            "backends.{name}.uids: {}-{} overlaps backends.{}.uids {}-{}; \
                             give each pool its own range",
                            r.first, r.last, other.name, o.first, o.last
                        ),
                    ));
                }
            }
            for (what, db, file) in [
                ("uid", &host.passwd, "/etc/passwd"),
                ("gid", &host.group, "/etc/group"),
            ] {
                if let Some((entry, id)) = ids_of(db).find(|(_, id)| r.contains(*id)) {
                    f.errors.push((
                        r.origin.clone(),
                        format!(
                            "backends.{name}.uids: {}-{} includes {what} {id} (`{entry}` in \
                             {file}); choose a range no account or group uses",
                            r.first, r.last
                        ),
                    ));
                }
            }
            if host.euid == 0 {
                reachability(pool, &mut f);
            }
        }
        confinement(pool, host, &mut f);
    }
    f
}

/// Name and id of each entry of a passwd or group file.
fn ids_of(db: &str) -> impl Iterator<Item = (&str, u32)> {
    db.lines().filter_map(|l| {
        let mut parts = l.split(':');
        let name = parts.next()?;
        let id = parts.nth(1)?.parse().ok()?;
        Some((name, id))
    })
}

/// The backend's command and `data_root` must be reachable by a uid of the range, which is
/// neither owner nor group of anything outside its home: "others" bits decide.
fn reachability(pool: &BackendPool, f: &mut Findings) {
    let name = &pool.name;
    if let Some(program) = pool.command.first() {
        match find_program(program) {
            None => f.errors.push((
                pool.origin.clone(),
                format!(
                    "backends.{name}.command: `{program}` is not found (not a path, and not in \
                     {BACKEND_PATH}); give its full path"
                ),
            )),
            Some(path) => {
                if let Err(e) = reachable(&path, true) {
                    f.errors.push((
                        pool.origin.clone(),
                        format!(
                            "backends.{name}.command: the backends' uids cannot run {}: {e}",
                            path.display()
                        ),
                    ));
                }
            }
        }
    }
    let root = &pool.data_root;
    if let Some(parent) = root.parent()
        && let Err(e) = reachable_dir_chain(parent)
    {
        f.errors.push((
            pool.origin.clone(),
            format!(
                "backends.{name}.data_root: the backends' uids cannot reach {}: {e}",
                root.display()
            ),
        ));
    }
    for (dir, want_mode) in [
        (root.clone(), "0711 or 0755"),
        (root.join(crate::process::PID_DIR), "0700"),
    ] {
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue; // made at start, with the right owner and mode
        };
        let mode = meta.mode() & 0o7777;
        let me = nix::unistd::Uid::effective().as_raw();
        let wrong = if !meta.is_dir() {
            Some("is not a directory".to_string())
        } else if meta.uid() != me {
            Some(format!(
                "belongs to uid {}, not to Gatehouse (uid {me})",
                meta.uid()
            ))
        } else if mode & 0o022 != 0 {
            Some(format!("is writable by group or others (mode {mode:04o})"))
        } else if want_mode == "0700" && mode & 0o077 != 0 {
            Some(format!("is open to group or others (mode {mode:04o})"))
        } else if want_mode != "0700" && mode & 0o001 == 0 {
            Some(format!(
                "cannot be entered by the backends' uids (mode {mode:04o})"
            ))
        } else {
            None
        };
        if let Some(wrong) = wrong {
            f.errors.push((
                pool.origin.clone(),
                format!(
                    "backends.{name}.data_root: {} {wrong}; make it Gatehouse's with mode \
                     {want_mode} (`chown {me} {d} && chmod {} {d}`)",
                    dir.display(),
                    &want_mode[..4],
                    d = dir.display()
                ),
            ));
        }
    }
}

fn confinement(pool: &BackendPool, host: &Host, f: &mut Findings) {
    let name = &pool.name;
    let mut missing = Vec::new();
    if let Err(e) = &host.landlock {
        missing.push(format!("{e} (backends could bind any port)"));
    }
    if let Err(e) = &host.nftables {
        missing.push(format!(
            "{e} (backends could connect to loopback and private addresses)"
        ));
    }
    for m in missing {
        match pool.confinement {
            Confinement::Required => f.errors.push((
                pool.origin.clone(),
                format!(
                    "backends.{name}: {m}; fix that, or set `confinement: best_effort` to \
                     start backends without it"
                ),
            )),
            Confinement::BestEffort => f.warnings.push((
                pool.origin.clone(),
                format!("backends.{name}: confinement: best_effort: {m}"),
            )),
        }
    }
}

/// `program` as the launcher will find it: a path as it is, a bare name on
/// [`BACKEND_PATH`].
pub fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.exists().then_some(p);
    }
    BACKEND_PATH
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// Whether a file can be run by a uid that is neither its owner nor in its group: every
/// directory on the way (of the path as written and of its target) lets others through,
/// and the file lets others execute it (and read it, for a `#!` script).
pub fn reachable(path: &Path, program: bool) -> Result<(), String> {
    let canonical = path
        .canonicalize()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    for p in [path, canonical.as_path()] {
        if let Some(parent) = p.parent() {
            reachable_dir_chain(parent)?;
        }
    }
    let meta = std::fs::metadata(&canonical).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.mode() & 0o7777;
    if program {
        if mode & 0o001 == 0 {
            return Err(format!(
                "{} is mode {mode:04o} (others may not run it); `chmod o+rx {}`",
                canonical.display(),
                canonical.display()
            ));
        }
        let script = std::fs::read(&canonical)
            .map(|b| b.starts_with(b"#!"))
            .unwrap_or(false);
        if script && mode & 0o004 == 0 {
            return Err(format!(
                "{} is a script of mode {mode:04o} (others may not read it); `chmod o+r {}`",
                canonical.display(),
                canonical.display()
            ));
        }
    }
    Ok(())
}

/// Every existing directory from `/` down to `dir` lets others through (`o+x`).
pub fn reachable_dir_chain(dir: &Path) -> Result<(), String> {
    let mut walked = PathBuf::new();
    for part in dir.components() {
        walked.push(part);
        let Ok(meta) = std::fs::metadata(&walked) else {
            break; // not made yet: Gatehouse makes it
        };
        let mode = meta.mode() & 0o7777;
        if meta.is_dir() && mode & 0o001 == 0 {
            return Err(format!(
                "{} is mode {mode:04o}, so other users cannot pass through it; `chmod o+x {}`, \
                 or put it somewhere they can reach",
                walked.display(),
                walked.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_config::UidRange;

    fn origin(line: usize) -> Origin {
        Origin::File {
            file: Path::new("gatehouse.yaml").into(),
            line,
            col: 5,
        }
    }

    fn pool(name: &str, uids: Option<(u32, u32)>) -> BackendPool {
        let mut p = BackendPool::with_defaults(name);
        p.command = vec!["/bin/sh".into()];
        p.data_root = std::env::temp_dir().join("gatehouse-preflight-none");
        p.origin = origin(3);
        p.uids = uids.map(|(first, last)| UidRange {
            first,
            last,
            origin: origin(4),
        });
        p
    }

    fn host(euid: u32) -> Host {
        Host {
            euid,
            passwd: "root:x:0:0:root:/root:/bin/bash\nalice:x:200005:100::/home/alice:/bin/sh\n"
                .into(),
            group: "root:x:0:\nstaff:x:300010:\n".into(),
            nftables: Ok(()),
            landlock: Ok(()),
        }
    }

    fn errors(f: &Findings) -> Vec<String> {
        f.errors.iter().map(|(o, m)| format!("{o}: {m}")).collect()
    }

    #[test]
    fn root_without_uids_is_refused_at_the_pool() {
        let f = check(&[pool("assistant", None)], &host(0));
        let e = errors(&f);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("gatehouse.yaml:3:5: backends.assistant: Gatehouse runs as root"),
            "{e:?}"
        );
        assert!(e[0].contains("add `uids:"), "{e:?}");
    }

    #[test]
    fn root_with_isolation_none_is_refused() {
        let mut p = pool("assistant", None);
        p.isolation_none = Some(origin(6));
        let e = errors(&check(&[p], &host(0)));
        assert!(e[0].starts_with("gatehouse.yaml:6:5: backends.assistant.isolation: `none` would run every backend as root"), "{e:?}");
    }

    #[test]
    fn non_root_needs_isolation_none_said_out_loud_and_then_warns() {
        let e = errors(&check(&[pool("a", None)], &host(1000)));
        assert!(
            e[0].contains("set `isolation: none` to accept that"),
            "{e:?}"
        );
        let mut p = pool("a", None);
        p.isolation_none = Some(origin(6));
        let f = check(&[p], &host(1000));
        assert!(f.errors.is_empty(), "{:?}", errors(&f));
        assert!(
            f.warnings[0]
                .1
                .contains("can read every other person's files")
        );
        // uids without root cannot work.
        let e = errors(&check(&[pool("a", Some((300000, 300099)))], &host(1000)));
        assert!(e[0].contains("only a Gatehouse running as root"), "{e:?}");
    }

    #[test]
    fn overlapping_ranges_and_ranges_with_host_accounts_are_refused() {
        let pools = [
            pool("a", Some((210000, 210099))),
            pool("b", Some((210050, 210149))),
        ];
        let e = errors(&check(&pools, &host(0)));
        assert!(
            e.iter().any(|m| m
                .contains("backends.b.uids: 210050-210149 overlaps backends.a.uids 210000-210099")),
            "{e:?}"
        );
        assert_eq!(
            e.iter().filter(|m| m.contains("overlaps")).count(),
            1,
            "{e:?}"
        );

        let e = errors(&check(&[pool("a", Some((200000, 200999)))], &host(0)));
        assert!(
            e.iter()
                .any(|m| m.contains("includes uid 200005 (`alice` in /etc/passwd)")),
            "{e:?}"
        );
        let e = errors(&check(&[pool("a", Some((300000, 300099)))], &host(0)));
        assert!(
            e.iter()
                .any(|m| m.contains("includes gid 300010 (`staff` in /etc/group)")),
            "{e:?}"
        );
        let f = check(&[pool("a", Some((400000, 400099)))], &host(0));
        assert!(f.errors.is_empty(), "{:?}", errors(&f));
    }

    #[test]
    fn missing_confinement_refuses_unless_best_effort() {
        let mut h = host(0);
        h.nftables = Err("nftables is not installed".into());
        let e = errors(&check(&[pool("a", Some((400000, 400099)))], &h));
        assert!(
            e.iter().any(|m| m.contains("nftables is not installed")
                && m.contains("confinement: best_effort")),
            "{e:?}"
        );
        let mut p = pool("a", Some((400000, 400099)));
        p.confinement = Confinement::BestEffort;
        let f = check(&[p], &h);
        assert!(f.errors.is_empty(), "{:?}", errors(&f));
        assert!(f.warnings[0].1.contains("best_effort"));
    }

    #[test]
    fn a_directory_closed_to_others_is_named_with_the_fix() {
        let base = std::env::temp_dir().join(format!("gatehouse-preflight-{}", std::process::id()));
        let closed = base.join("closed");
        std::fs::create_dir_all(closed.join("bin")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let prog = closed.join("bin/opencode");
        std::fs::write(&prog, "\x7fELF").unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = reachable(&prog, true).unwrap_err();
        assert!(
            err.contains(&format!("{} is mode 0700", closed.display())),
            "{err}"
        );
        assert!(err.contains("chmod o+x"), "{err}");
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711)).unwrap();
        reachable(&prog, true).unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(
            reachable(&prog, true)
                .unwrap_err()
                .contains("others may not run it")
        );
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert!(
            reachable(&prog, true)
                .unwrap_err()
                .contains("others may not read it")
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
