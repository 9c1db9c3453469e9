//! fsck: finds, and on request repairs, what crashes, races and damage leave
//! in a store: leaked objects, stray keys, unregistered clones, half-created
//! or half-removed images, and records this build cannot read.
//!
//! [`check_store`] first scans read-only: the directory, the id objects, and
//! every header, epoch record, data object and children registry of the
//! images in scope (the whole pool, or one image and the images it is linked
//! to). A finding is [`Severity::Info`] for a legal state (a pending garbage
//! epoch, the record an interrupted seal left for the open head),
//! [`Severity::Warning`] for a leak or a dangling name, and
//! [`Severity::Error`] when data is lost or at risk (an unregistered clone,
//! an unreadable header or live record, a clone whose parent is gone).
//!
//! With `repair`, each repair re-checks its precondition against state read
//! after the check, right before it mutates anything, and never deletes an
//! object a live header names:
//! - work on an image's own objects runs under its ownership
//!   ([`Store::open`]; an image owned by a live client is refused with
//!   `Busy`). Deletions of data objects and records are guarded by the
//!   object version seen before a fresh (flushed) header read that shows
//!   the epoch is neither live, nor the head (nor, for plain orphans,
//!   garbage), so a record or object (re)written meanwhile is never removed;
//!   touch-key removal is guarded by the owner cookie, as every commit is;
//! - children registrations are changed under the *parent's* ownership, since
//!   unprotect and snapshot removal run on the parent's owner and read the
//!   registry there;
//! - objects of an image whose header no longer exists and that no name
//!   refers to are removed without ownership (there is nothing to own; a
//!   header never comes back for an id);
//! - headers that do not decode or are of a newer version are never touched,
//!   and neither is anything of their image.
//!
//! The `verify_records` check of `lifecycle.rs` is part of this scan.

use crate::backend::ext::{BackendExt, NotFoundExt};
use crate::backend::{Action, Backend, Guard, WriteOp};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{Epoch, ImageId, SnapId};
use crate::image::OWNER_XATTR;
use crate::layout;
use crate::pack::{parse_pack_key, PACK_PREFIX};
use crate::records::{self, EpochDelta, EpochState, HeaderRecord};
use crate::store::Store;
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

const DATA_PREFIX: &str = "rbd_row_data.";
const EPOCH_PREFIX: &str = "rbd_row_epoch.";
const CKPT_PREFIX: &str = "rbd_row_ckpt.";
const HEADER_PREFIX: &str = "rbd_row_header.";
const CHILDREN_PREFIX: &str = "rbd_row_children.";
const ID_PREFIX: &str = "rbd_row_id.";
const DIR_KEY_PREFIX: &str = "name.";
const PARALLELISM: usize = 32;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// A legal state worth knowing about; not a problem.
    Info,
    /// A leak or a dangling name: space or names are wasted, no data is at risk.
    Warning,
    /// Data is lost or at risk, or the image cannot be read.
    Error,
}

impl Severity {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FindingKind {
    /// The header does not decode (bad magic, crc, length, contents).
    CorruptHeader,
    /// The header is of a newer format version than this build reads.
    UnsupportedVersion,
    /// The record of a live sealed epoch is missing or does not decode.
    CorruptRecord,
    /// A data object of an epoch neither live nor garbage (a leak).
    OrphanData,
    /// An epoch record of an epoch neither live, garbage nor the head.
    OrphanRecord,
    /// A record for the open head: left by an interrupted seal, overwritten
    /// by the next one (info).
    HeadRecord,
    /// A garbage epoch awaiting the reclaimer (info).
    PendingGarbage,
    /// A garbage epoch whose record exists but cannot be read, so the
    /// reclaimer cannot find its data objects.
    CorruptGarbageRecord,
    /// A data object of such an epoch, found by listing.
    LeakedGarbageData,
    /// A `touch.<e>.<o>` header key of an epoch neither live nor garbage.
    StrayTouchKey,
    /// The head's checkpoint does not decode: open of the head fails.
    CorruptCheckpoint,
    /// A checkpoint of an epoch that is no longer the head (a crash right
    /// after a seal): never read, only wasted space.
    OrphanCheckpoint,
    /// A clone that its parent's children registry does not list: the
    /// parent snapshot could be unprotected and removed under it.
    UnregisteredClone,
    /// A children-registry key naming a child that does not exist or no
    /// longer descends from that snapshot.
    StaleChild,
    /// A clone whose parent image or parent snapshot is gone or unreadable.
    MissingParent,
    /// An object of an image id that has no header and no name.
    HeaderlessObject,
    /// A named image whose header is gone while its data or records remain.
    MissingHeader,
    /// A directory entry without its id object (the header still names it).
    MissingIdObject,
    /// An image with id object and header but no directory entry (an
    /// interrupted create).
    UnlistedImage,
    /// An interrupted remove: names left behind without a header, or a
    /// header marked `removing`.
    HalfRemoved,
    /// Directory entry and id object name different ids, or the id object
    /// is malformed.
    NameConflict,
    /// A header that no directory entry or id object names.
    UnnamedHeader,
    /// An object under an rbd-row prefix whose name does not parse.
    UnknownObject,
    /// A `pack.<e>` header entry (pack.rs) that is malformed, does not
    /// decode, or names an epoch neither live nor garbage: readers skip
    /// it; only wasted space.
    StrayPackEntry,
    /// A pack entry that decodes but differs from its epoch's record
    /// object: open would map the epoch from the wrong copy.
    PackMismatch,
}

impl FindingKind {
    /// How bad it is.
    pub fn severity(self) -> Severity {
        use FindingKind::*;
        match self {
            HeadRecord | PendingGarbage => Severity::Info,
            CorruptHeader | UnsupportedVersion | CorruptRecord | UnregisteredClone
            | MissingParent | MissingHeader | NameConflict | CorruptCheckpoint | PackMismatch => {
                Severity::Error
            }
            OrphanData | OrphanRecord | CorruptGarbageRecord | LeakedGarbageData
            | StrayTouchKey | StaleChild | HeaderlessObject | MissingIdObject | UnlistedImage
            | HalfRemoved | UnnamedHeader | UnknownObject | OrphanCheckpoint | StrayPackEntry => {
                Severity::Warning
            }
        }
    }

