//! Head checkpoints: bounding the work of open (and so of failover) by the
//! objects written since the last checkpoint instead of since the last
//! snapshot (DESIGN §6, "Head checkpoints").
//!
//! Every registration of an object in the open epoch carries a generation
//! (its touch key names it). A checkpoint, on the control task:
//! 1. takes the gate exclusively for a moment — no data op is in flight —
//!    bumps the generation to `c`, forgets every registration (so the next
//!    write to any object registers again, under `c`, before its data op)
//!    and takes the head delta, which now holds exactly the completed ops;
//! 2. flushes (every op the delta names is durable);
//! 3. writes the delta as `HeadCheckpoint { generation: c }` with one
//!    `write_full` of `rbd_row_ckpt.<id>.<head>`;
//! 4. flushes: the durable record is the commit point;
//! 5. removes the touch keys of generations before `c` (guarded by the
//!    owner cookie), which the record now covers.
//!
//! Recovery reads the record and lists only objects with touch keys of
//! generation `c` or later. A crash anywhere leaves either the previous
//! record with every key it needs (keys go only after the new record is
//! durable), or the new one.

use crate::backend::{Action, WriteOp};
use crate::ckpt_record::HeadCheckpoint;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::ObjectNo;
use crate::image::Image;
use crate::layout;
use bytes::Bytes;
use roaring::RoaringTreemap;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// What an owner knows about the registration generations of its open epoch.
#[derive(Debug, Clone, Default)]
pub(crate) struct Generations {
    /// The generation new registrations use.
    pub(crate) current: u64,
    /// The generation the newest durable checkpoint starts (0: none).
    pub(crate) covered: u64,
    /// Touch keys of the open epoch on disk, per generation.
    pub(crate) keys: BTreeMap<u64, RoaringTreemap>,
    /// Registrations since the last checkpoint began.
    pub(crate) since: u64,
    /// The oldest generation of a checkpoint whose write failed with an
    /// unknown outcome (it may still land, after a newer one): keys of that
    /// generation and later stay until the epoch ends. `None`: no such write.
    pub(crate) floor: Option<u64>,
}

impl Generations {
    /// State after recovery: `keys` were found on disk, the checkpoint
    /// covers the generations before `covered`.
    pub(crate) fn recovered(covered: u64, keys: BTreeMap<u64, RoaringTreemap>) -> Self {
        let newest = keys.keys().next_back().copied().unwrap_or(0);
        let mut g = Generations {
            current: covered.max(newest),
            covered,
            since: 0,
            keys,
            floor: None,
        };
        g.since = g.registered().len();
        g
    }

    /// Objects whose registration is still valid: a touch key of a
    /// generation the checkpoint does not cover names them.
    pub(crate) fn registered(&self) -> RoaringTreemap {
        let mut out = RoaringTreemap::new();
        for objects in self.keys.range(self.covered..).map(|(_, v)| v) {
            out |= objects;
        }
        out
    }

    /// Every touch key of `head` this handle knows is on disk.
    pub(crate) fn all_keys(&self, head: crate::ids::Epoch) -> Vec<String> {
        self.keys
            .iter()
            .flat_map(|(g, objs)| {
                objs.iter()
                    .map(|o| layout::touch_key_gen(head, *g, ObjectNo(o)))
            })
            .collect()
    }
}

impl Image {
    /// Writes a checkpoint of the head now and waits for it (the control
    /// task also writes them in the background; see `ImageOptions`).
    pub async fn checkpoint(&self) -> Result<()> {
        self.check_writable()?;
        self.in_control(|img| async move { img.checkpoint_now().await })
            .await
    }

    /// Asks the control task for a background checkpoint (once until it ran).
    pub(crate) fn want_checkpoint(&self) {
        if self.inner.checkpoint_wanted.swap(true, Ordering::SeqCst) {
            return;
        }
        let img = self.clone();
        tokio::spawn(async move {
            if let Err(e) = img
                .in_control(|i| async move { i.checkpoint_now().await })
                .await
            {
                if e.kind() != ErrorKind::Fenced {
                    tracing::warn!(image = %img.inner.id, error = %e, "background checkpoint failed");
                }
            }
        });
    }

    /// Counts a new registration and asks for a checkpoint past the
    /// `checkpoint_objects` threshold.
    pub(crate) fn note_registrations(&self, n: u64) {
        let threshold = self.inner.options.checkpoint_objects;
        let since = {
            let mut st = self.state();
            st.gens.since += n;
            st.gens.since
        };
        if threshold > 0 && since >= threshold {
            self.want_checkpoint();
        }
    }

