//! Zero detection for exporters: `rbd export-diff` writes an extent that
//! exists but reads back as all zeros as a `'z'` record instead of `'w'`
//! (`m_exists = !m_read_data.is_zero()` in `Export.cc`).

/// Zero-detection helpers.
#[derive(Debug, Clone, Copy, Default)]
pub struct ZeroDetect;

impl ZeroDetect {
    /// True if every byte of `buf` is zero (an empty buffer is zero).
    pub fn is_zero(buf: &[u8]) -> bool {
        is_zero(buf)
    }

    /// Splits `buf` into maximal runs of `granularity`-aligned chunks that are
    /// all zero or not all zero, like `rbd import-diff --sparse-size`.
    /// Yields `(offset_in_buf, len, is_zero)`; a `granularity` of 0 is treated
    /// as 1. The last chunk may be shorter than `granularity`.
    pub fn runs(buf: &[u8], granularity: usize) -> ZeroRuns<'_> {
        ZeroRuns {
            buf,
            pos: 0,
            gran: granularity.max(1),
        }
    }
}

/// True if every byte of `buf` is zero (an empty buffer is zero).
pub fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(32);
    for c in &mut chunks {
        let mut acc = 0u64;
        for w in c.chunks_exact(8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            acc |= u64::from_ne_bytes(b);
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// Iterator returned by [`ZeroDetect::runs`].
#[derive(Debug, Clone)]
pub struct ZeroRuns<'a> {
    buf: &'a [u8],
    pos: usize,
    gran: usize,
}

impl Iterator for ZeroRuns<'_> {
    type Item = (usize, usize, bool);

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let start = self.pos;
        let chunk_end = |p: usize| (p + self.gran).min(self.buf.len());
        let first_end = chunk_end(start);
        let zero = is_zero(&self.buf[start..first_end]);
        let mut end = first_end;
        while end < self.buf.len() {
            let next = chunk_end(end);
            if is_zero(&self.buf[end..next]) != zero {
                break;
            }
            end = next;
        }
        self.pos = end;
        Some((start, end - start, zero))
    }
}
