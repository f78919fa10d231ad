//! Sealed values: AES-256-GCM with a random 96-bit nonce and the value's name as associated
//! data (docs/design.md, "Decisions the code relies on").
//!
//! Layout, base64url without padding: `version (1) | key id (1) | nonce (12) | ciphertext+tag`.
//! Each purpose (session, login state, handoff, …) uses its own key derived from the
//! `cookie_secret` with HKDF-SHA256, so a value sealed for one purpose never opens as another.
//! The key id lets a [`Sealer`] hold previous keys after a rotation.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use rand::RngCore;
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 2 + NONCE_LEN;

/// Why a sealed value was refused. None of these carries the value itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnsealError {
    /// Not base64url, or too short to hold a header and a tag.
    #[error("not a sealed value (bad encoding or too short)")]
    Malformed,
    /// The format version byte is not 1; holds the byte found.
    #[error("sealed with format version {0}, this build reads version 1")]
    UnknownVersion(u8),
    /// No key of this sealer has this key id (another secret, or another purpose); holds it.
    #[error("sealed with a key this server does not have (key id {0})")]
    UnknownKey(u8),
    /// The AES-GCM tag does not verify under any key with this id: the value was changed,
    /// or sealed under another name.
    #[error("authentication tag does not verify (tampered, or sealed under another name)")]
    Tampered,
}

struct Key {
    id: u8,
    cipher: Aes256Gcm,
}

/// Seals and opens values for one purpose. The first key seals; every key may open.
pub struct Sealer {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

fn derive(secret: &[u8; 32], purpose: &str) -> Key {
    let hk = Hkdf::<Sha256>::new(Some(b"gatehouse-seal-v1"), secret);
    let mut okm = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's 255*32 limit, so expand cannot fail.
    if hk.expand(purpose.as_bytes(), &mut okm).is_err() {
        unreachable!("HKDF output length 32 is valid");
    }
    let id = Sha256::digest([b"key-id".as_slice(), &okm].concat())[0];
    let cipher = Aes256Gcm::new(&okm.into());
    Key { id, cipher }
}

impl Sealer {
    /// A sealer for `purpose`, keyed from the 32-byte `cookie_secret`.
    pub fn new(secret: &[u8; 32], purpose: &str) -> Self {
        Sealer {
            keys: vec![derive(secret, purpose)],
        }
    }

    /// Also accept values sealed with an earlier secret (key rotation).
    pub fn with_previous(mut self, secret: &[u8; 32], purpose: &str) -> Self {
        self.keys.push(derive(secret, purpose));
        self
    }

