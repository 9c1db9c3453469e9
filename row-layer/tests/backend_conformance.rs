//! Every in-process backend runs the one conformance suite; the local backend
//! also gets reopen, single-process, crash and reference-model tests.

use row_layer::backend::{conformance, fault::FaultBackend, mem::MemBackend, Backend};
use std::sync::Arc;

#[tokio::test]
async fn mem_backend_conforms() {
    let be: Arc<dyn Backend> = Arc::new(MemBackend::new());
    conformance::run_all(be, "conf.")
        .await
        .expect("conformance");
}

#[tokio::test]
async fn fault_wrapper_without_faults_conforms() {
    let be: Arc<dyn Backend> = Arc::new(FaultBackend::new(Arc::new(MemBackend::new())));
    conformance::run_all(be, "conf.")
        .await
        .expect("conformance");
}

// ---------------------------------------------------------------------------
// The embedded local (redb) backend.
// ---------------------------------------------------------------------------

use bytes::Bytes;
use row_layer::backend::local::{LocalBackend, CHUNK_SIZE};
use row_layer::backend::{Action, Guard, WriteOp};
use row_layer::ErrorKind;
use std::path::Path;
use std::process::Command;

/// Set in a re-executed copy of this test binary: `<mode>:<store dir>`.
const CHILD_ENV: &str = "ROW_LAYER_LOCAL_TEST_CHILD";

fn child_mode(mode: &str) -> Option<std::path::PathBuf> {
    let v = std::env::var(CHILD_ENV).ok()?;
    v.strip_prefix(&format!("{mode}:")).map(Into::into)
}

/// Re-runs test `name` of this binary in a child process with `mode`.
fn run_child(name: &str, mode: &str, dir: &Path) -> std::process::ExitStatus {
    let exe = std::env::current_exe().expect("current_exe");
    Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{mode}:{}", dir.display()))
        .status()
        .expect("spawn child test process")
}

#[tokio::test]
async fn local_backend_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let be: Arc<dyn Backend> = Arc::new(LocalBackend::open(dir.path()).expect("open"));
    assert_eq!(be.kind(), "local");
    conformance::run_all(be, "conf.")
        .await
        .expect("conformance");
}

#[tokio::test]
async fn local_backend_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("nested").join("store");
    let big: Vec<u8> = (0..3 * CHUNK_SIZE + 123)
        .map(|i| (i % 251) as u8 + 1)
        .collect();
    let version;
    {
        let be = LocalBackend::open(&store).expect("open creates the directory");
        be.operate(
            "img.data",
            WriteOp::new()
                .write(CHUNK_SIZE - 10, Bytes::from(big.clone()))
                .omap_set1("k1", Bytes::from_static(b"v1"))
                .action(Action::SetXattr("gen".into(), Bytes::from_static(b"7"))),
        )
        .await
        .expect("compound write");
        // Sparse write far away, then zero the middle of the first payload.
        be.operate(
            "img.sparse",
            WriteOp::new().write(10 * CHUNK_SIZE, Bytes::from_static(b"tail")),
        )
        .await
        .expect("sparse write");
        be.operate(
            "img.data",
            WriteOp::new().action(Action::Zero {
                offset: CHUNK_SIZE,
                len: CHUNK_SIZE + 5,
            }),
        )
        .await
        .expect("zero");
        be.lock_exclusive("img.header", "owner", "cookie-1", "test")
            .await
            .expect("lock");
        version = be.stat("img.data").await.expect("stat").version;
        be.flush().await.expect("flush");
    }
    let be = LocalBackend::open(&store).expect("reopen");
    let st = be.stat("img.data").await.expect("stat after reopen");
    assert_eq!(st.size, CHUNK_SIZE - 10 + big.len() as u64);
    assert_eq!(st.version, version);
    let mut want = vec![0u8; (CHUNK_SIZE - 10) as usize];
    want.extend_from_slice(&big);
    let z = CHUNK_SIZE as usize;
    want[z..2 * z + 5].fill(0);
    let got = be.read("img.data", 0, st.size + 100).await.expect("read");
    assert_eq!(got.len(), want.len());
    assert!(got.as_ref() == want.as_slice(), "payload survived reopen");
    assert_eq!(
        be.omap_get("img.data", "", "", 10).await.expect("omap"),
        vec![("k1".to_string(), Bytes::from_static(b"v1"))]
    );
    assert_eq!(
        be.get_xattr("img.data", "gen").await.expect("xattr"),
        Some(Bytes::from_static(b"7"))
    );
    let sparse = be
        .read("img.sparse", 0, u64::MAX)
        .await
        .expect("sparse read");
    assert_eq!(sparse.len() as u64, 10 * CHUNK_SIZE + 4);
    assert!(sparse[..sparse.len() - 4].iter().all(|&b| b == 0));
    assert_eq!(&sparse[sparse.len() - 4..], b"tail");
    let owners = be.lock_owners("img.header", "owner").await.expect("owners");
    assert_eq!(owners.len(), 1, "locks persist like RADOS locks");
    assert_eq!(owners[0].cookie, "cookie-1");
    assert_eq!(
        owners[0].client,
        format!("client.local.{}", std::process::id())
    );
    let mut names = be.list("img.").await.expect("list");
    names.sort();
    assert_eq!(names, vec!["img.data", "img.header", "img.sparse"]);
}

