//! Which backend reads serve one object piece of a read.
//!
//! A piece resolves grain by grain to sources (lineage.rs). After random
//! overwrites under snapshots, the grains a view sees of one object
//! alternate between epochs, so one read per run of same-source grains
//! turns a sequential 1 MiB read into dozens of small reads. Runs of the
//! same source that lie close together are served by one read of the span
//! covering them; the bytes in between belong to grains this view does not
//! see in that object and are dropped. A gap of at most [`max_gap`] grains
//! (128 KiB) costs less than another round trip to an OSD.

use crate::lineage::{Loc, FIRST_SOURCE};
use std::collections::HashMap;

/// Bytes of unwanted grains a span may read between two of its runs.
const MAX_GAP_BYTES: u64 = 128 * 1024;

/// The largest gap, in grains, that one read may span.
pub(crate) fn max_gap(grain_size: u64) -> usize {
    (MAX_GAP_BYTES / grain_size).max(1) as usize
}

/// One read of grains `[first, end)` (indexes into the piece's resolution)
/// of one source, serving `runs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpanRead {
    pub(crate) loc: Loc,
    pub(crate) first: usize,
    pub(crate) end: usize,
    pub(crate) runs: Vec<(usize, usize)>,
}

/// Plans the reads of a piece whose grains resolve to `locs`: runs of the
/// same source at most `max_gap` grains apart share a read.
pub(crate) fn plan(locs: &[Loc], max_gap: usize) -> Vec<SpanRead> {
    let mut spans: Vec<SpanRead> = Vec::new();
    let mut open: HashMap<Loc, usize> = HashMap::new();
    let mut i = 0;
    while i < locs.len() {
        let loc = locs[i];
        let mut j = i + 1;
        while j < locs.len() && locs[j] == loc {
            j += 1;
        }
        if loc >= FIRST_SOURCE {
            match open.get(&loc).map(|&k| (k, i - spans[k].end)) {
                Some((k, gap)) if gap <= max_gap => {
                    spans[k].end = j;
                    spans[k].runs.push((i, j));
                }
                _ => {
                    open.insert(loc, spans.len());
                    spans.push(SpanRead {
                        loc,
                        first: i,
                        end: j,
                        runs: vec![(i, j)],
                    });
                }
            }
        }
        i = j;
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lineage::{UNALLOCATED, ZERO};

    const A: Loc = FIRST_SOURCE;
    const B: Loc = FIRST_SOURCE + 1;

    #[test]
    fn interleaved_sources_share_one_read_each() {
        let locs = [A, A, B, A, B, B, A, ZERO, A];
        let p = plan(&locs, 4);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].loc, p[0].first, p[0].end), (A, 0, 9));
        assert_eq!(p[0].runs, vec![(0, 2), (3, 4), (6, 7), (8, 9)]);
        assert_eq!((p[1].loc, p[1].first, p[1].end), (B, 2, 6));
        assert_eq!(p[1].runs, vec![(2, 3), (4, 6)]);
    }

    #[test]
    fn far_runs_get_their_own_read_and_holes_none() {
        let mut locs = vec![UNALLOCATED; 20];
        locs[0] = A;
        locs[10] = A;
        locs[11] = A;
        locs[19] = A;
        // Gaps: 9 grains (too far), then 7 (spanned).
        let p = plan(&locs, 8);
        let spans: Vec<(usize, usize)> = p.iter().map(|s| (s.first, s.end)).collect();
        assert_eq!(spans, vec![(0, 1), (10, 20)]);
        assert_eq!(p[1].runs, vec![(10, 12), (19, 20)]);
        assert!(plan(&[ZERO, UNALLOCATED], 8).is_empty());
    }

    #[test]
    fn a_gap_of_exactly_the_limit_is_spanned() {
        let locs = [A, B, B, A];
        assert_eq!(plan(&locs, 2).iter().filter(|s| s.loc == A).count(), 1);
        assert_eq!(plan(&locs, 1).iter().filter(|s| s.loc == A).count(), 2);
    }
}