    /// Seals `plaintext`, binding it to `name` (for cookies, the cookie name).
    pub fn seal(&self, name: &str, plaintext: &[u8]) -> String {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad: name.as_bytes(),
        };
        // AES-GCM encryption only fails for plaintexts over 64 GiB.
        let Ok(ct) = key.cipher.encrypt(&Nonce::from(nonce), payload) else {
            unreachable!("AES-GCM encrypt of a small buffer");
        };
        let mut out = Vec::with_capacity(HEADER_LEN + ct.len());
        out.push(VERSION);
        out.push(key.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Opens a value sealed under `name`. Returns `Err` if anything about it is wrong,
    /// and never returns partial plaintext.
    pub fn open(&self, name: &str, sealed: &str) -> Result<Vec<u8>, UnsealError> {
        self.open_indexed(name, sealed).map(|(pt, _)| pt)
    }

    /// [`Sealer::open`], also saying which key opened it: `0` is the current key, `1..` the
    /// previous ones in the order they were added. A value opened by a previous key is one
    /// to seal again under the current key (re-encryption after a rotation).
    pub fn open_indexed(&self, name: &str, sealed: &str) -> Result<(Vec<u8>, usize), UnsealError> {
        let raw = URL_SAFE_NO_PAD
            .decode(sealed.as_bytes())
            .map_err(|_| UnsealError::Malformed)?;
        if raw.len() < HEADER_LEN + TAG_LEN {
            return Err(UnsealError::Malformed);
        }
        if raw[0] != VERSION {
            return Err(UnsealError::UnknownVersion(raw[0]));
        }
        let id = raw[1];
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&raw[2..HEADER_LEN]);
        let nonce = Nonce::from(nonce);
        let mut known = false;
        for (index, key) in self.keys.iter().enumerate().filter(|(_, k)| k.id == id) {
            known = true;
            let payload = Payload {
                msg: &raw[HEADER_LEN..],
                aad: name.as_bytes(),
            };
            if let Ok(pt) = key.cipher.decrypt(&nonce, payload) {
                return Ok((pt, index));
            }
        }
        Err(if known {
            UnsealError::Tampered
        } else {
            UnsealError::UnknownKey(id)
        })
    }
}

/// The largest cookie value Gatehouse writes in one cookie; larger ones are chunked.
pub const CHUNK_SIZE: usize = 3500;

/// Splits a cookie value into `(name, value)` pairs: `name`, `name_1`, `name_2`, …
/// The first chunk is prefixed with `<count>~` when there is more than one
/// (`~` is not in the base64url alphabet, so a single chunk is never mistaken for a count).
pub fn split_chunks(name: &str, value: &str) -> Vec<(String, String)> {
    if value.len() <= CHUNK_SIZE {
        return vec![(name.to_string(), value.to_string())];
    }
    // Sealed values are ASCII, so byte-splitting never cuts a character.
    let parts: Vec<&str> = value
        .as_bytes()
        .chunks(CHUNK_SIZE)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if i == 0 {
                (name.to_string(), format!("{}~{p}", parts.len()))
            } else {
                (format!("{name}_{i}"), (*p).to_string())
            }
        })
        .collect()
}

/// The most chunks Gatehouse will reassemble (and clear on sign-out).
pub(crate) const MAX_CHUNKS: usize = 8;

