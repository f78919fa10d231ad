use super::*;
use crate::store::SqliteStore;
use crate::tests::{config, rotated};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_config::Secret;
use std::path::PathBuf;

const KEY: &str = "sk-test-0123456789abcd";
const ALICE: &str = "0123456789abcdef0123456789abcdef";
const BOB: &str = "fedcba9876543210fedcba9876543210";

fn memory() -> Arc<SqliteStore> {
    Arc::new(SqliteStore::in_memory().unwrap())
}

fn vault(config: &Config, store: &Arc<SqliteStore>) -> Vault {
    Vault::new(config, store.clone())
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gatehouse-vault-{name}-{}-{}",
        std::process::id(),
        crate::random_token(6)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn unreadable(r: Result<Option<(ProviderKey, KeyInfo)>, VaultError>) -> (Unreadable, String) {
    match r {
        Err(e @ VaultError::Unreadable { reason, .. }) => (reason, e.to_string()),
        Ok(Some((_, info))) => panic!("opened: {info:?}"),
        Ok(None) => panic!("no key"),
    }
}

#[test]
fn a_key_round_trips_and_is_stored_sealed() {
    let store = memory();
    let v = vault(&config([1; 32]), &store);
    assert!(v.provider_key(ALICE, "openai").unwrap().is_none());
    let info = v.put_provider_key(ALICE, "openai", KEY, 5_000).unwrap();
    assert_eq!(
        info,
        KeyInfo {
            provider: "openai".into(),
            last4: "abcd".into(),
            added_at_ms: 5_000,
            readable: true,
        }
    );
    let (key, got) = v.provider_key(ALICE, "openai").unwrap().unwrap();
    assert_eq!(key.expose(), KEY);
    assert_eq!(got, info);
    assert!(v.provider_key(BOB, "openai").unwrap().is_none());
    assert!(v.provider_key(ALICE, "anthropic").unwrap().is_none());

    let row = store.provider_key(ALICE, "openai").unwrap();
    assert!(!row.sealed.contains(KEY) && !row.sealed.contains("abcd"));
    let again = v.put_provider_key(ALICE, "openai", KEY, 5_001).unwrap();
    assert_ne!(
        store.provider_key(ALICE, "openai").unwrap().sealed,
        row.sealed,
        "a fresh nonce each time"
    );
    assert_eq!(again.added_at_ms, 5_001);

    v.put_provider_key(ALICE, "anthropic", "sk-ant-zzzz9876", 6_000)
        .unwrap();
    let infos = v.provider_key_infos(ALICE);
    let names: Vec<_> = infos
        .iter()
        .map(|i| (i.provider.as_str(), i.last4.as_str()))
        .collect();
    assert_eq!(names, [("anthropic", "9876"), ("openai", "abcd")]);
    assert!(v.provider_key_infos(BOB).is_empty());

    assert!(v.remove_provider_key(ALICE, "openai", 7_000).unwrap());
    assert!(!v.remove_provider_key(ALICE, "openai", 7_001).unwrap());
    assert!(v.provider_key(ALICE, "openai").unwrap().is_none());
    assert_eq!(v.provider_key_infos(ALICE).len(), 1);
}

#[test]
fn a_short_key_shows_no_last4() {
    let v = vault(&config([1; 32]), &memory());
    assert_eq!(
        v.put_provider_key(ALICE, "x", "abc1234", 1).unwrap().last4,
        ""
    );
    assert_eq!(
        v.put_provider_key(ALICE, "x", "abcd1234", 1).unwrap().last4,
        "1234"
    );
    assert_eq!(
        v.put_provider_key(ALICE, "x", "ключ-ключ-éèêë", 1)
            .unwrap()
            .last4,
        "éèêë"
    );
}

#[test]
fn every_flipped_byte_of_a_stored_row_is_refused_as_unreadable() {
    let store = memory();
    let v = vault(&config([1; 32]), &store);
    v.put_provider_key(ALICE, "openai", KEY, 1).unwrap();
    let row = store.provider_key(ALICE, "openai").unwrap();
    let raw = URL_SAFE_NO_PAD.decode(&row.sealed).unwrap();
    for i in 0..raw.len() {
        let mut bad = raw.clone();
        bad[i] ^= 0x01;
        let tampered = StoredKey {
            sealed: URL_SAFE_NO_PAD.encode(&bad),
            ..row.clone()
        };
        store.put_provider_key(&tampered).unwrap();
        let (reason, _) = unreadable(v.provider_key(ALICE, "openai"));
        assert!(
            matches!(
                reason,
                Unreadable::Changed | Unreadable::OtherSecret | Unreadable::NotAKey
            ),
            "byte {i}: {reason:?}"
        );
        let infos = v.provider_key_infos(ALICE);
        assert!(!infos[0].readable && infos[0].last4.is_empty(), "byte {i}");
    }
    for junk in [
        "",
        "!!not base64!!",
        "AQ",
        &row.sealed[..row.sealed.len() - 2],
    ] {
        store
            .put_provider_key(&StoredKey {
                sealed: junk.to_string(),
                ..row.clone()
            })
            .unwrap();
        let (_, msg) = unreadable(v.provider_key(ALICE, "openai"));
        assert!(msg.contains("remove the key and enter it again"), "{msg}");
    }
}

#[test]
fn a_row_copied_to_another_person_or_provider_is_refused() {
    let store = memory();
    let v = vault(&config([1; 32]), &store);
    v.put_provider_key(ALICE, "openai", KEY, 1).unwrap();
    let row = store.provider_key(ALICE, "openai").unwrap();
    store
        .put_provider_key(&StoredKey {
            person: BOB.into(),
            ..row.clone()
        })
        .unwrap();
    store
        .put_provider_key(&StoredKey {
            provider: "fake".into(),
            ..row.clone()
        })
        .unwrap();
    unreadable(v.provider_key(BOB, "openai"));
    let (reason, msg) = unreadable(v.provider_key(ALICE, "fake"));
    assert_eq!(
        reason,
        Unreadable::Changed,
        "same person key, other provider"
    );
    assert!(msg.contains("stored fake key"), "{msg}");
    assert_eq!(
        v.provider_key(ALICE, "openai").unwrap().unwrap().0.expose(),
        KEY,
        "the original still opens"
    );
}

#[test]
fn each_person_has_a_key_of_their_own() {
    // Even with the associated data right for Bob, what Alice's key sealed does not open
    // as Bob's: the person id is in the key derivation, not only in the associated data.
    let store = memory();
    let v = vault(&config([1; 32]), &store);
    let sealed = v
        .sealer(ALICE)
        .seal(&binding(BOB, "openai"), KEY.as_bytes());
    store
        .put_provider_key(&StoredKey {
            person: BOB.into(),
            provider: "openai".into(),
            sealed,
            added_at_ms: 1,
        })
        .unwrap();
    unreadable(v.provider_key(BOB, "openai"));
    let own = v.sealer(BOB).seal(&binding(BOB, "openai"), KEY.as_bytes());
    assert_eq!(
        v.sealer(BOB).open(&binding(BOB, "openai"), &own).unwrap(),
        KEY.as_bytes()
    );
}

#[test]
fn the_associated_data_cannot_be_shifted_between_person_and_provider() {
    // "ab" + "c" and "a" + "bc" must bind differently.
    assert_ne!(binding("ab", "c"), binding("a", "bc"));
    assert_ne!(binding("a\n1:b", "c"), binding("a", "1:b\nc"));
}

#[test]
fn a_wrong_master_secret_is_unreadable_with_the_fix() {
    let store = memory();
    vault(&config([1; 32]), &store)
        .put_provider_key(ALICE, "openai", KEY, 1)
        .unwrap();
    let other = vault(&config([2; 32]), &store);
    let (reason, msg) = unreadable(other.provider_key(ALICE, "openai"));
    assert_eq!(reason, Unreadable::OtherSecret);
    assert_eq!(
        msg,
        "the stored openai key cannot be decrypted: it was sealed with another secret (or the \
         row was copied from another person); put the old cookie_secret in \
         cookie_secret_previous, or remove the key and enter it again"
    );
    let infos = other.provider_key_infos(ALICE);
    assert_eq!(infos.len(), 1);
    assert!(!infos[0].readable);
    assert_eq!(infos[0].added_at_ms, 1);
}

#[test]
fn rotation_reseals_what_a_previous_secret_opens_and_keeps_what_none_does() {
    let store = memory();
    let a = vault(&config([1; 32]), &store);
    a.put_provider_key(ALICE, "openai", KEY, 10).unwrap();
    a.put_provider_key(BOB, "openai", "sk-bob-key-5678", 11)
        .unwrap();
    // A row no configured secret will open: sealed with C.
    vault(&config([3; 32]), &store)
        .put_provider_key(BOB, "fake", "sk-lost-key-0000", 12)
        .unwrap();
    let lost = store.provider_key(BOB, "fake").unwrap();

    let b_only = vault(&config([2; 32]), &store);
    unreadable(b_only.provider_key(ALICE, "openai"));

    let b = vault(&rotated([2; 32], &[[1; 32]]), &store);
    assert_eq!(
        b.provider_key(ALICE, "openai").unwrap().unwrap().0.expose(),
        KEY
    );
    let report = b.rotate_provider_keys().unwrap();
    assert_eq!(
        report,
        RotationReport {
            current: 0,
            resealed: 2,
            unreadable: vec![(BOB.to_string(), "fake".to_string())],
        }
    );
    assert_eq!(
        store.provider_key(BOB, "fake").unwrap(),
        lost,
        "left untouched"
    );
    let row = store.provider_key(ALICE, "openai").unwrap();
    assert_eq!(row.added_at_ms, 10, "re-encryption keeps when it was added");

    // Now B alone opens both, and A no longer does.
    assert_eq!(
        b_only
            .provider_key(ALICE, "openai")
            .unwrap()
            .unwrap()
            .0
            .expose(),
        KEY
    );
    assert_eq!(
        b_only
            .provider_key(BOB, "openai")
            .unwrap()
            .unwrap()
            .0
            .expose(),
        "sk-bob-key-5678"
    );
    unreadable(a.provider_key(ALICE, "openai"));

    // A second pass has nothing left to do.
    let again = b.rotate_provider_keys().unwrap();
    assert_eq!((again.current, again.resealed), (2, 0));
    assert_eq!(again.unreadable.len(), 1);
}

#[test]
fn a_reseal_does_not_overwrite_a_key_changed_meanwhile() {
    let store = memory();
    vault(&config([1; 32]), &store)
        .put_provider_key(ALICE, "openai", KEY, 1)
        .unwrap();
    let stale = store.provider_key(ALICE, "openai").unwrap();
    let b = vault(&rotated([2; 32], &[[1; 32]]), &store);
    b.put_provider_key(ALICE, "openai", "sk-newer-key-9999", 2)
        .unwrap();
    assert!(!store.reseal_provider_key(&stale, "x").unwrap());
    assert_eq!(
        b.provider_key(ALICE, "openai").unwrap().unwrap().0.expose(),
        "sk-newer-key-9999"
    );
}

#[test]
fn provider_key_secret_is_independent_of_the_cookie_secret() {
    let with_secret = |cookie: [u8; 32], p: [u8; 32]| {
        let mut c = config(cookie);
        c.provider_key_secret = Some(Secret::new(p));
        c
    };
    let store = memory();
    vault(&with_secret([1; 32], [9; 32]), &store)
        .put_provider_key(ALICE, "openai", KEY, 1)
        .unwrap();
    // Another cookie secret, same provider_key_secret: opens.
    let v = vault(&with_secret([2; 32], [9; 32]), &store);
    assert_eq!(
        v.provider_key(ALICE, "openai").unwrap().unwrap().0.expose(),
        KEY
    );
    // The same cookie secret without provider_key_secret: does not.
    unreadable(vault(&config([1; 32]), &store).provider_key(ALICE, "openai"));
    // Another provider_key_secret: does not, and the fix names provider_key_secret.
    let (_, msg) =
        unreadable(vault(&with_secret([1; 32], [8; 32]), &store).provider_key(ALICE, "openai"));
    assert!(
        msg.contains("set provider_key_secret back to the one it was sealed with"),
        "{msg}"
    );
    // A row sealed before provider_key_secret was set (cookie-derived master) still opens
    // while that cookie secret is configured, and the rotation moves it under
    // provider_key_secret: then another cookie secret no longer matters.
    vault(&config([1; 32]), &store)
        .put_provider_key(BOB, "openai", KEY, 1)
        .unwrap();
    let v = vault(&with_secret([1; 32], [9; 32]), &store);
    assert_eq!(
        v.provider_key(BOB, "openai").unwrap().unwrap().0.expose(),
        KEY
    );
    assert_eq!(v.rotate_provider_keys().unwrap().resealed, 1);
    let v = vault(&with_secret([3; 32], [9; 32]), &store);
    assert_eq!(
        v.provider_key(BOB, "openai").unwrap().unwrap().0.expose(),
        KEY
    );
}

#[test]
fn the_derived_master_is_not_the_cookie_secret_itself() {
    let store = memory();
    vault(&config([1; 32]), &store)
        .put_provider_key(ALICE, "openai", KEY, 1)
        .unwrap();
    let raw = Vault::from_masters(store.clone(), [1; 32], &[]);
    unreadable(raw.provider_key(ALICE, "openai"));
    let derived = Vault::from_masters(store, *derive_master(&[1; 32]), &[]);
    assert_eq!(
        derived
            .provider_key(ALICE, "openai")
            .unwrap()
            .unwrap()
            .0
            .expose(),
        KEY
    );
}

#[test]
fn keys_and_change_times_survive_reopening_the_store() {
    let dir = temp_dir("reopen");
    let c = config([1; 32]);
    {
        let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(&dir, 1).unwrap());
        let v = Vault::new(&c, store);
        v.put_provider_key(ALICE, "openai", KEY, 1_000).unwrap();
        v.put_provider_key(ALICE, "fake", "sk-fake-key-4242", 1_500)
            .unwrap();
        assert!(v.remove_provider_key(ALICE, "fake", 2_000).unwrap());
        v.record_key_change(BOB, "openai", 3_000).unwrap();
        v.record_key_change(BOB, "openai", 2_500).unwrap();
    }
    let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(&dir, 2).unwrap());
    let v = Vault::new(&c, store);
    let (key, info) = v.provider_key(ALICE, "openai").unwrap().unwrap();
    assert_eq!(key.expose(), KEY);
    assert_eq!(info.added_at_ms, 1_000);
    assert!(v.provider_key(ALICE, "fake").unwrap().is_none());
    assert_eq!(v.key_changed_at(ALICE, "openai"), Some(1_000));
    assert_eq!(v.key_changed_at(ALICE, "fake"), Some(2_000));
    assert_eq!(
        v.key_changed_at(BOB, "openai"),
        Some(3_000),
        "only moves forward"
    );
    assert_eq!(v.key_changed_at(BOB, "fake"), None);

    let db = std::fs::read(dir.join(crate::store::DB_FILE)).unwrap();
    let wal = std::fs::read(dir.join(format!("{}-wal", crate::store::DB_FILE))).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
            "the key is not in the file in the clear"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_tampered_row_in_the_file_is_unreadable_after_reopening() {
    let dir = temp_dir("tamper");
    let c = config([1; 32]);
    {
        let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(&dir, 1).unwrap());
        Vault::new(&c, store)
            .put_provider_key(ALICE, "openai", KEY, 1)
            .unwrap();
    }
    {
        let conn = rusqlite::Connection::open(dir.join(crate::store::DB_FILE)).unwrap();
        let sealed: String = conn
            .query_row("SELECT sealed FROM provider_keys", [], |r| r.get(0))
            .unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 0x80;
        conn.execute(
            "UPDATE provider_keys SET sealed = ?1",
            [URL_SAFE_NO_PAD.encode(&raw)],
        )
        .unwrap();
    }
    let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(&dir, 2).unwrap());
    let v = Vault::new(&c, store);
    let (reason, _) = unreadable(v.provider_key(ALICE, "openai"));
    assert_eq!(reason, Unreadable::Changed);
    let report = v.rotate_provider_keys().unwrap();
    assert_eq!(
        report.unreadable,
        [(ALICE.to_string(), "openai".to_string())]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nothing_that_holds_a_key_prints_it() {
    let store = memory();
    let c = rotated([2; 32], &[[1; 32]]);
    let auth = crate::Auth::new(&c, store.clone()).unwrap();
    auth.vault
        .put_provider_key(ALICE, "openai", KEY, 1)
        .unwrap();
    let got = auth.vault.provider_key(ALICE, "openai").unwrap().unwrap();
    let printed = [
        format!("{got:?}"),
        format!("{:?}", got.0),
        format!("{:?}", auth.vault),
        format!("{auth:?}"),
        format!("{:?}", store.provider_key(ALICE, "openai").unwrap()),
        format!("{:?}", store.all_provider_keys()),
        format!("{:?}", ProviderKey::new(KEY.to_string())),
        format!("{:?}", ProviderKey::from(Zeroizing::new(KEY.to_string()))),
    ];
    let sealed = store.provider_key(ALICE, "openai").unwrap().sealed;
    for p in &printed {
        assert!(!p.contains(KEY), "{p}");
        assert!(!p.contains(&sealed), "{p}");
    }
    assert!(printed[1].contains("redacted"));
    // The masters themselves.
    let master = derive_master(&[2; 32]);
    let hex: String = master.iter().map(|b| format!("{b:02x}")).collect();
    let bytes = format!("{:?}", &master[..4]);
    assert!(!printed[2].contains(&hex) && !printed[2].contains(&bytes[1..bytes.len() - 1]));
}
