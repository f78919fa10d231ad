//! Who a backend belongs to, the secret it is started with, and the person's directory and
//! Unix user.

use std::fmt;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, fchown, fchownat};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A stable, opaque name for one person: the first 16 bytes of
/// SHA-256(issuer ‖ "\n" ‖ subject), in hex. It names the data directory and pid file, so it
/// must never change for a person and never reveal their address.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PersonId(String);

impl PersonId {
    /// The id of the person the issuer calls `subject` (the ID token's `iss` and `sub`).
    pub fn new(issuer: &str, subject: &str) -> Self {
        let mut h = Sha256::new();
        h.update(issuer.as_bytes());
        h.update(b"\n");
        h.update(subject.as_bytes());
        let digest = h.finalize();
        PersonId(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The id as 32 lower-case hex digits: the name of the person's directory and pid file.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Accepts only what [`PersonId::new`] makes (32 lower-case hex digits), so a name read
    /// back from the data root can never be a path like `../x`.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        (s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| PersonId(s.to_string()))
    }
}

impl fmt::Display for PersonId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PersonId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PersonId({})", self.0)
    }
}

/// The password one backend process was started with (`OPENCODE_SERVER_PASSWORD`): 32
/// random bytes, new for every spawn, known only to Gatehouse. `Debug` prints `[redacted]`;
/// there is no `Display`.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub(crate) fn random() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Password(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The value for the `Authorization` header of every upstream request:
    /// `Basic base64(opencode:<password>)`. Never log it.
    pub fn basic_authorization(&self) -> String {
        format!("Basic {}", STANDARD.encode(format!("opencode:{}", self.0)))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The token one backend process presents to Gatehouse's LLM relay instead of a provider
/// key (issue 12): `ghr_` and 32 random bytes, new for every spawn, worthless anywhere but
/// the relay and only while that process runs. The backend's person can read it (it is in
/// the backend's environment); that is fine, it opens nothing but their own relay.
#[derive(Clone)]
pub struct RelayToken(String);

/// What every relay token begins with, so logs, scanners and the relay can tell them apart.
pub const RELAY_TOKEN_PREFIX: &str = "ghr_";

impl RelayToken {
    pub(crate) fn random() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        RelayToken(format!(
            "{RELAY_TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(bytes)
        ))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, in time that does not depend on where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl fmt::Debug for RelayToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a person's backend keeps its files: `<data_root>/<id>/`, used as `HOME`, with the
/// XDG directories inside it.
#[derive(Debug, Clone)]
pub struct PersonDir {
    /// The pool's `data_root`, which holds every person's directory.
    pub root: PathBuf,
    /// This person's directory, `<data_root>/<id>`: the backend's `HOME`.
    pub home: PathBuf,
    name: String,
}

/// Why a home cannot be used. The page tells the person; the log tells the operator.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HomeError {
    #[error("{0} is not a directory (a link or a file stands where the home should be); remove it")]
    NotADirectory(String),
    #[error("{path}: {error}")]
    Io { path: String, error: nix::Error },
}

impl PersonDir {
    pub(crate) fn new(root: &Path, id: &PersonId) -> Self {
        PersonDir {
            root: root.to_path_buf(),
            home: root.join(id.as_str()),
            name: id.as_str().to_string(),
        }
    }

    pub(crate) fn xdg(&self) -> [(&'static str, PathBuf); 5] {
        [
            ("XDG_CONFIG_HOME", self.home.join(".config")),
            ("XDG_DATA_HOME", self.home.join(".local/share")),
            ("XDG_STATE_HOME", self.home.join(".local/state")),
            ("XDG_CACHE_HOME", self.home.join(".cache")),
            ("TMPDIR", self.home.join(".tmp")),
        ]
    }

    /// Makes the home (mode 0700) and, with `owner`, gives it to that uid/gid. Root never
    /// touches a path inside the home by name: the home is opened with `O_NOFOLLOW`
    /// relative to `data_root` and changed through that descriptor, and a home that
    /// belonged to another uid of the range (the range changed) is handed over entry by
    /// entry through directory descriptors, changing only what the old uid owned. The
    /// home's own directories are made later by the launcher, as the person
    /// ([`crate::launch`]). Refuses a home that is a link or a file.
    pub(crate) fn prepare(&self, owner: Option<u32>) -> Result<(), HomeError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |error| HomeError::Io {
                path: path.clone(),
                error,
            }
        };
        let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let root = open(&self.root, dir_flags, Mode::empty()).map_err(io(&self.root))?;
        match fstatat(&root, self.name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if is_dir(&st) => {}
            Ok(_) => return Err(HomeError::NotADirectory(self.home.display().to_string())),
            Err(nix::Error::ENOENT) => {
                mkdirat(&root, self.name.as_str(), Mode::from_bits_truncate(0o700))
                    .map_err(io(&self.home))?;
            }
            Err(e) => return Err(io(&self.home)(e)),
        }
        let home =
            openat(&root, self.name.as_str(), dir_flags, Mode::empty()).map_err(|e| match e {
                nix::Error::ELOOP | nix::Error::ENOTDIR => {
                    HomeError::NotADirectory(self.home.display().to_string())
                }
                e => io(&self.home)(e),
            })?;
        if let Some(uid) = owner {
            let st = fstat(&home).map_err(io(&self.home))?;
            if st.st_uid != uid {
                let me = nix::unistd::Uid::effective().as_raw();
                if st.st_uid != me {
                    hand_over(&home, st.st_uid, uid, 0).map_err(io(&self.home))?;
                }
                fchown(&home, Some(Uid::from_raw(uid)), Some(Gid::from_raw(uid)))
                    .map_err(io(&self.home))?;
            }
        }
        fchmod(&home, Mode::from_bits_truncate(0o700)).map_err(io(&self.home))
    }

    /// The uid owning the directory, if it exists.
    pub(crate) fn owner(&self) -> Option<u32> {
        std::fs::symlink_metadata(&self.home).ok().map(|m| m.uid())
    }
}