/// Reassembles a chunked cookie; `get` looks a cookie up by name. `None` if a chunk is
/// missing or the count is out of range.
pub fn join_chunks<'a>(name: &str, get: impl Fn(&str) -> Option<&'a str>) -> Option<String> {
    let first = get(name)?;
    let Some((count, rest)) = first.split_once('~') else {
        return Some(first.to_string());
    };
    let count: usize = count.parse().ok()?;
    if !(2..=MAX_CHUNKS).contains(&count) {
        return None;
    }
    let mut out = String::with_capacity(count * CHUNK_SIZE);
    out.push_str(rest);
    for i in 1..count {
        out.push_str(get(&format!("{name}_{i}"))?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: [u8; 32] = [7u8; 32];
    const K2: [u8; 32] = [9u8; 32];

    #[test]
    fn round_trip() {
        let s = Sealer::new(&K1, "session");
        let v = s.seal("_pomerium", b"hello");
        assert_eq!(s.open("_pomerium", &v).unwrap(), b"hello");
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let s = Sealer::new(&K1, "session");
        let v = s.seal("_pomerium", b"hello world");
        let raw = URL_SAFE_NO_PAD.decode(&v).unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            let e = s
                .open("_pomerium", &URL_SAFE_NO_PAD.encode(&bad))
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    UnsealError::Tampered
                        | UnsealError::UnknownKey(_)
                        | UnsealError::UnknownVersion(_)
                ),
                "byte {i}: {e:?}"
            );
        }
    }

    #[test]
    fn truncated_value_is_refused() {
        let s = Sealer::new(&K1, "session");
        let v = s.seal("_pomerium", b"hello world");
        assert!(s.open("_pomerium", &v[..v.len() - 4]).is_err());
        let raw = URL_SAFE_NO_PAD.decode(&v).unwrap();
        let cut = URL_SAFE_NO_PAD.encode(&raw[..raw.len() - 3]);
        assert_eq!(s.open("_pomerium", &cut), Err(UnsealError::Tampered));
        assert_eq!(s.open("_pomerium", &v[..10]), Err(UnsealError::Malformed));
        assert_eq!(s.open("_pomerium", ""), Err(UnsealError::Malformed));
        assert_eq!(
            s.open("_pomerium", "not base64 !!"),
            Err(UnsealError::Malformed)
        );
    }

    #[test]
    fn value_moved_to_another_name_is_refused() {
        let s = Sealer::new(&K1, "session");
        let v = s.seal("_pomerium", b"hello");
        assert_eq!(s.open("_other", &v), Err(UnsealError::Tampered));
    }

    #[test]
    fn value_sealed_for_another_purpose_is_refused() {
        let login = Sealer::new(&K1, "login");
        let session = Sealer::new(&K1, "session");
        let v = login.seal("_pomerium", b"hello");
        assert!(session.open("_pomerium", &v).is_err());
    }

    #[test]
    fn foreign_key_is_refused() {
        let a = Sealer::new(&K1, "session");
        let b = Sealer::new(&K2, "session");
        let v = a.seal("_pomerium", b"hello");
        assert!(matches!(
            b.open("_pomerium", &v),
            Err(UnsealError::UnknownKey(_) | UnsealError::Tampered)
        ));
    }

    #[test]
    fn previous_key_opens_after_rotation_and_is_refused_once_dropped() {
        let old = Sealer::new(&K1, "session");
        let v = old.seal("_pomerium", b"hello");
        let rotated = Sealer::new(&K2, "session").with_previous(&K1, "session");
        assert_eq!(rotated.open("_pomerium", &v).unwrap(), b"hello");
        let fresh = rotated.seal("_pomerium", b"x");
        assert!(
            old.open("_pomerium", &fresh).is_err(),
            "new values use the new key"
        );
        let dropped = Sealer::new(&K2, "session");
        assert!(dropped.open("_pomerium", &v).is_err());
    }

    #[test]
    fn open_indexed_says_which_key_opened() {
        let old = Sealer::new(&K1, "session");
        let rotated = Sealer::new(&K2, "session").with_previous(&K1, "session");
        let by_old = old.seal("n", b"a");
        let by_new = rotated.seal("n", b"b");
        assert_eq!(
            rotated.open_indexed("n", &by_old).unwrap(),
            (b"a".to_vec(), 1)
        );
        assert_eq!(
            rotated.open_indexed("n", &by_new).unwrap(),
            (b"b".to_vec(), 0)
        );
    }

    #[test]
    fn unknown_version_is_refused() {
        let s = Sealer::new(&K1, "session");
        let mut raw = URL_SAFE_NO_PAD.decode(s.seal("n", b"x")).unwrap();
        raw[0] = 2;
        assert_eq!(
            s.open("n", &URL_SAFE_NO_PAD.encode(&raw)),
            Err(UnsealError::UnknownVersion(2))
        );
    }

    #[test]
    fn chunks_round_trip_and_small_values_stay_whole() {
        let small = "a".repeat(100);
        assert_eq!(
            split_chunks("c", &small),
            vec![("c".to_string(), small.clone())]
        );
        let big: String = (0..9000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let parts = split_chunks("c", &big);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|(_, v)| v.len() <= CHUNK_SIZE + 3));
        let joined = join_chunks("c", |n| {
            parts.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str())
        });
        assert_eq!(joined.as_deref(), Some(big.as_str()));
    }

    #[test]
    fn missing_chunk_or_bad_count_is_no_value() {
        let big = "b".repeat(8000);
        let parts = split_chunks("c", &big);
        let without_last = |n: &str| {
            parts[..2]
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(join_chunks("c", without_last), None);
        assert_eq!(join_chunks("c", |_| Some("99~x")), None);
        assert_eq!(join_chunks("c", |_| Some("x~x")), None);
    }
}