    /// The checkpoint itself; runs on the control task.
    pub(crate) async fn checkpoint_now(&self) -> Result<()> {
        self.inner.checkpoint_wanted.store(false, Ordering::SeqCst);
        self.check_writable()?;
        let (head, generation, delta) = {
            let _gate = self.inner.gate.write().await;
            let mut st = self.state();
            if st.gens.since == 0 && st.gens.covered > 0 {
                return Ok(()); // nothing registered since the last one
            }
            let generation = st.gens.current + 1;
            st.gens.current = generation;
            st.gens.since = 0;
            st.touched.clear();
            let delta = st
                .chain
                .links
                .first()
                .map(|l| l.delta.clone())
                .ok_or_else(|| Error::corrupt("no head epoch in chain"))?;
            (st.header.head, generation, delta)
        };
        let backend = &self.inner.backend;
        let oid = layout::ckpt_object(&self.inner.id, head);
        // Every op the record names must be durable before it is.
        backend.flush().await?;
        let record = HeadCheckpoint::encode_delta(generation, &delta, &self.inner.id, head)?;
        let written = async {
            backend
                .operate(&oid, WriteOp::new().write_full(Bytes::from(record)))
                .await
                .map_err(|e| e.context("writing the head checkpoint"))?;
            // The commit point: keys it covers go only once it is durable.
            backend.flush().await
        }
        .await;
        let stale = {
            let mut st = self.state();
            if st.header.head != head {
                return written; // the control task seals nothing meanwhile
            }
            if let Err(e) = written {
                // The record may still land later, even after a newer one.
                let floor = st.gens.floor.map_or(generation, |f| f.min(generation));
                st.gens.floor = Some(floor);
                return Err(e);
            }
            st.gens.covered = generation;
            let below = st.gens.floor.map_or(generation, |f| f.min(generation));
            st.gens
                .keys
                .range(..below)
                .map(|(g, _)| *g)
                .collect::<Vec<u64>>()
        };
        self.drop_covered_keys(head, &stale).await
    }

    /// Removes the touch keys of generations `gens`, which a durable
    /// checkpoint covers.
    async fn drop_covered_keys(&self, head: crate::ids::Epoch, gens: &[u64]) -> Result<()> {
        if gens.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = {
            let st = self.state();
            gens.iter()
                .filter_map(|g| st.gens.keys.get(g).map(|objs| (g, objs)))
                .flat_map(|(g, objs)| {
                    objs.iter()
                        .map(|o| layout::touch_key_gen(head, *g, ObjectNo(o)))
                })
                .collect()
        };
        self.owner_header_op(vec![Action::OmapRemove(keys)])
            .await
            .map_err(|e| e.context("removing touch keys a checkpoint covers"))?;
        let mut st = self.state();
        if st.header.head == head {
            for g in gens {
                st.gens.keys.remove(g);
            }
        }
        Ok(())
    }

    /// Removes the checkpoint of `e`, which a committed seal made stale (a
    /// sealed epoch is read from its record). Best effort: one left behind
    /// goes with the epoch's garbage deletion (reclaim.rs).
    pub(crate) async fn drop_checkpoint(&self, e: crate::ids::Epoch) {
        let oid = layout::ckpt_object(&self.inner.id, e);
        if let Err(err) = self.inner.backend.operate(&oid, WriteOp::remove()).await {
            tracing::warn!(image = %self.inner.id, error = %err, "removing a stale checkpoint failed");
        }
    }
}

/// The objects the checkpoint of discarded head `e` names (none without
/// one). A damaged checkpoint is no reason to leak: the pool listing of the
/// image's data objects names them instead.
pub(crate) async fn objects_of_discarded_head(
    backend: &dyn crate::backend::Backend,
    id: &crate::ids::ImageId,
    e: crate::ids::Epoch,
) -> Result<RoaringTreemap> {
    use crate::backend::ext::{BackendExt, NotFoundExt};
    let Some(bytes) = backend
        .read_all(&layout::ckpt_object(id, e))
        .await
        .or_absent()?
    else {
        return Ok(RoaringTreemap::new());
    };
    match HeadCheckpoint::decode(&bytes, id, e) {
        Ok(c) => Ok(c.delta.touched),
        Err(err) => {
            tracing::warn!(image = %id, epoch = %e, error = %err, "damaged checkpoint of a discarded head: listing its data objects");
            let suffix = format!(".{:016x}", e.0);
            let mut out = RoaringTreemap::new();
            for oid in backend.list(&layout::data_prefix(id)).await? {
                let Some(rest) = oid.strip_suffix(&suffix) else {
                    continue;
                };
                let o = rest
                    .rsplit('.')
                    .next()
                    .and_then(|h| u64::from_str_radix(h, 16).ok());
                if let Some(o) = o {
                    out.insert(o);
                }
            }
            Ok(out)
        }
    }
}
