//! The store on a real full file system: a small tmpfs mounted by the test (tests run as root in CI).
//! A write that fails for lack of space is an error, never a silent success, and the writer recovers by
//! itself once space returns: what it acknowledges afterwards is really stored, and what it refused is not.

use std::path::{Path, PathBuf};

use omnigent_server::store::{
    DatabaseLocation, NewItem, NewSession, SessionRow, Store, StoreError,
};
use omnigent_testkit::fs::Tmpfs;

/// Fill the file system of `dir` with one file until a write fails with ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let block = vec![0u8; 4096];
    loop {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    let _ = f.sync_all();
    path
}

fn row(id: &str) -> SessionRow {
    SessionRow::new(id, &"a".repeat(32), 0)
}

fn item(text: &str) -> NewItem {
    let mut data = serde_json::Map::new();
    data.insert("role".into(), "user".into());
    // Big enough that every append needs fresh pages.
    data.insert(
        "content".into(),
        format!("{text} {}", "x".repeat(6000)).into(),
    );
    NewItem {
        id: omnigent_proto::ids::new_id(),
        kind: "message".into(),
        status: "completed".into(),
        response_id: None,
        created_at_ms: 1,
        created_by: None,
        data,
    }
}

fn text_of(row: &omnigent_server::store::ItemRow) -> String {
    let s = row.data["content"].as_str().unwrap_or("");
    s.split(' ').next().unwrap_or("").to_owned()
}

#[tokio::test]
async fn the_writer_refuses_writes_on_a_full_disk_and_recovers_when_space_returns() {
    let Some(fs) = Tmpfs::mount("4m") else {
        return;
    };
    let db = fs.path().join("omnigent.db");
    let location = DatabaseLocation::Sqlite(db.clone());
    let store = Store::open(&location, 2).await.expect("open");
    let id = omnigent_proto::ids::new_id();
    store
        .create_session(&NewSession { row: row(&id) }, &[])
        .await
        .expect("create");
    store
        .append_item(&id, &item("before"), 1)
        .await
        .expect("append before the disk fills")
        .expect("session");
    assert!(store.storage_health().ok);

    let filler = fill(fs.path());
    let mut refused = 0;
    for n in 0..20 {
        match store
            .append_item(&id, &item(&format!("full{n}")), 10 + n)
            .await
        {
            Ok(_) => {}
            Err(e) => {
                assert!(matches!(e, StoreError::Full { .. }), "{e:?}");
                let msg = e.to_string();
                assert!(msg.contains(&fs.path().display().to_string()), "{msg}");
                assert!(msg.contains("free"), "{msg}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "no write failed on a full disk");
    let health = store.storage_health();
    assert!(!health.ok, "{health:?}");
    // Another kind of write is refused too, never acknowledged.
    let other = omnigent_proto::ids::new_id();
    let created = store
        .create_session(&NewSession { row: row(&other) }, &[item("other")])
        .await;
    assert!(
        created.is_err(),
        "a session was acknowledged on a full disk"
    );

    std::fs::remove_file(&filler).expect("free the disk");
    for n in 0..3 {
        store
            .append_item(&id, &item(&format!("after{n}")), 100 + n)
            .await
            .expect("append after space returned")
            .expect("session");
    }
    let again = omnigent_proto::ids::new_id();
    store
        .create_session(&NewSession { row: row(&again) }, &[])
        .await
        .expect("create after space returned");
    store.probe_storage().await;
    assert!(store.storage_health().ok, "{:?}", store.storage_health());

    // Read back from a fresh store: every acknowledged write is there, nothing refused is.
    store.close().await;
    drop(store);
    let store = Store::open(&location, 2).await.expect("reopen");
    let texts: Vec<String> = store
        .all_items(&id, 1000)
        .await
        .expect("items")
        .iter()
        .map(text_of)
        .collect();
    let mut want = vec!["before".to_owned()];
    want.extend((0..3).map(|n| format!("after{n}")));
    let stored_full: Vec<&String> = texts.iter().filter(|t| t.starts_with("full")).collect();
    let acked_full = 20 - refused;
    assert_eq!(stored_full.len() as u64, acked_full, "{texts:?}");
    let texts: Vec<String> = texts
        .into_iter()
        .filter(|t| !t.starts_with("full"))
        .collect();
    assert_eq!(texts, want);
    assert!(store.get_session(&again).await.expect("get").is_some());
    assert!(store.get_session(&other).await.expect("get").is_none());
    store.close().await;
}

#[tokio::test]
async fn a_session_actor_leaves_no_sequence_gap_after_a_failed_write() {
    use omnigent_server::actor::{ActorError, ActorLimits, Sessions};
    let Some(fs) = Tmpfs::mount("4m") else {
        return;
    };
    let store = Store::open(&DatabaseLocation::Sqlite(fs.path().join("omnigent.db")), 2)
        .await
        .expect("open");
    let id = omnigent_proto::ids::new_id();
    store
        .create_session(&NewSession { row: row(&id) }, &[])
        .await
        .expect("create");
    let sessions = Sessions::new(
        store.clone(),
        ActorLimits {
            replay_buffer: 64,
            replay_buffer_bytes: 1 << 20,
            idle: std::time::Duration::from_secs(600),
            runner_grace: std::time::Duration::from_secs(30),
        },
    );
    let (_, first) = sessions
        .append_item(&id, item("first"))
        .await
        .expect("append");

    let filler = fill(fs.path());
    for n in 0..3 {
        let err = sessions
            .append_item(&id, item(&format!("full{n}")))
            .await
            .expect_err("an append on a full disk");
        assert!(
            matches!(err, ActorError::Store(StoreError::Full { .. })),
            "{err:?}"
        );
    }
    std::fs::remove_file(&filler).expect("free the disk");

    // The same actor carries on: the next event takes the very next number, as the store has it.
    let (row, next) = sessions
        .append_item(&id, item("next"))
        .await
        .expect("append after space returned");
    assert_eq!(next, first + 1, "a failed write left a gap in the sequence");
    assert_eq!(row.seq, next);
    let published = sessions
        .publish(&id, serde_json::json!({"type": "x"}))
        .await
        .expect("publish");
    assert_eq!(published, next + 1);
    sessions.close(std::time::Duration::from_secs(5)).await;
    store.close().await;
}
