//! The row-layer engine on real RADOS: the model test and the crash test
//! (the same code as row-layer's own, fewer cases), and image ownership
//! between separate clients, including an owner process that is SIGSTOPped,
//! fenced (blocklisted) and resumed.
//!
//! Needs `CEPH_CONF` (see rados_conformance.rs); fails loudly without it.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{crash_impl, model_impl, pattern, read_all, small_opts, OBJ};
use proptest::prelude::*;
use row_layer::backend::Backend;
use row_layer::{ErrorKind, ImageOptions, OwnerRequest, Store};
use row_rados::{ClusterConfig, RadosBackend, RadosCluster};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

async fn connect(client: &str) -> RadosCluster {
    let conf = std::env::var("CEPH_CONF").unwrap_or_else(|_| {
        panic!(
            "CEPH_CONF is not set: start the test cluster with \
             `tests/ceph/cluster.sh start && eval \"$(tests/ceph/cluster.sh env)\"`"
        )
    });
    let config = ClusterConfig {
        conf_path: Some(conf.clone().into()),
        client_name: Some(client.to_string()),
        options: vec![("client_mount_timeout".into(), "15".into())],
        ..ClusterConfig::default()
    };
    RadosCluster::connect(config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to CEPH_CONF={conf} as {client}: {e}"))
}

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("row-engine-{tag}-{}-{nanos}", std::process::id())
}

async fn pool(client: &str, ns: &str) -> Arc<dyn Backend> {
    let be: RadosBackend = connect(client)
        .await
        .open_pool("rbd", ns)
        .await
        .expect("open pool");
    Arc::new(be)
}

fn cases(var: &str, default: u32) -> u32 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases("ROW_RADOS_MODEL_CASES", 12), ..ProptestConfig::default() })]
    #[test]
    fn engine_on_rados_matches_oracle(ops in proptest::collection::vec(model_impl::op(), 1..16)) {
        runtime().block_on(async {
            let be = pool("client.admin", &unique("model")).await;
            model_impl::run_on(be, ops).await;
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases("ROW_RADOS_CRASH_CASES", 12), ..ProptestConfig::default() })]
    #[test]
    fn engine_on_rados_survives_a_crash_at_any_mutation(
        ops in proptest::collection::vec(crash_impl::op(), 1..16),
        crash_at in 1u64..40,
        applied in any::<bool>(),
    ) {
        runtime().block_on(async {
            let ns = unique("crash");
            let live = pool("client.admin", &ns).await;
            // RADOS loses nothing completed; recovery runs on a new client,
            // which must fence the dead one to take the image over.
            crash_impl::run_with(live, ops, crash_at, applied, move || {
                Box::pin(async move { pool("client.rbdrow", &ns).await })
            })
            .await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_client_is_refused_and_requests_reach_the_owner() {
    let ns = unique("owner");
    let a = Store::new(pool("client.admin", &ns).await);
    let b = Store::new(pool("client.rbdrow", &ns).await);
    a.create("img", small_opts(2 * OBJ)).await.expect("create");
    let owner = a.open("img").await.expect("open");
    owner.write(0, pattern(1, 8192)).await.expect("write");
    let err = b.open("img").await.err().expect("second writer refused");
    assert_eq!(err.kind(), ErrorKind::Busy);
    assert!(err.message().contains("is owned by client."), "{err}");
    b.execute("img", OwnerRequest::SnapCreate("from-b".into()))
        .await
        .expect("forwarded");
    owner
        .write(0, pattern(2, 8192))
        .await
        .expect("write after snapshot");
    let snap = b
        .open_snapshot("img", "from-b")
        .await
        .expect("open snapshot");
    assert_eq!(read_all(&snap).await[..8192], pattern(1, 8192)[..]);
    owner.close().await.expect("close");
    let img = b.open("img").await.expect("open after the owner closed");
    assert_eq!(img.read(0, 8192).await.expect("read"), pattern(2, 8192));
    img.close().await.expect("close");
}

/// Child mode of `stalled_owner_is_fenced_and_cannot_write_after_resuming`.
async fn owner_child(ns: String) {
    let store = Store::new(pool("client.admin", &ns).await);
    let img = store.open("img").await.expect("child open");
    img.write(0, pattern(1, 4096))
        .await
        .expect("child first write");
    println!("READY");
    // Wait to be stopped and resumed, then try to write.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let path = std::env::var("ROW_CHILD_GO").expect("go file");
    while !std::path::Path::new(&path).exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = tokio::time::timeout(Duration::from_secs(60), img.write(4096, pattern(9, 4096))).await;
    let outcome = match r {
        Ok(Ok(())) => "WROTE".to_string(),
        Ok(Err(e)) => format!("REFUSED {:?}", e.kind()),
        Err(_) => "HUNG".to_string(),
    };
    std::fs::write(format!("{path}.outcome"), outcome).expect("report");
}

#[test]
fn stalled_owner_is_fenced_and_cannot_write_after_resuming() {
    if let Ok(ns) = std::env::var("ROW_OWNER_CHILD_NS") {
        runtime().block_on(owner_child(ns));
        return;
    }
    let rt = runtime();
    let ns = unique("fence");
    let dir = tempfile::tempdir().expect("tempdir");
    let go = dir.path().join("go");
    rt.block_on(async {
        Store::new(pool("client.admin", &ns).await)
            .create("img", small_opts(OBJ))
            .await
            .expect("create");
    });
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "stalled_owner_is_fenced_and_cannot_write_after_resuming",
            "--nocapture",
        ])
        .env("ROW_OWNER_CHILD_NS", &ns)
        .env("ROW_CHILD_GO", &go)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn owner");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).expect("read child");
        assert!(n > 0, "owner child exited before it was ready");
        if line.trim() == "READY" {
            break;
        }
    }
    let pid = child.id().to_string();
    let stop = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill");
    assert!(stop.success());
    rt.block_on(async {
        let b = Store::new(pool("client.rbdrow", &ns).await).with_image_options(ImageOptions {
            owner_timeout: Duration::from_secs(2),
            ..ImageOptions::default()
        });
        let img = b.open("img").await.expect("takeover of the stalled owner");
        img.write(4096, pattern(2, 4096))
            .await
            .expect("new owner writes");
        img.flush().await.expect("flush");
        std::fs::write(&go, b"go").expect("go");
        let cont = std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .expect("kill");
        assert!(cont.success());
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("wait");
        let outcome =
            std::fs::read_to_string(format!("{}.outcome", go.display())).unwrap_or_default();
        assert!(
            outcome.starts_with("REFUSED") || outcome == "HUNG",
            "the fenced owner's write must not succeed: {outcome:?} ({status})"
        );
        // The image is intact: the new owner's write, the old owner's first.
        assert_eq!(img.read(0, 4096).await.expect("read"), pattern(1, 4096));
        assert_eq!(img.read(4096, 4096).await.expect("read"), pattern(2, 4096));
        img.close().await.expect("close");
    });
}
