//! Shared test support: the naive oracle and helpers.
#![allow(dead_code, unreachable_pub)]

pub mod crash_impl;
pub mod model_impl;

use bytes::Bytes;
use row_layer::{CreateOptions, Image};

pub const OBJ: u64 = 64 * 1024;
pub const GRAIN: u64 = 4096;

pub fn small_opts(size: u64) -> CreateOptions {
    CreateOptions {
        size,
        object_size: OBJ,
        grain_size: GRAIN,
    }
}

/// Deterministic pattern bytes for a write.
pub fn pattern(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

pub async fn read_all(img: &Image) -> Vec<u8> {
    let size = img.size();
    img.read(0, size).await.expect("read whole image").to_vec()
}

/// Applies a diff (from `base` contents) and returns the reconstructed end point.
pub fn apply_diff(
    base: &[u8],
    end_size: u64,
    extents: &[row_layer::DiffExtent],
    end: &[u8],
) -> Vec<u8> {
    let mut out = base.to_vec();
    out.resize(end_size as usize, 0);
    for e in extents {
        let (a, b) = (e.offset as usize, (e.offset + e.length) as usize);
        if e.exists {
            out[a..b].copy_from_slice(&end[a..b]);
        } else {
            out[a..b].fill(0);
        }
    }
    out
}

/// Grains data object `oid` stores: its grain keys saying `D` (data) or
/// `M` (data copied by defragmentation).
pub async fn data_keys(backend: &dyn row_layer::backend::Backend, oid: &str) -> u64 {
    let mut n = 0;
    let mut after = String::new();
    loop {
        let page = backend.omap_get(oid, &after, "", 1024).await.expect("omap");
        let Some((last, _)) = page.last() else {
            return n;
        };
        after = last.clone();
        n += page
            .iter()
            .filter(|(_, v)| v.as_ref() == b"D" || v.as_ref() == b"M")
            .count() as u64;
    }
}

/// Grains every data object of image `img` stores (`data_keys`), summed.
pub async fn stored_data_grains(backend: &dyn row_layer::backend::Backend, img: &Image) -> u64 {
    let mut n = 0;
    let objects = backend
        .list(&format!("rbd_row_data.{}.", img.id()))
        .await
        .expect("list");
    for oid in objects {
        n += data_keys(backend, &oid).await;
    }
    n
}
