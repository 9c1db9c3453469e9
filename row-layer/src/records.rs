//! The persistent records of an image: header and sealed epochs.
//!
//! Both are postcard inside the versioned envelope (`envelope.rs`). The
//! header is stored in two parts on one object: the payload holds the fixed
//! fields (format 2), and every epoch, snapshot and bookmark is one omap entry
//! of its own (`header_entries.rs`). A commit is one atomic op on that object
//! that rewrites the small payload and sets or removes only the entries that
//! changed, so a snapshot operation writes O(1) bytes however many snapshots
//! the image has (format 1 kept them all in the payload and rewrote it whole).
//! That op is the commit point of snapshot create/remove/rollback, resize and
//! clone. Epoch records are written before the header that makes them sealed,
//! and never change afterwards except when the reclaimer drops superseded
//! grains of hidden epochs.

use crate::envelope::{self, RecordType};
use crate::error::{Error, Result};
use crate::ids::{Epoch, ImageId, SnapId};
use roaring::RoaringTreemap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Header record type. Version 1 held everything in the payload; version 2
/// holds the fixed fields, and the entries live in the header's omap.
pub const HEADER: RecordType = RecordType {
    magic: *b"RRHD",
    current_version: 2,
    oldest_readable: 1,
};
/// Epoch record type. Version 2 adds `moved` (defrag.rs); a record with
/// no moved grain is still written as version 1.
pub const EPOCH: RecordType = RecordType {
    magic: *b"RREP",
    current_version: 2,
    oldest_readable: 1,
};

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    /// Whole seconds.
    pub secs: u64,
    /// Nanoseconds.
    pub nanos: u32,
}

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            secs: d.as_secs(),
            nanos: d.subsec_nanos(),
        }
    }
}

/// One snapshot as the header records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapRecord {
    /// Never reused.
    pub id: SnapId,
    /// Unique among the image's snapshots.
    pub name: String,
    /// The sealed epoch this snapshot pins.
    pub epoch: Epoch,
    /// Image size when the snapshot was taken.
    pub size: u64,
    /// Creation time.
    pub created: Timestamp,
    /// Protected snapshots can be cloned and cannot be removed.
    pub protected: bool,
    /// For clones: the parent overlap when the snapshot was taken.
    pub parent_overlap: Option<u64>,
}

/// A change-tracking bookmark: a snapshot's position kept after the snapshot
/// itself was removed, so that diffs can still start from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookmarkRecord {
    /// Unique among the image's bookmarks.
    pub name: String,
    /// The epoch the bookmarked snapshot sealed.
    pub epoch: Epoch,
    /// Image size at that snapshot.
    pub size: u64,
    /// When the bookmark was made.
    pub created: Timestamp,
}

/// The parent of a clone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentLink {
    /// The parent image.
    pub image: ImageId,
    /// The parent snapshot.
    pub snap: SnapId,
    /// Its sealed epoch.
    pub epoch: Epoch,
    /// Bytes of the child that may read through to the parent.
    pub overlap: u64,
}

/// Where an epoch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EpochState {
    /// The head epoch: written in place.
    Open,
    /// Sealed: immutable, recorded in an epoch record.
    Sealed,
}

/// Lineage of one live epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochMeta {
    /// The epoch this one continues from (None for the image's first epoch).
    pub parent: Option<Epoch>,
    /// Open or sealed.
    pub state: EpochState,
}

