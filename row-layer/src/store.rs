//! A pool of images: create, open, list, rename, remove, clone, image-meta.
//!
//! A [`Store`] is the entry point of the library, over one backend instance
//! (one RADOS pool and namespace, or one local directory).

use crate::backend::ext::{BackendExt, NotFoundExt};
use crate::backend::{Action, Backend, Guard, WriteOp};
use crate::error::{Error, ErrorKind, Result};
use crate::head_recovery::recover_open_epoch;
use crate::header_format;
use crate::ids::{Epoch, ImageId, ObjectNo};
use crate::image::{Image, ImageOptions, Inner, State, View, OWNER_XATTR};
use crate::layout::{self, Geometry};
use crate::lineage::{Chain, Link};
use crate::pack::list_pack;
use crate::range_lock::RangeLock;
use crate::records::{
    EpochDelta, EpochMeta, EpochState, HeaderRecord, ParentLink, SnapRecord, Timestamp,
};
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// How many metadata reads open issues at once.
pub(crate) const OPEN_PARALLELISM: usize = 32;

/// Options for [`Store::create`].
#[derive(Debug, Clone, Copy)]
pub struct CreateOptions {
    /// Size in bytes.
    pub size: u64,
    /// Bytes per object (default 4 MiB).
    pub object_size: u64,
    /// Bytes per grain, the unit of the map and of diffs (default 4 KiB).
    pub grain_size: u64,
}

impl CreateOptions {
    /// Defaults with the given size.
    pub fn with_size(size: u64) -> Self {
        CreateOptions {
            size,
            object_size: 4 << 20,
            grain_size: 4096,
        }
    }
}

/// An entry of [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    /// Image name.
    pub name: String,
    /// Image id.
    pub id: ImageId,
}

/// Images in one backend namespace.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    options: ImageOptions,
}

pub(crate) use crate::header_format::read_header;

pub(crate) async fn read_epoch(
    backend: &dyn Backend,
    id: &ImageId,
    e: Epoch,
) -> Result<EpochDelta> {
    let oid = layout::epoch_object(id, e);
    let bytes = backend.read_all(&oid).await.map_err(|err| {
        if err.kind() == ErrorKind::NotFound {
            Error::not_found(format!("epoch record {oid} of a sealed epoch is missing"))
        } else {
            err
        }
    })?;
    EpochDelta::decode(&bytes, id, e)
}

/// Header re-reads a loader makes when records its header named vanished.
const STALE_HEADER_RETRIES: usize = 8;

/// Records loaded for a view, and which of them came from the pack.
pub(crate) type Records = (HashMap<Epoch, Arc<EpochDelta>>, BTreeSet<Epoch>);

