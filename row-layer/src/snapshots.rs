//! Snapshot create/remove/rename/rollback/protect, resize and bookmarks:
//! the metadata transitions of an owned image.
//!
//! Each transition runs on the image's control task (control.rs), takes the
//! gate exclusively (so it falls between acknowledged writes), computes a
//! new header, and commits it with one
//! guarded `write_full` of the header object — the commit point. Creating a
//! snapshot first flushes the backend (so the data it names is durable) and
//! writes the sealed epoch's record; rollback and clone only rewrite the
//! header. None of them touches data objects; the reclaimer does that later.

use crate::backend::ext::{BackendExt, NotFoundExt};
use crate::backend::{Action, WriteOp};
use crate::error::{Error, ErrorKind, Result};
use crate::header_format;
use crate::ids::{Epoch, SnapId};
use crate::image::Image;
use crate::layout;
use crate::lineage::Chain;
use crate::records::{
    BookmarkRecord, EpochDelta, EpochMeta, EpochState, HeaderRecord, SnapRecord, Timestamp,
};
use crate::store::build_chain;
use bytes::Bytes;
use std::sync::Arc;

/// A snapshot as [`Image::snap_list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapInfo {
    /// Id (never reused).
    pub id: SnapId,
    /// Name.
    pub name: String,
    /// Image size at the snapshot.
    pub size: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created_secs: u64,
    /// Nanoseconds part of the creation time.
    pub created_nanos: u32,
    /// Whether it is protected.
    pub protected: bool,
}

impl From<&SnapRecord> for SnapInfo {
    fn from(s: &SnapRecord) -> Self {
        SnapInfo {
            id: s.id,
            name: s.name.clone(),
            size: s.size,
            created_secs: s.created.secs,
            created_nanos: s.created.nanos,
            protected: s.protected,
        }
    }
}

impl Image {
    /// Commits `header` as the image's new header (plus `extra` actions on the
    /// header object, atomically). Poisons the handle on failure.
    pub(crate) async fn commit_header(
        &self,
        header: &mut HeaderRecord,
        extra: Vec<Action>,
    ) -> Result<()> {
        // The handle's header is the committed one: commits run under the
        // gate, and memory follows each commit before anything else runs.
        let mut actions = header_format::commit_actions(header, Some(&self.state().header))?;
        actions.extend(extra);
        self.owner_header_op(actions)
            .await
            .map_err(|e| match e.kind() {
                // Refused by a full pool: nothing was applied, the handle
                // stays usable.
                ErrorKind::NoSpace => e.context("committing the image header"),
                _ => self.poison(e.context("committing the image header")),
            })
    }

    /// Makes a committed header durable. The caller has already installed
    /// the committed state in memory, so that the handle never acts on a
    /// header the disk has replaced; if the flush fails, the commit's
    /// durability is unknown and the handle is poisoned (reopen to recover).
    pub(crate) async fn flush_committed(&self) -> Result<()> {
        self.inner.backend.flush().await.map_err(|e| {
            self.poison(e.context("flushing a committed header (the handle must be reopened)"))
        })
    }

    /// Snapshots, oldest first.
    pub fn snap_list(&self) -> Vec<SnapInfo> {
        self.state()
            .header
            .snapshots
            .iter()
            .map(SnapInfo::from)
            .collect()
    }