/// The image header, as a handle holds it in memory (both formats decode to
/// it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRecord {
    /// Stable id.
    pub id: ImageId,
    /// Current name.
    pub name: String,
    /// Head size in bytes.
    pub size: u64,
    /// Bytes per object.
    pub object_size: u64,
    /// Bytes per grain.
    pub grain_size: u64,
    /// Creation time.
    pub created: Timestamp,
    /// The open epoch.
    pub head: Epoch,
    /// Next epoch number to hand out.
    pub next_epoch: u64,
    /// Next snapshot id to hand out.
    pub next_snap: u64,
    /// Every live epoch.
    pub epochs: BTreeMap<Epoch, EpochMeta>,
    /// Epochs whose data nobody can see any more, awaiting the reclaimer.
    pub garbage: Vec<Epoch>,
    /// Grains `[from, to)` were cut off (shrink) when the head epoch began.
    pub head_truncated: Option<(u64, u64)>,
    /// Snapshots, oldest first.
    pub snapshots: Vec<SnapRecord>,
    /// Bookmarks (diff bases without data).
    pub bookmarks: Vec<BookmarkRecord>,
    /// Set for clones.
    pub parent: Option<ParentLink>,
    /// Set while `remove` is deleting the image.
    pub removing: bool,
    /// Commits of this header so far: each commit writes the next number,
    /// so a reader that sees the same number before and after listing the
    /// entries saw one commit's state. 0 means the stored header is format
    /// 1 (no entries in the omap yet): the next commit writes them all.
    pub commit_seq: u64,
}

impl HeaderRecord {
    /// Checks the invariants of an assembled header.
    pub(crate) fn validate(self) -> Result<Self> {
        let h = self;
        crate::layout::Geometry::new(h.object_size, h.grain_size)
            .map_err(|e| Error::corrupt(format!("header of {}: {}", h.id, e.message())))?;
        match h.epochs.get(&h.head) {
            Some(m) if m.state == EpochState::Open => {}
            _ => {
                return Err(Error::corrupt(format!(
                    "header of {}: head epoch {} is not an open epoch",
                    h.id, h.head
                )))
            }
        }
        let mut ids = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for s in &h.snapshots {
            if !ids.insert(s.id) || !names.insert(s.name.as_str()) {
                return Err(Error::corrupt(format!(
                    "header of {}: snapshot id {} or name {} appears twice",
                    h.id, s.id.0, s.name
                )));
            }
        }
        let mut marks = std::collections::HashSet::new();
        if let Some(b) = h.bookmarks.iter().find(|b| !marks.insert(b.name.as_str())) {
            return Err(Error::corrupt(format!(
                "header of {}: bookmark {} appears twice",
                h.id, b.name
            )));
        }
        for s in &h.snapshots {
            if !h.epochs.contains_key(&s.epoch) {
                return Err(Error::corrupt(format!(
                    "header of {}: snapshot {} pins unknown epoch {}",
                    h.id, s.name, s.epoch
                )));
            }
        }
        for (e, m) in &h.epochs {
            if let Some(p) = m.parent {
                if p >= *e || !h.epochs.contains_key(&p) {
                    return Err(Error::corrupt(format!(
                        "header of {}: epoch {e} has invalid parent {p}",
                        h.id
                    )));
                }
            }
        }
        Ok(h)
    }
    /// Snapshot by name.
    pub fn snap(&self, name: &str) -> Option<&SnapRecord> {
        self.snapshots.iter().find(|s| s.name == name)
    }
}

/// What one sealed epoch changed, as grain bitmaps over the whole image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpochDelta {
    /// Logical objects that have a data object in this epoch.
    pub touched: RoaringTreemap,
    /// Grains whose data this epoch stores.
    pub data: RoaringTreemap,
    /// Grains this epoch made read as zeros (discard, write-zeroes, shrink).
    pub zero: RoaringTreemap,
    /// Data grains the reclaimer already freed while keeping them in `data`
    /// (only for bookmarked epochs, whose delta diffs still need).
    pub reclaimed: RoaringTreemap,
    /// Data grains this epoch stores with the contents its parent path had
    /// (defragmentation's copies, defrag.rs): a subset of `data`. They
    /// resolve reads like any data grain, but they are no change, so diffs
    /// between two points skip them.
    pub moved: RoaringTreemap,
}

#[derive(Serialize, Deserialize)]
struct EpochWire {
    image: ImageId,
    epoch: Epoch,
    parent: Option<Epoch>,
    touched: Vec<u8>,
    data: Vec<u8>,
    zero: Vec<u8>,
    reclaimed: Vec<u8>,
}

/// Format 2 of the epoch and checkpoint records: format 1's fields, then
/// the serialized `moved` grains (defrag.rs).
#[derive(Serialize, Deserialize)]
struct WithMoved<T> {
    v1: T,
    moved: Vec<u8>,
}

