//! Codecs for the stream formats Ceph's `rbd` tool uses to move images in
//! and out of a cluster, so that rbd-row backups interoperate with native
//! `rbd export-diff` / `import-diff` / `export` / `import` / `merge-diff`.
//!
//! * [`DiffWriter`] / [`DiffReader`] / [`validate_diff`]: `rbd diff v1`
//!   (what `rbd export-diff` writes and `rbd import-diff` reads) and
//!   `rbd diff v2` (length-prefixed records, found inside image exports).
//! * [`ImageExportWriter`] / [`ImageExportReader`] /
//!   [`validate_image_export`]: `rbd export --export-format 2`. Format 1 is
//!   raw image bytes ([`EXPORT_FORMAT_1_IS_RAW`], [`export_v1`]).
//! * [`merge_diffs`]: `rbd merge-diff`.
//! * [`ZeroDetect`]: exporters write all-zero extents as `'z'` like `rbd`.
//!
//! Everything is synchronous over [`std::io::Read`] / [`std::io::Write`],
//! streams data payloads instead of buffering them, and never panics on
//! malformed input: every problem is an [`Error`] with a distinct
//! [`StreamErrorKind`].

#![warn(clippy::unwrap_used)]
mod diff_reader;
mod diff_writer;
mod error;
mod format;
mod image;
mod merge;
mod zero;

pub use diff_reader::{validate_diff, DataReader, DiffReader, DiffRecord, DiffSummary};
pub use diff_writer::{DiffWriter, ProtectionLen};
pub use error::{Error, Result, StreamErrorKind};
pub use format::{
    sniff, tag, DiffFormat, StreamKind, DIFF_BANNER_V1, DIFF_BANNER_V2, IMAGE_BANNER_V2,
    IMAGE_DIFFS_BANNER_V2, MAX_META_RECORD_LEN, MAX_NAME_LEN,
};
pub use image::{
    export_v1, validate_image_export, EmbeddedDiff, ImageExportReader, ImageExportSummary,
    ImageExportWriter, ImageHeader, EXPORT_FORMAT_1_IS_RAW,
};
pub use merge::{merge_diffs, merge_diffs_as};
pub use zero::{is_zero, ZeroDetect, ZeroRuns};