/// The records of the epochs `wanted` picks from `header`. When any is
/// wanted, the header's record pack is listed first (pack.rs) and only the
/// records it lacks are read, concurrently. (So the owner, which wants
/// every sealed epoch, knows exactly which have entries it must remove
/// before a rewrite.) A handle that does not own the image (a read-only view, a
/// clone reading its parent) reads the header while the owner's reclaimer
/// may delete epochs it names: when a record is missing, the header is read
/// again and, if it changed, replaces `header` and the records are loaded
/// for it (the pack listed again too). A record missing under an unchanged
/// header is corruption.
pub(crate) async fn read_records(
    backend: &dyn Backend,
    header: &mut HeaderRecord,
    wanted: impl Fn(&HeaderRecord) -> Vec<Epoch>,
) -> Result<Records> {
    let mut missing = Vec::new();
    for _ in 0..STALE_HEADER_RETRIES {
        let h = &*header;
        let want = wanted(h);
        let pack = if !want.is_empty() {
            list_pack(backend, &h.id).await?
        } else {
            BTreeMap::new()
        };
        // Entries that decode (and those of epochs not wanted): the owner
        // removes them before a rewrite; a damaged one is packed again.
        let mut packed: BTreeSet<Epoch> = pack.keys().copied().collect();
        let mut loaded: Vec<(Epoch, Option<EpochDelta>)> = Vec::with_capacity(want.len());
        let mut to_read = Vec::new();
        for e in want {
            // A damaged copy is ignored: the object is the authority.
            match pack.get(&e).map(|b| EpochDelta::decode(b, &h.id, e)) {
                Some(Ok(d)) => loaded.push((e, Some(d))),
                _ => {
                    packed.remove(&e);
                    to_read.push(e);
                }
            }
        }
        let read: Vec<(Epoch, Option<EpochDelta>)> = stream::iter(to_read)
            .map(|e| async move {
                let rec = read_epoch(backend, &h.id, e).await;
                match rec {
                    Err(err) if err.kind() == ErrorKind::NotFound => Ok((e, None)),
                    other => other.map(|d| (e, Some(d))),
                }
            })
            .buffer_unordered(OPEN_PARALLELISM)
            .try_collect()
            .await?;
        loaded.extend(read);
        missing = loaded
            .iter()
            .filter(|(_, d)| d.is_none())
            .map(|(e, _)| layout::epoch_object(&h.id, *e))
            .collect();
        if missing.is_empty() {
            let deltas = loaded
                .into_iter()
                .filter_map(|(e, d)| d.map(|d| (e, Arc::new(d))))
                .collect();
            return Ok((deltas, packed));
        }
        let newer = read_header(backend, &header.id).await?;
        if newer == *header {
            break;
        }
        *header = newer;
    }
    missing.sort();
    Err(Error::corrupt(format!(
        "epoch record {} of a sealed epoch is missing",
        missing.join(", ")
    )))
}

/// Path of epochs from `start` to the root of the image's own lineage.
pub(crate) fn path(h: &HeaderRecord, start: Epoch) -> Vec<Epoch> {
    let mut out = Vec::new();
    let mut cur = Some(start);
    while let Some(e) = cur {
        out.push(e);
        cur = h.epochs.get(&e).and_then(|m| m.parent);
    }
    out
}

/// Links into the parent images of a clone, newest first.
pub(crate) async fn parent_links(
    backend: &dyn Backend,
    mut parent: Option<ParentLink>,
    geo: &Geometry,
    chain: &mut Chain,
) -> Result<Vec<Link>> {
    let mut links = Vec::new();
    let mut limit = u64::MAX;
    let mut depth = 0;
    while let Some(p) = parent {
        depth += 1;
        if depth > 64 {
            return Err(Error::corrupt("clone chain deeper than 64 (loop?)"));
        }
        let mut ph = read_header(backend, &p.image)
            .await
            .map_err(|e| e.context("opening the parent of a clone"))?;
        let (mut records, _) = read_records(backend, &mut ph, |h| path(h, p.epoch)).await?;
        if ph.object_size != geo.object_size || ph.grain_size != geo.grain_size {
            return Err(Error::corrupt(format!(
                "parent {} has a different geometry than its clone",
                p.image
            )));
        }
        limit = limit.min(geo.grains_for(p.overlap));
        for e in path(&ph, p.epoch) {
            let delta = records
                .remove(&e)
                .ok_or_else(|| Error::corrupt(format!("epoch {e} record not loaded")))?;
            let source = chain.source_index(&ph.id, e);
            links.push(Link {
                source,
                delta,
                limit,
            });
        }
        // The grandparent is seen with the overlap the snapshot had.
        let snap_overlap = ph
            .snapshots
            .iter()
            .find(|s| s.id == p.snap)
            .and_then(|s| s.parent_overlap);
        parent = ph.parent.clone().map(|mut pp| {
            pp.overlap = snap_overlap.unwrap_or(pp.overlap);
            pp
        });
    }
    Ok(links)
}

