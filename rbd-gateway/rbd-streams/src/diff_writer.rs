//! Streaming writer of `rbd diff v1` / `rbd diff v2` streams.

use std::io::{self, Read, Write};

use crate::diff_reader::DiffSummary;
use crate::error::{bail, Error, Result};
use crate::format::{tag, DiffFormat, Output, MAX_NAME_LEN};
use crate::zero::is_zero;

/// Writes a diff stream, enforcing the order `rbd import-diff` expects:
/// banner (written by [`DiffWriter::new`]), metadata records (`'f'`, `'t'`,
/// `'p'`, `'s'`, each at most once, `'s'` mandatory), data records in strictly
/// increasing, non-overlapping order within the image size, then `'e'`
/// (written by [`DiffWriter::finish`]).
///
/// Validation errors are reported before any byte of the offending record is
/// written, so the writer stays usable; after an I/O error (or a short data
/// source) it refuses further use. Dropping the writer without `finish()`
/// leaves a stream without `'e'`, which every reader rejects.
///
/// Wrap unbuffered sinks (files, sockets) in a [`std::io::BufWriter`].
#[derive(Debug)]
pub struct DiffWriter<W: Write> {
    out: Output<W>,
    sum: DiffSummary,
    in_data: bool,
    prev_end: u64,
    /// Payload bytes still owed for a `'w'` begun with [`DiffWriter::begin_data`].
    pending: u64,
    protection_len: ProtectionLen,
}

/// Declared record length of the v2 `'p'` record. The payload is always one
/// byte; readers (`rbd import`, [`crate::DiffReader`]) accept both values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProtectionLen {
    /// Length 1, as the upstream source and `doc/dev/rbd-diff.rst` say.
    #[default]
    Spec,
    /// Length 8 with a 1-byte payload, as `rbd export --export-format 2`
    /// of Ceph 16.2 (pacific, observed with 16.2.15) really writes; use it to
    /// produce output byte-identical to that `rbd`.
    Pacific,
}

impl<W: Write> DiffWriter<W> {
    /// Starts a stream of `format` on `w` and writes its banner.
    pub fn new(w: W, format: DiffFormat) -> Result<Self> {
        let mut out = Output::new(w);
        out.put(format.banner())?;
        Ok(Self {
            out,
            sum: DiffSummary::empty(format),
            in_data: false,
            prev_end: 0,
            pending: 0,
            protection_len: ProtectionLen::Spec,
        })
    }

    /// Chooses the declared length of the `'p'` record (default
    /// [`ProtectionLen::Spec`]).
    pub fn set_protection_len(&mut self, len: ProtectionLen) {
        self.protection_len = len;
    }

    /// Format being written.
    pub fn format(&self) -> DiffFormat {
        self.sum.format
    }

    /// From-snapshot name written so far, if any.
    pub fn from_snap_name(&self) -> Option<&str> {
        self.sum.from_snap.as_deref()
    }

    /// To-snapshot name written so far, if any.
    pub fn to_snap_name(&self) -> Option<&str> {
        self.sum.to_snap.as_deref()
    }

    /// Statistics of what has been written so far.
    pub fn summary(&self) -> &DiffSummary {
        &self.sum
    }

    fn check_payload_done(&self) -> Result<()> {
        self.out.check()?;
        if self.pending > 0 {
            bail!(
                Usage,
                "{} payload bytes of the current 'w' record have not been written yet",
                self.pending
            );
        }
        Ok(())
    }

    fn check_meta(&self, what: &str, seen: bool) -> Result<()> {
        self.check_payload_done()?;
        if self.in_data {
            bail!(
                MetadataAfterData,
                "{what} record requested after data records were written"
            );
        }
        if seen {
            bail!(DuplicateMetadata, "{what} record was already written");
        }
        Ok(())
    }