    /// Whether `--repair` has an action for it.
    pub fn repairable(self) -> bool {
        use FindingKind::*;
        matches!(
            self,
            OrphanData
                | OrphanRecord
                | OrphanCheckpoint
                | CorruptGarbageRecord
                | LeakedGarbageData
                | StrayTouchKey
                | StrayPackEntry
                | PackMismatch
                | UnregisteredClone
                | StaleChild
                | HeaderlessObject
                | MissingIdObject
                | UnlistedImage
                | HalfRemoved
        )
    }

    /// Kebab-case name (used in the CLI's output).
    pub fn as_str(self) -> &'static str {
        use FindingKind::*;
        match self {
            CorruptHeader => "corrupt-header",
            UnsupportedVersion => "unsupported-version",
            CorruptRecord => "corrupt-record",
            OrphanData => "orphan-data",
            OrphanRecord => "orphan-record",
            HeadRecord => "head-record",
            PendingGarbage => "pending-garbage",
            CorruptGarbageRecord => "corrupt-garbage-record",
            LeakedGarbageData => "leaked-garbage-data",
            StrayTouchKey => "stray-touch-key",
            CorruptCheckpoint => "corrupt-checkpoint",
            OrphanCheckpoint => "orphan-checkpoint",
            UnregisteredClone => "unregistered-clone",
            StaleChild => "stale-child",
            MissingParent => "missing-parent",
            HeaderlessObject => "headerless-object",
            MissingHeader => "missing-header",
            MissingIdObject => "missing-id-object",
            UnlistedImage => "unlisted-image",
            HalfRemoved => "half-removed",
            NameConflict => "name-conflict",
            UnnamedHeader => "unnamed-header",
            UnknownObject => "unknown-object",
            StrayPackEntry => "stray-pack-entry",
            PackMismatch => "pack-mismatch",
        }
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The image it belongs to (its name), when it has one. Children
    /// registrations belong to the parent image.
    pub image: Option<String>,
    /// The image id, when known.
    pub image_id: Option<ImageId>,
    /// What it is.
    pub kind: FindingKind,
    /// The object concerned.
    pub object: String,
    /// The omap key concerned (touch, children or directory key), if any.
    pub key: Option<String>,
    /// Human-readable explanation.
    pub detail: String,
    /// Whether `--repair` fixed it.
    pub repaired: bool,
}

impl Finding {
    /// Its severity.
    pub fn severity(&self) -> Severity {
        self.kind.severity()
    }
    /// A problem: a warning or an error that was not repaired.
    pub fn is_problem(&self) -> bool {
        self.severity() >= Severity::Warning && !self.repaired
    }
}

/// A repair that could not run (the findings stay unrepaired).
#[derive(Debug, Clone)]
pub struct RepairError {
    /// The image whose ownership or state stopped the repair.
    pub image: String,
    /// Why (`Busy` when another client owns the image).
    pub error: Error,
}

/// The result of [`check_store`].
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Everything found, sorted by image, kind and object.
    pub findings: Vec<Finding>,
    /// Images (names or header ids) the check looked at.
    pub images: usize,
    /// Repairs that could not run.
    pub errors: Vec<RepairError>,
}

impl CheckReport {
    /// Unrepaired warnings and errors.
    pub fn problems(&self) -> usize {
        self.findings.iter().filter(|f| f.is_problem()).count()
    }
    /// Findings repaired.
    pub fn repaired(&self) -> usize {
        self.findings.iter().filter(|f| f.repaired).count()
    }
    /// No unrepaired problem and no failed repair.
    pub fn is_clean(&self) -> bool {
        self.problems() == 0 && self.errors.is_empty()
    }
    /// Findings of one kind.
    pub fn of_kind(&self, kind: FindingKind) -> Vec<&Finding> {
        self.findings.iter().filter(|f| f.kind == kind).collect()
    }
}

/// Checks the images of `store` (all of them, or `image` and the images it
/// is linked to as parent or child), and with `repair` fixes what can be
/// fixed safely (module docs). `NotFound` if `image` names nothing.
pub async fn check_store(store: &Store, image: Option<&str>, repair: bool) -> Result<CheckReport> {
    let report = scan(store.backend().as_ref(), image).await?;
    if !repair
        || report
            .findings
            .iter()
            .all(|f| !f.is_problem() || !f.kind.repairable())
    {
        return Ok(report);
    }
    repair_all(store, report).await
}

// ---------------------------------------------------------------------------
// Scanning

#[derive(Debug, Clone)]
enum HeaderState {
    Missing,
    Corrupt(String),
    Unsupported(u16),
    Ok(Box<HeaderRecord>),
}

/// The version of an enveloped header newer than this build, if it is one.
fn newer_version(bytes: &[u8]) -> Option<u16> {
    if bytes.len() >= 6 && bytes[0..4] == records::HEADER.magic {
        let v = u16::from_le_bytes([bytes[4], bytes[5]]);
        if v > records::HEADER.current_version {
            return Some(v);
        }
    }
    None
}

async fn header_state(b: &dyn Backend, id: &ImageId) -> Result<HeaderState> {
    let oid = layout::header_object(id);
    let bytes = match b.read_all(&oid).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(HeaderState::Missing),
        Err(e) => return Err(e),
    };
    if let Some(v) = newer_version(&bytes) {
        return Ok(HeaderState::Unsupported(v));
    }
    match crate::store::read_header(b, id).await {
        Ok(h) if h.id == *id => Ok(HeaderState::Ok(Box::new(h))),
        Ok(h) => Ok(HeaderState::Corrupt(format!(
            "header of {id} carries id {}",
            h.id
        ))),
        Err(e) if e.kind() == ErrorKind::Corrupt => Ok(HeaderState::Corrupt(e.message().into())),
        Err(e) => Err(e),
    }
}

/// State of one epoch record.
enum RecordState {
    Missing,
    Corrupt(String),
    Ok,
}

async fn record_state(b: &dyn Backend, id: &ImageId, e: Epoch) -> Result<RecordState> {
    let bytes = match b.read_all(&layout::epoch_object(id, e)).await {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(RecordState::Missing),
        Err(err) => return Err(err),
    };
    match EpochDelta::decode(&bytes, id, e) {
        Ok(_) => Ok(RecordState::Ok),
        Err(err) if err.kind() == ErrorKind::Corrupt => {
            Ok(RecordState::Corrupt(err.message().into()))
        }
        Err(err) => Err(err),
    }
}

fn parse_id(s: &str) -> Option<ImageId> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| ImageId(s.to_string()))
}