    /// Seals the open epoch (writing its record) and opens a new one whose
    /// parent it is. Returns the new header (not yet committed) and the
    /// touch keys to drop with the commit. Caller holds the gate exclusively.
    async fn seal_head(
        &self,
        mut header: HeaderRecord,
    ) -> Result<(HeaderRecord, Vec<String>, Arc<EpochDelta>)> {
        let head = header.head;
        let delta = {
            let st = self.state();
            st.chain
                .links
                .first()
                .map(|l| l.delta.clone())
                .ok_or_else(|| Error::corrupt("no head epoch in chain"))?
        };
        let parent = header.epochs.get(&head).and_then(|m| m.parent);
        // Everything the new record names must be durable before it is.
        self.inner.backend.flush().await?;
        let record = delta.encode(&self.inner.id, head, parent)?;
        self.inner
            .backend
            .operate(
                &layout::epoch_object(&self.inner.id, head),
                WriteOp::new().write_full(Bytes::from(record)),
            )
            .await
            .map_err(|e| e.context("writing the sealed epoch record"))?;
        // The header that names the record must never be durable without it.
        self.inner.backend.flush().await?;
        // Every generation's keys (checkpoint.rs); only generation 0 without one.
        let touch_keys: Vec<String> = self.state().gens.all_keys(head);
        if let Some(m) = header.epochs.get_mut(&head) {
            m.state = EpochState::Sealed;
        }
        let new_head = Epoch(header.next_epoch);
        header.next_epoch += 1;
        header.epochs.insert(
            new_head,
            EpochMeta {
                parent: Some(head),
                state: EpochState::Open,
            },
        );
        header.head = new_head;
        header.head_truncated = None;
        Ok((header, touch_keys, delta))
    }

    /// Installs a committed header whose head epoch is new and empty.
    pub(crate) fn install_new_head(
        &self,
        header: HeaderRecord,
        sealed: Option<(Epoch, Arc<EpochDelta>)>,
        head_delta: EpochDelta,
        keep_cache: bool,
    ) -> Result<()> {
        let mut st = self.state();
        if let Some((e, d)) = sealed {
            st.deltas.insert(e, d);
        }
        let chain = std::mem::take(&mut st.chain);
        let chain: Chain = build_chain(
            &header,
            &st.deltas,
            Some(Arc::new(head_delta)),
            header.head,
            &st.parent_links.clone(),
            chain,
        )?;
        st.chain = chain;
        st.touched.clear();
        st.gens = Default::default();
        if !keep_cache {
            st.cache.clear();
        }
        st.size = header.size;
        st.header = header;
        Ok(())
    }

    /// Creates snapshot `name` of the head: metadata only.
    pub async fn snap_create(&self, name: &str) -> Result<SnapInfo> {
        self.check_writable()?;
        let name = name.to_string();
        self.in_control(move |img| async move { img.snap_create_now(&name).await })
            .await
    }

    async fn snap_create_now(&self, name: &str) -> Result<SnapInfo> {
        self.check_writable()?;
        layout::validate_name("snapshot", name)?;
        let _gate = self.inner.gate.write().await;
        let header = self.header();
        if header.snap(name).is_some() {
            return Err(Error::exists(format!("snapshot {name} already exists")));
        }
        let old_head = header.head;
        let checkpointed = self.state().gens.current > 0;
        let (mut header, touch_keys, delta) = self.seal_head(header).await?;
        let snap = SnapRecord {
            id: SnapId(header.next_snap),
            name: name.to_string(),
            epoch: old_head,
            size: header.size,
            created: Timestamp::now(),
            protected: false,
            parent_overlap: header.parent.as_ref().map(|p| p.overlap),
        };
        header.next_snap += 1;
        header.snapshots.push(snap.clone());
        self.commit_header(&mut header, vec![Action::OmapRemove(touch_keys)])
            .await?;
        self.install_new_head(header, Some((old_head, delta)), EpochDelta::default(), true)
            .map_err(|e| self.poison(e))?;
        self.flush_committed().await?;
        if checkpointed {
            self.drop_checkpoint(old_head).await;
        }
        self.want_reclaim();
        Ok(SnapInfo::from(&snap))
    }

