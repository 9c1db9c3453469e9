//! The model test's operations, oracle and checks (shared with the RADOS run).

use super::*;
use proptest::prelude::*;
use row_layer::backend::Backend;
use row_layer::{ErrorKind, Image, Store};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub enum Op {
    Write {
        img: usize,
        off: u64,
        len: u64,
        seed: u64,
    },
    Discard {
        img: usize,
        off: u64,
        len: u64,
    },
    Zeroes {
        img: usize,
        off: u64,
        len: u64,
    },
    Flush {
        img: usize,
    },
    Snap {
        img: usize,
    },
    RemoveSnap {
        img: usize,
        which: usize,
    },
    Rollback {
        img: usize,
        which: usize,
    },
    Clone {
        img: usize,
        which: usize,
    },
    Resize {
        img: usize,
        size: u64,
    },
    Reopen {
        img: usize,
    },
    Bookmark {
        img: usize,
        which: usize,
    },
    /// Flattens a clone, then unprotects and removes its parent snapshot
    /// when no other clone uses it.
    Flatten {
        img: usize,
    },
    /// Checkpoints the head (checkpoint.rs); reopen then recovers from it.
    Checkpoint {
        img: usize,
    },
    /// Defragments the head (defrag.rs): contents stay as they are.
    Defrag {
        img: usize,
    },
}

pub const SIZE: u64 = 3 * OBJ;

pub fn op() -> impl Strategy<Value = Op> {
    let img = 0usize..3;
    let range = (0..SIZE, 1u64..(40 * 1024));
    prop_oneof![
        6 => (img.clone(), range.clone(), any::<u64>()).prop_map(|(img, (off, len), seed)| Op::Write { img, off, len, seed }),
        2 => (img.clone(), range.clone()).prop_map(|(img, (off, len))| Op::Discard { img, off, len }),
        1 => (img.clone(), range).prop_map(|(img, (off, len))| Op::Zeroes { img, off, len }),
        1 => img.clone().prop_map(|img| Op::Flush { img }),
        3 => img.clone().prop_map(|img| Op::Snap { img }),
        2 => (img.clone(), 0usize..8).prop_map(|(img, which)| Op::RemoveSnap { img, which }),
        1 => (img.clone(), 0usize..8).prop_map(|(img, which)| Op::Rollback { img, which }),
        1 => (img.clone(), 0usize..8).prop_map(|(img, which)| Op::Clone { img, which }),
        1 => (img.clone(), (OBJ / 2)..(4 * OBJ)).prop_map(|(img, size)| Op::Resize { img, size }),
        1 => img.clone().prop_map(|img| Op::Reopen { img }),
        1 => (img.clone(), 0usize..8).prop_map(|(img, which)| Op::Bookmark { img, which }),
        1 => img.clone().prop_map(|img| Op::Flatten { img }),
        2 => img.clone().prop_map(|img| Op::Checkpoint { img }),
        1 => img.prop_map(|img| Op::Defrag { img }),
    ]
}

struct ModelImage {
    name: String,
    handle: Image,
    head: Vec<u8>,
    snaps: Vec<(String, Vec<u8>, bool)>,
    bookmarks: Vec<(String, Vec<u8>)>,
    children: usize,
    /// (index of the parent image, parent snapshot name) for clones.
    parent: Option<(usize, String)>,
}

struct World {
    store: Store,
    images: Vec<ModelImage>,
    next: usize,
}

impl World {
    fn pick(&self, i: usize) -> usize {
        i % self.images.len()
    }

    fn clip(&self, i: usize, off: u64, len: u64) -> Option<(u64, u64)> {
        let size = self.images[i].head.len() as u64;
        if off >= size {
            return None;
        }
        Some((off, len.min(size - off)))
    }

