//! The row-layer engine on a replicated pool while OSDs fail.
//!
//! Needs a 3-OSD cluster of `tests/ceph/cluster.sh` (pool `rbd` with size 3,
//! min_size 2), because the tests stop and restart its OSDs through that
//! script:
//!
//! ```sh
//! export RBD_ROW_CEPH_DIR=/tmp/rbd-row-ceph-3osd RBD_ROW_CEPH_OSDS=3
//! tests/ceph/cluster.sh start && eval "$(tests/ceph/cluster.sh env)"
//! cargo test -p row-rados --test osd_failure -- --ignored
//! tests/ceph/cluster.sh stop
//! ```
//!
//! The tests are `#[ignore]`d (tests/run-all.sh starts such a cluster and runs
//! them, and skips them, by their `osd_failure_` prefix, in its run of the
//! other ignored tests against the 1-OSD cluster); run with `--ignored` they
//! FAIL without `CEPH_CONF`, if `CEPH_CONF` is not a cluster.sh cluster, or if
//! it has fewer than 3 OSDs. They run one at a time (they share the OSDs),
//! first bring back any OSD a failed earlier run left stopped, and leave
//! every OSD up and every PG active+clean.
//!
//! - `osd_failure_acknowledged_writes_survive_one_osd_down`: 64 writers
//!   (4 KiB..64 KiB each, 512-byte aligned, so grain edges take the
//!   read-modify-write path; some lanes straddle two objects) keep writing
//!   while osd.1 is stopped, while the pool is degraded, and while the OSD
//!   comes back and recovers; snapshots are taken healthy, degraded (twice)
//!   and recovering. Each writer owns a lane of the image and writes it
//!   sequentially, so the write log orders every byte's writers. Checked:
//!   no write fails; the head reads every acknowledged write (last writer
//!   wins); every snapshot reads exactly the writes acknowledged before it
//!   was requested plus, atomically, at most the one write per lane that was
//!   in flight during the request; a snapshot read while degraded reads the
//!   same after recovery; the diff between consecutive snapshots (and from
//!   the last one to the head) is exactly the grains written in between.
//! - `osd_failure_below_min_size_fails_in_bounded_time_then_recovers`: with
//!   2 of 3 OSDs stopped (PGs inactive) and `rados_osd_op_timeout` = 10 s,
//!   writes (grain-aligned and not), a read and a snapshot fail with a
//!   Transient or Io error within 30 s instead of hanging (a write queued
//!   behind another one's failed metadata op can take two timeouts); after
//!   the OSDs are back the image reopens, snapshot `before` and the head read
//!   what was acknowledged (each failed write's piece of each object entirely
//!   old or entirely new; the failed snapshot absent, or consistent), its
//!   epoch records verify, and it takes writes and snapshots again.

use bytes::Bytes;
use row_layer::backend::Backend;
use row_layer::{CreateOptions, ErrorKind, Image, Store};
use row_rados::{ClusterConfig, RadosCluster};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const GRAIN: u64 = 4096;
const OBJECT: u64 = 1 << 20;
/// Concurrent writers, one lane each.
const LANES: usize = 64;
/// Bytes per lane: not a divisor of OBJECT, so some lanes straddle two
/// objects (multi-object writes).
const LANE: u64 = 320 * 1024;
const MIN_WRITE: u64 = 4096;
const MAX_WRITE: u64 = 64 * 1024;
const ALIGN: u64 = 512;

/// The tests stop OSDs of one cluster: never two at once.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------- cluster --

/// The cluster.sh cluster of `CEPH_CONF`.
struct TestCluster {
    conf: String,
    dir: PathBuf,
    script: PathBuf,
}

