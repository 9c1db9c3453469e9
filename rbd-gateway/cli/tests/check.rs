//! `rbd-row check [--repair]` on the local store: exit codes, plain and JSON
//! output, and refusal to repair an image another process owns.

mod common;

use bytes::Bytes;
use common::*;
use row_layer::backend::local::LocalBackend;
use row_layer::backend::{Action, Backend, WriteOp};
use row_layer::{layout, Epoch, ObjectNo, Store};
use serde_json::Value;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

/// Runs the CLI off the runtime's threads (this process may be the local
/// store's server, which must keep answering).
async fn cli(store: &Path, args: &[&str]) -> Output {
    let store = store.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run(local(&store), &a)
    })
    .await
    .expect("join")
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn kinds(v: &Value) -> Vec<(String, bool)> {
    let mut k: Vec<(String, bool)> = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().expect("kind").to_string(),
                f["repaired"].as_bool().expect("repaired"),
            )
        })
        .collect();
    k.sort();
    k
}

async fn setup(store: &Path) {
    for args in [
        &["create", "--size", "2M", "--object-size", "64K", "base"][..],
        &[
            "bench",
            "--io-type",
            "write",
            "--io-size",
            "4K",
            "--io-total",
            "256K",
            "base",
        ],
        &["snap", "create", "base@s1"],
        &["snap", "protect", "base@s1"],
        &["clone", "base@s1", "child"],
    ] {
        let o = cli(store, args).await;
        assert_eq!(code(&o), Some(0), "{args:?}: {}", stderr(&o));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exit_codes_output_and_repair() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    setup(&store).await;

    // Clean: exit 0, plain summary and JSON.
    let o = cli(&store, &["check"]).await;
    assert_eq!(code(&o), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("2 images checked: 0 problems, 0 repaired"),
        "{}",
        stdout(&o)
    );
    let o = cli(&store, &["check", "--format", "json"]).await;
    assert_eq!(code(&o), Some(0));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["clean"], true);
    assert_eq!(v["images"], 2);
    assert_eq!(v["problems"], 0);

    // Damage through the store (this process becomes its server).
    let be: Arc<dyn Backend> =
        Arc::new(LocalBackend::open(&store.join("rbd")).expect("open local store"));
    let st = Store::new(be.clone());
    let base = st.image_id("base").await.expect("id");
    let child = st.image_id("child").await.expect("id");
    let orphan = layout::data_object(&base, ObjectNo(1), Epoch(4242));
    be.operate(
        &orphan,
        WriteOp::new().write_full(Bytes::from_static(b"leaked")),
    )
    .await
    .expect("orphan");
    let reg = layout::children_object(&base);
    let keys: Vec<String> = be
        .omap_get(&reg, "", "", 100)
        .await
        .expect("children")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].ends_with(&child.0));
    be.operate(&reg, WriteOp::new().action(Action::OmapRemove(keys)))
        .await
        .expect("drop key");
    be.flush().await.expect("flush");

    // Problems found: exit 117 (EUCLEAN), plain lines and JSON.
    let o = cli(&store, &["check"]).await;
    assert_eq!(code(&o), Some(117), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&format!("base: warning: orphan-data: {orphan}")),
        "{out}"
    );
    assert!(out.contains("base: error: unregistered-clone"), "{out}");
    assert!(out.contains("2 problems"), "{out}");
    assert!(
        stderr(&o).contains("run with --repair")
            && stderr(&o).contains("(117) Structure needs cleaning"),
        "{}",
        stderr(&o)
    );
    let o = cli(&store, &["check", "--format", "json", "child"]).await;
    assert_eq!(code(&o), Some(117));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["clean"], false);
    assert_eq!(kinds(&v), vec![("unregistered-clone".to_string(), false)]);
    assert_eq!(v["findings"][0]["image"], "base");
    assert_eq!(v["findings"][0]["severity"], "error");
    // A plain check changed nothing.
    assert!(be.stat(&orphan).await.is_ok());

    // --repair while this process owns the image: EBUSY, nothing removed.
    let owner = st.open("base").await.expect("own base");
    let o = cli(&store, &["check", "--repair"]).await;
    assert_eq!(code(&o), Some(16), "{}\n{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains("in use") && stderr(&o).contains("without --repair"),
        "{}",
        stderr(&o)
    );
    assert!(be.stat(&orphan).await.is_ok());
    owner.close().await.expect("close");

    // --repair: exit 0, findings marked repaired; then clean.
    let o = cli(&store, &["check", "--repair", "--format", "json"]).await;
    assert_eq!(code(&o), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(
        kinds(&v),
        vec![
            ("orphan-data".to_string(), true),
            ("unregistered-clone".to_string(), true)
        ]
    );
    assert_eq!(v["repaired"], 2);
    assert!(be.stat(&orphan).await.is_err());
    let o = cli(&store, &["check"]).await;
    assert_eq!(code(&o), Some(0), "{}", stdout(&o));
    let o = cli(&store, &["children", "base@s1"]).await;
    assert!(stdout(&o).contains("child"), "{}", stdout(&o));
    // Unknown image: ENOENT.
    let o = cli(&store, &["check", "nope"]).await;
    assert_eq!(code(&o), Some(2), "{}", stderr(&o));
}
