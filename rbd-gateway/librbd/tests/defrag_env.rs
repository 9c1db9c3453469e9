//! Background defragmentation for librbd clients: librbd's C API has no
//! call for it, so the drop-in takes `RBD_ROW_DEFRAG_INTERVAL` (and
//! `RBD_ROW_DEFRAG_MIN_READS`, `RBD_ROW_DEFRAG_BYTES_PER_SEC`) from the
//! client's environment. fio's rbd engine, unmodified, holds a fragmented
//! ROW image open for a few seconds: with the variable set the image comes
//! back defragmented, with the same contents and the same diff; without it,
//! it does not; a bad value refuses the open and names the variable.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use row_layer::{CreateOptions, DefragOptions, Store};
use row_rados::{ClusterConfig, RadosCluster};

const SIZE: u64 = 8 << 20;

/// fio reading the image sequentially for `secs` through the drop-in,
/// with `env` set.
fn fio_reads(lib: &Path, image: &str, secs: u32, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=defrag-env",
        "--ioengine=rbd",
        "--clientname=admin",
        "--pool=rbd",
        &format!("--rbdname={image}"),
        "--rw=read",
        "--bs=1M",
        "--iodepth=4",
        "--size=8M",
        "--time_based",
        &format!("--runtime={secs}"),
    ])
    .env("CEPH_CONF", common::ceph_conf())
    .env("LD_LIBRARY_PATH", lib);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run fio")
}

async fn store() -> Store {
    let config = ClusterConfig {
        conf_path: Some(common::ceph_conf().into()),
        ..ClusterConfig::default()
    };
    let cluster = RadosCluster::connect(config).await.expect("connect");
    let pool = cluster.open_pool("rbd", "").await.expect("pool rbd");
    Store::new(Arc::new(pool))
}

/// A ROW image of 4 MiB objects, filled, then 4 snapshots each followed by
/// 64 scattered 4 KiB writes; its contents and its diff from the last
/// snapshot.
async fn fragmented(store: &Store, name: &str) -> (Vec<u8>, Vec<row_layer::DiffExtent>) {
    let opts = CreateOptions {
        size: SIZE,
        object_size: 4 << 20,
        grain_size: 4096,
    };
    store.create(name, opts).await.expect("create");
    let img = store.open(name).await.expect("open");
    img.write(0, vec![0x5a; SIZE as usize].into())
        .await
        .expect("fill");
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for s in 0..4u64 {
        img.snap_create(&format!("s{s}")).await.expect("snap");
        for i in 0..64u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let block = vec![(s * 64 + i) as u8; 4096];
            img.write((x % (SIZE / 4096)) * 4096, block.into())
                .await
                .expect("write");
        }
    }
    let head = img.read(0, SIZE).await.expect("read").to_vec();
    let diff = img.diff(Some("s3")).expect("diff");
    img.flush().await.expect("flush");
    img.close().await.expect("close");
    (head, diff)
}

/// Objects a pass would still rewrite, after checking that the image reads
/// `head` and diffs as `diff`; then removes it.
async fn left_to_do(store: &Store, name: &str, head: &[u8], diff: &[row_layer::DiffExtent]) -> u64 {
    let img = store.open(name).await.expect("open");
    assert!(
        img.read(0, SIZE).await.expect("read") == head,
        "{name} changed"
    );
    assert_eq!(
        img.diff(Some("s3")).expect("diff"),
        diff,
        "{name}: diff changed"
    );
    let check = DefragOptions {
        min_reads: 2,
        bytes_per_sec: 0,
    };
    let r = img.defragment(&check).await.expect("defragment");
    img.close().await.expect("close");
    for s in 0..4 {
        let img = store.open(name).await.expect("open");
        img.snap_remove(&format!("s{s}")).await.expect("snap rm");
        img.close().await.expect("close");
    }
    store.remove(name).await.expect("remove");
    r.objects_rewritten
}

#[test]
#[ignore = "needs CEPH_CONF (run by tests/run-all.sh)"]
fn fio_gets_background_defragmentation_from_its_environment() {
    let lib = common::lib_dir();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt.block_on(store());
    let env = [
        ("RBD_ROW_DEFRAG_INTERVAL", "1"),
        ("RBD_ROW_DEFRAG_MIN_READS", "2"),
    ];
    for (tag, env, rewritten_by_fio) in [("on", &env[..], true), ("off", &[][..], false)] {
        let name = common::unique(&format!("defrag-{tag}"));
        let (head, diff) = rt.block_on(fragmented(&store, &name));
        let out = fio_reads(lib.path(), &name, 5, env);
        assert!(out.status.success(), "{tag}: {out:?}");
        let left = rt.block_on(left_to_do(&store, &name, &head, &diff));
        if rewritten_by_fio {
            assert_eq!(left, 0, "the pass under fio left objects fragmented");
        } else {
            assert_eq!(left, 2, "without the variable nothing is rewritten");
        }
    }

    let name = common::unique("defrag-bad");
    let (head, diff) = rt.block_on(fragmented(&store, &name));
    let out = fio_reads(lib.path(), &name, 1, &[("RBD_ROW_DEFRAG_MIN_READS", "1")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("RBD_ROW_DEFRAG_MIN_READS=\"1\": must be a number of at least 2"),
        "{out:?}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("err= 0"),
        "{out:?}"
    );
    assert_eq!(rt.block_on(left_to_do(&store, &name, &head, &diff)), 2);
}
