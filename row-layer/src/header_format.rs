//! How a [`HeaderRecord`] is stored on the header object.
//!
//! Format 1 put the whole header, every snapshot and epoch included, in the
//! object's payload, and every metadata transition rewrote it: at 10,000
//! snapshots a rename wrote about half a megabyte. Format 2 splits it:
//!
//! - the payload holds the fixed fields, the commit sequence number and the
//!   number of entries of each kind;
//! - each epoch, snapshot and bookmark is one omap entry (`hdr.epoch.<e>`,
//!   `hdr.snap.<id>`, `hdr.bookmark.<name>`), its value a `RRHE` record.
//!
//! A commit ([`commit_actions`]) is one atomic op: the new payload plus the
//! entries that changed and the removal of those that went. A reader lists
//! the entries between two reads of the payload and retries when the payload
//! changed in between (`store::read_header`), so it never mixes two commits.
//! The counts in the payload catch a lost or extra entry. Images written in
//! format 1 still open; their first commit writes every entry.

use crate::backend::ext::BackendExt;
use crate::backend::{Action, Backend};
use crate::envelope::{self, RecordType};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{Epoch, ImageId, SnapId};
use crate::layout;
use crate::records::{
    BookmarkRecord, EpochMeta, HeaderRecord, ParentLink, SnapRecord, Timestamp, HEADER,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// One header entry stored in the header object's omap.
pub const HEADER_ENTRY: RecordType = RecordType {
    magic: *b"RRHE",
    current_version: 1,
    oldest_readable: 1,
};

/// Prefix of every header entry key.
pub const ENTRY_PREFIX: &str = "hdr.";

/// The value of one header entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeaderEntry {
    /// A live epoch and its lineage.
    Epoch(Epoch, EpochMeta),
    /// A snapshot.
    Snap(SnapRecord),
    /// A bookmark.
    Bookmark(BookmarkRecord),
}

impl HeaderEntry {
    /// The omap key this entry is stored under.
    pub fn key(&self) -> String {
        match self {
            HeaderEntry::Epoch(e, _) => format!("{ENTRY_PREFIX}epoch.{:016x}", e.0),
            HeaderEntry::Snap(s) => format!("{ENTRY_PREFIX}snap.{:016x}", s.id.0),
            HeaderEntry::Bookmark(b) => format!("{ENTRY_PREFIX}bookmark.{}", b.name),
        }
    }
    /// Encodes as an enveloped record.
    pub fn encode(&self) -> Result<Bytes> {
        envelope::encode(HEADER_ENTRY, self).map(Bytes::from)
    }
    /// Decodes the entry stored under `key`, checking that it belongs there.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Self> {
        let entry: HeaderEntry = envelope::decode(HEADER_ENTRY, bytes)?;
        if entry.key() != key {
            return Err(Error::corrupt(format!(
                "header entry {} found under key {key}",
                entry.key()
            )));
        }
        Ok(entry)
    }
}

/// Format 1: the whole header in the payload (read only).
#[derive(Deserialize)]
struct WireV1 {
    id: ImageId,
    name: String,
    size: u64,
    object_size: u64,
    grain_size: u64,
    created: Timestamp,
    head: Epoch,
    next_epoch: u64,
    next_snap: u64,
    epochs: BTreeMap<Epoch, EpochMeta>,
    garbage: Vec<Epoch>,
    head_truncated: Option<(u64, u64)>,
    snapshots: Vec<SnapRecord>,
    bookmarks: Vec<BookmarkRecord>,
    parent: Option<ParentLink>,
    removing: bool,
}

/// Format 2 payload: the fixed fields and the entry counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderCore {
    id: ImageId,
    name: String,
    size: u64,
    object_size: u64,
    grain_size: u64,
    created: Timestamp,
    head: Epoch,
    next_epoch: u64,
    next_snap: u64,
    garbage: Vec<Epoch>,
    head_truncated: Option<(u64, u64)>,
    parent: Option<ParentLink>,
    removing: bool,
    commit_seq: u64,
    epoch_count: u64,
    snap_count: u64,
    bookmark_count: u64,
}

/// What a header payload decodes to.
#[derive(Debug)]
pub enum StoredHeader {
    /// Format 1: complete.
    Whole(HeaderRecord),
    /// Format 2: the entries must be read from the omap and assembled.
    Split(HeaderCore),
}

impl StoredHeader {
    /// Decodes a header payload of either format.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let (version, payload) = envelope::open(HEADER, bytes)?;
        let corrupt = |e: postcard::Error| Error::corrupt(format!("header does not decode: {e}"));
        if version == 1 {
            let w: WireV1 = postcard::from_bytes(payload).map_err(corrupt)?;
            return from_v1(w).validate().map(StoredHeader::Whole);
        }
        let core: HeaderCore = postcard::from_bytes(payload).map_err(corrupt)?;
        Ok(StoredHeader::Split(core))
    }
}

