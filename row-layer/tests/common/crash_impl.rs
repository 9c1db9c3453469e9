//! The crash test's operations, oracle and checks (shared with the RADOS run).

use super::*;
use proptest::prelude::*;
use row_layer::backend::fault::FaultBackend;
use row_layer::backend::mem::{CrashMode, MemBackend};
use row_layer::backend::Backend;
use row_layer::Store;
use std::collections::BTreeMap;
use std::sync::Arc;

const SIZE: u64 = 2 * OBJ;
const GRAINS: usize = (SIZE / GRAIN) as usize;

#[derive(Debug, Clone)]
pub enum Op {
    Write {
        off: u64,
        len: u64,
        seed: u64,
    },
    Discard {
        off: u64,
        len: u64,
    },
    Flush,
    Snap,
    RemoveSnap {
        which: usize,
    },
    Bookmark {
        which: usize,
    },
    /// A reclaim pass now: trims, merges, garbage deletion.
    Reclaim,
    /// A head checkpoint now (checkpoint.rs).
    Checkpoint,
    /// A defragmentation pass now (defrag.rs): rewrites, same contents.
    Defrag,
}

pub fn op() -> impl Strategy<Value = Op> {
    let range = (0..SIZE, 1u64..(24 * 1024));
    prop_oneof![
        8 => (range.clone(), any::<u64>()).prop_map(|((off, len), seed)| Op::Write { off, len, seed }),
        2 => range.prop_map(|(off, len)| Op::Discard { off, len }),
        2 => Just(Op::Flush),
        3 => Just(Op::Snap),
        2 => (0usize..6).prop_map(|which| Op::RemoveSnap { which }),
        1 => (0usize..6).prop_map(|which| Op::Bookmark { which }),
        2 => Just(Op::Reclaim),
        3 => Just(Op::Checkpoint),
        2 => Just(Op::Defrag),
    ]
}

/// Rewrites every object whose read takes two backend reads or more.
pub fn defrag_everything() -> row_layer::DefragOptions {
    row_layer::DefragOptions {
        min_reads: 2,
        bytes_per_sec: 0,
    }
}

/// What each grain may read as after a crash.
struct Oracle {
    current: Vec<u8>,
    /// Per grain: every content it had since the last completed flush.
    allowed: Vec<Vec<Vec<u8>>>,
    snaps: BTreeMap<String, Vec<u8>>,
    /// Snapshots whose create or remove was interrupted: may exist, exactly.
    uncertain: BTreeMap<String, Vec<u8>>,
}

impl Oracle {
    fn grain(&self, g: usize) -> Vec<u8> {
        self.current[g * GRAIN as usize..(g + 1) * GRAIN as usize].to_vec()
    }
    fn note(&mut self, off: u64, len: u64) {
        let (g0, g1) = ((off / GRAIN) as usize, (off + len).div_ceil(GRAIN) as usize);
        for g in g0..g1 {
            let v = self.grain(g);
            self.allowed[g].push(v);
        }
    }
    fn flushed(&mut self) {
        for g in 0..GRAINS {
            self.allowed[g] = vec![self.grain(g)];
        }
    }
}

/// Runs `ops` on a fresh image, crashing at the `crash_at`-th mutation on
/// `MemBackend` (dropping unflushed mutations by `seed`).
pub async fn run(ops: Vec<Op>, crash_at: u64, applied: bool, seed: u64) {
    let mem = Arc::new(MemBackend::new());
    let crash_mem = mem.clone();
    run_with(mem, ops, crash_at, applied, move || {
        crash_mem.crash(CrashMode::Random(seed));
        Box::pin(async move { crash_mem as Arc<dyn Backend> })
    })
    .await
}