#[tokio::test]
async fn local_backend_is_single_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    if let Some(store) = child_mode("busy") {
        // Child: the parent holds the store open.
        let err = LocalBackend::open(&store).expect_err("second process must be refused");
        assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
        let canon = store.canonicalize().expect("canonicalize");
        assert!(
            err.message().contains(&canon.display().to_string()),
            "{err}"
        );
        std::fs::write(store.join("busy-checked"), b"ok").expect("marker");
        return;
    }
    let be = LocalBackend::open(dir.path()).expect("open");
    // A second handle in the same process is refused too.
    let err = LocalBackend::open(dir.path()).expect_err("second handle must be refused");
    assert_eq!(err.kind(), ErrorKind::Busy);
    assert!(
        err.message().contains(&be.dir().display().to_string()),
        "{err}"
    );
    let status = run_child("local_backend_is_single_process", "busy", dir.path());
    assert!(status.success(), "child failed: {status:?}");
    assert!(
        dir.path().join("busy-checked").exists(),
        "child did not run the check"
    );
    drop(be);
    LocalBackend::open(dir.path()).expect("reopen after close");
}

const CRASH_OBJECTS: u64 = 24;
const CRASH_ROUNDS: u64 = 6;
/// Rounds `0..=CRASH_FLUSHED` are flushed before the crash.
const CRASH_FLUSHED: u64 = 3;

fn crash_payload(k: u64, r: u64) -> Vec<u8> {
    let len = 1000 + (k * 7919 + r * 104_729) % (3 * CHUNK_SIZE);
    (0..len)
        .map(|i| ((i * 31 + k * 7 + r * 13) % 251) as u8 + 1)
        .collect()
}

fn crash_op(k: u64, r: u64) -> WriteOp {
    let gen = Bytes::from(r.to_string());
    WriteOp::new()
        .write_full(Bytes::from(crash_payload(k, r)))
        .omap_set1("gen", gen.clone())
        .omap_set1(format!("r{r}"), gen.clone())
        .action(Action::SetXattr("gen".into(), gen))
}

async fn crash_child(store: &Path) -> ! {
    let be = LocalBackend::open(store).expect("child open");
    for r in 0..CRASH_ROUNDS {
        for k in 0..CRASH_OBJECTS {
            be.operate(&format!("obj.{k}"), crash_op(k, r))
                .await
                .expect("child op");
        }
        if r == CRASH_FLUSHED - 1 || r == CRASH_FLUSHED {
            be.flush().await.expect("child flush");
        }
    }
    // Every op completed and is visible before the "power loss".
    let last = be.get_xattr("obj.0", "gen").await.expect("child xattr");
    assert_eq!(last, Some(Bytes::from((CRASH_ROUNDS - 1).to_string())));
    std::fs::write(store.join("child-done"), b"ok").expect("marker");
    std::process::abort();
}

