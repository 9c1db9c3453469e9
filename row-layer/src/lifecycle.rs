//! Image lifecycle beyond create/open: remove, clone, children and
//! image-meta (flatten has its own file).

use crate::backend::ext::{BackendExt, NotFoundExt};
use crate::backend::{Action, Guard, WriteOp};
use crate::error::{Error, Result};
use crate::header_format;
use crate::ids::{ImageId, SnapId};
use crate::layout::{self, Geometry};
use crate::records::{EpochState, ParentLink};
use crate::store::{read_epoch, read_header, Store};
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};

impl Store {
    /// Removes an image with no snapshots, no clones and no owner.
    pub async fn remove(&self, name: &str) -> Result<()> {
        let id = self.image_id(name).await?;
        let hdr = layout::header_object(&id);
        let backend = self.backend().clone();
        let header = read_header(&*backend, &id).await.or_absent()?;
        if let Some(h) = &header {
            if !h.snapshots.is_empty() {
                return Err(Error::busy(format!(
                    "image {name} has snapshots - not removing"
                )));
            }
            let owners = backend.lock_owners(&hdr, layout::OWNER_LOCK).await?;
            if let Some(o) = owners.first() {
                return Err(Error::busy(format!(
                    "image {name} is still open by {} - not removing",
                    o.client
                )));
            }
            let mut marked = h.clone();
            marked.removing = true;
            let mut op = WriteOp::new().guard(Guard::Exists);
            op.actions = header_format::commit_actions(&mut marked, Some(h))?;
            backend.operate(&hdr, op).await?;
            let data = backend.list(&layout::data_prefix(&id)).await?;
            stream::iter(data)
                .map(|oid| {
                    let backend = backend.clone();
                    async move { backend.operate(&oid, WriteOp::remove()).await }
                })
                .buffer_unordered(32)
                .try_collect::<Vec<()>>()
                .await?;
            for oid in backend.list(&layout::ckpt_prefix(&id)).await? {
                backend.operate(&oid, WriteOp::remove()).await?;
            }
            for e in h.epochs.keys().chain(h.garbage.iter()) {
                backend
                    .operate(&layout::epoch_object(&id, *e), WriteOp::remove())
                    .await?;
            }
            if let Some(p) = &h.parent {
                backend
                    .operate(
                        &layout::children_object(&p.image),
                        WriteOp::new()
                            .action(Action::OmapRemove(vec![layout::children_key(p.snap, &id)])),
                    )
                    .await
                    .or_absent()?;
            }
        }
        backend.operate(&hdr, WriteOp::remove()).await?;
        backend
            .operate(&layout::children_object(&id), WriteOp::remove())
            .await?;
        backend
            .operate(
                layout::DIRECTORY,
                WriteOp::new().action(Action::OmapRemove(vec![format!("name.{name}")])),
            )
            .await?;
        backend
            .operate(&layout::id_object(name), WriteOp::remove())
            .await?;
        backend.flush().await
    }

    /// Clones protected snapshot `parent@snap` as a new writable image `child`
    /// (metadata only: unwritten grains read through to the parent).
    pub async fn clone_image(&self, parent: &str, snap: &str, child: &str) -> Result<ImageId> {
        let pid = self.image_id(parent).await?;
        let ph = read_header(&**self.backend(), &pid).await?;
        let s = ph
            .snap(snap)
            .ok_or_else(|| Error::not_found(format!("snapshot {parent}@{snap} does not exist")))?;
        if !s.protected {
            return Err(Error::invalid(format!(
                "parent snapshot {parent}@{snap} must be protected"
            )));
        }
        let geo = Geometry::new(ph.object_size, ph.grain_size)?;
        let link = ParentLink {
            image: pid.clone(),
            snap: s.id,
            epoch: s.epoch,
            overlap: s.size,
        };
        let cid = self.create_child(child, s.size, geo, link).await?;
        self.backend()
            .operate(
                &layout::children_object(&pid),
                WriteOp::new().omap_set1(
                    layout::children_key(s.id, &cid),
                    Bytes::from(child.to_string()),
                ),
            )
            .await?;
        self.backend().flush().await?;
        Ok(cid)
    }

