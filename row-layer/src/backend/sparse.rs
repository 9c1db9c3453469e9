//! The byte payload of an in-memory object, stored sparsely in 4 KiB pages.
//!
//! A dense `Vec<u8>` made a 4 KiB write at the end of a new 4 MiB object
//! cost a 4 MiB allocation, zero fill and page faults, twice (live and
//! durable state): 87% of `rolling-mem`'s profile, where every epoch starts
//! new objects and the no-snapshot control never does. RADOS objects are
//! sparse too, so this keeps the in-memory backend's cost per op
//! proportional to the op.

use std::collections::BTreeMap;

const PAGE: usize = 4096;

/// Logical length plus the pages that were ever written (absent pages and
/// the bytes of the last page past `len` read as zeros).
#[derive(Debug, Clone, Default)]
pub(crate) struct SparseData {
    len: usize,
    pages: BTreeMap<usize, Box<[u8]>>,
}

impl SparseData {
    /// A payload holding `bytes`.
    pub(crate) fn from_slice(bytes: &[u8]) -> SparseData {
        let mut d = SparseData::default();
        d.write(0, bytes);
        d
    }

    /// Logical size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Writes `bytes` at `off`, extending the object if needed.
    pub(crate) fn write(&mut self, off: usize, bytes: &[u8]) {
        let mut pos = off;
        let mut rest = bytes;
        while !rest.is_empty() {
            let (p, at) = (pos / PAGE, pos % PAGE);
            let n = rest.len().min(PAGE - at);
            let page = self
                .pages
                .entry(p)
                .or_insert_with(|| vec![0; PAGE].into_boxed_slice());
            page[at..at + n].copy_from_slice(&rest[..n]);
            pos += n;
            rest = &rest[n..];
        }
        self.len = self.len.max(off + bytes.len());
    }

    /// Zeroes `[off, end)` (within the current size; the size is kept).
    pub(crate) fn zero(&mut self, off: usize, end: usize) {
        let end = end.min(self.len);
        let mut pos = off;
        while pos < end {
            let (p, at) = (pos / PAGE, pos % PAGE);
            let n = (end - pos).min(PAGE - at);
            if n == PAGE {
                self.pages.remove(&p);
            } else if let Some(page) = self.pages.get_mut(&p) {
                page[at..at + n].fill(0);
            }
            pos += n;
        }
    }

    /// Sets the size: bytes past it are dropped, new bytes read as zeros.
    pub(crate) fn resize(&mut self, size: usize) {
        if size < self.len {
            let first_gone = size.div_ceil(PAGE);
            self.pages.split_off(&first_gone);
            let tail = size % PAGE;
            if tail > 0 {
                if let Some(page) = self.pages.get_mut(&(size / PAGE)) {
                    page[tail..].fill(0);
                }
            }
        }
        self.len = size;
    }

    /// The bytes of `[start, end)`, clipped to the size.
    pub(crate) fn read(&self, start: usize, end: usize) -> Vec<u8> {
        let end = end.min(self.len);
        let start = start.min(end);
        let mut out = vec![0; end - start];
        let (first, last) = (start / PAGE, end.div_ceil(PAGE));
        for (&p, page) in self.pages.range(first..last) {
            let (a, b) = ((p * PAGE).max(start), ((p + 1) * PAGE).min(end));
            out[a - start..b - start].copy_from_slice(&page[a - p * PAGE..b - p * PAGE]);
        }
        out
    }
}

impl PartialEq for SparseData {
    /// Equal contents, whichever pages happen to be stored.
    fn eq(&self, other: &SparseData) -> bool {
        self.len == other.len && self.read(0, self.len) == other.read(0, other.len)
    }
}

impl Eq for SparseData {}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, Rng, SeedableRng};

    /// Random writes, zeroes and resizes agree with a dense `Vec<u8>`.
    #[test]
    fn matches_a_dense_vector() {
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..50 {
            let (mut dense, mut sparse) = (Vec::<u8>::new(), SparseData::default());
            for _ in 0..40 {
                let off = rng.gen_range(0..5 * PAGE);
                let len = rng.gen_range(0..3 * PAGE);
                match rng.gen_range(0..3) {
                    0 => {
                        let bytes: Vec<u8> = (0..len).map(|_| rng.gen_range(1..=255)).collect();
                        if dense.len() < off + len {
                            dense.resize(off + len, 0);
                        }
                        dense[off..off + len].copy_from_slice(&bytes);
                        sparse.write(off, &bytes);
                    }
                    1 => {
                        let end = (off + len).min(dense.len());
                        if off < end {
                            dense[off..end].fill(0);
                        }
                        sparse.zero(off, off + len);
                    }
                    _ => {
                        dense.resize(off, 0);
                        sparse.resize(off);
                    }
                }
                assert_eq!(sparse.len(), dense.len());
                assert_eq!(sparse.read(0, usize::MAX), dense);
                let a = rng.gen_range(0..6 * PAGE);
                let b = a + rng.gen_range(0..2 * PAGE);
                let (ca, cb) = (a.min(dense.len()), b.min(dense.len()));
                assert_eq!(sparse.read(a, b), dense[ca..cb.max(ca)].to_vec());
            }
            assert!(sparse == SparseData::from_slice(&dense));
        }
    }
}
