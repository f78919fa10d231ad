//! Who a backend belongs to, the secret it is started with, and the person's directory and
//! Unix user.

use std::fmt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

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

/// Where a person's backend keeps its files: `<data_root>/<id>/`, used as `HOME`, with the
/// XDG directories inside it.
#[derive(Debug, Clone)]
pub struct PersonDir {
    pub home: PathBuf,
}

impl PersonDir {
    pub(crate) fn new(root: &Path, id: &PersonId) -> Self {
        PersonDir {
            home: root.join(id.as_str()),
        }
    }

    pub(crate) fn xdg(&self) -> [(&'static str, PathBuf); 4] {
        [
            ("XDG_CONFIG_HOME", self.home.join(".config")),
            ("XDG_DATA_HOME", self.home.join(".local/share")),
            ("XDG_STATE_HOME", self.home.join(".local/state")),
            ("XDG_CACHE_HOME", self.home.join(".cache")),
        ]
    }

    /// Creates the directories and makes the top mode 0700. With `owner`, they belong to
    /// that uid/gid, so another person's backend (another uid) cannot enter. A home that
    /// belonged to someone else (the uid range changed) is handed over whole; otherwise only
    /// the directories made here are, so a start does not walk the person's files.
    pub(crate) fn prepare(&self, owner: Option<u32>) -> std::io::Result<()> {
        let previous_owner = self.owner();
        for (_, dir) in self.xdg() {
            std::fs::create_dir_all(dir)?;
        }
        if let Some(uid) = owner {
            if previous_owner.is_some_and(|o| o != uid) {
                chown_tree(&self.home, uid)?;
            } else {
                let made = [
                    self.home.clone(),
                    self.home.join(".config"),
                    self.home.join(".local"),
                    self.home.join(".local/share"),
                    self.home.join(".local/state"),
                    self.home.join(".cache"),
                ];
                for dir in made {
                    let meta = std::fs::symlink_metadata(&dir)?;
                    if meta.uid() != uid || meta.gid() != uid {
                        std::os::unix::fs::lchown(&dir, Some(uid), Some(uid))?;
                    }
                }
            }
        }
        std::fs::set_permissions(&self.home, std::fs::Permissions::from_mode(0o700))
    }

    /// The uid owning the directory, if it exists.
    pub(crate) fn owner(&self) -> Option<u32> {
        std::fs::symlink_metadata(&self.home).ok().map(|m| m.uid())
    }
}

/// Gives `path` and everything below it (symlinks themselves, never their targets) to
/// `uid`:`uid`. Only entries not already owned by it are changed.
fn chown_tree(path: &Path, uid: u32) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.uid() != uid || meta.gid() != uid {
        std::os::unix::fs::lchown(path, Some(uid), Some(uid))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid)?;
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

    #[test]
    fn prepare_makes_a_private_home_and_hands_a_foreign_one_over_whole() {
        let root = std::env::temp_dir().join(format!("gatehouse-person-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = PersonDir::new(&root, &PersonId::new("https://idp.test", "p"));
        let root_user = nix::unistd::Uid::effective().is_root();
        dir.prepare(root_user.then_some(61100)).unwrap();
        let meta = std::fs::metadata(&dir.home).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        for (_, d) in dir.xdg() {
            assert!(d.is_dir(), "{}", d.display());
        }
        if root_user {
            assert_eq!(meta.uid(), 61100);
            assert_eq!(
                std::fs::metadata(dir.home.join(".local/share"))
                    .unwrap()
                    .uid(),
                61100
            );
            // The range changed: the home and everything in it go to the new uid.
            let file = dir.home.join("notes.txt");
            std::fs::write(&file, "x").unwrap();
            std::os::unix::fs::lchown(&file, Some(61100), Some(61100)).unwrap();
            dir.prepare(Some(61101)).unwrap();
            assert_eq!(std::fs::metadata(&file).unwrap().uid(), 61101);
            assert_eq!(std::fs::metadata(&dir.home).unwrap().uid(), 61101);
        }
        std::fs::remove_dir_all(&root).unwrap();
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