fn is_dir(st: &nix::sys::stat::FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// Deepest directory nesting a hand-over walks (a deeper home is refused, not overflowed).
const MAX_DEPTH: usize = 128;

/// Gives every entry below `dir` that belongs to `from` to `to`:`to`, through directory
/// descriptors only (`fchownat` with `AT_SYMLINK_NOFOLLOW`, subdirectories opened with
/// `O_NOFOLLOW`), so no link and no rename race can point root at a file outside. Entries
/// of anyone else (a hard link to a file of root's) are left as they are.
fn hand_over(dir: &OwnedFd, from: u32, to: u32, depth: usize) -> nix::Result<()> {
    if depth > MAX_DEPTH {
        return Err(nix::Error::ELOOP);
    }
    let listing = Dir::from_fd(dir.try_clone().map_err(|_| nix::Error::EBADF)?)?;
    let names: Vec<std::ffi::CString> = listing
        .into_iter()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect();
    let (to_uid, to_gid) = (Uid::from_raw(to), Gid::from_raw(to));
    for name in names {
        let st = match fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(nix::Error::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        if st.st_uid != from {
            continue;
        }
        fchownat(
            dir,
            name.as_c_str(),
            Some(to_uid),
            Some(to_gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        if is_dir(&st) {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            match openat(dir, name.as_c_str(), flags, Mode::empty()) {
                Ok(sub) => hand_over(&sub, from, to, depth + 1)?,
                // Replaced by a link or a file since: nothing below it to hand over.
                Err(nix::Error::ELOOP | nix::Error::ENOTDIR | nix::Error::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn person_id_is_stable_opaque_and_depends_on_issuer_and_subject() {
        let a = PersonId::new("https://accounts.google.com", "alice@example.com");
        assert_eq!(
            a,
            PersonId::new("https://accounts.google.com", "alice@example.com")
        );
        assert_ne!(
            a,
            PersonId::new("https://other.example", "alice@example.com")
        );
        assert_ne!(
            a,
            PersonId::new("https://accounts.google.com", "bob@example.com")
        );
        assert_eq!(a.as_str().len(), 32);
        assert!(!a.as_str().contains("alice"));
        assert_eq!(PersonId::parse(a.as_str()), Some(a));
    }

    #[test]
    fn person_id_parse_refuses_anything_that_is_not_an_id() {
        for bad in [
            "",
            "../../etc/passwd",
            "ABCDEF0123456789ABCDEF0123456789",
            "x",
        ] {
            assert_eq!(PersonId::parse(bad), None, "{bad}");
        }
    }

    fn temp_root(name: &str) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("gatehouse-person-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    #[test]
    fn prepare_makes_a_private_home_and_hands_a_foreign_one_over() {
        use std::os::unix::fs::PermissionsExt;
        let root = temp_root("prepare");
        let dir = PersonDir::new(&root, &PersonId::new("https://idp.test", "p"));
        let root_user = nix::unistd::Uid::effective().is_root();
        dir.prepare(root_user.then_some(61100)).unwrap();
        let meta = std::fs::metadata(&dir.home).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        if root_user {
            assert_eq!((meta.uid(), meta.gid()), (61100, 61100));
            // The range changed: what the old uid owned goes to the new uid, and nothing of
            // anyone else's (a hard link to root's file) changes hands.
            let sub = dir.home.join("project/src");
            std::fs::create_dir_all(&sub).unwrap();
            let file = sub.join("notes.txt");
            std::fs::write(&file, "x").unwrap();
            for p in [dir.home.join("project"), sub.clone(), file.clone()] {
                std::os::unix::fs::lchown(&p, Some(61100), Some(61100)).unwrap();
            }
            let roots = dir.home.join("roots.txt");
            std::fs::write(&roots, "root's").unwrap();
            dir.prepare(Some(61101)).unwrap();
            assert_eq!(std::fs::metadata(&file).unwrap().uid(), 61101);
            assert_eq!(std::fs::metadata(&sub).unwrap().uid(), 61101);
            assert_eq!(std::fs::metadata(&dir.home).unwrap().uid(), 61101);
            assert_eq!(std::fs::metadata(&roots).unwrap().uid(), 0);
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_hand_over_never_follows_a_link_out_of_the_home() {
        if !nix::unistd::Uid::effective().is_root() {
            return; // only root can hand a home over
        }
        let root = temp_root("link");
        let outside = temp_root("link-outside");
        std::fs::write(outside.join("secret"), "s").unwrap();
        let dir = PersonDir::new(&root, &PersonId::new("https://idp.test", "q"));
        dir.prepare(Some(61110)).unwrap();
        // The old uid plants links to a root-owned directory, as `.local` and deeper.
        std::os::unix::fs::symlink(&outside, dir.home.join(".local")).unwrap();
        std::os::unix::fs::lchown(dir.home.join(".local"), Some(61110), Some(61110)).unwrap();
        dir.prepare(Some(61111)).unwrap();
        assert_eq!(std::fs::metadata(&outside).unwrap().uid(), 0);
        assert_eq!(std::fs::metadata(outside.join("secret")).unwrap().uid(), 0);
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn a_home_that_is_a_link_is_refused() {
        let root = temp_root("homelink");
        let outside = temp_root("homelink-outside");
        let id = PersonId::new("https://idp.test", "r");
        std::os::unix::fs::symlink(&outside, root.join(id.as_str())).unwrap();
        let err = PersonDir::new(&root, &id).prepare(Some(61120)).unwrap_err();
        assert!(matches!(err, HomeError::NotADirectory(_)), "{err}");
        assert_eq!(
            std::fs::metadata(&outside).unwrap().uid(),
            nix::unistd::Uid::effective().as_raw()
        );
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn passwords_are_fresh_and_never_printed() {
        let a = Password::random();
        let b = Password::random();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(format!("{a:?}"), "[redacted]");
        let header = a.basic_authorization();
        let decoded = STANDARD
            .decode(header.trim_start_matches("Basic "))
            .unwrap();
        assert_eq!(decoded, format!("opencode:{}", a.expose()).as_bytes());
    }
}