impl TestCluster {
    fn from_env() -> TestCluster {
        let conf = std::env::var("CEPH_CONF").unwrap_or_else(|_| {
            panic!(
                "CEPH_CONF is not set: these tests need a 3-OSD cluster. Start one with \
                 `RBD_ROW_CEPH_DIR=/tmp/rbd-row-ceph-3osd RBD_ROW_CEPH_OSDS=3 tests/ceph/cluster.sh start \
                 && eval \"$(RBD_ROW_CEPH_DIR=/tmp/rbd-row-ceph-3osd tests/ceph/cluster.sh env)\"`"
            )
        });
        let dir = Path::new(&conf)
            .parent()
            .unwrap_or_else(|| panic!("CEPH_CONF={conf} has no directory"))
            .to_path_buf();
        // The OSDs are stopped through cluster.sh: it must be its cluster,
        // and RBD_ROW_CEPH_DIR (if set) must not name another one.
        if !dir.join(".rbd-row-ceph-cluster").exists() {
            panic!(
                "CEPH_CONF={conf} is not a cluster of tests/ceph/cluster.sh (no marker in {}); \
                 these tests stop and start its OSDs and only do that to a throwaway cluster",
                dir.display()
            );
        }
        if let Ok(d) = std::env::var("RBD_ROW_CEPH_DIR") {
            let same = std::fs::canonicalize(&d).ok() == std::fs::canonicalize(&dir).ok();
            assert!(
                same,
                "RBD_ROW_CEPH_DIR={d} and CEPH_CONF={conf} name different clusters"
            );
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/ceph/cluster.sh");
        assert!(script.exists(), "{} not found", script.display());
        TestCluster { conf, dir, script }
    }

    /// Runs `cluster.sh ARGS` for this cluster (off the async workers);
    /// panics with its output if it fails.
    async fn sh(&self, args: &[&str]) -> Duration {
        let mut cmd = std::process::Command::new(&self.script);
        cmd.args(args)
            .env("RBD_ROW_CEPH_DIR", &self.dir)
            .env_remove("RBD_ROW_CEPH_OSDS");
        let shown = format!("cluster.sh {}", args.join(" "));
        let t = Instant::now();
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
        if !out.status.success() {
            panic!(
                "{shown} failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprintln!("[osd_failure] {shown}: {:.1?}", t.elapsed());
        t.elapsed()
    }

    async fn connect(&self, osd_op_timeout_secs: u32) -> RadosCluster {
        let config = ClusterConfig {
            conf_path: Some(self.conf.clone().into()),
            client_name: Some("client.admin".into()),
            options: vec![
                ("client_mount_timeout".into(), "15".into()),
                ("rados_mon_op_timeout".into(), "30".into()),
                (
                    "rados_osd_op_timeout".into(),
                    osd_op_timeout_secs.to_string(),
                ),
            ],
            ..ClusterConfig::default()
        };
        match tokio::time::timeout(Duration::from_secs(30), RadosCluster::connect(config)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => panic!("cannot connect to CEPH_CONF={}: {e}", self.conf),
            Err(_) => panic!("connecting to CEPH_CONF={} timed out", self.conf),
        }
    }

    /// Fails loudly unless the cluster has at least 3 OSDs; then brings any
    /// OSD an earlier (failed) test left stopped back and waits until every
    /// PG is active+clean.
    async fn require_three_osds_healthy(&self, cluster: &RadosCluster) {
        let (out, _) = cluster
            .mon_command(r#"{"prefix":"osd stat","format":"json"}"#)
            .await
            .expect("mon command osd stat");
        let stat = String::from_utf8_lossy(&out).into_owned();
        let num = json_u64(&stat, "num_osds")
            .unwrap_or_else(|| panic!("no num_osds in `osd stat`: {stat}"));
        assert!(
            num >= 3,
            "the cluster of CEPH_CONF={} has {num} OSD(s); these tests need 3 \
             (start it with RBD_ROW_CEPH_OSDS=3 tests/ceph/cluster.sh start): {stat}",
            self.conf
        );
        for id in 0..3 {
            self.sh(&["osd-start", &id.to_string()]).await;
        }
        self.sh(&["wait"]).await;
    }
}

/// The unsigned integer value of `"key":` in a flat JSON object.
fn json_u64(json: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let rest = json[json.find(&pat)? + pat.len()..].trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("row-osdfail-{tag}-{}-{nanos}", std::process::id())
}

async fn store(cluster: &RadosCluster, tag: &str) -> Store {
    let be = cluster
        .open_pool("rbd", &unique(tag))
        .await
        .expect("open pool rbd");
    let be: Arc<dyn Backend> = Arc::new(be);
    Store::new(be)
}

fn create_options(lanes: usize) -> CreateOptions {
    CreateOptions {
        size: lanes as u64 * LANE,
        object_size: OBJECT,
        grain_size: GRAIN,
    }
}

// -------------------------------------------------------------- write log --

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// One write of a lane: offset within the lane, length, data seed.
#[derive(Debug, Clone, Copy)]
struct Write {
    offset: u64,
    len: u64,
    seed: u64,
}

impl Write {
    /// The `n`th write of `lane`: deterministic, unique data.
    fn nth(lane: usize, n: u64) -> Write {
        let seed = splitmix(((lane as u64) << 40) ^ n ^ 0x5EED);
        let r = splitmix(seed);
        let len = (MIN_WRITE + r % (MAX_WRITE - MIN_WRITE + 1)) / ALIGN * ALIGN;
        let offset = (r >> 32) % ((LANE - len) / ALIGN + 1) * ALIGN;
        Write { offset, len, seed }
    }

    /// Like [`Write::nth`], with offset and length whole grains (no
    /// read-modify-write: the first backend op is the write itself).
    fn nth_aligned(lane: usize, n: u64) -> Write {
        let w = Write::nth(lane, n);
        let len = w.len.div_ceil(GRAIN) * GRAIN;
        let offset = (w.offset / GRAIN * GRAIN).min(LANE - len);
        Write { offset, len, ..w }
    }

    /// A write covering the whole lane.
    fn full(lane: usize, n: u64) -> Write {
        Write {
            offset: 0,
            len: LANE,
            seed: splitmix(((lane as u64) << 40) ^ n ^ 0xF011),
        }
    }

    /// Its data: every 8-byte word differs from every other write's.
    fn data(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len as usize);
        let base = splitmix(self.seed);
        for w in 0..self.len / 8 {
            v.extend_from_slice(&(base ^ w.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes());
        }
        v
    }

    fn apply(&self, lane: &mut [u8]) {
        let (a, b) = (self.offset as usize, (self.offset + self.len) as usize);
        lane[a..b].copy_from_slice(&self.data());
    }

    fn grains(&self, lane: usize, into: &mut BTreeSet<u64>) {
        let start = lane as u64 * LANE + self.offset;
        into.extend(start / GRAIN..(start + self.len).div_ceil(GRAIN));
    }
}

#[derive(Default)]
struct LaneLog {
    /// Every write issued, in order; `writes[..acked]` are acknowledged.
    writes: Vec<Write>,
    acked: usize,
}

struct WriteLog {
    lanes: Vec<Mutex<LaneLog>>,
    acked_total: AtomicU64,
}

impl WriteLog {
    fn new(lanes: usize) -> WriteLog {
        WriteLog {
            lanes: (0..lanes).map(|_| Mutex::default()).collect(),
            acked_total: AtomicU64::new(0),
        }
    }

    fn lane(&self, l: usize) -> std::sync::MutexGuard<'_, LaneLog> {
        self.lanes[l].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn acked(&self) -> Vec<usize> {
        (0..self.lanes.len()).map(|l| self.lane(l).acked).collect()
    }

    fn issued(&self) -> Vec<usize> {
        (0..self.lanes.len())
            .map(|l| self.lane(l).writes.len())
            .collect()
    }
}

/// A snapshot and, per lane, the bounds on how many writes it holds.
struct Snap {
    name: String,
    /// Acknowledged before the snapshot was requested: included.
    lo: Vec<usize>,
    /// Issued before the snapshot returned: later ones are excluded.
    hi: Vec<usize>,
}

async fn take_snap(img: &Image, log: &WriteLog, name: &str) -> Snap {
    let lo = log.acked();
    let t = Instant::now();
    img.snap_create(name)
        .await
        .unwrap_or_else(|e| panic!("snap create {name}: {e} ({:?})", e.kind()));
    let hi = log.issued();
    eprintln!(
        "[osd_failure] snapshot {name}: {:.1?}, {} writes acknowledged before it",
        t.elapsed(),
        lo.iter().sum::<usize>()
    );
    Snap {
        name: name.to_string(),
        lo,
        hi,
    }
}

async fn read_image(img: &Image) -> Vec<u8> {
    let size = img.size();
    let chunks: Vec<_> = (0..size.div_ceil(OBJECT))
        .map(|i| {
            let (off, len) = (i * OBJECT, OBJECT.min(size - i * OBJECT));
            async move {
                img.read(off, len)
                    .await
                    .unwrap_or_else(|e| panic!("read {off}+{len}: {e} ({:?})", e.kind()))
            }
        })
        .collect();
    futures::future::join_all(chunks)
        .await
        .iter()
        .flat_map(|b| b.iter().copied())
        .collect()
}

fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    got.iter().zip(want).position(|(a, b)| a != b)
}

/// One lane's writer: sequential writes until `stop`.
async fn lane_writer(
    img: Image,
    log: Arc<WriteLog>,
    lane: usize,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let w = Write::nth(lane, n);
        n += 1;
        log.lane(lane).writes.push(w);
        let at = lane as u64 * LANE + w.offset;
        let t = Instant::now();
        if let Err(e) = img.write(at, Bytes::from(w.data())).await {
            return Err(format!(
                "lane {lane}: write {at}+{} failed after {:.1?}: {e} ({:?})",
                w.len,
                t.elapsed(),
                e.kind()
            ));
        }
        log.lane(lane).acked += 1;
        log.acked_total.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// `got` must equal `model` except where `failed` wrote, where each write's
/// piece of each object reads entirely old or entirely new. Returns the model
/// with the applied pieces.
fn check_failed_writes(what: &str, got: &[u8], model: &[u8], failed: &[(usize, Write)]) -> Vec<u8> {
    let mut out = model.to_vec();
    for (l, w) in failed {
        let base = l * LANE as usize;
        let new = w.data();
        let (a, b) = (base + w.offset as usize, base + (w.offset + w.len) as usize);
        let mut applied_pieces = Vec::new();
        let mut piece_start = a;
        while piece_start < b {
            let piece_end = b.min((piece_start / OBJECT as usize + 1) * OBJECT as usize);
            let got_piece = &got[piece_start..piece_end];
            if got_piece == &new[piece_start - a..piece_end - a] {
                applied_pieces.push(true);
            } else if got_piece == &model[piece_start..piece_end] {
                applied_pieces.push(false);
            } else {
                panic!(
                    "{what}, lane {l}: bytes {piece_start}..{piece_end} of a failed write are \
                     neither old nor new (torn)"
                );
            }
            piece_start = piece_end;
        }
        eprintln!("[osd_failure] {what}, lane {l}: failed write applied per object piece: {applied_pieces:?}");
        out[a..b].copy_from_slice(&got[a..b]);
    }
    if let Some(at) = first_difference(got, &out) {
        panic!("{what} differs outside the failed writes at offset {at}");
    }
    out
}

// ------------------------------------------------------------------ tests --

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a 3-OSD cluster (RBD_ROW_CEPH_OSDS=3), run by tests/run-all.sh"]
async fn osd_failure_acknowledged_writes_survive_one_osd_down() {
    let _serial = SERIAL.lock().await;
    let tc = TestCluster::from_env();
    let cluster = tc.connect(60).await;
    tc.require_three_osds_healthy(&cluster).await;
    let t0 = Instant::now();

    let store = store(&cluster, "degraded").await;
    store
        .create("img", create_options(LANES))
        .await
        .expect("create");
    let img = store.open("img").await.expect("open");
    let log = Arc::new(WriteLog::new(LANES));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..LANES)
        .map(|l| tokio::spawn(lane_writer(img.clone(), log.clone(), l, stop.clone())))
        .collect();
    let acked = || log.acked_total.load(Ordering::Relaxed);
    let pause = |s: f64| tokio::time::sleep(Duration::from_secs_f64(s));

    pause(2.0).await;
    let mut snaps = vec![take_snap(&img, &log, "healthy").await];
    pause(1.0).await;

    // osd.1 goes down with writes in flight.
    let before_stop = acked();
    tc.sh(&["osd-stop", "1"]).await;
    let degraded_from = acked();
    snaps.push(take_snap(&img, &log, "degraded-1").await);
    // Reads work while degraded too (checked against the model below).
    let healthy_read_degraded = read_image(
        &store
            .open_snapshot("img", "healthy")
            .await
            .expect("open snapshot healthy while degraded"),
    )
    .await;
    pause(2.0).await;
    snaps.push(take_snap(&img, &log, "degraded-2").await);
    pause(1.0).await;
    let degraded_writes = acked() - degraded_from;

    // Back, and recovering while the writes go on.
    tc.sh(&["osd-start", "1"]).await;
    pause(2.0).await;
    snaps.push(take_snap(&img, &log, "recovering").await);
    pause(1.0).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in writers {
        if let Err(e) = w.await.expect("writer task") {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "writes failed with one OSD of three down (min_size 2 holds):\n{}",
        failures.join("\n")
    );
    img.flush().await.expect("flush");
    let total = acked();
    eprintln!(
        "[osd_failure] {total} writes acknowledged ({} before osd.1 was stopped, {degraded_writes} \
         while degraded) in {:.1?}",
        before_stop,
        t0.elapsed()
    );
    assert!(
        before_stop > 0 && degraded_writes >= LANES as u64,
        "too few writes to test anything: {before_stop} before the failure, {degraded_writes} \
         while degraded"
    );

    // Snapshots: each lane holds its writes [0, k) for one k in [lo, hi],
    // never fewer than the previous snapshot's.
    let mut model: Vec<Vec<u8>> = vec![vec![0u8; LANE as usize]; LANES];
    let mut applied = vec![0usize; LANES];
    let mut resolved: Vec<Vec<usize>> = Vec::new();
    for s in &snaps {
        let view = store
            .open_snapshot("img", &s.name)
            .await
            .unwrap_or_else(|e| panic!("open snapshot {}: {e}", s.name));
        let got = read_image(&view).await;
        if s.name == "healthy" {
            assert!(
                got == healthy_read_degraded,
                "snapshot healthy read differently while degraded"
            );
        }
        let mut ks = Vec::with_capacity(LANES);
        for l in 0..LANES {
            let lane_log = log.lane(l);
            let lo = s.lo[l].max(applied[l]);
            for w in &lane_log.writes[applied[l]..lo] {
                w.apply(&mut model[l]);
            }
            applied[l] = lo;
            let got_lane = &got[l * LANE as usize..(l + 1) * LANE as usize];
            let mut cand = model[l].clone();
            let mut k = lo;
            let mut found = cand == got_lane;
            while !found && k < s.hi[l] {
                lane_log.writes[k].apply(&mut cand);
                k += 1;
                found = cand == got_lane;
            }
            if !found {
                let at = first_difference(got_lane, &model[l]).unwrap_or(0);
                panic!(
                    "snapshot {} lane {l} matches none of its write log prefixes {lo}..={}: \
                     first difference with the acknowledged prefix at image offset {} \
                     (writes: {:?})",
                    s.name,
                    s.hi[l],
                    l as u64 * LANE + at as u64,
                    &lane_log.writes[lo.saturating_sub(2)..s.hi[l].min(lane_log.writes.len())]
                );
            }
            model[l] = cand;
            applied[l] = k;
            ks.push(k);
        }
        let in_flight: usize = ks.iter().zip(&s.lo).map(|(k, lo)| k - lo).sum();
        eprintln!(
            "[osd_failure] snapshot {} verified ({in_flight} in-flight writes included)",
            s.name
        );
        resolved.push(ks);
    }

    // The head: every acknowledged write, the last one per byte winning.
    let head = read_image(&img).await;
    let mut final_k = Vec::with_capacity(LANES);
    for l in 0..LANES {
        let lane_log = log.lane(l);
        assert_eq!(lane_log.acked, lane_log.writes.len(), "lane {l}");
        for w in &lane_log.writes[applied[l]..] {
            w.apply(&mut model[l]);
        }
        let got = &head[l * LANE as usize..(l + 1) * LANE as usize];
        if let Some(at) = first_difference(got, &model[l]) {
            let at = l as u64 * LANE + at as u64;
            let writers: Vec<_> = lane_log
                .writes
                .iter()
                .enumerate()
                .filter(|(_, w)| {
                    let a = l as u64 * LANE + w.offset;
                    (a..a + w.len).contains(&at)
                })
                .map(|(i, w)| (i, *w))
                .collect();
            panic!(
                "head lane {l} differs from the acknowledged writes at image offset {at}; \
                 writes covering it (index, write): {writers:?}"
            );
        }
        final_k.push(lane_log.writes.len());
    }
    resolved.push(final_k);

    // Diffs: consecutive snapshots, then the last snapshot to the head.
    for i in 1..resolved.len() {
        let from = &snaps[i - 1].name;
        let (to, extents) = if i < snaps.len() {
            let to = &snaps[i].name;
            let view = store.open_snapshot("img", to).await.expect("open snapshot");
            (to.clone(), view.diff(Some(from)).expect("diff"))
        } else {
            ("head".to_string(), img.diff(Some(from)).expect("diff"))
        };
        let mut want = BTreeSet::new();
        for (l, (&a, &b)) in resolved[i - 1].iter().zip(&resolved[i]).enumerate() {
            for w in &log.lane(l).writes[a..b] {
                w.grains(l, &mut want);
            }
        }
        let mut got = BTreeSet::new();
        for e in &extents {
            assert!(e.exists, "diff {from}..{to}: {e:?} reads as zeros");
            got.extend(e.offset / GRAIN..(e.offset + e.length).div_ceil(GRAIN));
        }
        if got != want {
            let missing: Vec<_> = want.difference(&got).take(8).collect();
            let extra: Vec<_> = got.difference(&want).take(8).collect();
            panic!(
                "diff {from}..{to}: {} grains, the write log says {}; missing grains {missing:?}, \
                 extra grains {extra:?}",
                got.len(),
                want.len()
            );
        }
        eprintln!(
            "[osd_failure] diff {from}..{to}: {} grains as logged",
            got.len()
        );
    }

    img.close().await.expect("close");
    tc.sh(&["wait"]).await;
    eprintln!("[osd_failure] degraded test done in {:.1?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a 3-OSD cluster (RBD_ROW_CEPH_OSDS=3), run by tests/run-all.sh"]
async fn osd_failure_below_min_size_fails_in_bounded_time_then_recovers() {
    const OP_TIMEOUT: u64 = 10;
    /// What "bounded" means: the op timeout plus slack for the layer's own
    /// round trips (a sub-grain write reads before it writes).
    const BOUND: Duration = Duration::from_secs(3 * OP_TIMEOUT);
    const N: usize = 8;

    let _serial = SERIAL.lock().await;
    let tc = TestCluster::from_env();
    let cluster = tc.connect(OP_TIMEOUT as u32).await;
    tc.require_three_osds_healthy(&cluster).await;
    let t0 = Instant::now();

    let store = store(&cluster, "inactive").await;
    store
        .create("img", create_options(N))
        .await
        .expect("create");
    let img = store.open("img").await.expect("open");
    let mut model = vec![0u8; N * LANE as usize];
    for l in 0..N {
        let w = Write::full(l, 0);
        img.write(l as u64 * LANE, Bytes::from(w.data()))
            .await
            .expect("write");
        w.apply(&mut model[l * LANE as usize..(l + 1) * LANE as usize]);
    }
    img.flush().await.expect("flush");
    img.snap_create("before").await.expect("snap create");

    // Below min_size: every PG is inactive.
    tc.sh(&["osd-stop", "1"]).await;
    tc.sh(&["osd-stop", "2"]).await;

    let attempts: Vec<_> = (0..N)
        .map(|l| {
            let img = img.clone();
            // Odd lanes: sub-grain edges, so a read comes first.
            let w = if l % 2 == 0 {
                Write::nth_aligned(l, 1)
            } else {
                Write::nth(l, 1)
            };
            async move {
                let t = Instant::now();
                let at = l as u64 * LANE + w.offset;
                let r = tokio::time::timeout(
                    Duration::from_secs(120),
                    img.write(at, Bytes::from(w.data())),
                )
                .await;
                (l, w, r, t.elapsed())
            }
        })
        .collect();
    let read_attempt = async {
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(120), img.read(0, LANE)).await;
        (r, t.elapsed())
    };
    let (results, (read, read_took)) =
        futures::future::join(futures::future::join_all(attempts), read_attempt).await;
    let mut failed: Vec<(usize, Write)> = Vec::new();
    for (l, w, r, took) in results {
        match r {
            Err(_) => panic!("lane {l}: write hung for {took:.1?} with 2 of 3 OSDs down"),
            Ok(Ok(())) => panic!(
                "lane {l}: write acknowledged after {took:.1?} with 2 of 3 OSDs down (below min_size 2)"
            ),
            Ok(Err(e)) => {
                eprintln!("[osd_failure] lane {l}: write failed after {took:.1?}: {e} ({:?})", e.kind());
                assert!(
                    matches!(e.kind(), ErrorKind::Transient | ErrorKind::Io),
                    "lane {l}: expected a Transient or Io error below min_size, got {:?}: {e}",
                    e.kind()
                );
                assert!(took <= BOUND, "lane {l}: the write took {took:.1?} to fail (bound {BOUND:?})");
                failed.push((l, w));
            }
        }
    }
    match read {
        Err(_) => panic!("read hung for {read_took:.1?} with 2 of 3 OSDs down"),
        Ok(Ok(_)) => panic!("read succeeded with 2 of 3 OSDs down (PGs inactive)"),
        Ok(Err(e)) => {
            eprintln!(
                "[osd_failure] read failed after {read_took:.1?}: {e} ({:?})",
                e.kind()
            );
            assert!(
                matches!(e.kind(), ErrorKind::Transient | ErrorKind::Io),
                "expected a Transient or Io read error below min_size, got {:?}: {e}",
                e.kind()
            );
            assert!(read_took <= BOUND, "the read took {read_took:.1?} to fail");
        }
    }

    // A snapshot (a metadata commit) fails the same way.
    let t = Instant::now();
    match tokio::time::timeout(Duration::from_secs(120), img.snap_create("during")).await {
        Err(_) => panic!(
            "snap create hung for {:.1?} with 2 of 3 OSDs down",
            t.elapsed()
        ),
        Ok(Ok(_)) => panic!("snap create succeeded with 2 of 3 OSDs down"),
        Ok(Err(e)) => {
            let took = t.elapsed();
            eprintln!(
                "[osd_failure] snap create failed after {took:.1?}: {e} ({:?})",
                e.kind()
            );
            assert!(
                matches!(e.kind(), ErrorKind::Transient | ErrorKind::Io),
                "expected a Transient or Io snap create error below min_size, got {:?}: {e}",
                e.kind()
            );
            assert!(took <= BOUND, "snap create took {took:.1?} to fail");
        }
    }

    tc.sh(&["osd-start", "1"]).await;
    tc.sh(&["osd-start", "2"]).await;
    tc.sh(&["wait"]).await;

    // A handle whose writes failed may refuse further use (reopen); drop it
    // and reopen the image.
    let closed = img.close().await;
    eprintln!("[osd_failure] closing the handle after the failures: {closed:?}");
    let img = store
        .open("img")
        .await
        .expect("reopen after the OSDs are back");

    // Snapshot "before" is intact; the head holds every acknowledged write
    // and each failed write's piece of each object entirely or not at all.
    let before = store
        .open_snapshot("img", "before")
        .await
        .expect("open snapshot before");
    assert!(
        read_image(&before).await == model,
        "snapshot before differs from what was acknowledged"
    );
    let head = read_image(&img).await;
    let resolved = check_failed_writes("head", &head, &model, &failed);
    // The failed snapshot either exists (its commit landed) and reads like
    // the head, or does not exist.
    if img.snap_list().iter().any(|s| s.name == "during") {
        let during = store
            .open_snapshot("img", "during")
            .await
            .expect("open snapshot during");
        let d = check_failed_writes(
            "snapshot during",
            &read_image(&during).await,
            &model,
            &failed,
        );
        eprintln!(
            "[osd_failure] the failed snapshot exists; equal to the head: {}",
            d == resolved
        );
    } else {
        eprintln!("[osd_failure] the failed snapshot does not exist");
    }
    model = resolved;
    let records = row_layer::lifecycle::verify_records(&store, "img")
        .await
        .expect("verify records");

    // And it takes writes and snapshots again.
    for l in 0..N {
        let w = Write::nth(l, 2);
        img.write(l as u64 * LANE + w.offset, Bytes::from(w.data()))
            .await
            .expect("write after recovery");
        w.apply(&mut model[l * LANE as usize..(l + 1) * LANE as usize]);
    }
    img.flush().await.expect("flush after recovery");
    img.snap_create("after")
        .await
        .expect("snap create after recovery");
    assert!(read_image(&img).await == model, "head after recovery");
    let after = store
        .open_snapshot("img", "after")
        .await
        .expect("open snapshot after");
    assert!(read_image(&after).await == model, "snapshot after");
    let diff = after.diff(Some("before")).expect("diff");
    assert!(!diff.is_empty(), "diff before..after is empty");
    img.close().await.expect("close");
    eprintln!(
        "[osd_failure] below-min_size test done in {:.1?} ({records} sealed epoch records verified)",
        t0.elapsed()
    );
}
