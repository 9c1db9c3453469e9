//! Every in-process backend runs the one conformance suite, one test per
//! contract item (`mem::zero_to_object_end`, `local_proxy::locks`, ...); the
//! local backend also gets reopen, multi-process (proxy), crash and
//! reference-model tests.

use row_layer::backend::{conformance, fault::FaultBackend, mem::MemBackend, Backend};
use std::sync::Arc;

async fn fresh_mem() -> (Arc<dyn Backend>, ()) {
    (Arc::new(MemBackend::new()), ())
}

async fn fresh_fault_wrapper() -> (Arc<dyn Backend>, ()) {
    let be = FaultBackend::new(Arc::new(MemBackend::new()));
    (Arc::new(be), ())
}

async fn fresh_local() -> (Arc<dyn Backend>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let be = LocalBackend::open(dir.path()).expect("open");
    assert_eq!(be.kind(), "local");
    assert!(be.serves_store(), "the only opener serves the store");
    (Arc::new(be), dir)
}

/// The serving child of a `local_proxy` test; on drop it is told to finish
/// (stdin closed) and waited for, before its directory goes.
struct ServingChild(Option<ChildProc>);

impl Drop for ServingChild {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            let status = child.finish();
            if !status.success() && !std::thread::panicking() {
                panic!("serving child: {status:?}");
            }
        }
    }
}

/// A local store served by a child process, opened here as a proxy client.
async fn fresh_local_proxy() -> (Arc<dyn Backend>, (ServingChild, tempfile::TempDir)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServingChild(Some(ChildProc::spawn(
        CLIENT_MODE_TEST,
        "serve",
        dir.path(),
    )));
    let be = LocalBackend::open(dir.path()).expect("open as a client");
    assert!(!be.serves_store(), "the second process is a client");
    (Arc::new(be), (server, dir))
}