    async fn step(&mut self, op: &Op) {
        match *op {
            Op::Write {
                img,
                off,
                len,
                seed,
            } => {
                let i = self.pick(img);
                let Some((off, len)) = self.clip(i, off, len) else {
                    return;
                };
                let data = pattern(seed, len as usize);
                let m = &mut self.images[i];
                m.handle.write(off, data.clone()).await.expect("write");
                m.head[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
            Op::Discard { img, off, len } | Op::Zeroes { img, off, len } => {
                let i = self.pick(img);
                let Some((off, len)) = self.clip(i, off, len) else {
                    return;
                };
                let m = &mut self.images[i];
                if matches!(op, Op::Discard { .. }) {
                    m.handle.discard(off, len).await.expect("discard");
                } else {
                    m.handle.write_zeroes(off, len).await.expect("zeroes");
                }
                m.head[off as usize..(off + len) as usize].fill(0);
            }
            Op::Flush { img } => {
                let i = self.pick(img);
                self.images[i].handle.flush().await.expect("flush");
            }
            Op::Snap { img } => {
                let i = self.pick(img);
                let name = format!("s{}", self.next);
                self.next += 1;
                let m = &mut self.images[i];
                m.handle.snap_create(&name).await.expect("snap create");
                m.snaps.push((name, m.head.clone(), false));
            }
            Op::RemoveSnap { img, which } => {
                let i = self.pick(img);
                let m = &mut self.images[i];
                if m.snaps.is_empty() {
                    return;
                }
                let w = which % m.snaps.len();
                let name = m.snaps[w].0.clone();
                let r = m.handle.snap_remove(&name).await;
                if m.snaps[w].2 {
                    assert_eq!(r.expect_err("protected").kind(), ErrorKind::Busy);
                } else {
                    r.expect("snap remove");
                    m.snaps.remove(w);
                }
            }
            Op::Rollback { img, which } => {
                let i = self.pick(img);
                let m = &mut self.images[i];
                if m.snaps.is_empty() {
                    return;
                }
                let w = which % m.snaps.len();
                m.handle
                    .snap_rollback(&m.snaps[w].0)
                    .await
                    .expect("rollback");
                m.head = m.snaps[w].1.clone();
            }
            Op::Clone { img, which } => {
                let i = self.pick(img);
                if self.images.len() >= 3 || self.images[i].snaps.is_empty() {
                    return;
                }
                let w = which % self.images[i].snaps.len();
                let (snap, content, protected) = self.images[i].snaps[w].clone();
                if !protected {
                    self.images[i]
                        .handle
                        .snap_set_protected(&snap, true)
                        .await
                        .expect("protect");
                    self.images[i].snaps[w].2 = true;
                }
                let child = format!("clone{}", self.next);
                self.next += 1;
                let parent = self.images[i].name.clone();
                self.store
                    .clone_image(&parent, &snap, &child)
                    .await
                    .expect("clone");
                self.images[i].children += 1;
                let handle = self.store.open(&child).await.expect("open clone");
                self.images.push(ModelImage {
                    name: child,
                    handle,
                    head: content,
                    snaps: vec![],
                    bookmarks: vec![],
                    children: 0,
                    parent: Some((i, snap)),
                });
            }
            Op::Resize { img, size } => {
                let i = self.pick(img);
                let m = &mut self.images[i];
                m.handle.resize(size).await.expect("resize");
                m.head.resize(size as usize, 0);
            }
            Op::Checkpoint { img } => {
                let i = self.pick(img);
                self.images[i]
                    .handle
                    .checkpoint()
                    .await
                    .expect("checkpoint");
            }
            Op::Reopen { img } => {
                let i = self.pick(img);
                let m = &mut self.images[i];
                m.handle.flush().await.expect("flush");
                m.handle.clone().close().await.expect("close");
                m.handle = self.store.open(&m.name).await.expect("reopen");
            }
            Op::Bookmark { img, which } => {
                let i = self.pick(img);
                let name = format!("b{}", self.next);
                self.next += 1;
                let m = &mut self.images[i];
                if m.snaps.is_empty() {
                    return;
                }
                let w = which % m.snaps.len();
                m.handle
                    .bookmark_create(&m.snaps[w].0, &name)
                    .await
                    .expect("bookmark");
                m.bookmarks.push((name, m.snaps[w].1.clone()));
            }
            Op::Flatten { img } => self.flatten(img).await,
            Op::Defrag { img } => {
                let i = self.pick(img);
                let opts = row_layer::DefragOptions {
                    min_reads: 2,
                    bytes_per_sec: 0,
                };
                let r = self.images[i].handle.defragment(&opts).await;
                let r = r.expect("defragment");
                assert!(r.reads_after <= r.reads_before, "{r:?}");
            }
        }
    }

    async fn flatten(&mut self, img: usize) {
        let i = self.pick(img);
        let Some((p, snap)) = self.images[i].parent.clone() else {
            let e = self.images[i]
                .handle
                .flatten()
                .await
                .expect_err("not a clone");
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            return;
        };
        self.images[i].handle.flatten().await.expect("flatten");
        self.images[i].parent = None;
        self.images[p].children -= 1;
        let still_used = self
            .images
            .iter()
            .any(|m| m.parent.as_ref() == Some(&(p, snap.clone())));
        if still_used {
            return;
        }
        let parent = &mut self.images[p];
        parent
            .handle
            .snap_set_protected(&snap, false)
            .await
            .expect("unprotect after flatten");
        parent
            .handle
            .snap_remove(&snap)
            .await
            .expect("remove the parent snapshot after flatten");
        parent.snaps.retain(|(n, _, _)| *n != snap);
    }

    async fn verify(&self) {
        for m in &self.images {
            m.handle.self_check().expect("self_check");
            assert_eq!(m.handle.size(), m.head.len() as u64, "{} size", m.name);
            let head = read_all(&m.handle).await;
            assert!(head == m.head, "{} head differs from the oracle", m.name);
            let full = m.handle.diff(None).expect("diff from start");
            assert_eq!(
                apply_diff(&[], m.head.len() as u64, &full, &head),
                m.head,
                "{} full diff",
                m.name
            );
            for (name, content, _) in &m.snaps {
                let snap = self
                    .store
                    .open_snapshot(&m.name, name)
                    .await
                    .expect("open snap");
                snap.self_check().expect("snap self_check");
                assert!(
                    read_all(&snap).await == *content,
                    "{}@{name} differs",
                    m.name
                );
                let d = m.handle.diff(Some(name)).expect("diff");
                assert!(
                    apply_diff(content, m.head.len() as u64, &d, &head) == m.head,
                    "{} diff from {name} does not rebuild the head",
                    m.name
                );
            }
            for (name, content) in &m.bookmarks {
                let d = m.handle.diff(Some(name)).expect("diff from bookmark");
                assert!(
                    apply_diff(content, m.head.len() as u64, &d, &head) == m.head,
                    "{} diff from bookmark {name} does not rebuild the head",
                    m.name
                );
            }
        }
    }
}

/// Runs `ops` on a fresh image in `backend`, checking against the oracle.
pub async fn run_on(backend: Arc<dyn Backend>, ops: Vec<Op>) {
    // Every background pass packs the sealed records (pack.rs), so the
    // model covers the pack and the entry removals before rewrites.
    let store = Store::new(backend).with_image_options(row_layer::ImageOptions {
        pack_min_epochs: 1,
        ..row_layer::ImageOptions::default()
    });
    store.create("img", small_opts(SIZE)).await.expect("create");
    let handle = store.open("img").await.expect("open");
    let mut world = World {
        store,
        images: vec![ModelImage {
            name: "img".into(),
            handle,
            head: vec![0; SIZE as usize],
            snaps: vec![],
            bookmarks: vec![],
            children: 0,
            parent: None,
        }],
        next: 0,
    };
    for op in &ops {
        world.step(op).await;
        world.verify().await;
    }
}