fn from_v1(w: WireV1) -> HeaderRecord {
    HeaderRecord {
        id: w.id,
        name: w.name,
        size: w.size,
        object_size: w.object_size,
        grain_size: w.grain_size,
        created: w.created,
        head: w.head,
        next_epoch: w.next_epoch,
        next_snap: w.next_snap,
        epochs: w.epochs,
        garbage: w.garbage,
        head_truncated: w.head_truncated,
        snapshots: w.snapshots,
        bookmarks: w.bookmarks,
        parent: w.parent,
        removing: w.removing,
        commit_seq: 0,
    }
}

impl HeaderCore {
    /// The image this payload belongs to.
    pub fn id(&self) -> &ImageId {
        &self.id
    }
    /// Builds the header from this payload and the listed entries (every
    /// key under [`ENTRY_PREFIX`]), refusing a set that does not match the
    /// payload's counts.
    pub fn assemble(self, entries: &[(String, Bytes)]) -> Result<HeaderRecord> {
        let mut h = HeaderRecord {
            id: self.id,
            name: self.name,
            size: self.size,
            object_size: self.object_size,
            grain_size: self.grain_size,
            created: self.created,
            head: self.head,
            next_epoch: self.next_epoch,
            next_snap: self.next_snap,
            epochs: BTreeMap::new(),
            garbage: self.garbage,
            head_truncated: self.head_truncated,
            snapshots: Vec::new(),
            bookmarks: Vec::new(),
            parent: self.parent,
            removing: self.removing,
            commit_seq: self.commit_seq,
        };
        for (key, value) in entries {
            match HeaderEntry::decode(key, value)? {
                HeaderEntry::Epoch(e, m) => {
                    h.epochs.insert(e, m);
                }
                HeaderEntry::Snap(s) => h.snapshots.push(s),
                HeaderEntry::Bookmark(b) => h.bookmarks.push(b),
            }
        }
        h.snapshots.sort_by_key(|s| s.id);
        h.bookmarks.sort_by_key(|b| b.created);
        let counts = (
            h.epochs.len() as u64,
            h.snapshots.len() as u64,
            h.bookmarks.len() as u64,
        );
        let want = (self.epoch_count, self.snap_count, self.bookmark_count);
        if counts != want {
            return Err(Error::corrupt(format!(
                "header of {}: payload names {want:?} epochs/snapshots/bookmarks, omap holds {counts:?}",
                h.id
            )));
        }
        h.validate()
    }
}

/// The format 2 payload of `h`.
pub fn encode_core(h: &HeaderRecord) -> Result<Bytes> {
    let core = HeaderCore {
        id: h.id.clone(),
        name: h.name.clone(),
        size: h.size,
        object_size: h.object_size,
        grain_size: h.grain_size,
        created: h.created,
        head: h.head,
        next_epoch: h.next_epoch,
        next_snap: h.next_snap,
        garbage: h.garbage.clone(),
        head_truncated: h.head_truncated,
        parent: h.parent.clone(),
        removing: h.removing,
        commit_seq: h.commit_seq,
        epoch_count: h.epochs.len() as u64,
        snap_count: h.snapshots.len() as u64,
        bookmark_count: h.bookmarks.len() as u64,
    };
    envelope::encode(HEADER, &core).map(Bytes::from)
}

/// Every entry of `h`, in no particular order.
pub fn entries(h: &HeaderRecord) -> impl Iterator<Item = HeaderEntry> + '_ {
    let epochs = h
        .epochs
        .iter()
        .map(|(e, m)| HeaderEntry::Epoch(*e, m.clone()));
    let snaps = h.snapshots.iter().cloned().map(HeaderEntry::Snap);
    let marks = h.bookmarks.iter().cloned().map(HeaderEntry::Bookmark);
    epochs.chain(snaps).chain(marks)
}

/// The actions that turn the stored header `stored` into `new`: the payload
/// (with `new.commit_seq` set to the next number) plus the entries that
/// changed or went. `stored` is `None` for an object that holds no header
/// yet. Only changed entries are encoded, so the op is O(1) in the number
/// of snapshots for every snapshot operation; finding them is a merge walk
/// over both headers in memory that allocates nothing per unchanged entry.
pub fn commit_actions(
    new: &mut HeaderRecord,
    stored: Option<&HeaderRecord>,
) -> Result<Vec<Action>> {
    new.commit_seq = stored.map_or(0, |s| s.commit_seq) + 1;
    // A format-1 header has no entries in the omap yet.
    static NO_EPOCHS: BTreeMap<Epoch, EpochMeta> = BTreeMap::new();
    let (old_epochs, old_snaps, old_marks): (_, &[SnapRecord], &[BookmarkRecord]) = match stored {
        Some(s) if s.commit_seq > 0 => (&s.epochs, &s.snapshots, &s.bookmarks),
        _ => (&NO_EPOCHS, &[], &[]),
    };
    let mut set = Vec::new();
    let mut gone = Vec::new();
    let mut put = |entry: HeaderEntry| -> Result<()> {
        set.push((entry.key(), entry.encode()?));
        Ok(())
    };
    for change in merge_diff(old_epochs.iter().collect(), new.epochs.iter().collect()) {
        match change {
            Change::Put(e, m) => put(HeaderEntry::Epoch(*e, m.clone()))?,
            Change::Gone(e, m) => gone.push(HeaderEntry::Epoch(*e, m.clone()).key()),
        }
    }
    for change in merge_diff(by_id(old_snaps), by_id(&new.snapshots)) {
        match change {
            Change::Put(_, s) => put(HeaderEntry::Snap(s.clone()))?,
            Change::Gone(_, s) => gone.push(HeaderEntry::Snap(s.clone()).key()),
        }
    }
    for change in merge_diff(by_name(old_marks), by_name(&new.bookmarks)) {
        match change {
            Change::Put(_, b) => put(HeaderEntry::Bookmark(b.clone()))?,
            Change::Gone(_, b) => gone.push(HeaderEntry::Bookmark(b.clone()).key()),
        }
    }
    let mut actions = vec![Action::WriteFull(encode_core(new)?)];
    if !set.is_empty() {
        actions.push(Action::OmapSet(set));
    }
    if !gone.is_empty() {
        actions.push(Action::OmapRemove(gone));
    }
    Ok(actions)
}

