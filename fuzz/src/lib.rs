//! Harness code shared by the fuzz targets (`fuzz_targets/*.rs`) and by the
//! seed-corpus generator (`examples/gen_corpus.rs`).
//!
//! * [`records`]: building valid envelopes around arbitrary payloads, real
//!   encoded header/epoch records to mutate, and the checks every decoded
//!   record must pass.
//! * [`nbd`]: one NBD session against the in-process server over an
//!   in-memory duplex, with in-memory exports (row-nbd's `MemExport` and the
//!   gateway's `ImageExport` over a row-layer image on `MemBackend`), bounded
//!   in time and bytes, plus a client-side checker for the structured variant.
//! * [`corpus`]: the committed seeds, generated from the code above.

pub mod corpus;
pub mod nbd;
pub mod records;

/// The gateway's NBD adapter (`rbd-gateway/src/export.rs`), compiled into
/// this crate from its source file rather than through the `rbd-gateway`
/// crate: that crate links the CLI, librados and rustls, which would
/// roughly double the sanitizer build of the fuzz targets in CI. The file
/// only depends on row-layer, row-nbd, bytes and roaring; if it ever needs
/// more, this build fails loudly and the dependency can be added here.
#[allow(dead_code, unreachable_pub)]
#[path = "../../rbd-gateway/src/export.rs"]
pub mod gateway_export;