fn parse_hex16(s: &str) -> Option<u64> {
    (s.len() == 16)
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// `rbd_row_data.<id>.<obj>.<epoch>` → (id, epoch).
fn parse_data_oid(oid: &str) -> Option<(ImageId, Epoch)> {
    let mut parts = oid.strip_prefix(DATA_PREFIX)?.split('.');
    let (Some(id), Some(o), Some(e), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    parse_hex16(o)?;
    Some((parse_id(id)?, Epoch(parse_hex16(e)?)))
}

/// `rbd_row_epoch.<id>.<epoch>` → (id, epoch).
fn parse_epoch_oid(oid: &str) -> Option<(ImageId, Epoch)> {
    let (id, e) = oid.strip_prefix(EPOCH_PREFIX)?.split_once('.')?;
    Some((parse_id(id)?, Epoch(parse_hex16(e)?)))
}

/// `rbd_row_ckpt.<id>.<epoch>` → (id, epoch).
fn parse_ckpt_oid(oid: &str) -> Option<(ImageId, Epoch)> {
    let (id, e) = oid.strip_prefix(CKPT_PREFIX)?.split_once('.')?;
    Some((parse_id(id)?, Epoch(parse_hex16(e)?)))
}

fn epoch_of(oid: &str) -> Option<Epoch> {
    parse_data_oid(oid)
        .or_else(|| parse_epoch_oid(oid))
        .or_else(|| parse_ckpt_oid(oid))
        .map(|(_, e)| e)
}

use layout::children_key;

fn parse_children_key(k: &str) -> Option<(SnapId, ImageId)> {
    let (s, c) = k.split_once('.')?;
    Some((SnapId(parse_hex16(s)?), parse_id(c)?))
}

#[derive(Default)]
struct Inventory {
    /// Directory entries: name → id (as stored).
    dir: BTreeMap<String, String>,
    /// Id objects: name → id (None when malformed).
    id_objects: BTreeMap<String, Option<ImageId>>,
    /// Ids whose objects were inventoried (their headers are checked).
    ids: BTreeSet<ImageId>,
    /// Data objects per id.
    data: BTreeMap<ImageId, Vec<(String, Epoch)>>,
    /// Epoch records per id.
    records: BTreeMap<ImageId, Vec<(String, Epoch)>>,
    /// Head checkpoints per id.
    ckpts: BTreeMap<ImageId, Vec<(String, Epoch)>>,
    /// Ids with a children registry.
    children: BTreeSet<ImageId>,
    /// Unparseable names under our prefixes.
    unknown: Vec<String>,
    /// Whole pool (else one image).
    pool: bool,
}

struct Scanner<'a> {
    b: &'a dyn Backend,
    inv: Inventory,
    headers: BTreeMap<ImageId, HeaderState>,
    findings: Vec<Finding>,
}

async fn directory(b: &dyn Backend, prefix: &str) -> Result<BTreeMap<String, String>> {
    let kvs = b
        .omap_all(layout::DIRECTORY, prefix)
        .await
        .or_absent()?
        .unwrap_or_default();
    Ok(kvs
        .into_iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(DIR_KEY_PREFIX)?.to_string();
            Some((name, String::from_utf8_lossy(&v).into_owned()))
        })
        .collect())
}

