//! row-layer: versioned redirect-on-write object maps for block images.
//!
//! An image's blocks are mapped, grain by grain, to objects of a RADOS-shaped
//! store ([`backend::Backend`]). Data that a snapshot can see is never
//! overwritten: writes after a snapshot go to new objects (redirect-on-write),
//! so snapshots are frozen map versions, and creating, rolling back to or
//! cloning one only touches metadata. See `docs/DESIGN.md` for the data
//! model, the crash-consistency argument and the cost of every operation.

#![warn(clippy::unwrap_used)]
pub mod backend;
pub mod envelope;
pub mod error;
pub mod ids;

pub use error::{Error, ErrorKind, Result};
pub use ids::{Epoch, GrainIdx, ImageId, ObjectNo, SnapId};

pub mod allocation;
pub(crate) mod check;
mod checkpoint;
pub mod ckpt_record;
pub(crate) mod control;
pub mod defrag;
pub mod diff;
mod flatten;
pub mod fsck;
mod grace;
mod head_recovery;
pub mod header_format;
pub mod image;
pub mod layout;
pub mod lifecycle;
pub(crate) mod lineage;
mod merge;
pub mod owner;
pub mod pack;
pub(crate) mod range_lock;
pub(crate) mod read_plan;
pub mod reclaim;
pub mod records;
mod refresh;
pub mod snapshots;
pub mod space;
pub mod store;

pub use defrag::{DefragOptions, DefragReport};
pub use diff::DiffExtent;
pub use image::{Image, ImageInfo, ImageOptions, View};
pub use owner::OwnerRequest;
pub use snapshots::SnapInfo;
pub use space::SpaceUsage;
pub use store::{CreateOptions, ImageEntry, Store};
