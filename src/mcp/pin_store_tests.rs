use super::*;
use crate::mcp::pins::{PinStore, Sighting};

fn wait_for_rows(path: &Path, n: usize) -> Vec<PinRow> {
    for _ in 0..500 {
        let (rows, _) = open(path).unwrap();
        if rows.len() >= n && rows.iter().all(|r| r.last != "sha256:a" || r.tool != "t") {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("rows never written");
}

#[test]
fn pins_survive_a_new_store_and_the_first_hash_stays_the_pin() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    {
        let (rows, tx) = open(&path).unwrap();
        assert!(rows.is_empty());
        let store = PinStore::default();
        store.persist_to(tx, path.to_path_buf());
        assert_eq!(store.observe("s", "t", "sha256:a"), Sighting::First);
        assert_eq!(
            store.observe("s", "t", "sha256:b"),
            Sighting::Changed {
                before: "sha256:a".into()
            }
        );
    }
    let rows = wait_for_rows(&path, 1);
    let store = PinStore::default();
    store.restore(rows);
    assert_eq!(
        store.get("s", "t"),
        Some(("sha256:a".into(), "sha256:b".into()))
    );
    // The changed definition seen again is no first sighting.
    assert_eq!(store.observe("s", "t", "sha256:b"), Sighting::Same);
}

#[test]
fn accept_repins_and_forget_drops_a_row_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let (_, tx) = open(&path).unwrap();
    let store = PinStore::default();
    store.persist_to(tx, path.clone());
    store.observe("s", "t", "sha256:a");
    store.observe("s", "t", "sha256:b");
    let rows = wait_for_rows(&path, 1);
    assert_eq!(
        (rows[0].first.as_str(), rows[0].last.as_str()),
        ("sha256:a", "sha256:b")
    );
    super::accept(&path, "s", "t", "sha256:b").unwrap();
    store.set("s", "t", "sha256:b");
    let (rows, _) = open(&path).unwrap();
    assert_eq!(
        (rows[0].first.as_str(), rows[0].last.as_str()),
        ("sha256:b", "sha256:b")
    );
    assert_eq!(store.observe("s", "t", "sha256:b"), Sighting::Same);
    assert_eq!(store.list().len(), 1);
    super::forget(&path, "s", "t").unwrap();
    assert!(store.forget("s", "t").is_some());
    let (rows, _) = open(&path).unwrap();
    assert!(rows.is_empty());
    assert!(store.list().is_empty());
    assert_eq!(store.observe("s", "t", "sha256:c"), Sighting::First);
}