async fn id_object(b: &dyn Backend, name: &str) -> Result<Option<Option<ImageId>>> {
    match b.read_all(&layout::id_object(name)).await {
        Ok(bytes) => Ok(Some(std::str::from_utf8(&bytes).ok().and_then(parse_id))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

async fn exists(b: &dyn Backend, oid: &str) -> Result<bool> {
    match b.stat(oid).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

async fn inventory(b: &dyn Backend, image: Option<&str>) -> Result<Inventory> {
    let mut inv = Inventory::default();
    match image {
        None => {
            inv.pool = true;
            inv.dir = directory(b, DIR_KEY_PREFIX).await?;
            for oid in b.list(ID_PREFIX).await? {
                let name = oid[ID_PREFIX.len()..].to_string();
                if let Some(v) = id_object(b, &name).await? {
                    inv.id_objects.insert(name, v);
                }
            }
            for oid in b.list(HEADER_PREFIX).await? {
                match parse_id(&oid[HEADER_PREFIX.len()..]) {
                    Some(id) => {
                        inv.ids.insert(id);
                    }
                    None => inv.unknown.push(oid),
                }
            }
            for oid in b.list(CHILDREN_PREFIX).await? {
                match parse_id(&oid[CHILDREN_PREFIX.len()..]) {
                    Some(id) => {
                        inv.children.insert(id.clone());
                        inv.ids.insert(id);
                    }
                    None => inv.unknown.push(oid),
                }
            }
            for oid in b.list(DATA_PREFIX).await? {
                match parse_data_oid(&oid) {
                    Some((id, e)) => {
                        inv.ids.insert(id.clone());
                        inv.data.entry(id).or_default().push((oid, e));
                    }
                    None => inv.unknown.push(oid),
                }
            }
            for oid in b.list(EPOCH_PREFIX).await? {
                match parse_epoch_oid(&oid) {
                    Some((id, e)) => {
                        inv.ids.insert(id.clone());
                        inv.records.entry(id).or_default().push((oid, e));
                    }
                    None => inv.unknown.push(oid),
                }
            }
            for oid in b.list(CKPT_PREFIX).await? {
                match parse_ckpt_oid(&oid) {
                    Some((id, e)) => {
                        inv.ids.insert(id.clone());
                        inv.ckpts.entry(id).or_default().push((oid, e));
                    }
                    None => inv.unknown.push(oid),
                }
            }
            for id in inv.dir.values().filter_map(|s| parse_id(s)) {
                inv.ids.insert(id);
            }
            for id in inv.id_objects.values().flatten() {
                inv.ids.insert(id.clone());
            }
        }
        Some(name) => {
            layout::validate_name("image", name)?;
            let dir = directory(b, &format!("{DIR_KEY_PREFIX}{name}")).await?;
            if let Some(id) = dir.get(name) {
                inv.dir.insert(name.to_string(), id.clone());
            }
            if let Some(v) = id_object(b, name).await? {
                inv.id_objects.insert(name.to_string(), v);
            }
            if inv.dir.is_empty() && inv.id_objects.is_empty() {
                return Err(Error::not_found(format!("image {name} does not exist")));
            }
            let ids: BTreeSet<ImageId> = inv
                .dir
                .values()
                .filter_map(|s| parse_id(s))
                .chain(inv.id_objects.values().flatten().cloned())
                .collect();
            for id in ids {
                for oid in b.list(&layout::data_prefix(&id)).await? {
                    if let Some((_, e)) = parse_data_oid(&oid) {
                        inv.data.entry(id.clone()).or_default().push((oid, e));
                    }
                }
                for oid in b.list(&format!("{EPOCH_PREFIX}{id}.")).await? {
                    if let Some((_, e)) = parse_epoch_oid(&oid) {
                        inv.records.entry(id.clone()).or_default().push((oid, e));
                    }
                }
                for oid in b.list(&layout::ckpt_prefix(&id)).await? {
                    if let Some((_, e)) = parse_ckpt_oid(&oid) {
                        inv.ckpts.entry(id.clone()).or_default().push((oid, e));
                    }
                }
                if exists(b, &layout::children_object(&id)).await? {
                    inv.children.insert(id.clone());
                }
                inv.ids.insert(id);
            }
        }
    }
    for v in inv.data.values_mut() {
        v.sort();
    }
    for v in inv.records.values_mut() {
        v.sort();
    }
    Ok(inv)
}

/// Scans read-only.
async fn scan(b: &dyn Backend, image: Option<&str>) -> Result<CheckReport> {
    let inv = inventory(b, image).await?;
    let mut s = Scanner {
        b,
        inv,
        headers: BTreeMap::new(),
        findings: Vec::new(),
    };
    let ids: Vec<ImageId> = s.inv.ids.iter().cloned().collect();
    for id in &ids {
        s.header(id).await?;
    }
    s.check_names().await?;
    for id in &ids {
        s.check_image(id).await?;
    }
    if !s.inv.pool {
        // Clones of the image, which only their own headers name.
        for oid in b.list(HEADER_PREFIX).await? {
            let Some(cid) = parse_id(&oid[HEADER_PREFIX.len()..]) else {
                continue;
            };
            if ids.contains(&cid) {
                continue;
            }
            if let HeaderState::Ok(ch) = s.header(&cid).await? {
                if let Some(p) = ch.parent.as_ref().filter(|p| ids.contains(&p.image)) {
                    s.check_parent_link(&cid, &ch, p).await?;
                }
            }
        }
    }
    for oid in std::mem::take(&mut s.inv.unknown) {
        s.push(
            None,
            None,
            FindingKind::UnknownObject,
            oid,
            None,
            "name under an rbd-row prefix does not parse; left alone".into(),
        );
    }
    let images = ids.len();
    let mut findings = s.findings;
    findings.sort_by(|a, b| {
        (&a.image, &a.image_id, a.kind, &a.object, &a.key).cmp(&(
            &b.image,
            &b.image_id,
            b.kind,
            &b.object,
            &b.key,
        ))
    });
    findings.dedup();
    Ok(CheckReport {
        findings,
        images,
        errors: Vec::new(),
    })
}

impl Scanner<'_> {
    async fn header(&mut self, id: &ImageId) -> Result<HeaderState> {
        if let Some(h) = self.headers.get(id) {
            return Ok(h.clone());
        }
        let h = header_state(self.b, id).await?;
        self.headers.insert(id.clone(), h.clone());
        Ok(h)
    }

    /// The name an id goes by: directory, id object, then header.
    fn name_of(&self, id: &ImageId) -> Option<String> {
        self.inv
            .dir
            .iter()
            .find(|(_, v)| v.as_str() == id.0)
            .map(|(n, _)| n.clone())
            .or_else(|| {
                self.inv
                    .id_objects
                    .iter()
                    .find(|(_, v)| v.as_ref() == Some(id))
                    .map(|(n, _)| n.clone())
            })
            .or_else(|| match self.headers.get(id) {
                Some(HeaderState::Ok(h)) => Some(h.name.clone()),
                _ => None,
            })
    }

    fn named(&self, id: &ImageId) -> bool {
        self.inv.dir.values().any(|v| v.as_str() == id.0)
            || self.inv.id_objects.values().any(|v| v.as_ref() == Some(id))
    }

    fn push(
        &mut self,
        image: Option<String>,
        image_id: Option<ImageId>,
        kind: FindingKind,
        object: String,
        key: Option<String>,
        detail: String,
    ) {
        self.findings.push(Finding {
            image,
            image_id,
            kind,
            object,
            key,
            detail,
            repaired: false,
        });
    }

    async fn check_names(&mut self) -> Result<()> {
        let names: BTreeSet<String> = self
            .inv
            .dir
            .keys()
            .chain(self.inv.id_objects.keys())
            .cloned()
            .collect();
        for name in names {
            let dir_id = self.inv.dir.get(&name).cloned();
            let obj_id = self.inv.id_objects.get(&name).cloned();
            let id_oid = layout::id_object(&name);
            if let Some(None) = obj_id {
                self.push(
                    Some(name.clone()),
                    None,
                    FindingKind::NameConflict,
                    id_oid,
                    None,
                    "id object is malformed".into(),
                );
                continue;
            }
            let obj_id = obj_id.flatten();
            let dir_parsed = dir_id.as_deref().map(parse_id);
            if let Some(None) = dir_parsed {
                self.push(
                    Some(name.clone()),
                    None,
                    FindingKind::NameConflict,
                    layout::DIRECTORY.into(),
                    Some(format!("{DIR_KEY_PREFIX}{name}")),
                    format!("directory entry holds a malformed id {:?}", dir_id),
                );
                continue;
            }
            let dir_id = dir_parsed.flatten();
            if let (Some(d), Some(o)) = (&dir_id, &obj_id) {
                if d != o {
                    self.push(
                        Some(name.clone()),
                        Some(o.clone()),
                        FindingKind::NameConflict,
                        id_oid,
                        None,
                        format!("directory entry says id {d}, id object says {o}"),
                    );
                    continue;
                }
            }
            let Some(id) = obj_id.clone().or(dir_id.clone()) else {
                continue;
            };
            match self.header(&id).await? {
                HeaderState::Missing => {
                    let data = self.inv.data.get(&id).map_or(0, Vec::len);
                    let recs = self.inv.records.get(&id).map_or(0, Vec::len);
                    if data + recs > 0 {
                        self.push(
                            Some(name.clone()),
                            Some(id.clone()),
                            FindingKind::MissingHeader,
                            layout::header_object(&id),
                            None,
                            format!(
                                "header is gone but {data} data objects and {recs} epoch records remain; \
                                 not repaired (remove the image to discard them)"
                            ),
                        );
                    } else {
                        self.push(
                            Some(name.clone()),
                            Some(id.clone()),
                            FindingKind::HalfRemoved,
                            layout::header_object(&id),
                            None,
                            format!(
                                "no header, data or records: names left by an interrupted remove \
                                 (directory entry: {}, id object: {})",
                                yes(dir_id.is_some()),
                                yes(obj_id.is_some())
                            ),
                        );
                    }
                }
                HeaderState::Corrupt(_) | HeaderState::Unsupported(_) => {}
                HeaderState::Ok(h) => {
                    if h.removing {
                        self.push(
                            Some(name.clone()),
                            Some(id.clone()),
                            FindingKind::HalfRemoved,
                            layout::header_object(&id),
                            None,
                            "header is marked removing: an interrupted remove".into(),
                        );
                        continue;
                    }
                    if dir_id.is_none() {
                        self.push(
                            Some(name.clone()),
                            Some(id.clone()),
                            FindingKind::UnlistedImage,
                            layout::DIRECTORY.into(),
                            Some(format!("{DIR_KEY_PREFIX}{name}")),
                            "image has an id object and a header but no directory entry \
                             (an interrupted create)"
                                .into(),
                        );
                    }
                    if obj_id.is_none() {
                        if h.name == name {
                            self.push(
                                Some(name.clone()),
                                Some(id.clone()),
                                FindingKind::MissingIdObject,
                                id_oid,
                                None,
                                "directory entry and header exist but the id object is missing"
                                    .into(),
                            );
                        } else {
                            self.push(
                                Some(name.clone()),
                                Some(id.clone()),
                                FindingKind::NameConflict,
                                id_oid,
                                None,
                                format!(
                                    "directory entry names id {id}, whose header calls itself {:?}, \
                                     and there is no id object",
                                    h.name
                                ),
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn check_image(&mut self, id: &ImageId) -> Result<()> {
        let name = self.name_of(id);
        let hdr = layout::header_object(id);
        let h = match self.header(id).await? {
            HeaderState::Ok(h) => h,
            HeaderState::Corrupt(m) => {
                self.push(
                    name,
                    Some(id.clone()),
                    FindingKind::CorruptHeader,
                    hdr,
                    None,
                    format!("{m}; nothing of this image is checked or touched"),
                );
                return Ok(());
            }
            HeaderState::Unsupported(v) => {
                self.push(
                    name,
                    Some(id.clone()),
                    FindingKind::UnsupportedVersion,
                    hdr,
                    None,
                    format!(
                        "header format version {v} is newer than this build reads ({}); \
                         nothing of this image is checked or touched",
                        records::HEADER.current_version
                    ),
                );
                return Ok(());
            }
            HeaderState::Missing => {
                self.check_headerless(id);
                return Ok(());
            }
        };
        if self.inv.pool && !self.named(id) {
            self.push(
                Some(h.name.clone()),
                Some(id.clone()),
                FindingKind::UnnamedHeader,
                hdr.clone(),
                None,
                "no directory entry or id object names this header (an interrupted create, \
                 or a lost name); not repaired"
                    .into(),
            );
        }
        let name = name.or(Some(h.name.clone()));
        let live: BTreeSet<Epoch> = h.epochs.keys().copied().collect();
        let garbage: BTreeSet<Epoch> = h.garbage.iter().copied().collect();

        // Records: live sealed ones must read; garbage ones are pending.
        let mut corrupt_garbage = BTreeSet::new();
        for (e, m) in &h.epochs {
            if m.state != EpochState::Sealed {
                continue;
            }
            let why = match record_state(self.b, id, *e).await? {
                RecordState::Ok => continue,
                RecordState::Missing => "is missing".to_string(),
                RecordState::Corrupt(m) => format!("does not decode: {m}"),
            };
            self.push(
                name.clone(),
                Some(id.clone()),
                FindingKind::CorruptRecord,
                layout::epoch_object(id, *e),
                None,
                format!("record of live sealed epoch {e} {why}; its data cannot be mapped"),
            );
        }
        for g in &garbage {
            let oid = layout::epoch_object(id, *g);
            match record_state(self.b, id, *g).await? {
                RecordState::Ok | RecordState::Missing => self.push(
                    name.clone(),
                    Some(id.clone()),
                    FindingKind::PendingGarbage,
                    oid,
                    None,
                    format!("epoch {g} awaits the reclaimer (it runs on the image's owner)"),
                ),
                RecordState::Corrupt(m) => {
                    corrupt_garbage.insert(*g);
                    let n = self
                        .inv
                        .data
                        .get(id)
                        .map_or(0, |v| v.iter().filter(|(_, e)| e == g).count());
                    self.push(
                        name.clone(),
                        Some(id.clone()),
                        FindingKind::CorruptGarbageRecord,
                        oid,
                        None,
                        format!(
                            "record of garbage epoch {g} does not decode ({m}); the reclaimer \
                             cannot name its objects: {n} data objects found by listing"
                        ),
                    );
                }
            }
        }
        for (oid, e) in self.inv.records.get(id).cloned().unwrap_or_default() {
            if e == h.head {
                self.push(
                    name.clone(),
                    Some(id.clone()),
                    FindingKind::HeadRecord,
                    oid,
                    None,
                    format!(
                        "record for the open head epoch {e}, left by an interrupted seal; \
                         the next seal overwrites it"
                    ),
                );
            } else if !live.contains(&e) && !garbage.contains(&e) {
                self.push(
                    name.clone(),
                    Some(id.clone()),
                    FindingKind::OrphanRecord,
                    oid,
                    None,
                    format!("epoch {e} is neither live nor garbage"),
                );
            }
        }
        for (oid, e) in self.inv.data.get(id).cloned().unwrap_or_default() {
            if corrupt_garbage.contains(&e) {
                self.push(
                    name.clone(),
                    Some(id.clone()),
                    FindingKind::LeakedGarbageData,
                    oid,
                    None,
                    format!("data object of garbage epoch {e}, whose record is unreadable"),
                );
            } else if !live.contains(&e) && !garbage.contains(&e) {
                self.push(
                    name.clone(),
                    Some(id.clone()),
                    FindingKind::OrphanData,
                    oid,
                    None,
                    format!("epoch {e} is neither live nor garbage (leaked)"),
                );
            }
        }
        self.check_checkpoints(id, &h, name.clone()).await?;
        // Touch keys.
        let touch = self
            .b
            .omap_all(&hdr, "touch.")
            .await
            .or_absent()?
            .unwrap_or_default();
        for (k, _) in touch {
            let stray = match layout::parse_touch_key(&k) {
                Ok((e, _)) if live.contains(&e) || garbage.contains(&e) => continue,
                Ok((e, _)) => format!("touch key of epoch {e}, which is neither live nor garbage"),
                Err(_) => "malformed touch key".to_string(),
            };
            self.push(
                name.clone(),
                Some(id.clone()),
                FindingKind::StrayTouchKey,
                hdr.clone(),
                Some(k),
                stray,
            );
        }
        self.check_pack(id, &h, name.clone()).await?;
        // As a clone: registered with a live parent snapshot.
        if let Some(p) = &h.parent {
            self.check_parent_link(id, &h, p).await?;
        }
        // As a parent: every registration names a live child of that snapshot.
        if self.inv.children.contains(id) {
            self.check_children(id, name.clone()).await?;
        }
        Ok(())
    }

    /// Every pack entry must be a byte-for-byte copy of a live sealed
    /// epoch's record (or belong to a garbage epoch, whose entry goes with
    /// it). An entry whose record object does not read is left alone: it
    /// may be the only copy (the record finding says so).
    async fn check_pack(
        &mut self,
        id: &ImageId,
        h: &HeaderRecord,
        name: Option<String>,
    ) -> Result<()> {
        let hdr = layout::header_object(id);
        let entries = self
            .b
            .omap_all(&hdr, PACK_PREFIX)
            .await
            .or_absent()?
            .unwrap_or_default();
        for (k, v) in entries {
            let e = match parse_pack_key(&k) {
                Ok(e) if h.garbage.contains(&e) => continue,
                Ok(e) => e,
                Err(_) => Epoch(u64::MAX),
            };
            let sealed = h
                .epochs
                .get(&e)
                .is_some_and(|m| m.state == EpochState::Sealed);
            let finding = if !sealed {
                Some((
                    FindingKind::StrayPackEntry,
                    format!("pack entry {k:?} names no live sealed epoch"),
                ))
            } else if let Err(err) = EpochDelta::decode(&v, id, e) {
                Some((FindingKind::StrayPackEntry, format!("pack entry of epoch {e} does not decode ({}); open reads the record object", err.message())))
            } else {
                match self.b.read_all(&layout::epoch_object(id, e)).await.or_absent()? {
                    Some(rec) if rec != v && EpochDelta::decode(&rec, id, e).is_ok() => Some((
                        FindingKind::PackMismatch,
                        format!("pack entry of epoch {e} differs from its record object; open would use the stale copy"),
                    )),
                    _ => None,
                }
            };
            if let Some((kind, detail)) = finding {
                self.push(
                    name.clone(),
                    Some(id.clone()),
                    kind,
                    hdr.clone(),
                    Some(k),
                    detail,
                );
            }
        }
        Ok(())
    }

    /// The head's checkpoint must decode; any other is stale.
    async fn check_checkpoints(
        &mut self,
        id: &ImageId,
        h: &HeaderRecord,
        name: Option<String>,
    ) -> Result<()> {
        for (oid, e) in self.inv.ckpts.get(id).cloned().unwrap_or_default() {
            let (kind, what) = if e == h.head {
                match crate::head_recovery::read_checkpoint(self.b, h).await {
                    Ok(_) => continue,
                    Err(err) => (
                        FindingKind::CorruptCheckpoint,
                        format!("checkpoint of the head does not read ({err}); open fails"),
                    ),
                }
            } else if h.garbage.contains(&e) {
                continue; // goes with the epoch's garbage deletion
            } else {
                (
                    FindingKind::OrphanCheckpoint,
                    format!("checkpoint of epoch {e}, which is not the head"),
                )
            };
            self.push(name.clone(), Some(id.clone()), kind, oid, None, what);
        }
        Ok(())
    }

    async fn check_parent_link(
        &mut self,
        id: &ImageId,
        h: &HeaderRecord,
        p: &records::ParentLink,
    ) -> Result<()> {
        let child = Some(h.name.clone());
        let missing = |what: String| (FindingKind::MissingParent, what);
        let problem = match self.header(&p.image).await? {
            HeaderState::Missing => Some(missing(format!(
                "parent image {} is gone: the clone's unwritten data is lost",
                p.image
            ))),
            HeaderState::Corrupt(_) | HeaderState::Unsupported(_) => Some(missing(format!(
                "parent image {} has an unreadable header",
                p.image
            ))),
            HeaderState::Ok(ph) => match ph.snapshots.iter().find(|s| s.id == p.snap) {
                None => Some(missing(format!(
                    "parent snapshot {}@{} is gone: the clone's unwritten data is lost",
                    ph.name, p.snap
                ))),
                Some(s) => {
                    let key = children_key(p.snap, id);
                    let reg = layout::children_object(&p.image);
                    let have = match self.b.omap_get(&reg, "", &key, 1).await {
                        Ok(kv) => kv.iter().any(|(k, _)| *k == key),
                        Err(e) if e.kind() == ErrorKind::NotFound => false,
                        Err(e) => return Err(e),
                    };
                    if !have {
                        let prot = if s.protected {
                            ""
                        } else {
                            " (and the snapshot is no longer protected)"
                        };
                        self.push(
                            Some(ph.name.clone()),
                            Some(p.image.clone()),
                            FindingKind::UnregisteredClone,
                            reg,
                            Some(key),
                            format!(
                                "clone {} of {}@{} is not registered{prot}: the snapshot could \
                                 be unprotected and removed under it",
                                h.name, ph.name, s.name
                            ),
                        );
                    }
                    None
                }
            },
        };
        if let Some((kind, detail)) = problem {
            self.push(
                child,
                Some(id.clone()),
                kind,
                layout::header_object(id),
                None,
                detail,
            );
        }
        Ok(())
    }

    async fn check_children(&mut self, id: &ImageId, name: Option<String>) -> Result<()> {
        let reg = layout::children_object(id);
        let kvs = match self.b.omap_all(&reg, "").await {
            Ok(kvs) => kvs,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for (k, _) in kvs {
            let stale = match parse_children_key(&k) {
                None => Some("malformed children key".to_string()),
                Some((snap, child)) => match self.header(&child).await? {
                    HeaderState::Missing => Some(format!("child {child} does not exist")),
                    HeaderState::Corrupt(_) | HeaderState::Unsupported(_) => None,
                    HeaderState::Ok(ch) => match &ch.parent {
                        Some(p) if p.image == *id && p.snap == snap => None,
                        _ => Some(format!(
                            "child {} no longer descends from snapshot id {snap}",
                            ch.name
                        )),
                    },
                },
            };
            if let Some(detail) = stale {
                self.push(
                    name.clone(),
                    Some(id.clone()),
                    FindingKind::StaleChild,
                    reg.clone(),
                    Some(k),
                    detail,
                );
            }
        }
        Ok(())
    }

    fn check_headerless(&mut self, id: &ImageId) {
        if self.named(id) {
            return; // reported by the name check (MissingHeader / HalfRemoved)
        }
        let mut objs: Vec<String> = Vec::new();
        objs.extend(
            self.inv
                .data
                .get(id)
                .into_iter()
                .flatten()
                .map(|(o, _)| o.clone()),
        );
        objs.extend(
            self.inv
                .records
                .get(id)
                .into_iter()
                .flatten()
                .map(|(o, _)| o.clone()),
        );
        if self.inv.children.contains(id) {
            objs.push(layout::children_object(id));
        }
        for oid in objs {
            self.push(
                None,
                Some(id.clone()),
                FindingKind::HeaderlessObject,
                oid,
                None,
                format!("image {id} has no header and no name"),
            );
        }
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "present"
    } else {
        "gone"
    }
}

// ---------------------------------------------------------------------------
// Repair

async fn repair_all(store: &Store, mut report: CheckReport) -> Result<CheckReport> {
    let b: &dyn Backend = store.backend().as_ref();
    // Group the repairable problems: by owning image, or none.
    let mut owned: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut unowned: Vec<usize> = Vec::new();
    for (i, f) in report.findings.iter().enumerate() {
        if !f.is_problem() || !f.kind.repairable() {
            continue;
        }
        match (f.kind, &f.image) {
            (FindingKind::HeaderlessObject, _) | (FindingKind::MissingIdObject, _) => {
                unowned.push(i)
            }
            (FindingKind::HalfRemoved, _) => unowned.push(i),
            (_, Some(name)) => owned.entry(name.clone()).or_default().push(i),
            (_, None) => {}
        }
    }
    for i in unowned {
        let f = report.findings[i].clone();
        let r = match f.kind {
            FindingKind::HeaderlessObject => repair_headerless(b, &f).await,
            FindingKind::MissingIdObject => repair_id_object(b, &f).await,
            FindingKind::HalfRemoved => repair_half_removed(store, &f).await,
            _ => Ok(false),
        };
        match r {
            Ok(done) => report.findings[i].repaired = done,
            Err(error) => report.errors.push(RepairError {
                image: f.image.clone().unwrap_or_else(|| id_str(&f)),
                error,
            }),
        }
    }
    for (name, idx) in owned {
        let expected = report.findings[idx[0]].image_id.clone();
        let img = match store.open(&name).await {
            Ok(img) => img,
            Err(e) => {
                let error = if e.kind() == ErrorKind::Busy {
                    Error::busy(format!(
                        "image {name} is in use ({}); stop its owner or run the check \
                         without --repair",
                        e.message()
                    ))
                } else {
                    e.context(format!("taking ownership of image {name} to repair it"))
                };
                report.errors.push(RepairError { image: name, error });
                continue;
            }
        };
        let r = repair_owned(store, &img, expected.as_ref(), &mut report.findings, &idx).await;
        let closed = img.close().await;
        if let Err(error) = r.and(closed) {
            report.errors.push(RepairError { image: name, error });
        }
    }
    Ok(report)
}

fn id_str(f: &Finding) -> String {
    f.image_id
        .as_ref()
        .map_or_else(String::new, |i| i.0.clone())
}

/// Removes `oid` only if it still has `version` (absent counts as done).
async fn remove_if_version(b: &dyn Backend, oid: &str, version: u64) -> Result<bool> {
    match b
        .operate(oid, WriteOp::remove().guard(Guard::VersionEquals(version)))
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(true),
        Err(e) if e.kind() == ErrorKind::PreconditionFailed => Ok(false),
        Err(e) => Err(e),
    }
}

async fn version_of(b: &dyn Backend, oid: &str) -> Result<Option<u64>> {
    match b.stat(oid).await {
        Ok(st) => Ok(Some(st.version)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

async fn repair_owned(
    store: &Store,
    img: &crate::Image,
    expected: Option<&ImageId>,
    findings: &mut [Finding],
    idx: &[usize],
) -> Result<()> {
    let b: &dyn Backend = store.backend().as_ref();
    let id = img.id().clone();
    if expected.is_some_and(|e| *e != id) {
        return Err(Error::busy(format!(
            "image name now refers to image {id}, not to the one checked; nothing repaired, run the check again"
        )));
    }
    let hdr = layout::header_object(&id);
    let cookie = b
        .get_xattr(&hdr, OWNER_XATTR)
        .await?
        .ok_or_else(|| Error::busy("owner cookie missing after taking ownership"))?;

    // 1. Versions of the objects to delete, then a fresh durable header.
    let mut victims: Vec<(usize, String, u64)> = Vec::new();
    for &i in idx {
        let f = &findings[i];
        if matches!(
            f.kind,
            FindingKind::OrphanData
                | FindingKind::OrphanRecord
                | FindingKind::OrphanCheckpoint
                | FindingKind::LeakedGarbageData
                | FindingKind::CorruptGarbageRecord
        ) {
            match version_of(b, &f.object).await? {
                Some(v) => victims.push((i, f.object.clone(), v)),
                None => findings[i].repaired = true,
            }
        }
    }
    b.flush().await?;
    let h = match header_state(b, &id).await? {
        HeaderState::Ok(h) => h,
        _ => {
            return Err(Error::corrupt(format!(
                "header of {id} no longer reads; nothing repaired"
            )))
        }
    };
    // An epoch's parts may go only if no live header part names the epoch.
    let deletable = |kind: FindingKind, e: Epoch| {
        e != h.head
            && (kind == FindingKind::OrphanCheckpoint || !h.epochs.contains_key(&e))
            && (matches!(
                kind,
                FindingKind::LeakedGarbageData | FindingKind::CorruptGarbageRecord
            ) || !h.garbage.contains(&e))
    };
    let victims: Vec<(usize, String, u64)> = victims
        .into_iter()
        .filter(|(i, oid, _)| epoch_of(oid).is_some_and(|e| deletable(findings[*i].kind, e)))
        .collect();
    let results: Vec<(usize, Result<bool>)> = stream::iter(victims)
        .map(|(i, oid, v)| async move { (i, remove_if_version(b, &oid, v).await) })
        .buffer_unordered(PARALLELISM)
        .collect()
        .await;
    for (i, r) in results {
        findings[i].repaired = r?;
    }

    // 2. Stray touch keys and bad pack entries, guarded by our owner cookie.
    let mut keys = Vec::new();
    let mut key_idx = Vec::new();
    for &i in idx {
        let f = &findings[i];
        let Some(k) = &f.key else { continue };
        let ok = match f.kind {
            FindingKind::StrayTouchKey => match layout::parse_touch_key(k) {
                Ok((e, _)) => e != h.head && !h.epochs.contains_key(&e) && !h.garbage.contains(&e),
                Err(_) => true,
            },
            // A copy: the record object stays, so removing it loses nothing.
            FindingKind::StrayPackEntry | FindingKind::PackMismatch => k.starts_with(PACK_PREFIX),
            _ => false,
        };
        if ok {
            keys.push(k.clone());
            key_idx.push(i);
        }
    }
    if !keys.is_empty() {
        b.operate(
            &hdr,
            WriteOp::new()
                .guard(Guard::XattrEquals(OWNER_XATTR.into(), cookie.clone()))
                .action(Action::OmapRemove(keys)),
        )
        .await?;
        for i in key_idx {
            findings[i].repaired = true;
        }
    }

    // 3. Children registrations of this image (as the parent), directory.
    for &i in idx {
        let f = findings[i].clone();
        let done = match f.kind {
            FindingKind::UnregisteredClone => register_clone(b, &id, &h, &f).await?,
            FindingKind::StaleChild => unregister_child(b, &id, &f).await?,
            FindingKind::UnlistedImage => list_image(store, &id, &h).await?,
            _ => continue,
        };
        findings[i].repaired = done;
    }
    b.flush().await
}

async fn register_clone(
    b: &dyn Backend,
    parent: &ImageId,
    ph: &HeaderRecord,
    f: &Finding,
) -> Result<bool> {
    let Some((snap, child)) = f.key.as_deref().and_then(parse_children_key) else {
        return Ok(false);
    };
    if !ph.snapshots.iter().any(|s| s.id == snap) {
        return Ok(false);
    }
    let HeaderState::Ok(ch) = header_state(b, &child).await? else {
        return Ok(false);
    };
    match &ch.parent {
        Some(p) if p.image == *parent && p.snap == snap => {}
        _ => return Ok(false),
    }
    b.operate(
        &layout::children_object(parent),
        WriteOp::new().omap_set1(children_key(snap, &child), Bytes::from(ch.name.clone())),
    )
    .await?;
    Ok(true)
}

async fn unregister_child(b: &dyn Backend, parent: &ImageId, f: &Finding) -> Result<bool> {
    let Some(k) = f.key.clone() else {
        return Ok(false);
    };
    if let Some((snap, child)) = parse_children_key(&k) {
        match header_state(b, &child).await? {
            HeaderState::Missing => {}
            HeaderState::Ok(ch) => {
                if matches!(&ch.parent, Some(p) if p.image == *parent && p.snap == snap) {
                    return Ok(false);
                }
            }
            _ => return Ok(false),
        }
    }
    b.operate(
        &layout::children_object(parent),
        WriteOp::new().action(Action::OmapRemove(vec![k])),
    )
    .await?;
    Ok(true)
}

async fn list_image(store: &Store, id: &ImageId, h: &HeaderRecord) -> Result<bool> {
    let b: &dyn Backend = store.backend().as_ref();
    if id_object(b, &h.name).await? != Some(Some(id.clone())) {
        return Ok(false);
    }
    b.operate(
        layout::DIRECTORY,
        WriteOp::new().omap_set1(
            format!("{DIR_KEY_PREFIX}{}", h.name),
            Bytes::from(id.0.clone()),
        ),
    )
    .await?;
    Ok(true)
}

async fn repair_headerless(b: &dyn Backend, f: &Finding) -> Result<bool> {
    let Some(id) = &f.image_id else {
        return Ok(false);
    };
    let Some(v) = version_of(b, &f.object).await? else {
        return Ok(true);
    };
    if !matches!(header_state(b, id).await?, HeaderState::Missing) {
        return Ok(false);
    }
    remove_if_version(b, &f.object, v).await
}

async fn repair_id_object(b: &dyn Backend, f: &Finding) -> Result<bool> {
    let (Some(name), Some(id)) = (&f.image, &f.image_id) else {
        return Ok(false);
    };
    let HeaderState::Ok(h) = header_state(b, id).await? else {
        return Ok(false);
    };
    if h.name != *name || h.removing {
        return Ok(false);
    }
    if directory(b, &format!("{DIR_KEY_PREFIX}{name}"))
        .await?
        .get(name)
        != Some(&id.0)
    {
        return Ok(false);
    }
    match b
        .operate(
            &layout::id_object(name),
            WriteOp::new()
                .guard(Guard::NotExists)
                .write_full(Bytes::from(id.0.clone())),
        )
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Finishes an interrupted remove: a header marked `removing` goes through
/// [`Store::remove`] (which refuses while the image is locked); names whose
/// header is gone, with no data or record left, are removed (directory
/// entry first, then the id object if unchanged, then the children registry).
async fn repair_half_removed(store: &Store, f: &Finding) -> Result<bool> {
    let b: &dyn Backend = store.backend().as_ref();
    let (Some(name), Some(id)) = (&f.image, &f.image_id) else {
        return Ok(false);
    };
    match header_state(b, id).await? {
        HeaderState::Ok(h) if h.removing => {
            if id_object(b, name).await? != Some(Some(id.clone())) {
                return Ok(false);
            }
            store.remove(name).await?;
            return Ok(true);
        }
        HeaderState::Missing => {}
        _ => return Ok(false),
    }
    if !b.list(&layout::data_prefix(id)).await?.is_empty()
        || !b.list(&format!("{EPOCH_PREFIX}{id}.")).await?.is_empty()
    {
        return Ok(false);
    }
    let obj_version = match id_object(b, name).await? {
        Some(Some(i)) if i == *id => version_of(b, &layout::id_object(name)).await?,
        Some(_) => return Ok(false),
        None => None,
    };
    let key = format!("{DIR_KEY_PREFIX}{name}");
    if directory(b, &key).await?.get(name) == Some(&id.0) {
        b.operate(
            layout::DIRECTORY,
            WriteOp::new().action(Action::OmapRemove(vec![key])),
        )
        .await?;
    }
    let mut done = true;
    if let Some(v) = obj_version {
        done = remove_if_version(b, &layout::id_object(name), v).await?;
    }
    if done {
        b.operate(&layout::children_object(id), WriteOp::remove())
            .await
            .or_else(|e| {
                if e.kind() == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
    }
    b.flush().await?;
    Ok(done)
}
