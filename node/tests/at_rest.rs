//! The storage key kept outside the node directory (a mounted secret): `consort init` seals the
//! node keys under it and the node runs with them; without the secret nothing opens.

mod common;

use std::path::Path;
use std::process::Command;

use common::{fails, ok, s, start_node};

fn consort_with_secret(secret: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_consort")).env("CONSORT_STORAGE_KEY_FILE", secret).args(args).output().unwrap()
}

#[test]
fn a_storage_key_outside_the_directory_seals_node_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, secrets) = (tmp.path().join("node"), tmp.path().join("secrets"));
    std::fs::create_dir(&secrets).unwrap();
    let secret = secrets.join("storage.key");
    let init = consort_with_secret(&secret, &["init", s(&dir), "--name", "bank", "--listen", "127.0.0.1:0"]);
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    assert!(secret.exists() && !dir.join("storage.key").exists());
    for f in ["identity.key", "node.key"] {
        assert!(consort_engine::sealed::is_sealed(&dir.join(f)).unwrap(), "{f} is not sealed");
    }
    // The config names the key, so the node starts without the environment variable.
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(config.contains("[storage]") && config.contains(s(&secret)), "{config}");
    let (node, _addr) = start_node(&dir);
    drop(node);
    // Without the secret, nothing that needs a key opens.
    std::fs::rename(&secret, secrets.join("elsewhere")).unwrap();
    let out = tmp.path().join("x.csv");
    std::fs::write(&out, "id\n").unwrap();
    let err = fails(&["export", s(&dir), s(&out), "--out", s(&tmp.path().join("y.csv"))]);
    assert!(err.contains("is the secret mounted?"), "{err}");
    let err =
        fails(&["peer", "add", s(&dir), "--name", "p", "--addr", "127.0.0.1:1", "--cert", s(&dir.join("node.crt"))]);
    assert!(err.contains("storage key"), "{err}");
    // An existing key file at the named place is adopted as it is.
    std::fs::rename(secrets.join("elsewhere"), &secret).unwrap();
    let before = std::fs::read(&secret).unwrap();
    let other = tmp.path().join("other");
    let init = consort_with_secret(&secret, &["init", s(&other), "--name", "other", "--listen", "127.0.0.1:0"]);
    assert!(init.status.success());
    assert_eq!(std::fs::read(&secret).unwrap(), before);
    ok(&["jobs", s(&dir)]);
}