    fn write_name(&mut self, t: u8, name: &str) -> Result<()> {
        if name.len() > MAX_NAME_LEN {
            bail!(
                NameTooLong,
                "snapshot name is {} bytes, limit is {MAX_NAME_LEN}",
                name.len()
            );
        }
        let mut rec = Vec::with_capacity(13 + name.len());
        rec.push(t);
        if self.format() == DiffFormat::V2 {
            rec.extend_from_slice(&(4 + name.len() as u64).to_le_bytes());
        }
        rec.extend_from_slice(&(name.len() as u32).to_le_bytes());
        rec.extend_from_slice(name.as_bytes());
        self.out.put(&rec)
    }

    /// Writes the `'f'` (from-snapshot) record.
    pub fn from_snap(&mut self, name: &str) -> Result<()> {
        self.check_meta("from-snap 'f'", self.sum.from_snap.is_some())?;
        self.write_name(tag::FROM_SNAP, name)?;
        self.sum.from_snap = Some(name.to_owned());
        Ok(())
    }

    /// Writes the `'t'` (to-snapshot) record.
    pub fn to_snap(&mut self, name: &str) -> Result<()> {
        self.check_meta("to-snap 't'", self.sum.to_snap.is_some())?;
        self.write_name(tag::TO_SNAP, name)?;
        self.sum.to_snap = Some(name.to_owned());
        Ok(())
    }

    /// Writes the `'p'` (to-snapshot protection) record; v2 only, and like
    /// `rbd` only after a to-snapshot has been named.
    pub fn protection(&mut self, protected: bool) -> Result<()> {
        self.check_meta("protection 'p'", self.sum.protected.is_some())?;
        if self.format() != DiffFormat::V2 {
            bail!(
                Usage,
                "the protection record 'p' exists only in v2 diff streams"
            );
        }
        if self.sum.to_snap.is_none() {
            bail!(
                Usage,
                "the protection record 'p' must follow a to-snap 't' record"
            );
        }
        let declared: u64 = match self.protection_len {
            ProtectionLen::Spec => 1,
            ProtectionLen::Pacific => crate::diff_reader::PACIFIC_PROTECTION_LEN,
        };
        let mut rec = [0u8; 10];
        rec[0] = tag::PROTECTION;
        rec[1..9].copy_from_slice(&declared.to_le_bytes());
        rec[9] = u8::from(protected);
        self.out.put(&rec)?;
        self.sum.protected = Some(protected);
        Ok(())
    }

    /// Writes the `'s'` record: image size at the end of the diff.
    pub fn size(&mut self, size: u64) -> Result<()> {
        self.check_meta("image size 's'", self.sum.size.is_some())?;
        let mut rec = Vec::with_capacity(17);
        rec.push(tag::IMAGE_SIZE);
        if self.format() == DiffFormat::V2 {
            rec.extend_from_slice(&8u64.to_le_bytes());
        }
        rec.extend_from_slice(&size.to_le_bytes());
        self.out.put(&rec)?;
        self.sum.size = Some(size);
        Ok(())
    }