/// Builds the chain of the view starting at `start`.
pub(crate) fn build_chain(
    h: &HeaderRecord,
    deltas: &HashMap<Epoch, Arc<EpochDelta>>,
    head_delta: Option<Arc<EpochDelta>>,
    start: Epoch,
    parent_links: &[Link],
    mut chain: Chain,
) -> Result<Chain> {
    chain.links.clear();
    for e in path(h, start) {
        let delta = if e == h.head {
            head_delta
                .clone()
                .ok_or_else(|| Error::corrupt("head epoch delta missing"))?
        } else {
            deltas
                .get(&e)
                .cloned()
                .ok_or_else(|| Error::corrupt(format!("epoch {e} record not loaded")))?
        };
        let source = chain.source_index(&h.id, e);
        chain.links.push(Link {
            source,
            delta,
            limit: u64::MAX,
        });
    }
    chain.links.extend(parent_links.iter().cloned());
    Ok(chain)
}

impl Store {
    /// A store over `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Store {
            backend,
            options: ImageOptions::default(),
        }
    }

    /// Handle options for images opened from this store.
    pub fn with_image_options(mut self, options: ImageOptions) -> Self {
        self.options = options;
        self
    }

    /// Handle options.
    pub fn options(&self) -> &ImageOptions {
        &self.options
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The id of the image called `name`.
    pub async fn image_id(&self, name: &str) -> Result<ImageId> {
        layout::validate_name("image", name)?;
        let bytes = match self.backend.read_all(&layout::id_object(name)).await {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::not_found(format!("image {name} does not exist")))
            }
            Err(e) => return Err(e),
        };
        let id = std::str::from_utf8(&bytes)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| Error::corrupt(format!("id object of image {name} is malformed")))?;
        Ok(ImageId(id.to_string()))
    }

    /// Creates an empty image.
    pub async fn create(&self, name: &str, opts: CreateOptions) -> Result<ImageId> {
        let geo = Geometry::new(opts.object_size, opts.grain_size)?;
        self.create_with(name, opts.size, geo, None).await
    }

    pub(crate) async fn create_child(
        &self,
        name: &str,
        size: u64,
        geo: Geometry,
        parent: ParentLink,
    ) -> Result<ImageId> {
        self.create_with(name, size, geo, Some(parent)).await
    }

    async fn create_with(
        &self,
        name: &str,
        size: u64,
        geo: Geometry,
        parent: Option<ParentLink>,
    ) -> Result<ImageId> {
        layout::validate_name("image", name)?;
        let id = ImageId(format!("{:016x}", rand::random::<u64>()));
        let head = Epoch(1);
        let mut epochs = BTreeMap::new();
        epochs.insert(
            head,
            EpochMeta {
                parent: None,
                state: EpochState::Open,
            },
        );
        let mut header = HeaderRecord {
            id: id.clone(),
            name: name.to_string(),
            size,
            object_size: geo.object_size,
            grain_size: geo.grain_size,
            created: Timestamp::now(),
            head,
            next_epoch: 2,
            next_snap: 1,
            epochs,
            garbage: Vec::new(),
            head_truncated: None,
            snapshots: Vec::new(),
            bookmarks: Vec::new(),
            parent,
            removing: false,
            commit_seq: 0,
        };
        let mut op = WriteOp::new().guard(Guard::NotExists);
        op.actions = header_format::commit_actions(&mut header, None)?;
        self.backend
            .operate(&layout::header_object(&id), op)
            .await?;
        let claimed = self
            .backend
            .operate(
                &layout::id_object(name),
                WriteOp::new()
                    .guard(Guard::NotExists)
                    .write_full(Bytes::from(id.0.clone().into_bytes())),
            )
            .await;
        if let Err(e) = claimed {
            let _ = self
                .backend
                .operate(&layout::header_object(&id), WriteOp::remove())
                .await;
            if e.kind() == ErrorKind::AlreadyExists {
                return Err(Error::exists(format!("image {name} already exists")));
            }
            return Err(e);
        }
        self.backend
            .operate(
                layout::DIRECTORY,
                WriteOp::new().omap_set1(format!("name.{name}"), Bytes::from(id.0.clone())),
            )
            .await?;
        self.backend.flush().await?;
        Ok(id)
    }

    /// Image names and ids, sorted by name.
    pub async fn list(&self) -> Result<Vec<ImageEntry>> {
        let kvs = self
            .backend
            .omap_all(layout::DIRECTORY, "name.")
            .await
            .or_absent()?
            .unwrap_or_default();
        let mut out = Vec::with_capacity(kvs.len());
        for (k, v) in kvs {
            let id = String::from_utf8(v.to_vec())
                .map_err(|_| Error::corrupt(format!("directory entry {k} is not UTF-8")))?;
            out.push(ImageEntry {
                name: k.trim_start_matches("name.").to_string(),
                id: ImageId(id),
            });
        }
        Ok(out)
    }

    /// Opens the head of `name` for reading and writing, taking ownership.
    pub async fn open(&self, name: &str) -> Result<Image> {
        let id = self.image_id(name).await?;
        let hdr = layout::header_object(&id);
        let cookie = format!("{:016x}", rand::random::<u64>());
        self.take_ownership(name, &hdr, &cookie).await?;
        let opened = self.open_owned(name, &id, &cookie).await;
        if opened.is_err() {
            let _ = self.backend.unlock(&hdr, layout::OWNER_LOCK, &cookie).await;
        }
        opened
    }

    /// Takes the exclusive lock; a holder that does not answer a liveness
    /// probe is fenced and its lock broken.
    async fn take_ownership(&self, name: &str, hdr: &str, cookie: &str) -> Result<()> {
        for _ in 0..3 {
            let err = match self
                .backend
                .lock_exclusive(hdr, layout::OWNER_LOCK, cookie, "rbd-row owner")
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Busy => e,
                Err(e) => return Err(e),
            };
            let owners = self.backend.lock_owners(hdr, layout::OWNER_LOCK).await?;
            let Some(owner) = owners.into_iter().next() else {
                continue; // released meanwhile
            };
            if self.owner_alive(name, &owner).await? {
                return Err(Error::busy(format!(
                    "image {name} is owned by {} at {} (cookie {}): {}",
                    owner.client,
                    owner.address,
                    owner.cookie,
                    err.message()
                )));
            }
            tracing::warn!(
                image = name,
                owner = %owner.client,
                address = %owner.address,
                "owner does not answer: fencing it and breaking its lock"
            );
            self.backend.fence(&owner).await?;
            self.backend
                .break_lock(hdr, layout::OWNER_LOCK, &owner)
                .await
                .or_absent()?;
        }
        Err(Error::busy(format!(
            "could not take ownership of image {name}"
        )))
    }

    async fn open_owned(&self, name: &str, id: &ImageId, cookie: &str) -> Result<Image> {
        let hdr = layout::header_object(id);
        self.backend
            .operate(
                &hdr,
                WriteOp::new().guard(Guard::Exists).action(Action::SetXattr(
                    OWNER_XATTR.into(),
                    Bytes::from(cookie.to_string()),
                )),
            )
            .await
            .map_err(|e| e.context(format!("opening image {name}")))?;
        let (geo, state) = self.load_head(name, id).await?;
        let image = self.assemble(id.clone(), geo, View::Head, Some(cookie.to_string()), state);
        // Objects registered under a generation the newest checkpoint does
        // not cover need no new touch key (checkpoint.rs).
        {
            let mut st = image.state();
            let registered: Vec<u64> = st.gens.registered().iter().collect();
            for o in registered {
                st.touched.insert(
                    ObjectNo(o),
                    Arc::new(tokio::sync::OnceCell::new_with(Some(()))),
                );
            }
        }
        // Garbage or hidden epochs a crash left behind go in the background.
        image.want_reclaim();
        image.start_control();
        image.serve_ownership().await?;
        Ok(image)
    }

    /// Opens the head of `name` read-only, without taking ownership: a view of
    /// the map as of now (it does not follow later writes or snapshots).
    pub async fn open_head_read_only(&self, name: &str) -> Result<Image> {
        let id = self.image_id(name).await?;
        let (geo, state) = self.load_head(name, &id).await?;
        Ok(self.assemble(id, geo, View::HeadReadOnly, None, state))
    }

    /// Reads what a head view needs: header, sealed records, the open
    /// epoch's delta (recovered from its grain omaps) and the lineage.
    pub(crate) async fn load_head(&self, name: &str, id: &ImageId) -> Result<(Geometry, State)> {
        let mut header = read_header(&*self.backend, id).await?;
        if header.removing {
            return Err(Error::not_found(format!("image {name} is being removed")));
        }
        let geo = Geometry::new(header.object_size, header.grain_size)?;
        let (deltas, packed) = self.load_deltas(&mut header, None).await?;
        let (head_delta, gens) = recover_open_epoch(&*self.backend, &header, &geo).await?;
        let head_delta = Arc::new(head_delta);
        let mut chain = Chain::default();
        let parent_links =
            parent_links(&*self.backend, header.parent.clone(), &geo, &mut chain).await?;
        let chain = build_chain(
            &header,
            &deltas,
            Some(head_delta),
            header.head,
            &parent_links,
            chain,
        )?;
        let size = header.size;
        Ok((
            geo,
            State {
                header,
                deltas,
                chain,
                parent_links,
                touched: HashMap::new(),
                cache: HashMap::new(),
                size,
                gens,
                packed,
                unpackable: BTreeSet::new(),
            },
        ))
    }

    /// Opens snapshot `snap` of `name`, read-only, without taking ownership.
    pub async fn open_snapshot(&self, name: &str, snap: &str) -> Result<Image> {
        let id = self.image_id(name).await?;
        let header = read_header(&*self.backend, &id).await?;
        let s = header
            .snap(snap)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("snapshot {name}@{snap} does not exist")))?;
        let geo = Geometry::new(header.object_size, header.grain_size)?;
        let state = self.load_snapshot(header, &s, &geo).await?;
        let view = View::Snapshot {
            id: s.id,
            name: s.name.clone(),
        };
        Ok(self.assemble(id, geo, view, None, state))
    }

    /// Reads what the view of snapshot `s` needs: the sealed records and the
    /// parent links through the overlap the snapshot recorded.
    pub(crate) async fn load_snapshot(
        &self,
        mut header: HeaderRecord,
        s: &SnapRecord,
        geo: &Geometry,
    ) -> Result<State> {
        let (deltas, packed) = self.load_deltas(&mut header, None).await?;
        if !header.snapshots.iter().any(|x| x.id == s.id) {
            return Err(Error::not_found(format!(
                "snapshot {} was removed while it was being opened",
                s.name
            )));
        }
        let mut chain = Chain::default();
        let link = header.parent.clone().map(|mut p| {
            p.overlap = s.parent_overlap.unwrap_or(p.overlap);
            p
        });
        let parent_links = parent_links(&*self.backend, link, geo, &mut chain).await?;
        let chain = build_chain(&header, &deltas, None, s.epoch, &parent_links, chain)?;
        Ok(State {
            header,
            deltas,
            chain,
            parent_links,
            touched: HashMap::new(),
            cache: HashMap::new(),
            size: s.size,
            gens: Default::default(),
            packed,
            unpackable: BTreeSet::new(),
        })
    }

    fn assemble(
        &self,
        id: ImageId,
        geo: Geometry,
        view: View,
        cookie: Option<String>,
        state: State,
    ) -> Image {
        Image {
            inner: Arc::new(Inner {
                backend: self.backend.clone(),
                id,
                geo,
                view,
                cookie,
                gate: tokio::sync::RwLock::new(()),
                grace: Default::default(),
                ranges: RangeLock::default(),
                state: Mutex::new(state),
                poisoned: Mutex::new(None),
                options: self.options.clone(),
                watch_id: Mutex::new(None),
                touch_batch: Mutex::new(Default::default()),
                control: Mutex::new(None),
                reclaim_wanted: std::sync::atomic::AtomicBool::new(false),
                checkpoint_wanted: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Loads the records of the sealed epochs on the path of `only` (or all).
    async fn load_deltas(&self, h: &mut HeaderRecord, only: Option<Epoch>) -> Result<Records> {
        read_records(&*self.backend, h, |h| match only {
            Some(e) => path(h, e),
            None => h
                .epochs
                .iter()
                .filter(|(_, m)| m.state == EpochState::Sealed)
                .map(|(e, _)| *e)
                .collect(),
        })
        .await
    }
}
