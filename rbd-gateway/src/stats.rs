//! Gateway-level Prometheus series, appended to the NBD server's on every
//! `/metrics` scrape:
//!
//! * `rbd_row_backend_ops_total{kind}` — calls that reached the store's
//!   backends (`read`, `metadata_read`, `mutation`, `flush`; summed over
//!   the pools and namespaces the registry opened), counted by a
//!   [`row_layer::backend::fault::FaultBackend`] with no faults armed;
//! * per open head (`image` label), computed at scrape time:
//!   `rbd_row_image_snapshots`, `rbd_row_image_garbage_epochs` (epochs
//!   awaiting the reclaimer), `rbd_row_image_hidden_epochs` (sealed epochs no
//!   snapshot pins: the superseded-grain trimming backlog),
//!   `rbd_row_image_epochs`, `rbd_row_image_provisioned_bytes` and
//!   `rbd_row_image_used_bytes` (bytes of data the head sees that the image
//!   stores: CPU work over the epoch bitmaps, done off the runtime threads).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;

use row_layer::backend::fault::OpCounts;
use row_layer::records::EpochState;
use row_layer::{Epoch, Image};
use row_nbd::Metrics;
use tracing::debug;

use crate::registry::ImageRegistry;

/// What one scrape renders.
#[derive(Clone)]
pub(crate) struct MetricsSource {
    pub(crate) nbd: Arc<Metrics>,
    pub(crate) registry: Arc<ImageRegistry>,
}

/// Per-image numbers of one scrape.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ImageStats {
    snapshots: u64,
    epochs: u64,
    garbage_epochs: u64,
    hidden_epochs: u64,
    provisioned: u64,
    used: Option<u64>,
}

fn image_stats(img: &Image) -> ImageStats {
    let h = img.header();
    let pinned: BTreeSet<Epoch> = h.snapshots.iter().map(|s| s.epoch).collect();
    let hidden = h
        .epochs
        .iter()
        .filter(|(e, m)| m.state == EpochState::Sealed && !pinned.contains(e))
        .count();
    let used = match img.space_usage() {
        Ok(u) => Some(u.head_used),
        Err(e) => {
            debug!(image = %h.name, error = %e, "space usage for metrics failed");
            None
        }
    };
    ImageStats {
        snapshots: h.snapshots.len() as u64,
        epochs: h.epochs.len() as u64,
        garbage_epochs: h.garbage.len() as u64,
        hidden_epochs: hidden as u64,
        provisioned: h.size,
        used,
    }
}

impl MetricsSource {
    /// The full exposition text: NBD series, then the gateway's.
    pub(crate) async fn render(&self) -> String {
        let mut out = self.nbd.render_prometheus();
        let heads = self.registry.open_heads().await;
        let images = tokio::task::spawn_blocking(move || {
            heads
                .into_iter()
                .map(|(name, img)| (name, image_stats(&img)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        render_gateway(&mut out, &self.registry.backend_ops(), &images);
        out
    }
}

fn header(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {help}");
    let _ = writeln!(w, "# TYPE {name} {kind}");
}

/// Escapes a label value per the exposition format.
fn esc(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn render_gateway(w: &mut String, c: &OpCounts, images: &[(String, ImageStats)]) {
    header(
        w,
        "rbd_row_backend_ops_total",
        "counter",
        "Calls that reached the store backend, by kind",
    );
    for (kind, n) in [
        ("read", c.reads),
        ("metadata_read", c.metadata_reads),
        ("mutation", c.mutations),
        ("flush", c.flushes),
    ] {
        let _ = writeln!(w, "rbd_row_backend_ops_total{{kind=\"{kind}\"}} {n}");
    }
    type Getter = fn(&ImageStats) -> Option<u64>;
    let series: [(&str, &str, Getter); 6] = [
        ("rbd_row_image_snapshots", "Snapshots of the image", |s| {
            Some(s.snapshots)
        }),
        (
            "rbd_row_image_epochs",
            "Live epochs of the image (head included)",
            |s| Some(s.epochs),
        ),
        (
            "rbd_row_image_garbage_epochs",
            "Epochs awaiting the reclaimer",
            |s| Some(s.garbage_epochs),
        ),
        (
            "rbd_row_image_hidden_epochs",
            "Sealed epochs no snapshot pins",
            |s| Some(s.hidden_epochs),
        ),
        ("rbd_row_image_provisioned_bytes", "Head size", |s| {
            Some(s.provisioned)
        }),
        (
            "rbd_row_image_used_bytes",
            "Bytes of data the head sees that the image stores",
            |s| s.used,
        ),
    ];
    for (metric, help, get) in series {
        header(w, metric, "gauge", help);
        for (name, s) in images {
            if let Some(v) = get(s) {
                let _ = writeln!(w, "{metric}{{image=\"{}\"}} {v}", esc(name));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_gateway_series() {
        let b = OpCounts::default();
        let stats = ImageStats {
            snapshots: 2,
            epochs: 3,
            garbage_epochs: 1,
            hidden_epochs: 0,
            provisioned: 4096,
            used: None,
        };
        let mut w = String::new();
        render_gateway(&mut w, &b, &[("a\"b".to_owned(), stats)]);
        assert!(
            w.contains("rbd_row_backend_ops_total{kind=\"read\"} 0\n"),
            "{w}"
        );
        assert!(
            w.contains("rbd_row_image_snapshots{image=\"a\\\"b\"} 2\n"),
            "{w}"
        );
        assert!(
            w.contains("rbd_row_image_garbage_epochs{image=\"a\\\"b\"} 1\n"),
            "{w}"
        );
        assert!(w.contains("# TYPE rbd_row_image_used_bytes gauge\n"), "{w}");
        assert!(!w.contains("rbd_row_image_used_bytes{"), "{w}");
    }
}