    fn check_extent(&self, kind: &str, offset: u64, len: u64) -> Result<()> {
        self.check_payload_done()?;
        let Some(size) = self.sum.size else {
            bail!(
                MissingSize,
                "{kind} extent requested before the image size 's' record"
            );
        };
        if len == 0 {
            bail!(Usage, "{kind} extent at offset {offset} has length 0");
        }
        if offset < self.prev_end {
            bail!(
                ExtentOrder,
                "{kind} extent at offset {offset} starts before the end of the previous extent ({})",
                self.prev_end
            );
        }
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => bail!(
                ExtentBeyondSize,
                "{kind} extent [{offset}, +{len}) ends beyond the image size {size}"
            ),
        }
    }

    fn extent_header(&mut self, t: u8, offset: u64, len: u64) -> Result<()> {
        let mut rec = Vec::with_capacity(25);
        rec.push(t);
        if self.format() == DiffFormat::V2 {
            let rec_len = if t == tag::WRITE { 16 + len } else { 16 };
            rec.extend_from_slice(&rec_len.to_le_bytes());
        }
        rec.extend_from_slice(&offset.to_le_bytes());
        rec.extend_from_slice(&len.to_le_bytes());
        self.out.put(&rec)?;
        self.in_data = true;
        self.prev_end = offset + len;
        Ok(())
    }

    /// Writes a `'w'` record carrying `data` at `offset`.
    pub fn data(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.begin_data(offset, data.len() as u64)?;
        self.write_data(data)
    }

    /// Starts a `'w'` record of `len` bytes at `offset`; the payload must then
    /// be supplied with [`DiffWriter::write_data`] (any number of calls
    /// totalling exactly `len` bytes) before any other record.
    pub fn begin_data(&mut self, offset: u64, len: u64) -> Result<()> {
        if self.format() == DiffFormat::V2 && len > u64::MAX - 16 {
            bail!(
                AbsurdLength,
                "'w' length {len} does not fit a v2 record length"
            );
        }
        self.check_extent("data 'w'", offset, len)?;
        self.extent_header(tag::WRITE, offset, len)?;
        self.pending = len;
        self.sum.data_extents += 1;
        self.sum.data_bytes += len;
        Ok(())
    }

    /// Supplies payload bytes of the `'w'` record begun with
    /// [`DiffWriter::begin_data`].
    pub fn write_data(&mut self, chunk: &[u8]) -> Result<()> {
        if chunk.len() as u64 > self.pending {
            bail!(
                Usage,
                "{} payload bytes supplied but only {} remain in the current 'w' record",
                chunk.len(),
                self.pending
            );
        }
        self.out.put(chunk)?;
        self.pending -= chunk.len() as u64;
        Ok(())
    }

    /// Writes a `'w'` record of `len` bytes at `offset`, copying the payload
    /// from `src` (which must supply at least `len` bytes).
    pub fn data_from_reader<R: Read + ?Sized>(
        &mut self,
        offset: u64,
        len: u64,
        src: &mut R,
    ) -> Result<()> {
        self.begin_data(offset, len)?;
        let mut buf = vec![0u8; len.min(1 << 16) as usize];
        while self.pending > 0 {
            let want = self.pending.min(buf.len() as u64) as usize;
            match src.read(&mut buf[..want]) {
                Ok(0) => {
                    self.out.poisoned = true;
                    bail!(
                        Truncated,
                        "data source ended with {} bytes of the 'w' payload at offset {offset} missing",
                        self.pending
                    );
                }
                Ok(n) => self.write_data(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.out.poisoned = true;
                    return Err(Error::io(e, "reading the 'w' payload from the data source"));
                }
            }
        }
        Ok(())
    }

    /// Writes a `'z'` record: `len` bytes at `offset` read as zeros.
    pub fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_extent("zero 'z'", offset, len)?;
        self.extent_header(tag::ZERO, offset, len)?;
        self.sum.zero_extents += 1;
        self.sum.zero_bytes += len;
        Ok(())
    }

    /// Writes `data` at `offset` as `'z'` if it is all zeros (as `rbd
    /// export-diff` does), else as `'w'`. Returns true if it was written as zero.
    pub fn extent(&mut self, offset: u64, data: &[u8]) -> Result<bool> {
        if is_zero(data) {
            self.zero(offset, data.len() as u64)?;
            Ok(true)
        } else {
            self.data(offset, data)?;
            Ok(false)
        }
    }

    /// Writes the `'e'` record, flushes and returns the sink.
    pub fn finish(mut self) -> Result<W> {
        self.finish_in_place()?;
        Ok(self.out.w)
    }

    pub(crate) fn finish_in_place(&mut self) -> Result<DiffSummary> {
        self.check_payload_done()?;
        if self.sum.size.is_none() {
            bail!(
                MissingSize,
                "a diff stream needs an image size 's' record before its end"
            );
        }
        self.out.put(&[tag::END])?;
        self.out.flush()?;
        // Make any further use an error.
        self.out.poisoned = true;
        self.sum.stream_len = self.out.pos;
        Ok(self.sum.clone())
    }

    /// Like [`DiffWriter::finish`] but also returns the summary of the stream.
    pub fn finish_with_summary(mut self) -> Result<(W, DiffSummary)> {
        let sum = self.finish_in_place()?;
        Ok((self.out.w, sum))
    }
}
