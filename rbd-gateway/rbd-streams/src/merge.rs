//! `rbd merge-diff`: combine two consecutive diffs into one.

use std::io::{BufReader, BufWriter, Read, Write};

use crate::diff_reader::{DiffReader, DiffRecord, DiffSummary};
use crate::diff_writer::DiffWriter;
use crate::error::{bail, Result};
use crate::format::DiffFormat;

#[derive(Debug, Clone, Copy)]
struct Ext {
    off: u64,
    len: u64,
    data: bool,
}

impl Ext {
    fn end(&self) -> u64 {
        self.off + self.len
    }
}

/// Reads metadata records up to the first extent (or the end).
fn read_head<R: Read>(r: &mut DiffReader<R>) -> Result<Option<DiffRecord>> {
    loop {
        match r.next_record()? {
            Some(rec @ (DiffRecord::Data { .. } | DiffRecord::Zero { .. } | DiffRecord::End)) => {
                return Ok(Some(rec))
            }
            Some(_) => {}
            None => return Ok(None),
        }
    }
}

fn as_ext(rec: Option<DiffRecord>) -> Option<Ext> {
    match rec {
        Some(DiffRecord::Data { offset, len }) => Some(Ext {
            off: offset,
            len,
            data: true,
        }),
        Some(DiffRecord::Zero { offset, len }) => Some(Ext {
            off: offset,
            len,
            data: false,
        }),
        _ => None,
    }
}

/// Merges two consecutive diffs like `rbd merge-diff` and writes the result
/// as a v1 stream (what `rbd merge-diff` writes). See [`merge_diffs_as`].
pub fn merge_diffs<A: Read, B: Read, W: Write>(first: A, second: B, out: W) -> Result<DiffSummary> {
    merge_diffs_as(first, second, out, DiffFormat::V1)
}

/// Merges `first` (A→B) and `second` (B→C) into one diff A→C in `format`.
///
/// Semantics follow `src/tools/rbd/action/MergeDiff.cc`:
/// * the second diff's from-snap must equal the first's to-snap (both absent
///   also matches), else [`crate::StreamErrorKind::SnapMismatch`];
/// * the output names the first's from-snap and the second's to-snap (and,
///   for v2 output, the second's protection status) and has the second's size;
/// * extents of the second diff override those of the first; extents of the
///   first are cut at the second's size;
/// * if the image grew (first size < second size), the range
///   `[first size, second size)` not covered by the second diff is written
///   as zeros, because data that existed there before a shrink must not
///   reappear.
///
/// Both inputs may be v1 or v2 and are fully validated. The merge streams:
/// both inputs are read once, front to back, and no payload is buffered
/// beyond a 64 KiB copy buffer.
pub fn merge_diffs_as<A: Read, B: Read, W: Write>(
    first: A,
    second: B,
    out: W,
    format: DiffFormat,
) -> Result<DiffSummary> {
    let mut a = DiffReader::new(BufReader::with_capacity(1 << 16, first))?;
    let mut b = DiffReader::new(BufReader::with_capacity(1 << 16, second))?;
    let a_head = read_head(&mut a)?;
    let b_head = read_head(&mut b)?;
    let (a_sum, b_sum) = (a.summary().clone(), b.summary().clone());
    if a_sum.to_snap != b_sum.from_snap {
        bail!(
            SnapMismatch,
            "the first diff ends at {:?} but the second starts from {:?}",
            a_sum.to_snap,
            b_sum.from_snap
        );
    }
    // Both have reached their first extent or end, so 's' is known.
    let (Some(f_size), Some(s_size)) = (a_sum.size, b_sum.size) else {
        bail!(MissingSize, "an input diff has no image size record");
    };

    let mut w = DiffWriter::new(BufWriter::with_capacity(1 << 16, out), format)?;
    if let Some(f) = &a_sum.from_snap {
        w.from_snap(f)?;
    }
    if let Some(t) = &b_sum.to_snap {
        w.to_snap(t)?;
        if format == DiffFormat::V2 {
            if let Some(p) = b_sum.protected {
                w.protection(p)?;
            }
        }
    }
    w.size(s_size)?;

    let mut a_pending = Some(a_head);
    let mut b_pending = Some(b_head);
    let mut a_done = false;
    let mut b_done = false;
    let mut fa: Option<Ext> = None;
    let mut sb: Option<Ext> = None;
    let mut buf = vec![0u8; 1 << 16];

    loop {
        while fa.is_none() && !a_done {
            let rec = match a_pending.take() {
                Some(r) => r,
                None => a.next_record()?,
            };
            match as_ext(rec.clone()) {
                Some(mut e) => {
                    // Cut at the second's size; the rest of the payload is
                    // skipped by the next `next_record`.
                    if e.off < s_size {
                        e.len = e.len.min(s_size - e.off);
                        if e.len > 0 {
                            fa = Some(e);
                        }
                    }
                }
                None => {
                    a_done = true;
                    if f_size < s_size {
                        fa = Some(Ext {
                            off: f_size,
                            len: s_size - f_size,
                            data: false,
                        });
                    }
                }
            }
        }
        while sb.is_none() && !b_done {
            let rec = match b_pending.take() {
                Some(r) => r,
                None => b.next_record()?,
            };
            match as_ext(rec) {
                Some(e) if e.len > 0 => sb = Some(e),
                Some(_) => {}
                None => b_done = true,
            }
        }

        match (fa, sb) {
            (None, None) => break,
            (Some(mut f), s) if s.is_none_or(|s| f.off < s.off) => {
                // Part of the first diff not covered by the second: keep it.
                let stop = s.map_or(f.end(), |s| s.off.min(f.end()));
                let n = stop - f.off;
                if f.data {
                    w.begin_data(f.off, n)?;
                    let mut left = n;
                    while left > 0 {
                        let want = left.min(buf.len() as u64) as usize;
                        a.read_data_exact(&mut buf[..want])?;
                        w.write_data(&buf[..want])?;
                        left -= want as u64;
                    }
                } else {
                    w.zero(f.off, n)?;
                }
                f.off = stop;
                f.len -= n;
                fa = (f.len > 0).then_some(f);
            }
            (Some(mut f), Some(s)) if f.off < s.end() => {
                // Overridden by the second diff: drop it.
                let stop = s.end().min(f.end());
                let n = stop - f.off;
                if f.data {
                    a.skip_data(n)?;
                }
                f.off = stop;
                f.len -= n;
                fa = (f.len > 0).then_some(f);
            }
            (_, Some(s)) => {
                if s.data {
                    w.begin_data(s.off, s.len)?;
                    let mut left = s.len;
                    while left > 0 {
                        let want = left.min(buf.len() as u64) as usize;
                        b.read_data_exact(&mut buf[..want])?;
                        w.write_data(&buf[..want])?;
                        left -= want as u64;
                    }
                } else {
                    w.zero(s.off, s.len)?;
                }
                sb = None;
            }
            (Some(_), None) => unreachable!("covered by the first arm"),
        }
    }
    let (_out, sum) = w.finish_with_summary()?;
    Ok(sum)
}
