//! `kill -9` of the real `rbd-gateway` process on the test cluster, over
//! and over: during NBD writes (a logging client of our own plus fio with
//! `verify_backlog` on another region), during `rbd-row snap create`,
//! during `rbd-row snap rm`, and right after a forced rollback that
//! discarded many objects (the reclaimer deletes them in the background on
//! the image's control task; the gateway has no flag for
//! `reclaim_ops_per_sec`, so the test kills shortly after the rollback).
//!
//! After each kill a new gateway is started; its first client makes it open
//! the image, which finds the dead owner silent, fences it (blocklist) and
//! breaks its lock (DESIGN §5). Then:
//! - every block of the logged region reads either the version that was
//!   acknowledged *and* followed by an acknowledged FLUSH, or a version
//!   written after it (DESIGN §6 (a), (c)) — never an older one, never
//!   anything torn or foreign;
//! - every snapshot `rbd-row snap ls` lists exports (`rbd-row export
//!   img@snap`) exactly what the write log says it held; a snapshot whose
//!   `snap create` was interrupted is either absent or exact, one whose
//!   `snap rm` was interrupted is either gone or exact; a snapshot whose
//!   create succeeded and whose removal was never attempted is listed.
//!
//! Rounds: `ROW_KILL9_ROUNDS` (default 20). Needs the test cluster
//! (`tests/ceph/cluster.sh start; eval "$(tests/ceph/cluster.sh env)"`;
//! tests/run-all.sh runs it with `--ignored`). The `rbd-row` binary must be
//! next to `rbd-gateway` (as for e2e_cli.rs: `cargo build -p rbd-row-cli`).

mod common;

use common::ceph_cli::*;
use common::gateway_proc::GatewayProc;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use row_nbd::proto::*;

const BLOCK: u64 = 4096;
/// Logged region: blocks [0, LOGGED_BLOCKS) (4 MiB).
const LOGGED_BLOCKS: u64 = 1024;
/// Image: the logged region, then 4 MiB of fio region.
const IMAGE_SIZE: u64 = 8 << 20;
const FIO_OFFSET: u64 = 4 << 20;
/// Object size of the test image: small, so that a rollback discards many
/// objects (64 in the logged region alone) for the reclaimer.
const OBJECT_SIZE: &str = "64K";

