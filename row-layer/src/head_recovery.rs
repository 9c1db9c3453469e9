//! Rebuilding the open epoch's delta at open (DESIGN §6(a)).
//!
//! Start from the newest head checkpoint, if any (checkpoint.rs), and fold
//! in the grain omaps of the objects registered under the generations it
//! does not cover — a few at a time, as they arrive, so that memory holds
//! the delta and at most `OPEN_PARALLELISM` listings, never all of them.
//! An image that was never checkpointed has no checkpoint and only
//! generation-0 touch keys: every touched object is listed, as before.

use crate::backend::ext::OMAP_PAGE;
use crate::backend::ext::{BackendExt, NotFoundExt};
use crate::backend::Backend;
use crate::checkpoint::Generations;
use crate::ckpt_record::HeadCheckpoint;
use crate::error::{Error, Result};
use crate::ids::ObjectNo;
use crate::image::{GRAIN_DATA, GRAIN_MOVED, GRAIN_ZERO};
use crate::layout::{self, Geometry};
use crate::records::{EpochDelta, HeaderRecord};
use crate::store::OPEN_PARALLELISM;
use futures::stream::{self, StreamExt};
use roaring::RoaringTreemap;

/// Attempts at a consistent (checkpoint, touch keys) pair while the owner
/// keeps checkpointing (only read-only head views can race with it).
const ATTEMPTS: usize = 5;

/// The open epoch's delta and what the handle must know of its touch keys.
pub(crate) async fn recover_open_epoch(
    backend: &dyn Backend,
    h: &HeaderRecord,
    geo: &Geometry,
) -> Result<(EpochDelta, Generations)> {
    let oid = layout::ckpt_object(&h.id, h.head);
    for _ in 0..ATTEMPTS {
        let version = backend.stat(&oid).await.or_absent()?.map(|s| s.version);
        let ckpt = match version {
            Some(_) => read_checkpoint(backend, h).await?,
            None => None,
        };
        let covered = ckpt.as_ref().map_or(0, |c| c.generation);
        let keys = scan_touch_keys(backend, h, covered).await?;
        // A checkpoint committed meanwhile may have removed keys of the
        // generations it covers before the scan reached them.
        let again = backend.stat(&oid).await.or_absent()?.map(|s| s.version);
        if again != version {
            continue;
        }
        let mut delta = match ckpt {
            Some(c) => c.delta,
            None => {
                let mut d = EpochDelta::default();
                if let Some((from, to)) = h.head_truncated {
                    if from < to {
                        d.zero.insert_range(from..to);
                    }
                }
                d
            }
        };
        let gens = Generations::recovered(covered, keys);
        fold_listings(backend, h, geo, &gens.registered(), &mut delta).await?;
        return Ok((delta, gens));
    }
    Err(Error::busy(format!(
        "the open epoch of image {} kept being checkpointed while it was read",
        h.id
    )))
}

/// The newest checkpoint of the head, if one was written.
pub(crate) async fn read_checkpoint(
    backend: &dyn Backend,
    h: &HeaderRecord,
) -> Result<Option<HeadCheckpoint>> {
    let oid = layout::ckpt_object(&h.id, h.head);
    let Some(bytes) = backend.read_all(&oid).await.or_absent()? else {
        return Ok(None);
    };
    HeadCheckpoint::decode(&bytes, &h.id, h.head)
        .map(Some)
        .map_err(|e| e.context(format!("reading head checkpoint {oid}")))
}

/// Touch keys of the head per generation: every key of generation
/// `covered` and later (paged from there on), plus any older key a
/// checkpoint's clean-up did not get to (found by a one-key probe; listed
/// only when present, so that the handle can remove them later).
async fn scan_touch_keys(
    backend: &dyn Backend,
    h: &HeaderRecord,
    covered: u64,
) -> Result<std::collections::BTreeMap<u64, RoaringTreemap>> {
    let hdr = layout::header_object(&h.id);
    let prefix = layout::touch_prefix(h.head);
    let mut keys: std::collections::BTreeMap<u64, RoaringTreemap> = Default::default();
    let mut after = String::new();
    if covered > 0 {
        let probe = backend.omap_get(&hdr, "", &prefix, 1).await?;
        let stale = match probe.first() {
            Some((k, _)) => layout::parse_touch_key_gen(k)?.1 < covered,
            None => false,
        };
        if !stale {
            after = layout::touch_gen_start(h.head, covered);
        }
    }
    loop {
        let page = backend.omap_get(&hdr, &after, &prefix, OMAP_PAGE).await?;
        for (k, _) in &page {
            let (e, g, o) = layout::parse_touch_key_gen(k)?;
            if e == h.head {
                keys.entry(g).or_default().insert(o.0);
            }
        }
        match page.last() {
            Some((k, _)) if page.len() == OMAP_PAGE => after = k.clone(),
            _ => break,
        }
    }
    Ok(keys)
}

/// Folds the grain omaps of `objects` into `delta`, with at most
/// `OPEN_PARALLELISM` listings in memory at once.
async fn fold_listings(
    backend: &dyn Backend,
    h: &HeaderRecord,
    geo: &Geometry,
    objects: &RoaringTreemap,
    delta: &mut EpochDelta,
) -> Result<()> {
    let gpo = geo.grains_per_object();
    let mut listings = stream::iter(objects.iter().map(ObjectNo))
        .map(|o| async move {
            let oid = layout::data_object(&h.id, o, h.head);
            let kv = backend.omap_all(&oid, "").await.or_absent();
            kv.map(|kv| (o, kv.unwrap_or_default()))
                .map_err(|e| e.context(format!("recovering {oid}")))
        })
        .buffer_unordered(OPEN_PARALLELISM);
    while let Some(listing) = listings.next().await {
        let (o, kvs) = listing?;
        delta.touched.insert(o.0);
        let first = geo.first_grain(o);
        for (k, v) in kvs {
            let g = first + u64::from(layout::parse_grain_key(&k, gpo)?);
            if v.as_ref() == GRAIN_DATA {
                delta.zero.remove(g);
                delta.moved.remove(g);
                delta.data.insert(g);
            } else if v.as_ref() == GRAIN_MOVED {
                delta.zero.remove(g);
                delta.data.insert(g);
                delta.moved.insert(g);
            } else if v.as_ref() == GRAIN_ZERO {
                delta.data.remove(g);
                delta.moved.remove(g);
                delta.zero.insert(g);
            } else {
                return Err(Error::corrupt(format!(
                    "grain state {v:?} for key {k} of object {} is neither D, M nor Z",
                    o.0
                )));
            }
        }
    }
    Ok(())
}
