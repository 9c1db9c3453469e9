//! Reloading a handle's map when another client changed what it points at.
//!
//! A handle keeps the epoch deltas it loaded. The owner of an image changes
//! them only in ways every *current* view reads the same through, except
//! one: a merge (merge.rs) moves a hidden epoch's grains into its parent
//! and then deletes the epoch's objects. A handle that loaded the map
//! before — a read-only snapshot view, a read-only head view, or a clone
//! reading this image as its parent — still resolves those grains to the
//! deleted epoch. Data objects of a mapped grain are never missing
//! otherwise (a write's data and grain keys land in one op; sealed epochs
//! lose whole objects only once nothing maps to them), so a missing object
//! is the signal: the read path reloads the map once and reads again.
//!
//! The owner reloads only its parent links (its own epochs change under
//! its own control task). A read-only view reloads everything; a snapshot
//! view whose snapshot was removed meanwhile then fails with `NotFound`.

use crate::error::{Error, Result};
use crate::image::{Image, View};
use crate::lineage::Chain;
use crate::store::{build_chain, parent_links, read_header, Store};
use std::sync::Arc;

/// Attempts at swapping in new parent links while the chain keeps changing.
const PARENT_REFRESH_ATTEMPTS: usize = 3;

impl Image {
    /// Reloads the parts of the map that another client may have changed.
    pub(crate) async fn refresh_map(&self) -> Result<()> {
        let store =
            Store::new(self.inner.backend.clone()).with_image_options(self.inner.options.clone());
        let state = match self.view() {
            View::Head => return self.refresh_parent_links().await,
            View::HeadReadOnly => {
                let name = self.header().name;
                store.load_head(&name, &self.inner.id).await?.1
            }
            View::Snapshot { id, name } => {
                let header = read_header(&*self.inner.backend, &self.inner.id).await?;
                let Some(s) = header.snapshots.iter().find(|s| s.id == *id).cloned() else {
                    return Err(Error::not_found(format!(
                        "snapshot {name} of image {} was removed",
                        header.name
                    )));
                };
                store.load_snapshot(header, &s, &self.inner.geo).await?
            }
        };
        tracing::info!(image = %self.inner.id, "map reloaded: an object it named is gone");
        *self.state() = state;
        Ok(())
    }

    /// Rebuilds the links into the parent image from its current header
    /// and records, keeping the image's own part of the chain.
    async fn refresh_parent_links(&self) -> Result<()> {
        for _ in 0..PARENT_REFRESH_ATTEMPTS {
            let (link, sources) = {
                let st = self.state();
                (st.header.parent.clone(), st.chain.sources.clone())
            };
            let Some(link) = link else {
                return Ok(());
            };
            let mut scratch = Chain {
                links: Vec::new(),
                sources: sources.clone(),
                positions: Default::default(),
            };
            let links = parent_links(
                &*self.inner.backend,
                Some(link),
                &self.inner.geo,
                &mut scratch,
            )
            .await?;
            let mut st = self.state();
            // Sources only grow; if nothing was added meanwhile, the scratch
            // table extends the current one.
            if st.chain.sources.len() != sources.len() {
                continue;
            }
            let head_delta = st.chain.links.first().map(|l| l.delta.clone());
            let chain = Chain {
                links: Vec::new(),
                sources: Arc::clone(&scratch.sources),
                positions: Default::default(),
            };
            let head = st.header.head;
            st.chain = build_chain(&st.header, &st.deltas, head_delta, head, &links, chain)?;
            st.parent_links = links;
            st.cache.clear();
            tracing::info!(image = %self.inner.id, "parent links reloaded: an object they named is gone");
            return Ok(());
        }
        Err(Error::new(
            crate::error::ErrorKind::Transient,
            "the map kept changing while the parent links were reloaded",
        ))
    }
}