/// Waits for `child` at most `limit`; kills it (SIGKILL) after that.
/// Returns whether it exited successfully by itself.
fn wait_or_kill(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s.success();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A synchronous NBD client (simple replies): batches of writes, FLUSH,
/// reads.
struct Nbd {
    s: TcpStream,
    handle: u64,
}

#[derive(Debug)]
struct Gone;

impl Nbd {
    fn connect(addr: std::net::SocketAddr, export: &str) -> Nbd {
        let mut s = TcpStream::connect(addr).expect("connect");
        // Opening the image may have to fence a dead owner first (5 s owner
        // timeout and the blocklist).
        s.set_read_timeout(Some(Duration::from_secs(90)))
            .expect("timeout");
        let mut b8 = [0u8; 8];
        let mut b2 = [0u8; 2];
        s.read_exact(&mut b8).expect("magic");
        assert_eq!(u64::from_be_bytes(b8), NBDMAGIC);
        s.read_exact(&mut b8).expect("ihaveopt");
        s.read_exact(&mut b2).expect("flags");
        s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
            .expect("client flags");
        let mut opt = Vec::new();
        opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
        opt.extend_from_slice(export.as_bytes());
        opt.extend_from_slice(&0u16.to_be_bytes());
        let mut msg = Vec::new();
        msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
        msg.extend_from_slice(&OPT_GO.to_be_bytes());
        msg.extend_from_slice(&(opt.len() as u32).to_be_bytes());
        msg.extend_from_slice(&opt);
        s.write_all(&msg).expect("NBD_OPT_GO");
        loop {
            let mut hdr = [0u8; 20];
            s.read_exact(&mut hdr).expect("option reply");
            let typ = u32::from_be_bytes(hdr[12..16].try_into().expect("4"));
            let len = u32::from_be_bytes(hdr[16..20].try_into().expect("4")) as usize;
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).expect("payload");
            assert!(typ & (1 << 31) == 0, "NBD_OPT_GO refused: {typ:#x}");
            if typ == REP_ACK {
                break;
            }
        }
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        Nbd { s, handle: 0 }
    }

    fn send(&mut self, cmd: u16, offset: u64, len: u32, data: &[u8]) -> Result<u64, Gone> {
        self.handle += 1;
        let mut req = Vec::with_capacity(28 + data.len());
        req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&cmd.to_be_bytes());
        req.extend_from_slice(&self.handle.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        req.extend_from_slice(data);
        self.s.write_all(&req).map_err(|_| Gone)?;
        Ok(self.handle)
    }

    /// One simple reply: (handle, errno), with `payload` bytes of data
    /// read into `buf` when errno is 0.
    fn reply(&mut self, buf: Option<&mut [u8]>) -> Result<(u64, u32), Gone> {
        let mut hdr = [0u8; 16];
        self.s.read_exact(&mut hdr).map_err(|_| Gone)?;
        assert_eq!(
            u32::from_be_bytes(hdr[0..4].try_into().expect("4")),
            SIMPLE_REPLY_MAGIC
        );
        let errno = u32::from_be_bytes(hdr[4..8].try_into().expect("4"));
        let handle = u64::from_be_bytes(hdr[8..16].try_into().expect("8"));
        if errno == 0 {
            if let Some(b) = buf {
                self.s.read_exact(b).map_err(|_| Gone)?;
            }
        }
        Ok((handle, errno))
    }

    fn flush(&mut self) -> Result<(), Gone> {
        self.send(CMD_FLUSH, 0, 0, &[])?;
        let (_, errno) = self.reply(None)?;
        assert_eq!(errno, 0, "FLUSH failed");
        Ok(())
    }

    fn read(&mut self, offset: u64, len: u32) -> Vec<u8> {
        self.send(CMD_READ, offset, len, &[]).expect("send READ");
        let mut buf = vec![0u8; len as usize];
        let (_, errno) = self.reply(Some(&mut buf)).expect("READ reply");
        assert_eq!(errno, 0, "READ at {offset} failed");
        buf
    }

    fn disconnect(mut self) {
        let _ = self.send(CMD_DISC, 0, 0, &[]);
    }
}

/// The contents of `block` written as write number `id` (0: zeros).
fn block_data(block: u64, id: u64) -> Vec<u8> {
    let mut v = vec![0u8; BLOCK as usize];
    if id == 0 {
        return v;
    }
    for (i, chunk) in v.chunks_mut(16).enumerate() {
        chunk[..8].copy_from_slice(&block.to_le_bytes());
        chunk[8..16].copy_from_slice(&(id ^ ((i as u64) << 48)).to_le_bytes());
    }
    v
}

/// The write id a block holds, if it is a well-formed block of ours.
fn parse_block(block: u64, got: &[u8]) -> Option<u64> {
    if got.iter().all(|b| *b == 0) {
        return Some(0);
    }
    let id = u64::from_le_bytes(got[8..16].try_into().expect("8"));
    (got == block_data(block, id).as_slice()).then_some(id)
}

/// Write log of the logged region: per block, the id known durable
/// (acknowledged, then an acknowledged FLUSH) and the ids issued since.
#[derive(Clone, Default)]
struct Model {
    durable: Vec<u64>,
    since: Vec<Vec<u64>>,
}

