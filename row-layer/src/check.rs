//! Internal invariants, checked by tests after every step (`self_check`).

use crate::error::{Error, Result};
use crate::image::Image;
use crate::lineage::FIRST_SOURCE;
use crate::records::EpochState;
use crate::store::path;

fn fail(what: String) -> Error {
    Error::corrupt(format!("self_check: {what}"))
}

impl Image {
    /// Verifies the handle's invariants: lineage, deltas, cache and header
    /// agree. Cheap enough for tests to call after every operation.
    pub fn self_check(&self) -> Result<()> {
        let st = self.state();
        let h = &st.header;
        let geo = self.geometry();
        crate::header_format::round_trip(h)?;
        let head_path = path(h, h.head);
        for s in &h.snapshots {
            if h.epochs.get(&s.epoch).map(|m| m.state) != Some(EpochState::Sealed) {
                return Err(fail(format!("snapshot {} pins a non-sealed epoch", s.name)));
            }
        }
        for e in h.epochs.keys() {
            if *e != h.head && !st.deltas.contains_key(e) {
                return Err(fail(format!("sealed epoch {e} has no loaded record")));
            }
        }
        for l in &st.chain.links {
            if !l.delta.data.is_disjoint(&l.delta.zero) {
                return Err(fail("a grain is both data and zero in one epoch".into()));
            }
            if !l.delta.moved.is_subset(&l.delta.data) {
                return Err(fail("a moved grain is not a data grain".into()));
            }
            for g in (&l.delta.data - &l.delta.reclaimed).iter().take(4096) {
                if !l.delta.touched.contains(geo.object_of(g).0) && l.limit == u64::MAX {
                    return Err(fail(format!("data grain {g} in an untouched object")));
                }
            }
        }
        if matches!(
            self.view(),
            crate::image::View::Head | crate::image::View::HeadReadOnly
        ) {
            let own: Vec<_> = st
                .chain
                .links
                .iter()
                .map(|l| st.chain.sources[l.source as usize].clone())
                .filter(|(img, _)| img == self.id())
                .map(|(_, e)| e)
                .collect();
            if own != head_path {
                return Err(fail(format!(
                    "chain {own:?} is not the head path {head_path:?}"
                )));
            }
            let registered = st.gens.registered();
            for (o, cell) in &st.touched {
                if cell.initialized() {
                    let head_touched = st
                        .chain
                        .links
                        .first()
                        .is_some_and(|l| l.delta.touched.contains(o.0));
                    if !head_touched {
                        return Err(fail(format!(
                            "object {} registered but not in head delta",
                            o.0
                        )));
                    }
                    // Recovery lists only objects with a key the newest
                    // checkpoint does not cover (checkpoint.rs).
                    if self.view() == &crate::image::View::Head && !registered.contains(o.0) {
                        return Err(fail(format!(
                            "object {} registered without a touch key of generation {} or later",
                            o.0, st.gens.covered
                        )));
                    }
                }
            }
        }
        for (o, cached) in &st.cache {
            let fresh = st.chain.resolve_object(&geo, *o);
            if &fresh != cached {
                return Err(fail(format!(
                    "cached resolution of object {} is stale",
                    o.0
                )));
            }
            if cached.iter().any(|l| {
                *l >= FIRST_SOURCE && (l - FIRST_SOURCE) as usize >= st.chain.sources.len()
            }) {
                return Err(fail("resolution names an unknown source".into()));
            }
        }
        Ok(())
    }
}