    /// Clones of snapshot `snap` of `name`: (child id, child name).
    pub async fn children(&self, name: &str, snap: Option<&str>) -> Result<Vec<(ImageId, String)>> {
        let id = self.image_id(name).await?;
        let prefix = match snap {
            Some(s) => {
                let h = read_header(&**self.backend(), &id).await?;
                let sid: SnapId = h.snap(s).map(|r| r.id).ok_or_else(|| {
                    Error::not_found(format!("snapshot {name}@{s} does not exist"))
                })?;
                layout::children_prefix(sid)
            }
            None => String::new(),
        };
        let kvs = self
            .backend()
            .omap_all(&layout::children_object(&id), &prefix)
            .await
            .or_absent()?
            .unwrap_or_default();
        kvs.into_iter()
            .map(|(k, v)| {
                let (_, cid) = layout::parse_children_key(&k)?;
                Ok((cid, String::from_utf8_lossy(&v).into_owned()))
            })
            .collect()
    }

    /// Reads image-meta `key`.
    pub async fn meta_get(&self, name: &str, key: &str) -> Result<Option<String>> {
        let id = self.image_id(name).await?;
        let kvs = self
            .backend()
            .omap_all(&layout::header_object(&id), &layout::meta_key(key))
            .await?;
        Ok(kvs
            .into_iter()
            .find(|(k, _)| *k == layout::meta_key(key))
            .map(|(_, v)| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Sets image-meta `key`.
    pub async fn meta_set(&self, name: &str, key: &str, value: &str) -> Result<()> {
        if key.is_empty() {
            return Err(Error::invalid("image-meta key must not be empty"));
        }
        let id = self.image_id(name).await?;
        self.backend()
            .operate(
                &layout::header_object(&id),
                WriteOp::new()
                    .guard(Guard::Exists)
                    .omap_set1(layout::meta_key(key), Bytes::from(value.to_string())),
            )
            .await?;
        self.backend().flush().await
    }

    /// Removes image-meta `key` (`NotFound` if absent).
    pub async fn meta_remove(&self, name: &str, key: &str) -> Result<()> {
        if self.meta_get(name, key).await?.is_none() {
            return Err(Error::not_found(format!(
                "image-meta key {key} does not exist"
            )));
        }
        let id = self.image_id(name).await?;
        self.backend()
            .operate(
                &layout::header_object(&id),
                WriteOp::new().action(Action::OmapRemove(vec![layout::meta_key(key)])),
            )
            .await?;
        self.backend().flush().await
    }

    /// All image-meta entries, sorted by key.
    pub async fn meta_list(&self, name: &str) -> Result<Vec<(String, String)>> {
        let id = self.image_id(name).await?;
        let kvs = self
            .backend()
            .omap_all(&layout::header_object(&id), "meta.")
            .await?;
        Ok(kvs
            .into_iter()
            .map(|(k, v)| {
                (
                    k.trim_start_matches("meta.").to_string(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect())
    }
}

/// Checks that every sealed epoch of `name` has a readable record (for fsck).
pub async fn verify_records(store: &Store, name: &str) -> Result<usize> {
    let id = store.image_id(name).await?;
    let h = read_header(&**store.backend(), &id).await?;
    let mut n = 0;
    for (e, m) in &h.epochs {
        if m.state == EpochState::Sealed {
            read_epoch(&**store.backend(), &id, *e)
                .await
                .map_err(|err| match err.kind() {
                    crate::error::ErrorKind::NotFound => Error::corrupt(err.message()),
                    _ => err,
                })?;
            n += 1;
        }
    }
    Ok(n)
}