/// Like [`run`] on any backend: `crash` simulates the crash on the store
/// and returns a backend handle of a *new* client to recover with.
pub async fn run_with<F>(
    live: Arc<dyn Backend>,
    ops: Vec<Op>,
    crash_at: u64,
    applied: bool,
    crash: F,
) where
    F: FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn Backend>>>>,
{
    let fault = Arc::new(FaultBackend::new(live));
    // Reclaim passes pack every sealed record (pack.rs): crashes land
    // between pack entries, their removals and the record rewrites too.
    let store =
        Store::new(fault.clone() as Arc<dyn Backend>).with_image_options(row_layer::ImageOptions {
            pack_min_epochs: 1,
            ..row_layer::ImageOptions::default()
        });
    store.create("img", small_opts(SIZE)).await.expect("create");
    let img = store.open("img").await.expect("open");
    img.flush().await.expect("flush");
    let mut o = Oracle {
        current: vec![0; SIZE as usize],
        allowed: vec![vec![vec![0; GRAIN as usize]]; GRAINS],
        snaps: BTreeMap::new(),
        uncertain: BTreeMap::new(),
    };
    fault.crash_after_mutations(crash_at, applied);
    let mut n = 0;
    for op in &ops {
        let ok = match *op {
            Op::Write { off, len, seed } => {
                let len = len.min(SIZE - off);
                let data = pattern(seed, len as usize);
                let prev = o.current.clone();
                o.current[off as usize..(off + len) as usize].copy_from_slice(&data);
                o.note(off, len);
                let r = img.write(off, data).await;
                if r.is_err() {
                    // Interrupted: the new contents stay allowed, but the
                    // oracle's notion of "current" is unknowable; stop here.
                    let _ = prev;
                }
                r.is_ok()
            }
            Op::Discard { off, len } => {
                let len = len.min(SIZE - off);
                o.current[off as usize..(off + len) as usize].fill(0);
                o.note(off, len);
                img.discard(off, len).await.is_ok()
            }
            Op::Flush => {
                let r = img.flush().await;
                if r.is_ok() {
                    o.flushed();
                }
                r.is_ok()
            }
            Op::Snap => {
                let name = format!("s{n}");
                n += 1;
                match img.snap_create(&name).await {
                    Ok(_) => {
                        o.snaps.insert(name, o.current.clone());
                        o.flushed();
                        true
                    }
                    Err(_) => {
                        o.uncertain.insert(name, o.current.clone());
                        false
                    }
                }
            }
            Op::RemoveSnap { which } => {
                let Some(name) = o.snaps.keys().nth(which % o.snaps.len().max(1)).cloned() else {
                    continue;
                };
                let content = o.snaps.remove(&name).unwrap_or_default();
                match img.snap_remove(&name).await {
                    Ok(()) => {
                        o.flushed();
                        true
                    }
                    Err(_) => {
                        o.uncertain.insert(name, content);
                        false
                    }
                }
            }
            Op::Bookmark { which } => {
                let Some(name) = o.snaps.keys().nth(which % o.snaps.len().max(1)).cloned() else {
                    continue;
                };
                let r = img.bookmark_create(&name, &format!("b{n}")).await;
                n += 1;
                if r.is_ok() {
                    o.flushed();
                }
                r.is_ok()
            }
            Op::Reclaim => img.reclaim().await.is_ok(),
            // Contents do not change, so the oracle does not either.
            Op::Defrag => img.defragment(&defrag_everything()).await.is_ok(),
            Op::Checkpoint => {
                // It flushes before its record: everything before is durable.
                let r = img.checkpoint().await;
                if r.is_ok() {
                    o.flushed();
                }
                r.is_ok()
            }
        };
        if !ok {
            assert!(
                fault.has_crashed(),
                "an operation failed without the injected crash"
            );
            break;
        }
    }
    drop(img);
    let store = Store::new(crash().await).with_image_options(row_layer::ImageOptions {
        owner_timeout: std::time::Duration::from_millis(500),
        ..row_layer::ImageOptions::default()
    });
    let img = store.open("img").await.expect("reopen after crash");
    img.self_check().expect("self_check after crash");
    let head = read_all(&img).await;
    for g in 0..GRAINS {
        let got = &head[g * GRAIN as usize..(g + 1) * GRAIN as usize];
        assert!(
            o.allowed[g].iter().any(|v| v == got),
            "grain {g} reads a value it never held since the last flush"
        );
    }
    let listed: Vec<String> = img.snap_list().into_iter().map(|s| s.name).collect();
    for (name, content) in &o.snaps {
        assert!(listed.contains(name), "completed snapshot {name} lost");
        let s = store
            .open_snapshot("img", name)
            .await
            .expect("open snapshot");
        assert!(read_all(&s).await == *content, "snapshot {name} changed");
    }
    for name in &listed {
        if o.snaps.contains_key(name) {
            continue;
        }
        let content = o
            .uncertain
            .get(name)
            .unwrap_or_else(|| panic!("unknown snapshot {name}"));
        let s = store
            .open_snapshot("img", name)
            .await
            .expect("open snapshot");
        assert!(
            read_all(&s).await == *content,
            "interrupted snapshot {name} is not exact"
        );
    }
    for name in &listed {
        let d = img.diff(Some(name)).expect("diff");
        let s = store
            .open_snapshot("img", name)
            .await
            .expect("open snapshot");
        let base = read_all(&s).await;
        assert!(
            apply_diff(&base, SIZE, &d, &head) == head,
            "diff from {name} after crash"
        );
    }
    // Work a crash interrupted (a trim, a merge, garbage deletion) is done
    // again by the next pass and changes no view.
    img.reclaim().await.expect("reclaim after recovery");
    img.self_check().expect("self_check after reclaim");
    assert!(
        read_all(&img).await == head,
        "reclaim after recovery changed the head"
    );
    for name in &listed {
        let s = store
            .open_snapshot("img", name)
            .await
            .expect("open snapshot");
        let want = o.snaps.get(name).or_else(|| o.uncertain.get(name));
        assert!(
            Some(&read_all(&s).await) == want,
            "reclaim after recovery changed snapshot {name}"
        );
    }
    // The recovered image keeps working.
    img.write(0, pattern(7, 8192))
        .await
        .expect("write after recovery");
    img.snap_create("after")
        .await
        .expect("snapshot after recovery");
    img.self_check().expect("self_check after recovery");
}