row_layer::backend_conformance_tests!(mem, [#[tokio::test]], fresh_mem);
row_layer::backend_conformance_tests!(fault_wrapper, [#[tokio::test]], fresh_fault_wrapper);
row_layer::backend_conformance_tests!(local, [#[tokio::test]], fresh_local);
row_layer::backend_conformance_tests!(local_proxy, [#[tokio::test]], fresh_local_proxy);

/// The convenience runner still runs every check.
#[tokio::test]
async fn run_all_runs_every_check() {
    let be: Arc<dyn Backend> = Arc::new(MemBackend::new());
    conformance::run_all(be.clone(), "all.")
        .await
        .expect("conformance");
    for check in conformance::CHECKS {
        assert!(
            !be.list(&format!("all.{check}."))
                .await
                .expect("list")
                .is_empty(),
            "run_all skipped {check}"
        );
    }
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

async fn crash_child(store: &Path, through_proxy: bool) -> ! {
    let be = LocalBackend::open(store).expect("child open");
    assert_eq!(be.serves_store(), !through_proxy, "mode of the crash child");
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
        crash_child(&store, false).await;
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
    verify_after_crash(&be).await;
}

/// Every object holds exactly one generation, at least the last flushed one.
async fn verify_after_crash(be: &LocalBackend) {
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

// ---------------------------------------------------------------------------
// Several processes: the first opener serves the store, later ones proxy.
// ---------------------------------------------------------------------------

use futures::future::BoxFuture;
use row_layer::backend::{LockOwner, ObjectStat};
use row_layer::{CreateOptions, ImageOptions, OwnerRequest, Store};
use std::io::{BufRead, Write};
use std::time::Duration;

const READY: &str = "ROWREADY";
const DONE: &str = "ROWDONE";

/// A re-executed copy of this test binary with piped stdin/stdout.
struct ChildProc {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl ChildProc {
    /// Starts test `name` in `mode` and waits until it printed [`READY`].
    fn spawn(name: &str, mode: &str, dir: &Path) -> ChildProc {
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new(exe)
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{mode}:{}", dir.display()))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn child test process");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("child stdout");
        let mut c = ChildProc {
            child,
            stdin,
            lines: std::io::BufReader::new(stdout).lines(),
        };
        c.wait_for(READY);
        c
    }

    /// Reads the child's stdout until a line containing `marker`.
    fn wait_for(&mut self, marker: &str) -> String {
        for line in self.lines.by_ref() {
            let line = line.expect("child stdout");
            // libtest may have printed "test NAME ... " on the same line.
            if let Some(at) = line.find(marker) {
                return line[at..].to_string();
            }
        }
        panic!("child exited before printing {marker}");
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("child stdin");
        writeln!(stdin, "{line}").expect("write to child");
        stdin.flush().expect("flush child stdin");
    }

    /// Closes the child's stdin (its signal to finish) and waits for it.
    fn finish(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        self.child.wait().expect("wait for child")
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL child");
        let status = self.child.wait().expect("wait for child");
        assert!(!status.success(), "child was killed: {status:?}");
    }
}

/// Reads stdin lines (on the blocking pool, so the runtime keeps serving)
/// until EOF or a line equal to `until`.
async fn stdin_until(until: Option<&'static str>) {
    tokio::task::spawn_blocking(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if Some(line.trim()) == until {
                return;
            }
        }
    })
    .await
    .expect("stdin task");
}

/// Child: opens the store first (becoming its server) and serves it until
/// stdin closes.
async fn serve_child(store: &Path) {
    let be = LocalBackend::open(store).expect("serve: open");
    assert!(be.serves_store(), "the first opener serves the store");
    println!("{READY} {}", std::process::id());
    stdin_until(None).await;
    drop(be);
}

fn local_owner(pid: u32) -> LockOwner {
    LockOwner {
        client: format!("client.local.{pid}"),
        cookie: "any".into(),
        address: format!("local:{pid}"),
    }
}

/// Child: a client that watches `w.obj`, answers notifications with its pid
/// and holds a lock on `w.obj`; finishes when stdin closes.
async fn watcher_child(store: &Path) {
    let be = LocalBackend::open(store).expect("watcher: open");
    assert!(!be.serves_store(), "a later opener is a client");
    be.lock_exclusive("w.obj", "owner", "watcher", "test")
        .await
        .expect("watcher: lock");
    let mut w = be.watch("w.obj").await.expect("watcher: watch");
    tokio::spawn(async move {
        while let Some(n) = w.events.recv().await {
            let mut reply = format!("{}:", std::process::id()).into_bytes();
            reply.extend_from_slice(&n.payload);
            let _ = n.reply.send(Bytes::from(reply));
        }
    });
    println!("{READY}");
    stdin_until(None).await;
    // Exit without unwatch or unlock, like a process that just ends.
    std::process::exit(0);
}

/// The test whose "serve" child mode serves a store for the `local_proxy`
/// conformance tests.
const CLIENT_MODE_TEST: &str = "local_backend_client_mode";

#[tokio::test]
async fn local_backend_client_mode() {
    const NAME: &str = CLIENT_MODE_TEST;
    if let Some(store) = child_mode("serve") {
        return serve_child(&store).await;
    }
    if let Some(store) = child_mode("watcher") {
        return watcher_child(&store).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ChildProc::spawn(NAME, "serve", dir.path());
    let server_pid = server.child.id();
    let be = Arc::new(LocalBackend::open(dir.path()).expect("open as a client"));
    assert!(!be.serves_store(), "the second process is a client");
    assert!(dir.path().join("store.sock").exists());
    let err = LocalBackend::open(dir.path()).expect_err("second handle in one process");
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");

    // (The conformance suite through the proxy: the `local_proxy::*` tests.)
    be.operate(
        "conf.data",
        WriteOp::new().write_full(Bytes::from_static(b"xy\0\0\0")),
    )
    .await
    .expect("write through the proxy");

    // Locks are taken in the name of the calling process.
    let me = std::process::id();
    be.lock_exclusive("me.lock", "owner", "c", "test")
        .await
        .expect("lock");
    let owners = be.lock_owners("me.lock", "owner").await.expect("owners");
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].client, format!("client.local.{me}"));
    assert_eq!(owners[0].address, format!("local:{me}"));
    // The server process cannot be fenced; fencing oneself is a no-op.
    let err = be
        .fence(&local_owner(server_pid))
        .await
        .expect_err("fencing the server");
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    be.fence(&local_owner(me))
        .await
        .expect("self-fence is a no-op");
    be.stat("me.lock")
        .await
        .expect("still usable after self-fence");

    // Notify from one client reaches a watcher in another client.
    be.operate("w.obj", WriteOp::new().action(Action::Create))
        .await
        .expect("create w.obj");
    let watcher = ChildProc::spawn(NAME, "watcher", dir.path());
    let watcher_pid = watcher.child.id();
    let replies = be
        .notify("w.obj", Bytes::from_static(b"hi"), Duration::from_secs(5))
        .await
        .expect("notify");
    assert_eq!(
        replies,
        vec![Bytes::from(format!("{watcher_pid}:hi"))],
        "the other client answered"
    );
    // Its connection drops: its watch goes, its lock stays.
    let status = watcher.finish();
    assert!(status.success(), "watcher: {status:?}");
    let mut replies = vec![Bytes::new()];
    for _ in 0..100 {
        replies = be
            .notify("w.obj", Bytes::from_static(b"hi"), Duration::from_secs(5))
            .await
            .expect("notify");
        if replies.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        replies.is_empty(),
        "dead client's watch removed: {replies:?}"
    );
    let owners = be.lock_owners("w.obj", "owner").await.expect("owners");
    assert_eq!(owners.len(), 1, "dead client's lock stays");
    assert_eq!(owners[0].client, format!("client.local.{watcher_pid}"));

    // The server exits: this client takes the store over on its next call.
    let status = server.finish();
    assert!(status.success(), "server child: {status:?}");
    let st = be.stat("conf.data").await.expect("stat after takeover");
    assert_eq!(st.size, 5);
    assert!(be.serves_store(), "the client became the server");
    assert!(dir.path().join("store.sock").exists(), "new server listens");
}

/// Child: serves the store and owns image `img` (written and flushed),
/// answering requests until killed or stdin closes.
async fn owner_child(store: &Path) {
    let be = LocalBackend::open(store).expect("owner: open");
    assert!(be.serves_store());
    let store = Store::new(Arc::new(be));
    store
        .create("img", CreateOptions::with_size(8 << 20))
        .await
        .expect("owner: create");
    let img = store.open("img").await.expect("owner: open image");
    img.write(4096, image_data()).await.expect("owner: write");
    img.flush().await.expect("owner: flush");
    println!("{READY}");
    stdin_until(None).await;
    img.close().await.expect("owner: close");
}

fn image_data() -> Bytes {
    Bytes::from(
        (0..3 * 65536u32)
            .map(|i| (i % 253) as u8 + 1)
            .collect::<Vec<_>>(),
    )
}

#[tokio::test]
async fn local_store_owner_in_another_process_serves_requests_and_is_taken_over() {
    const NAME: &str = "local_store_owner_in_another_process_serves_requests_and_is_taken_over";
    if let Some(store) = child_mode("owner") {
        return owner_child(&store).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = ChildProc::spawn(NAME, "owner", dir.path());
    let owner_pid = owner.child.id();
    let be = Arc::new(LocalBackend::open(dir.path()).expect("open as a client"));
    assert!(!be.serves_store());
    let dyn_be: Arc<dyn Backend> = be.clone();
    let store = Store::new(dyn_be).with_image_options(ImageOptions {
        owner_timeout: Duration::from_secs(2),
        ..ImageOptions::default()
    });

    // The live owner answers the ping: Busy, naming its process.
    let err = store.open("img").await.err().expect("image is owned");
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    assert!(
        err.message().contains(&format!("client.local.{owner_pid}")),
        "{err}"
    );
    // A request travels to the owner, which carries it out.
    store
        .execute("img", OwnerRequest::SnapCreate("s1".into()))
        .await
        .expect("snap create through the owner");
    let snap = store.open_snapshot("img", "s1").await.expect("open s1");
    assert!(snap.snap_list().iter().any(|s| s.name == "s1"));
    let want = image_data();
    assert_eq!(
        snap.read(4096, want.len() as u64).await.expect("read s1"),
        want
    );
    drop(snap);

    // The owner (and store server) dies: this process takes the store over,
    // then the image (the dead owner does not answer the ping).
    owner.kill();
    let img = store.open("img").await.expect("take over the image");
    assert!(be.serves_store(), "the client became the store server");
    assert_eq!(
        img.read(4096, want.len() as u64).await.expect("read"),
        want,
        "flushed data of the dead owner intact"
    );
    assert!(img.snap_list().iter().any(|s| s.name == "s1"));
    img.write(0, Bytes::from_static(b"new owner"))
        .await
        .expect("write as new owner");
    img.snap_create("s2").await.expect("snap as new owner");
    img.close().await.expect("close");
    let again = store.open("img").await.expect("reopen after close");
    again.close().await.expect("close again");
}

#[tokio::test]
async fn local_backend_crash_through_proxy_keeps_flushed_and_never_tears() {
    const NAME: &str = "local_backend_crash_through_proxy_keeps_flushed_and_never_tears";
    if let Some(store) = child_mode("serve") {
        return serve_child(&store).await;
    }
    if let Some(store) = child_mode("crash-client") {
        crash_child(&store, true).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ChildProc::spawn(NAME, "serve", dir.path());
    // The client writes, flushes twice, writes more, then dies.
    let status = run_child(NAME, "crash-client", dir.path());
    assert!(!status.success(), "client must die: {status:?}");
    assert!(
        dir.path().join("child-done").exists(),
        "client finished its ops"
    );
    // Then the server dies without any flush of its own.
    server.kill();
    let be = LocalBackend::open(dir.path()).expect("reopen after crash");
    assert!(be.serves_store());
    verify_after_crash(&be).await;
}

/// Child: a client holding a lock and a watch; after "go" every request
/// must fail with `Fenced`.
async fn fenced_child(store: &Path) {
    let be = LocalBackend::open(store).expect("fenced: open");
    assert!(!be.serves_store());
    be.lock_exclusive("f.obj", "owner", "kid", "test")
        .await
        .expect("fenced: lock");
    let mut w = be.watch("f.obj").await.expect("fenced: watch");
    tokio::spawn(async move {
        while let Some(n) = w.events.recv().await {
            let _ = n.reply.send(Bytes::from_static(b"kid"));
        }
    });
    println!("{READY}");
    stdin_until(Some("go")).await;
    let err = be
        .operate("f.obj", WriteOp::new().write(0, Bytes::from_static(b"x")))
        .await
        .expect_err("fenced write");
    assert_eq!(err.kind(), ErrorKind::Fenced, "{err}");
    let err = be.stat("f.obj").await.expect_err("fenced read");
    assert_eq!(err.kind(), ErrorKind::Fenced, "{err}");
    std::fs::write(store.join("fenced-checked"), b"ok").expect("marker");
    println!("{DONE}");
    stdin_until(None).await;
}

#[tokio::test]
async fn local_store_fences_a_client_process() {
    const NAME: &str = "local_store_fences_a_client_process";
    if let Some(store) = child_mode("fenced") {
        return fenced_child(&store).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let be = LocalBackend::open(dir.path()).expect("open");
    assert!(be.serves_store());
    be.operate("f.obj", WriteOp::new().action(Action::Create))
        .await
        .expect("create");
    let mut kid = ChildProc::spawn(NAME, "fenced", dir.path());
    let kid_pid = kid.child.id();
    // Notifications from the server process reach the client's watch.
    let replies = be
        .notify("f.obj", Bytes::from_static(b"ping"), Duration::from_secs(5))
        .await
        .expect("notify");
    assert_eq!(replies, vec![Bytes::from_static(b"kid")]);
    let owners = be.lock_owners("f.obj", "owner").await.expect("owners");
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].client, format!("client.local.{kid_pid}"));
    // Fencing oneself is a no-op.
    be.fence(&local_owner(std::process::id()))
        .await
        .expect("self-fence");
    be.stat("f.obj").await.expect("server still works");
    // Fence the client: its watch goes at once, its requests fail.
    be.fence(&owners[0]).await.expect("fence the client");
    let replies = be
        .notify("f.obj", Bytes::from_static(b"ping"), Duration::from_secs(5))
        .await
        .expect("notify");
    assert!(replies.is_empty(), "fenced client's watch removed");
    kid.say("go");
    kid.wait_for(DONE);
    let status = kid.finish();
    assert!(status.success(), "fenced child: {status:?}");
    assert!(dir.path().join("fenced-checked").exists());
    // Its lock stays until broken.
    let owners = be.lock_owners("f.obj", "owner").await.expect("owners");
    assert_eq!(owners.len(), 1, "a fenced client's lock stays");
    be.break_lock("f.obj", "owner", &owners[0])
        .await
        .expect("break");
    be.lock_exclusive("f.obj", "owner", "me", "test")
        .await
        .expect("lock after break");
}

// ---------------------------------------------------------------------------
// The checks are not vacuous: a backend with an unallowed difference fails.
// ---------------------------------------------------------------------------

/// MemBackend, except that a `Zero` ending exactly at the object's end writes
/// zeros and keeps the size (the difference `zero_to_exact_end_keeps_size`
/// would allow), under kind "keeps-size" (which has no allowance).
struct KeepsSizeOnZero(MemBackend);

impl Backend for KeepsSizeOnZero {
    fn kind(&self) -> &'static str {
        "keeps-size"
    }
    fn read(&self, oid: &str, offset: u64, len: u64) -> BoxFuture<'_, row_layer::Result<Bytes>> {
        self.0.read(oid, offset, len)
    }
    fn stat(&self, oid: &str) -> BoxFuture<'_, row_layer::Result<ObjectStat>> {
        self.0.stat(oid)
    }
    fn omap_get(
        &self,
        oid: &str,
        start_after: &str,
        prefix: &str,
        max: usize,
    ) -> BoxFuture<'_, row_layer::Result<Vec<(String, Bytes)>>> {
        self.0.omap_get(oid, start_after, prefix, max)
    }
    fn get_xattr(&self, oid: &str, name: &str) -> BoxFuture<'_, row_layer::Result<Option<Bytes>>> {
        self.0.get_xattr(oid, name)
    }
    fn operate(&self, oid: &str, op: WriteOp) -> BoxFuture<'_, row_layer::Result<()>> {
        let oid = oid.to_string();
        Box::pin(async move {
            let size = self.0.stat(&oid).await.map(|s| s.size).unwrap_or(0);
            let actions = op
                .actions
                .into_iter()
                .map(|a| match a {
                    Action::Zero { offset, len } if offset < size && offset + len == size => {
                        Action::Write {
                            offset,
                            data: Bytes::from(vec![0; len as usize]),
                        }
                    }
                    a => a,
                })
                .collect();
            let op = WriteOp {
                guards: op.guards,
                actions,
            };
            self.0.operate(&oid, op).await
        })
    }
    fn list(&self, prefix: &str) -> BoxFuture<'_, row_layer::Result<Vec<String>>> {
        self.0.list(prefix)
    }
    fn flush(&self) -> BoxFuture<'_, row_layer::Result<()>> {
        self.0.flush()
    }
    fn lock_exclusive(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        description: &str,
    ) -> BoxFuture<'_, row_layer::Result<()>> {
        self.0.lock_exclusive(oid, name, cookie, description)
    }
    fn unlock(&self, oid: &str, name: &str, cookie: &str) -> BoxFuture<'_, row_layer::Result<()>> {
        self.0.unlock(oid, name, cookie)
    }
    fn lock_owners(
        &self,
        oid: &str,
        name: &str,
    ) -> BoxFuture<'_, row_layer::Result<Vec<LockOwner>>> {
        self.0.lock_owners(oid, name)
    }
    fn break_lock(
        &self,
        oid: &str,
        name: &str,
        owner: &LockOwner,
    ) -> BoxFuture<'_, row_layer::Result<()>> {
        self.0.break_lock(oid, name, owner)
    }
    fn watch(&self, oid: &str) -> BoxFuture<'_, row_layer::Result<row_layer::backend::Watch>> {
        self.0.watch(oid)
    }
    fn unwatch(&self, watch_id: u64) -> BoxFuture<'_, row_layer::Result<()>> {
        self.0.unwatch(watch_id)
    }
    fn fence(&self, owner: &LockOwner) -> BoxFuture<'_, row_layer::Result<()>> {
        self.0.fence(owner)
    }
    fn notify(
        &self,
        oid: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, row_layer::Result<Vec<Bytes>>> {
        self.0.notify(oid, payload, timeout)
    }
}

#[tokio::test]
async fn zero_to_object_end_fails_an_unallowed_difference() {
    let be = KeepsSizeOnZero(MemBackend::new());
    assert_eq!(
        conformance::Allowances::for_kind(be.kind()),
        conformance::Allowances::STRICT
    );
    let err = conformance::zero_to_object_end(&be, "neg.")
        .await
        .expect_err("keeping the size is not allowed for this kind");
    assert!(
        err.message().contains("zero_to_exact_end_keeps_size"),
        "{err}"
    );
    // The other checks still pass: only the contract item differs.
    conformance::zero_semantics(&be, "neg.")
        .await
        .expect("zero_semantics");
}