fn by_id(snaps: &[SnapRecord]) -> Vec<(SnapId, &SnapRecord)> {
    let mut v: Vec<(SnapId, &SnapRecord)> = snaps.iter().map(|s| (s.id, s)).collect();
    v.sort_by_key(|(id, _)| *id);
    v
}

fn by_name(marks: &[BookmarkRecord]) -> Vec<(&str, &BookmarkRecord)> {
    let mut v: Vec<(&str, &BookmarkRecord)> = marks.iter().map(|b| (b.name.as_str(), b)).collect();
    v.sort_by_key(|(name, _)| *name);
    v
}

/// Encodes `h` as a fresh format-2 header (payload and every entry) and
/// decodes it again: what a reader of a just-created header gets.
pub fn round_trip(h: &HeaderRecord) -> Result<HeaderRecord> {
    let mut fresh = h.clone();
    let actions = commit_actions(&mut fresh, None)?;
    let (mut payload, mut entries) = (Bytes::new(), Vec::new());
    for a in actions {
        match a {
            Action::WriteFull(b) => payload = b,
            Action::OmapSet(kv) => entries.extend(kv),
            _ => {}
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    match StoredHeader::decode(&payload)? {
        StoredHeader::Split(core) => core.assemble(&entries),
        StoredHeader::Whole(h) => Ok(h),
    }
}

/// One difference between two key-sorted sequences.
enum Change<K, V> {
    /// Added, or changed: the new value.
    Put(K, V),
    /// Removed: the old value.
    Gone(K, V),
}

/// The differences from `old` to `new`, both sorted by key.
fn merge_diff<K: Ord, V: PartialEq>(old: Vec<(K, V)>, new: Vec<(K, V)>) -> Vec<Change<K, V>> {
    let mut out = Vec::new();
    let mut old = old.into_iter().peekable();
    for (k, v) in new {
        while let Some((ok, ov)) = old.next_if(|(ok, _)| *ok < k) {
            out.push(Change::Gone(ok, ov));
        }
        match old.next_if(|(ok, _)| *ok == k) {
            Some((_, ov)) if ov == v => {}
            _ => out.push(Change::Put(k, v)),
        }
    }
    out.extend(old.map(|(k, v)| Change::Gone(k, v)));
    out
}

/// How long a reader keeps starting over while commits land between its
/// two payload reads (a reclaim pass commits once per epoch it trims,
/// splices or deletes, in a burst), before it reports `Busy`.
const HEADER_READ_PATIENCE: Duration = Duration::from_secs(30);
/// The longest pause between two attempts.
const HEADER_READ_MAX_PAUSE: Duration = Duration::from_millis(100);

/// Reads the committed header of image `id`, in either format. A format-2
/// header's entries are listed between two reads of its payload; if the
/// payload changed (another commit landed), the listing may mix two commits
/// and is taken again after a pause that doubles up to 100 ms, for up to
/// 30 s. A reader can thus be held off by an owner that commits without
/// pause for that long; a compound read op (payload and entries in one
/// atomic read) would remove the window (DESIGN §9).
pub async fn read_header(backend: &dyn Backend, id: &ImageId) -> Result<HeaderRecord> {
    let oid = layout::header_object(id);
    let read = || async {
        backend
            .read_all(&oid)
            .await
            .map_err(|e| e.context(format!("reading header of image {id}")))
    };
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    let mut bytes = read().await?;
    loop {
        let core = match StoredHeader::decode(&bytes)? {
            StoredHeader::Whole(h) => return Ok(h),
            StoredHeader::Split(core) => core,
        };
        let entries = backend
            .omap_all(&oid, ENTRY_PREFIX)
            .await
            .map_err(|e| e.context(format!("listing header entries of image {id}")))?;
        let again = read().await?;
        if again == bytes {
            return core.assemble(&entries);
        }
        if started.elapsed() > HEADER_READ_PATIENCE {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "header of image {id} kept changing while it was read for {} s",
                    HEADER_READ_PATIENCE.as_secs()
                ),
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(HEADER_READ_MAX_PAUSE);
        bytes = read().await?;
    }
}
