//! `rbd-gateway`: serves row-layer images over NBD.
//!
//! * [`ImageExport`] — one image (head, or read-only snapshot view) as an
//!   [`row_nbd::ExportBackend`], with `base:allocation` and
//!   `rbd-row:diff:<snap>` / `qemu:dirty-bitmap:<snap>` block status answered
//!   from the image map.
//! * [`ImageRegistry`] — export names (`[pool/[namespace/]]image[@snap]`,
//!   resolved to pool/namespace stores through `rbd-row`'s store selection) →
//!   exports; heads are opened once and shared by all connections.
//! * [`run_gateway`] / [`Gateway`] — listeners, `/metrics`, graceful shutdown
//!   (what the `rbd-gateway` binary runs).
//! * [`RustlsAcceptor`] / [`TlsFiles`] — `NBD_OPT_STARTTLS` over rustls
//!   (optionally with client certificates).

#![warn(clippy::unwrap_used)]
mod export;
mod gateway;
mod registry;
mod stats;
mod tls;

pub use export::{export_error, ImageExport, DIFF_CONTEXT_PREFIX, DIRTY, QEMU_DIRTY_BITMAP_PREFIX};
pub use gateway::{run_gateway, Gateway, GatewayConfig};
pub use registry::{ExportSelection, ExportSpec, ImageKey, ImageRegistry};
pub use tls::{RustlsAcceptor, TlsFiles};