    fn snap_by_name(&self, name: &str) -> Result<SnapRecord> {
        self.state()
            .header
            .snap(name)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("snapshot {name} does not exist")))
    }

    /// Removes snapshot `name` (refused while protected or cloned). Its
    /// data goes in the background.
    pub async fn snap_remove(&self, name: &str) -> Result<()> {
        self.check_writable()?;
        let name = name.to_string();
        self.in_control(move |img| async move { img.snap_remove_now(&name).await })
            .await
    }

    async fn snap_remove_now(&self, name: &str) -> Result<()> {
        self.check_writable()?;
        let _gate = self.inner.gate.write().await;
        let snap = self.snap_by_name(name)?;
        if snap.protected {
            return Err(Error::busy(format!("snapshot {name} is protected")));
        }
        if self.has_children(snap.id).await? {
            return Err(Error::busy(format!("snapshot {name} has clones")));
        }
        let mut header = self.header();
        header.snapshots.retain(|s| s.id != snap.id);
        self.commit_header(&mut header, vec![]).await?;
        self.state().header = header;
        self.flush_committed().await?;
        self.want_reclaim();
        Ok(())
    }

    /// Renames a snapshot.
    pub async fn snap_rename(&self, from: &str, to: &str) -> Result<()> {
        self.check_writable()?;
        let (from, to) = (from.to_string(), to.to_string());
        self.in_control(move |img| async move { img.snap_rename_now(&from, &to).await })
            .await
    }

    async fn snap_rename_now(&self, from: &str, to: &str) -> Result<()> {
        self.check_writable()?;
        layout::validate_name("snapshot", to)?;
        let _gate = self.inner.gate.write().await;
        let mut header = self.header();
        if header.snap(to).is_some() {
            return Err(Error::exists(format!("snapshot {to} already exists")));
        }
        let s = header
            .snapshots
            .iter_mut()
            .find(|s| s.name == from)
            .ok_or_else(|| Error::not_found(format!("snapshot {from} does not exist")))?;
        s.name = to.to_string();
        self.commit_header(&mut header, vec![]).await?;
        self.state().header = header;
        self.flush_committed().await
    }

    /// Protects or unprotects a snapshot (unprotect refused while cloned).
    pub async fn snap_set_protected(&self, name: &str, protected: bool) -> Result<()> {
        self.check_writable()?;
        let name = name.to_string();
        self.in_control(
            move |img| async move { img.snap_set_protected_now(&name, protected).await },
        )
        .await
    }

    async fn snap_set_protected_now(&self, name: &str, protected: bool) -> Result<()> {
        self.check_writable()?;
        let _gate = self.inner.gate.write().await;
        let snap = self.snap_by_name(name)?;
        if snap.protected == protected {
            return Err(Error::invalid(format!(
                "snapshot {name} is already {}",
                if protected {
                    "protected"
                } else {
                    "unprotected"
                }
            )));
        }
        if !protected && self.has_children(snap.id).await? {
            return Err(Error::busy(format!("snapshot {name} has clones")));
        }
        let mut header = self.header();
        for s in &mut header.snapshots {
            if s.id == snap.id {
                s.protected = protected;
            }
        }
        self.commit_header(&mut header, vec![]).await?;
        self.state().header = header;
        self.flush_committed().await
    }

    pub(crate) async fn has_children(&self, snap: SnapId) -> Result<bool> {
        let prefix = layout::children_prefix(snap);
        let children = self
            .inner
            .backend
            .omap_all(&layout::children_object(&self.inner.id), &prefix)
            .await
            .or_absent()?;
        Ok(children.is_some_and(|v| !v.is_empty()))
    }

    /// Makes the head read exactly like snapshot `name`: metadata only. The
    /// head's writes since its last snapshot are discarded; every snapshot,
    /// older or newer, stays. The discarded writes go in the background.
    pub async fn snap_rollback(&self, name: &str) -> Result<()> {
        self.check_writable()?;
        let name = name.to_string();
        self.in_control(move |img| async move { img.snap_rollback_now(&name).await })
            .await
    }

    async fn snap_rollback_now(&self, name: &str) -> Result<()> {
        self.check_writable()?;
        let _gate = self.inner.gate.write().await;
        let snap = self.snap_by_name(name)?;
        let mut header = self.header();
        let old_head = header.head;
        header.epochs.remove(&old_head);
        header.garbage.push(old_head);
        let new_head = Epoch(header.next_epoch);
        header.next_epoch += 1;
        header.epochs.insert(
            new_head,
            EpochMeta {
                parent: Some(snap.epoch),
                state: EpochState::Open,
            },
        );
        header.head = new_head;
        header.size = snap.size;
        header.head_truncated = None;
        if let (Some(p), Some(overlap)) = (header.parent.as_mut(), snap.parent_overlap) {
            p.overlap = overlap;
        }
        let mut scratch = Chain::default();
        let parent_links = crate::store::parent_links(
            &*self.inner.backend,
            header.parent.clone(),
            &self.inner.geo,
            &mut scratch,
        )
        .await?;
        self.commit_header(&mut header, vec![]).await?;
        {
            let mut st = self.state();
            // Same sources (and so the same indexes) as before, new limits.
            let sources = st.chain.sources.clone();
            st.parent_links = parent_links
                .into_iter()
                .map(|mut l| {
                    let (img, e) = &scratch.sources[l.source as usize];
                    l.source = sources
                        .iter()
                        .position(|(i2, e2)| i2 == img && e2 == e)
                        .unwrap_or(0) as u32;
                    l
                })
                .collect();
        }
        self.install_new_head(header, None, EpochDelta::default(), false)
            .map_err(|e| self.poison(e))?;
        self.flush_committed().await?;
        self.want_reclaim();
        Ok(())
    }

    /// Changes the head size. Shrinking seals the open epoch and starts a new
    /// one that cuts off the grains past the new end (metadata only); data
    /// that snapshots see is kept.
    pub async fn resize(&self, new_size: u64) -> Result<()> {
        self.check_writable()?;
        self.in_control(move |img| async move { img.resize_now(new_size).await })
            .await
    }

    async fn resize_now(&self, new_size: u64) -> Result<()> {
        self.check_writable()?;
        let _gate = self.inner.gate.write().await;
        let header = self.header();
        let old_size = header.size;
        if new_size >= old_size {
            let mut header = header;
            header.size = new_size;
            self.commit_header(&mut header, vec![]).await?;
            {
                let mut st = self.state();
                st.size = new_size;
                st.header = header;
            }
            return self.flush_committed().await;
        }
        let geo = self.inner.geo;
        let gs = geo.grain_size;
        let old_head = header.head;
        let checkpointed = self.state().gens.current > 0;
        let (mut header, touch_keys, delta) = self.seal_head(header).await?;
        let from = geo.grains_for(new_size);
        let to = geo.grains_for(old_size);
        header.size = new_size;
        header.head_truncated = Some((from, to));
        if let Some(p) = header.parent.as_mut() {
            p.overlap = p.overlap.min(new_size);
        }
        self.commit_header(&mut header, vec![Action::OmapRemove(touch_keys)])
            .await?;
        let mut head_delta = EpochDelta::default();
        if from < to {
            head_delta.zero.insert_range(from..to);
        }
        {
            let mut st = self.state();
            if let Some(p) = &header.parent {
                let limit = geo.grains_for(p.overlap);
                for l in &mut st.parent_links {
                    l.limit = l.limit.min(limit);
                }
            }
        }
        self.install_new_head(header, Some((old_head, delta)), head_delta, false)
            .map_err(|e| self.poison(e))?;
        self.flush_committed().await?;
        if checkpointed {
            self.drop_checkpoint(old_head).await;
        }
        // The tail of a partial last grain must read as zeros if regrown.
        if !new_size.is_multiple_of(gs) {
            let tail_end = new_size.div_ceil(gs) * gs;
            self.state().size = tail_end;
            let r = self
                .zero_range_unlocked(new_size, tail_end - new_size)
                .await;
            self.state().size = new_size;
            r?;
        }
        self.want_reclaim();
        Ok(())
    }

    /// Keeps the change-tracking position of snapshot `snap` as bookmark
    /// `name`, so diffs can start from it after the snapshot is removed.
    pub async fn bookmark_create(&self, snap: &str, name: &str) -> Result<()> {
        self.check_writable()?;
        let (snap, name) = (snap.to_string(), name.to_string());
        self.in_control(move |img| async move { img.bookmark_create_now(&snap, &name).await })
            .await
    }

    async fn bookmark_create_now(&self, snap: &str, name: &str) -> Result<()> {
        self.check_writable()?;
        layout::validate_name("bookmark", name)?;
        let _gate = self.inner.gate.write().await;
        let s = self.snap_by_name(snap)?;
        let mut header = self.header();
        if header.bookmarks.iter().any(|b| b.name == name) {
            return Err(Error::exists(format!("bookmark {name} already exists")));
        }
        header.bookmarks.push(BookmarkRecord {
            name: name.to_string(),
            epoch: s.epoch,
            size: s.size,
            created: Timestamp::now(),
        });
        self.commit_header(&mut header, vec![]).await?;
        self.state().header = header;
        self.flush_committed().await
    }

    /// Bookmarks (name, size, creation seconds).
    pub fn bookmark_list(&self) -> Vec<(String, u64, u64)> {
        self.state()
            .header
            .bookmarks
            .iter()
            .map(|b| (b.name.clone(), b.size, b.created.secs))
            .collect()
    }

    /// Removes a bookmark.
    pub async fn bookmark_remove(&self, name: &str) -> Result<()> {
        self.check_writable()?;
        let name = name.to_string();
        self.in_control(move |img| async move { img.bookmark_remove_now(&name).await })
            .await
    }

    async fn bookmark_remove_now(&self, name: &str) -> Result<()> {
        self.check_writable()?;
        let _gate = self.inner.gate.write().await;
        let mut header = self.header();
        let before = header.bookmarks.len();
        header.bookmarks.retain(|b| b.name != name);
        if header.bookmarks.len() == before {
            return Err(Error::not_found(format!("bookmark {name} does not exist")));
        }
        self.commit_header(&mut header, vec![]).await?;
        self.state().header = header;
        self.flush_committed().await
    }

    /// Releases ownership. Outstanding writes must have completed; call
    /// `flush` first for durability. What the background reclaimer still
    /// had to do is done first, so the space is back when this returns.
    pub async fn close(self) -> Result<()> {
        self.close_with(true).await
    }

    /// Releases ownership like [`Image::close`], but leaves what the
    /// reclaimer still had to do to the next owner (its background
    /// reclaimer, or an explicit [`Image::reclaim`]): a snapshot removal or
    /// a rollback carried out by a short-lived process then costs its
    /// header commit, not the deletion of what it made garbage, as native
    /// RBD's OSDs trim snapshots after `rbd snap rm` has returned.
    pub async fn close_leaving_garbage(self) -> Result<()> {
        self.close_with(false).await
    }

    async fn close_with(self, reclaim: bool) -> Result<()> {
        if let Some(cookie) = &self.inner.cookie {
            // A poisoned handle leaves the reclaim to the next owner.
            if reclaim && self.check_usable().is_ok() {
                if let Err(e) = self.reclaim().await {
                    tracing::warn!(image = %self.inner.id, error = %e, "reclaim at close failed");
                }
            }
            self.stop_control();
            self.stop_serving_ownership().await;
            let _gate = self.inner.gate.write().await;
            self.inner.backend.flush().await?;
            self.inner
                .backend
                .unlock(
                    &layout::header_object(&self.inner.id),
                    layout::OWNER_LOCK,
                    cookie,
                )
                .await?;
        }
        Ok(())
    }
}