/// Encodes `v1` as format 1 of `rt` when no grain is moved (so that older
/// builds still read it), else as format 2 with `moved`.
pub(crate) fn encode_with_moved<T: Serialize>(
    rt: RecordType,
    v1: T,
    moved: &RoaringTreemap,
) -> Result<Vec<u8>> {
    if moved.is_empty() {
        return envelope::encode_version(rt, 1, &v1);
    }
    let mut m = moved.clone();
    m.optimize();
    let moved = bitmap_bytes(&m)?;
    envelope::encode_version(rt, 2, &WithMoved { v1, moved })
}

/// Decodes format 1 or 2 of `rt`: format 1's fields and the moved grains
/// (none in format 1).
pub(crate) fn decode_with_moved<T: serde::de::DeserializeOwned>(
    rt: RecordType,
    bytes: &[u8],
) -> Result<(T, RoaringTreemap)> {
    let (version, payload) = envelope::open(rt, bytes)?;
    let bad = |e: postcard::Error| {
        let name = String::from_utf8_lossy(&rt.magic).into_owned();
        Error::corrupt(format!("{name} record payload does not decode: {e}"))
    };
    if version == 1 {
        return Ok((
            postcard::from_bytes(payload).map_err(bad)?,
            RoaringTreemap::new(),
        ));
    }
    let w: WithMoved<T> = postcard::from_bytes(payload).map_err(bad)?;
    Ok((w.v1, bitmap_from(&w.moved, "moved")?))
}

pub(crate) fn bitmap_bytes(b: &RoaringTreemap) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(b.serialized_size());
    b.serialize_into(&mut out)
        .map_err(|e| Error::invalid(format!("bitmap encode: {e}")))?;
    Ok(out)
}

pub(crate) fn bitmap_from(bytes: &[u8], what: &str) -> Result<RoaringTreemap> {
    RoaringTreemap::deserialize_from(bytes)
        .map_err(|e| Error::corrupt(format!("{what} bitmap does not decode: {e}")))
}

impl EpochDelta {
    /// Encodes the record of `epoch` of `image` (version 1 when no grain
    /// is moved).
    pub fn encode(&self, image: &ImageId, epoch: Epoch, parent: Option<Epoch>) -> Result<Vec<u8>> {
        let mut data = self.data.clone();
        let mut zero = self.zero.clone();
        let mut touched = self.touched.clone();
        data.optimize();
        zero.optimize();
        touched.optimize();
        let v1 = EpochWire {
            image: image.clone(),
            epoch,
            parent,
            touched: bitmap_bytes(&touched)?,
            data: bitmap_bytes(&data)?,
            zero: bitmap_bytes(&zero)?,
            reclaimed: bitmap_bytes(&self.reclaimed)?,
        };
        encode_with_moved(EPOCH, v1, &self.moved)
    }
    /// Decodes the record of `epoch` of `image`, checking that it is that one.
    pub fn decode(bytes: &[u8], image: &ImageId, epoch: Epoch) -> Result<Self> {
        let (w, moved): (EpochWire, _) = decode_with_moved(EPOCH, bytes)?;
        if &w.image != image || w.epoch != epoch {
            return Err(Error::corrupt(format!(
                "epoch record for {}/{} found where {image}/{epoch} was expected",
                w.image, w.epoch
            )));
        }
        let d = EpochDelta {
            touched: bitmap_from(&w.touched, "touched")?,
            data: bitmap_from(&w.data, "data")?,
            zero: bitmap_from(&w.zero, "zero")?,
            reclaimed: bitmap_from(&w.reclaimed, "reclaimed")?,
            moved,
        };
        d.check_consistent(&format!("epoch record {image}/{epoch}"))?;
        Ok(d)
    }

    /// Refuses a delta whose bitmaps contradict each other.
    pub(crate) fn check_consistent(&self, what: &str) -> Result<()> {
        if !self.data.is_disjoint(&self.zero) {
            return Err(Error::corrupt(format!(
                "{what}: a grain is both data and zero"
            )));
        }
        if !self.moved.is_subset(&self.data) {
            return Err(Error::corrupt(format!(
                "{what}: a moved grain is not a data grain"
            )));
        }
        Ok(())
    }
}