impl Model {
    fn new() -> Model {
        Model {
            durable: vec![0; LOGGED_BLOCKS as usize],
            since: vec![Vec::new(); LOGGED_BLOCKS as usize],
        }
    }
    fn is_exact(&self) -> bool {
        self.since.iter().all(Vec::is_empty)
    }
    fn contents(&self) -> Vec<u8> {
        assert!(self.is_exact());
        let mut v = Vec::with_capacity((LOGGED_BLOCKS * BLOCK) as usize);
        for (b, id) in self.durable.iter().enumerate() {
            v.extend_from_slice(&block_data(b as u64, *id));
        }
        v
    }
}

/// Writes batches of 16 distinct random blocks, FLUSH after every 4th
/// batch (and before returning), until `stop` or until the gateway goes
/// away. Returns whether the gateway went away.
fn write_batches(
    nbd: &mut Nbd,
    model: &mut Model,
    next_id: &mut u64,
    rng: &mut Rng,
    stop: impl Fn() -> bool,
    max_batches: usize,
) -> bool {
    let mut batch_no = 0usize;
    loop {
        if stop() || batch_no >= max_batches {
            return match nbd.flush() {
                Ok(()) => {
                    mark_flushed(model);
                    false
                }
                Err(Gone) => true,
            };
        }
        let mut blocks: Vec<u64> = Vec::new();
        while blocks.len() < 16 {
            let b = rng.below(LOGGED_BLOCKS);
            if !blocks.contains(&b) {
                blocks.push(b);
            }
        }
        let mut sent = 0;
        for &b in &blocks {
            *next_id += 1;
            // Issued: from now on the block may hold it.
            model.since[b as usize].push(*next_id);
            if nbd
                .send(CMD_WRITE, b * BLOCK, BLOCK as u32, &block_data(b, *next_id))
                .is_err()
            {
                return true;
            }
            sent += 1;
        }
        for _ in 0..sent {
            match nbd.reply(None) {
                Ok((_, errno)) => assert_eq!(errno, 0, "a write failed before any kill"),
                Err(Gone) => return true,
            }
        }
        batch_no += 1;
        if batch_no.is_multiple_of(4) {
            match nbd.flush() {
                Ok(()) => mark_flushed(model),
                Err(Gone) => return true,
            }
        }
    }
}

/// A FLUSH was acknowledged after every write issued so far was: the last
/// issued id of each block is durable.
fn mark_flushed(model: &mut Model) {
    for (d, s) in model.durable.iter_mut().zip(model.since.iter_mut()) {
        if let Some(last) = s.last() {
            *d = *last;
        }
        s.clear();
    }
}

/// Reads the logged region through the new gateway and checks it against
/// the log; the model becomes exact (what was read).
fn verify_head(nbd: &mut Nbd, model: &mut Model, round: usize) {
    let chunk = 256 * 1024u64;
    let mut off = 0;
    while off < LOGGED_BLOCKS * BLOCK {
        let data = nbd.read(off, chunk as u32);
        for (i, got) in data.chunks(BLOCK as usize).enumerate() {
            let b = off / BLOCK + i as u64;
            let id = parse_block(b, got)
                .unwrap_or_else(|| panic!("round {round}: block {b} holds torn or foreign data"));
            let (d, s) = (model.durable[b as usize], &model.since[b as usize]);
            assert!(
                id == d || s.contains(&id),
                "round {round}: block {b} reads write #{id}; acknowledged and flushed was #{d}, \
                 issued since: {s:?}"
            );
            model.durable[b as usize] = id;
            model.since[b as usize].clear();
        }
        off += chunk;
    }
}