#[tokio::test]
async fn local_backend_crash_keeps_flushed_and_never_tears() {
    if let Some(store) = child_mode("crash") {
        crash_child(&store).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let status = run_child(
        "local_backend_crash_keeps_flushed_and_never_tears",
        "crash",
        dir.path(),
    );
    assert!(!status.success(), "child must die, not exit: {status:?}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(6),
            "child must die by SIGABRT: {status:?}"
        );
    }
    assert!(
        dir.path().join("child-done").exists(),
        "child did not finish its ops"
    );

    let be = LocalBackend::open(dir.path()).expect("reopen after crash");
    let mut survived_unflushed = 0;
    for k in 0..CRASH_OBJECTS {
        let oid = format!("obj.{k}");
        let gen = be
            .get_xattr(&oid, "gen")
            .await
            .expect("flushed object exists")
            .expect("flushed xattr exists");
        let g: u64 = std::str::from_utf8(&gen)
            .expect("utf8")
            .parse()
            .expect("number");
        assert!(
            (CRASH_FLUSHED..CRASH_ROUNDS).contains(&g),
            "{oid}: generation {g} older than the last flush"
        );
        if g > CRASH_FLUSHED {
            survived_unflushed += 1;
        }
        // Everything else about the object must be exactly generation g.
        let want = crash_payload(k, g);
        let st = be.stat(&oid).await.expect("stat");
        assert_eq!(st.size, want.len() as u64, "{oid}: size of generation {g}");
        let got = be.read(&oid, 0, u64::MAX).await.expect("read");
        assert!(
            got.as_ref() == want.as_slice(),
            "{oid}: payload of generation {g}"
        );
        let omap = be.omap_get(&oid, "", "", 100).await.expect("omap");
        let mut want_omap = vec![("gen".to_string(), gen.clone())];
        want_omap.extend((0..=g).map(|r| (format!("r{r}"), Bytes::from(r.to_string()))));
        assert_eq!(omap, want_omap, "{oid}: omap of generation {g}");
    }
    eprintln!(
        "local crash test: {survived_unflushed} of {} objects kept an unflushed generation",
        CRASH_OBJECTS
    );
    // The reopened store is fully usable.
    be.operate("obj.0", crash_op(0, 99))
        .await
        .expect("write after recovery");
    be.flush().await.expect("flush after recovery");
}

/// Random ops around chunk boundaries, compared with the in-memory reference.
#[tokio::test]
async fn local_backend_matches_mem_reference() {
    use rand::{rngs::SmallRng, Rng, SeedableRng};
    let dir = tempfile::tempdir().expect("tempdir");
    let local = LocalBackend::open(dir.path()).expect("open");
    let mem = MemBackend::new();
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let c = CHUNK_SIZE;
    let around = |rng: &mut SmallRng| -> u64 {
        let base = rng.gen_range(0..5u64) * c;
        (base + rng.gen_range(0..64u64)).saturating_sub(32)
    };
    for step in 0..400u32 {
        let oid = format!("o{}", rng.gen_range(0..3u32));
        let fill = rng.gen_range(1..=255u8);
        let action = match rng.gen_range(0..10u32) {
            0..=3 => {
                let len = rng.gen_range(0..2 * c + 10) as usize;
                Action::Write {
                    offset: around(&mut rng),
                    data: Bytes::from(vec![fill; len]),
                }
            }
            4 => Action::WriteFull(Bytes::from(vec![fill; rng.gen_range(0..3 * c) as usize])),
            5 | 6 => Action::Zero {
                offset: around(&mut rng),
                len: rng.gen_range(0..2 * c + 10),
            },
            7 => Action::Truncate(around(&mut rng)),
            8 => Action::Create,
            _ => Action::Remove,
        };
        let op = WriteOp::new().action(action.clone());
        let guarded = op.clone().guard(Guard::Exists);
        let (op_l, op_m) = if step % 7 == 0 {
            (guarded.clone(), guarded)
        } else {
            (op.clone(), op)
        };
        let rl = local.operate(&oid, op_l).await;
        let rm = mem.operate(&oid, op_m).await;
        assert_eq!(
            rl.as_ref().map_err(|e| e.kind()),
            rm.as_ref().map_err(|e| e.kind()),
            "step {step}: {action:?}"
        );
        let sl = local.stat(&oid).await.map_err(|e| e.kind());
        let sm = mem.stat(&oid).await.map_err(|e| e.kind());
        assert_eq!(sl, sm, "step {step}: stat after {action:?}");
        if sm.is_ok() {
            let off = around(&mut rng);
            let len = rng.gen_range(0..3 * c);
            let dl = local.read(&oid, off, len).await.expect("local read");
            let dm = mem.read(&oid, off, len).await.expect("mem read");
            assert!(dl == dm, "step {step}: read {off}+{len} after {action:?}");
            let full_l = local.read(&oid, 0, u64::MAX).await.expect("local read");
            let full_m = mem.read(&oid, 0, u64::MAX).await.expect("mem read");
            assert!(full_l == full_m, "step {step}: full read after {action:?}");
        }
    }
}