fn snap_names(conf: &str, image: &str) -> Vec<String> {
    let out = row_ok(conf, &["snap", "ls", image, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    v.as_array()
        .expect("snap ls JSON array")
        .iter()
        .filter_map(|s| s.get("name").and_then(|n| n.as_str()).map(str::to_owned))
        .collect()
}

/// What the test knows of a snapshot.
#[derive(Clone)]
enum SnapState {
    /// Created (the CLI said so): must be listed.
    Exists(Vec<u8>),
    /// `snap create` interrupted: absent, or exact.
    MaybeCreated(Vec<u8>),
    /// `snap rm` interrupted: gone, or exact.
    MaybeRemoved(Vec<u8>),
}

/// Checks every listed snapshot against the log (export), and that every
/// known-created one is listed; resolves the uncertain ones.
fn verify_snaps(
    conf: &str,
    image: &str,
    snaps: &mut BTreeMap<String, SnapState>,
    dir: &Path,
    round: usize,
) {
    let listed = snap_names(conf, image);
    for name in &listed {
        let expected = match snaps.get(name) {
            Some(
                SnapState::Exists(c) | SnapState::MaybeCreated(c) | SnapState::MaybeRemoved(c),
            ) => c.clone(),
            None => panic!("round {round}: snap ls lists {name}, which the test never created"),
        };
        let file = dir.join("snap.raw");
        let _ = std::fs::remove_file(&file);
        row_ok(
            conf,
            &[
                "export",
                &format!("{image}@{name}"),
                file.to_str().expect("utf8"),
            ],
        );
        let got = std::fs::read(&file).expect("read export");
        assert_eq!(
            got.len() as u64,
            IMAGE_SIZE,
            "round {round}: export size of {name}"
        );
        let logged = &got[..(LOGGED_BLOCKS * BLOCK) as usize];
        if logged != expected.as_slice() {
            let first = logged
                .chunks(BLOCK as usize)
                .zip(expected.chunks(BLOCK as usize))
                .position(|(a, b)| a != b)
                .expect("a differing block");
            panic!(
                "round {round}: snapshot {name} does not hold what it held when created: first \
                 differing block {first} (reads write #{:?}, expected #{:?})",
                parse_block(first as u64, &logged[first * 4096..(first + 1) * 4096]),
                parse_block(first as u64, &expected[first * 4096..(first + 1) * 4096]),
            );
        }
        snaps.insert(name.clone(), SnapState::Exists(expected));
    }
    snaps.retain(|name, st| match st {
        SnapState::Exists(_) => {
            assert!(
                listed.contains(name),
                "round {round}: snapshot {name} was created (acknowledged) but is not listed: {listed:?}"
            );
            true
        }
        _ => listed.contains(name),
    });
}

#[derive(Default, Debug)]
struct Tally {
    rounds: usize,
    writes_killed: usize,
    create_killed_absent: usize,
    create_killed_exact: usize,
    rm_killed_gone: usize,
    rm_killed_kept: usize,
    reclaim_killed: usize,
    takeover_max: Duration,
    takeover_total: Duration,
}

#[test]
#[ignore = "needs CEPH_CONF (run by tests/run-all.sh)"]
fn kill9_gateway_during_writes_snapshots_and_reclaim() {
    let conf = ceph_conf();
    let rounds: usize = std::env::var("ROW_KILL9_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    let seed: u64 = std::env::var("ROW_KILL9_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(now.as_nanos() as u64 | 1);
    eprintln!("kill9: seed {seed} (ROW_KILL9_SEED), {rounds} rounds (ROW_KILL9_ROUNDS)");
    let mut rng = Rng(seed);
    let ns = format!("kill9x{}x{:x}", std::process::id(), now.subsec_nanos());
    let image = format!("rbd/{ns}/img");
    let dir = tempfile::tempdir().expect("tempdir");
    row_ok(
        &conf,
        &[
            "create",
            &image,
            "--size",
            "8M",
            "--object-size",
            OBJECT_SIZE,
        ],
    );

    let started = Instant::now();
    let mut model = Model::new();
    let mut next_id = 0u64;
    let mut snaps: BTreeMap<String, SnapState> = BTreeMap::new();
    let mut snap_no = 0usize;
    let mut tally = Tally::default();
    let mut gw = GatewayProc::on_ceph(&conf, &image, dir.path());
    let mut nbd = Nbd::connect(gw.addr(), &image);

    for round in 0..rounds {
        let kind = round % 4;
        match kind {
            // Writes: the logged client and fio (verify_backlog) on the
            // fio region, killed at a random moment.
            0 => {
                let fio = Command::new("fio")
                    .args([
                        "--name=kill9",
                        // One process: killing it kills the job too.
                        "--thread",
                        "--ioengine=nbd",
                        &format!("--uri={}", gw.url(&image)),
                        "--rw=randwrite",
                        "--bs=4k",
                        "--iodepth=8",
                        &format!("--offset={FIO_OFFSET}"),
                        "--size=4M",
                        "--time_based",
                        "--runtime=60",
                        "--verify=crc32c",
                        "--verify_backlog=64",
                        "--verify_fatal=1",
                        "--verify_state_save=0",
                    ])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn fio");
                let kill_after = Duration::from_millis(300 + rng.below(1200));
                let t0 = Instant::now();
                let gone = write_batches(
                    &mut nbd,
                    &mut model,
                    &mut next_id,
                    &mut rng,
                    || t0.elapsed() >= kill_after,
                    usize::MAX,
                );
                assert!(
                    !gone,
                    "round {round}: the gateway went away by itself:\n{}",
                    gw.log()
                );
                // Kill while a batch is in flight.
                let mut blocks = Vec::new();
                for _ in 0..16 {
                    let b = rng.below(LOGGED_BLOCKS);
                    if blocks.contains(&b) {
                        continue;
                    }
                    blocks.push(b);
                    next_id += 1;
                    model.since[b as usize].push(next_id);
                    let _ = nbd.send(CMD_WRITE, b * BLOCK, BLOCK as u32, &block_data(b, next_id));
                }
                gw.kill9();
                let mut fio = fio;
                // fio fails on the lost connection; never wait long for it.
                wait_or_kill(&mut fio, Duration::from_secs(15));
                let out = fio.wait_with_output().expect("fio");
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(
                    !text.contains("verify failed")
                        && !text.contains("bad magic")
                        && !text.contains("bad header"),
                    "round {round}: fio verification failed before the kill:\n{text}"
                );
                tally.writes_killed += 1;
            }
            // snap create, killed at a random moment (quiescent, flushed).
            1 => {
                let batches = 4 + rng.below(8) as usize;
                let gone = write_batches(
                    &mut nbd,
                    &mut model,
                    &mut next_id,
                    &mut rng,
                    || false,
                    batches,
                );
                assert!(!gone, "round {round}: gateway went away:\n{}", gw.log());
                assert!(model.is_exact());
                snap_no += 1;
                let name = format!("s{snap_no}");
                snaps.insert(name.clone(), SnapState::MaybeCreated(model.contents()));
                let mut cli = row_cmd(&conf, &["snap", "create", &format!("{image}@{name}")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn snap create");
                std::thread::sleep(Duration::from_millis(rng.below(120)));
                gw.kill9();
                // The CLI either finished or waits for a dead owner.
                wait_or_kill(&mut cli, Duration::from_secs(3));
            }
            // snap rm of a random snapshot, killed at a random moment; if
            // there is none, take one (not killed) for later rounds.
            2 => {
                let existing: Vec<String> = snaps.keys().cloned().collect();
                if existing.is_empty() {
                    snap_no += 1;
                    let name = format!("s{snap_no}");
                    row_ok(&conf, &["snap", "create", &format!("{image}@{name}")]);
                    snaps.insert(name, SnapState::Exists(model.contents()));
                }
                let existing: Vec<String> = snaps.keys().cloned().collect();
                let name = existing[rng.below(existing.len() as u64) as usize].clone();
                let content = match snaps.get(&name).expect("known") {
                    SnapState::Exists(c)
                    | SnapState::MaybeCreated(c)
                    | SnapState::MaybeRemoved(c) => c.clone(),
                };
                snaps.insert(name.clone(), SnapState::MaybeRemoved(content));
                let mut cli = row_cmd(&conf, &["snap", "rm", &format!("{image}@{name}")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn snap rm");
                std::thread::sleep(Duration::from_millis(rng.below(120)));
                gw.kill9();
                wait_or_kill(&mut cli, Duration::from_secs(3));
            }
            // Reclaim: a snapshot, one write into every object of the
            // logged region, a forced rollback to the snapshot (discarding
            // those 64 objects), kill while the reclaimer deletes them.
            _ => {
                snap_no += 1;
                let name = format!("s{snap_no}");
                row_ok(&conf, &["snap", "create", &format!("{image}@{name}")]);
                let at_snap = model.clone();
                snaps.insert(name.clone(), SnapState::Exists(model.contents()));
                let per_object = 64 * 1024 / BLOCK;
                let mut sent = 0;
                for obj in 0..LOGGED_BLOCKS / per_object {
                    let b = obj * per_object + rng.below(per_object);
                    next_id += 1;
                    nbd.send(CMD_WRITE, b * BLOCK, BLOCK as u32, &block_data(b, next_id))
                        .expect("send");
                    sent += 1;
                }
                for _ in 0..sent {
                    let (_, errno) = nbd.reply(None).expect("reply");
                    assert_eq!(errno, 0);
                }
                nbd.flush().expect("flush");
                row_ok(
                    &conf,
                    &["snap", "rollback", "--force", &format!("{image}@{name}")],
                );
                model = at_snap;
                std::thread::sleep(Duration::from_millis(rng.below(150)));
                gw.kill9();
                tally.reclaim_killed += 1;
            }
        }
        drop(nbd);

        // Take over: a new gateway, whose first client opens the image.
        let t0 = Instant::now();
        gw = GatewayProc::on_ceph(&conf, &image, dir.path());
        nbd = Nbd::connect(gw.addr(), &image);
        let takeover = t0.elapsed();
        tally.takeover_max = tally.takeover_max.max(takeover);
        tally.takeover_total += takeover;

        let before: HashMap<String, bool> = snaps
            .iter()
            .map(|(k, v)| (k.clone(), matches!(v, SnapState::MaybeCreated(_))))
            .collect();
        let maybe_removed: Vec<String> = snaps
            .iter()
            .filter(|(_, v)| matches!(v, SnapState::MaybeRemoved(_)))
            .map(|(k, _)| k.clone())
            .collect();
        verify_head(&mut nbd, &mut model, round);
        verify_snaps(&conf, &image, &mut snaps, dir.path(), round);
        for (name, was_maybe_created) in before {
            if was_maybe_created {
                if snaps.contains_key(&name) {
                    tally.create_killed_exact += 1;
                } else {
                    tally.create_killed_absent += 1;
                }
            }
        }
        for name in maybe_removed {
            if snaps.contains_key(&name) {
                tally.rm_killed_kept += 1;
            } else {
                tally.rm_killed_gone += 1;
            }
        }
        tally.rounds += 1;
        eprintln!(
            "kill9: round {round} (kind {kind}) ok, takeover {takeover:?}, {} snapshots, {:?} elapsed",
            snaps.len(),
            started.elapsed()
        );
    }

    // The last gateway closes the image cleanly; then `rbd-row check`
    // finds nothing wrong (leaked objects of interrupted reclaims were
    // finished by the reclaimer at open or on the control task).
    nbd.disconnect();
    let status = gw.terminate_within(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "rbd-gateway did not exit cleanly on SIGTERM ({status:?}):\n{}",
        gw.log()
    );
    let out = row(&conf, &["check", &image]);
    assert!(out.status.success(), "{}", show("rbd-row check", &out));
    eprintln!("kill9: {tally:?}; {:?} in all", started.elapsed());
    let _ = row(&conf, &["snap", "purge", &image]);
    let _ = row(&conf, &["rm", &image]);
}
