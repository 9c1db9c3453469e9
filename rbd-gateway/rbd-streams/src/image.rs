//! Full-image exports: `rbd export --export-format 2` (header + chain of v2
//! diffs) and the trivial format 1.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use crate::diff_reader::{DataReader, DiffReader, DiffRecord, DiffSummary};
use crate::diff_writer::DiffWriter;
use crate::error::{bail, Error, Result};
use crate::format::{
    show_tag, tag, DiffFormat, Input, Output, IMAGE_BANNER_V2, IMAGE_DIFFS_BANNER_V2,
    MAX_META_RECORD_LEN,
};
use crate::StreamErrorKind;

/// `rbd export` (format 1, the default) writes the raw image bytes
/// `[0, size)` with no banner, header or trailer; `rbd import` reads them
/// back the same way. There is nothing to parse: this constant only
/// documents that fact ([`export_v1`] is the matching helper).
pub const EXPORT_FORMAT_1_IS_RAW: bool = true;

/// Writes an `rbd export` format-1 stream: exactly `size` raw bytes copied
/// from `image`. Returns the number of bytes written.
pub fn export_v1<R: Read, W: Write>(mut image: R, size: u64, mut out: W) -> Result<u64> {
    let n = io::copy(&mut (&mut image).take(size), &mut out)
        .map_err(|e| Error::io(e, "copying raw image bytes"))?;
    if n != size {
        bail!(Truncated, "image source ended after {n} of {size} bytes");
    }
    out.flush().map_err(|e| Error::io(e, "flushing output"))?;
    Ok(n)
}

/// Image properties carried by the header of an export-format-2 stream.
/// Fields `rbd` always writes are optional here so that foreign streams
/// omitting them can still be read (`rbd import` then uses its defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageHeader {
    /// `'O'`: object size order (object size = 1 << order).
    pub order: Option<u64>,
    /// `'T'`: feature bits.
    pub features: Option<u64>,
    /// `'U'`: stripe unit in bytes.
    pub stripe_unit: Option<u64>,
    /// `'C'`: stripe count.
    pub stripe_count: Option<u64>,
    /// `'M'` records: image-meta key → value (values are raw bytes in
    /// Ceph). Written in key order, as `rbd` does.
    pub metadata: BTreeMap<String, Vec<u8>>,
    /// Tags of header records that were skipped as unknown (e.g. `'F'`,
    /// which `doc/dev/rbd-export.rst` lists but `rbd` never writes).
    pub skipped_tags: Vec<u8>,
}

/// Writes `rbd export --export-format 2` streams.
///
/// ```
/// use rbd_streams::{ImageExportWriter, ImageHeader};
/// let header = ImageHeader { order: Some(22), ..Default::default() };
/// let mut w = ImageExportWriter::new(Vec::new(), &header, 2).unwrap();
/// w.diff(|d| { d.to_snap("s1")?; d.protection(false)?; d.size(4096)?; d.data(0, &[1; 512]) }).unwrap();
/// w.diff(|d| { d.from_snap("s1")?; d.size(4096)?; d.zero(0, 512) }).unwrap();
/// let bytes = w.finish().unwrap();
/// ```
#[derive(Debug)]
pub struct ImageExportWriter<W: Write> {
    out: Output<W>,
    count: u64,
    written: u64,
    prev_to: Option<String>,
}

impl<W: Write> ImageExportWriter<W> {
    /// Writes the header (`'O' 'T' 'U' 'C'` when set, `'M'` per metadata
    /// pair, `'E'`), the diffs banner and the count `diff_count`, which must
    /// be the number of snapshots + 1.
    pub fn new(w: W, header: &ImageHeader, diff_count: u64) -> Result<Self> {
        if diff_count == 0 {
            bail!(
                Usage,
                "an image export holds at least one diff (snapshots + 1)"
            );
        }
        let mut out = Output::new(w);
        let mut buf = IMAGE_BANNER_V2.to_vec();
        for (t, v) in [
            (tag::EXPORT_ORDER, header.order),
            (tag::EXPORT_FEATURES, header.features),
            (tag::EXPORT_STRIPE_UNIT, header.stripe_unit),
            (tag::EXPORT_STRIPE_COUNT, header.stripe_count),
        ] {
            if let Some(v) = v {
                buf.push(t);
                buf.extend_from_slice(&8u64.to_le_bytes());
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        for (k, v) in &header.metadata {
            let rec_len = k.len() as u64 + v.len() as u64 + 8;
            if rec_len > MAX_META_RECORD_LEN || k.len() > u32::MAX as usize {
                bail!(
                    AbsurdLength,
                    "image-meta pair {k:?} is {rec_len} bytes, limit is {MAX_META_RECORD_LEN}"
                );
            }
            buf.push(tag::EXPORT_META);
            buf.extend_from_slice(&rec_len.to_le_bytes());
            buf.extend_from_slice(&(k.len() as u32).to_le_bytes());
            buf.extend_from_slice(k.as_bytes());
            buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
            buf.extend_from_slice(v);
        }
        buf.push(tag::EXPORT_END);
        buf.extend_from_slice(IMAGE_DIFFS_BANNER_V2);
        buf.extend_from_slice(&diff_count.to_le_bytes());
        out.put(&buf)?;
        Ok(Self {
            out,
            count: diff_count,
            written: 0,
            prev_to: None,
        })
    }

    /// Number of diffs still to be written.
    pub fn diffs_remaining(&self) -> u64 {
        self.count - self.written
    }

    /// Writes the next embedded v2 diff: `f` receives a fresh [`DiffWriter`]
    /// (banner already written) and writes metadata and extents; this method
    /// then checks the snapshot chain and writes `'e'`.
    ///
    /// Chain rules (as `rbd export` produces and `rbd import` expects): the
    /// first diff has no from-snap, diff *i* starts from the to-snap of diff
    /// *i − 1*, every diff but the last names a to-snap, the last (→ HEAD)
    /// names none.
    pub fn diff<F>(&mut self, f: F) -> Result<DiffSummary>
    where
        F: FnOnce(&mut DiffWriter<&mut W>) -> Result<()>,
    {
        self.out.check()?;
        if self.written == self.count {
            bail!(
                Usage,
                "all {} announced diffs have already been written",
                self.count
            );
        }
        let last = self.written + 1 == self.count;
        let index = self.written;
        // Any failure below leaves a partial diff in the output.
        self.out.poisoned = true;
        let mut dw = DiffWriter::new(&mut self.out.w, DiffFormat::V2)?;
        f(&mut dw)?;
        if dw.from_snap_name() != self.prev_to.as_deref() {
            bail!(
                SnapMismatch,
                "diff #{index} starts from {:?} but the previous diff ended at {:?}",
                dw.from_snap_name(),
                self.prev_to
            );
        }
        match (last, dw.to_snap_name()) {
            (true, Some(t)) => bail!(
                SnapMismatch,
                "the last diff (#{index}) must end at HEAD but names to-snap {t:?}"
            ),
            (false, None) => bail!(
                SnapMismatch,
                "diff #{index} of {} must name a to-snap (only the last one ends at HEAD)",
                self.count
            ),
            _ => {}
        }
        let to = dw.to_snap_name().map(str::to_owned);
        let sum = dw.finish_in_place()?;
        self.out.pos += sum.stream_len;
        self.out.poisoned = false;
        self.prev_to = to;
        self.written += 1;
        Ok(sum)
    }

    /// Checks that every announced diff was written, flushes, returns the sink.
    pub fn finish(mut self) -> Result<W> {
        self.out.check()?;
        if self.written != self.count {
            bail!(
                Usage,
                "only {} of the {} announced diffs were written",
                self.written,
                self.count
            );
        }
        self.out.flush()?;
        Ok(self.out.w)
    }
}

#[derive(Debug)]
struct Chain {
    count: u64,
    next: u64,
    prev_to: Option<String>,
    /// An [`EmbeddedDiff`] was handed out and has not reached `'e'` yet.
    open: bool,
    pos: u64,
}

/// Reads `rbd export --export-format 2` streams: header first (in
/// [`ImageExportReader::new`]), then one [`EmbeddedDiff`] per
/// [`ImageExportReader::next_diff`] call.
///
/// Validates the banners, header framing (unknown header tags are skipped by
/// length, as `rbd import` does), the diff count, every embedded diff (as
/// [`DiffReader`] does), the snapshot chain across diffs and that nothing
/// follows the last diff.
#[derive(Debug)]
pub struct ImageExportReader<R> {
    r: R,
    header: ImageHeader,
    chain: Chain,
}

impl<R: Read> ImageExportReader<R> {
    /// Reads and validates the header, diffs banner and diff count.
    pub fn new(r: R) -> Result<Self> {
        let mut input = Input::new(r, 0);
        input.expect_banner(IMAGE_BANNER_V2, "image export banner")?;
        let mut h = ImageHeader::default();
        loop {
            let at = input.pos;
            let Some(t) = input.read_tag()? else {
                bail!(
                    Truncated,
                    "EOF at byte {at} inside the image header (no 'E' record)"
                );
            };
            if t == tag::EXPORT_END {
                break;
            }
            let len = input.read_u64("header record length")?;
            let slot = match t {
                tag::EXPORT_ORDER => Some((&mut h.order, "order 'O'")),
                tag::EXPORT_FEATURES => Some((&mut h.features, "features 'T'")),
                tag::EXPORT_STRIPE_UNIT => Some((&mut h.stripe_unit, "stripe unit 'U'")),
                tag::EXPORT_STRIPE_COUNT => Some((&mut h.stripe_count, "stripe count 'C'")),
                _ => None,
            };
            if let Some((slot, what)) = slot {
                if slot.is_some() {
                    bail!(DuplicateMetadata, "second {what} record at byte {at}");
                }
                if len != 8 {
                    bail!(
                        LengthMismatch,
                        "{what} record at byte {at} declares length {len}, expected 8"
                    );
                }
                *slot = Some(input.read_u64(what)?);
            } else if t == tag::EXPORT_META {
                if len > MAX_META_RECORD_LEN {
                    bail!(AbsurdLength, "image-meta 'M' record at byte {at} declares length {len}, limit is {MAX_META_RECORD_LEN}");
                }
                if len < 8 {
                    bail!(
                        LengthMismatch,
                        "image-meta 'M' record at byte {at} declares length {len}, below 8"
                    );
                }
                let max = (len - 8) as usize;
                let key = input.read_string_bytes(
                    max,
                    "image-meta key",
                    StreamErrorKind::LengthMismatch,
                )?;
                let value = input.read_string_bytes(
                    max - key.len(),
                    "image-meta value",
                    StreamErrorKind::LengthMismatch,
                )?;
                if key.len() + value.len() + 8 != len as usize {
                    bail!(
                        LengthMismatch,
                        "image-meta 'M' record at byte {at} declares length {len} but holds {} bytes",
                        key.len() + value.len() + 8
                    );
                }
                let key = String::from_utf8(key).map_err(|_| {
                    Error::new(
                        StreamErrorKind::InvalidUtf8,
                        format!("image-meta key at byte {at} is not UTF-8"),
                    )
                })?;
                if h.metadata.contains_key(&key) {
                    bail!(
                        DuplicateMetadata,
                        "image-meta key {key:?} repeated at byte {at}"
                    );
                }
                h.metadata.insert(key, value);
            } else {
                input.skip(len, &format!("unknown header record {}", show_tag(t)))?;
                h.skipped_tags.push(t);
            }
        }
        input.expect_banner(IMAGE_DIFFS_BANNER_V2, "image diffs banner")?;
        let at = input.pos;
        let count = input.read_u64("diff count")?;
        if count == 0 {
            bail!(
                InvalidValue,
                "diff count at byte {at} is 0 (rbd always writes snapshots + 1)"
            );
        }
        let pos = input.pos;
        Ok(Self {
            r: input.r,
            header: h,
            chain: Chain {
                count,
                next: 0,
                prev_to: None,
                open: false,
                pos,
            },
        })
    }

    /// The image header.
    pub fn header(&self) -> &ImageHeader {
        &self.header
    }

    /// Number of embedded diffs (snapshots + 1).
    pub fn diff_count(&self) -> u64 {
        self.chain.count
    }

    /// Index of the next diff [`ImageExportReader::next_diff`] will return.
    pub fn diffs_read(&self) -> u64 {
        self.chain.next
    }

    /// Opens the next embedded diff, `Ok(None)` after the last one. The
    /// previous one must have been read up to its [`DiffRecord::End`].
    pub fn next_diff(&mut self) -> Result<Option<EmbeddedDiff<'_, R>>> {
        if self.chain.open {
            bail!(
                Usage,
                "the previous embedded diff was not read up to its end record"
            );
        }
        if self.chain.next == self.chain.count {
            return Ok(None);
        }
        let inner = DiffReader::open(&mut self.r, self.chain.pos, Some(DiffFormat::V2), false)
            .map_err(|mut e| {
                e.message = format!("embedded diff #{}: {}", self.chain.next, e.message);
                e
            })?;
        self.chain.open = true;
        Ok(Some(EmbeddedDiff {
            inner,
            chain: &mut self.chain,
        }))
    }

    /// Returns the underlying reader.
    pub fn into_inner(self) -> R {
        self.r
    }
}

/// One v2 diff inside an image export; checks the snapshot chain when it
/// reaches its end.
#[derive(Debug)]
pub struct EmbeddedDiff<'a, R> {
    inner: DiffReader<&'a mut R>,
    chain: &'a mut Chain,
}

impl<'a, R: Read> EmbeddedDiff<'a, R> {
    /// Index of this diff in the export (0-based).
    pub fn index(&self) -> u64 {
        self.chain.next
    }

    /// See [`DiffReader::next_record`]; at `'e'` the snapshot chain is checked.
    pub fn next_record(&mut self) -> Result<Option<DiffRecord>> {
        let idx = self.chain.next;
        let rec = self.inner.next_record().map_err(|mut e| {
            e.message = format!("embedded diff #{idx}: {}", e.message);
            e
        })?;
        if rec == Some(DiffRecord::End) {
            let sum = self.inner.summary();
            if sum.from_snap != self.chain.prev_to {
                bail!(
                    SnapMismatch,
                    "embedded diff #{idx} starts from {:?} but the previous diff ended at {:?}",
                    sum.from_snap,
                    self.chain.prev_to
                );
            }
            let last = idx + 1 == self.chain.count;
            match (last, &sum.to_snap) {
                (true, Some(t)) => bail!(
                    SnapMismatch,
                    "the last embedded diff (#{idx}) must end at HEAD but names to-snap {t:?}"
                ),
                (false, None) => bail!(
                    SnapMismatch,
                    "embedded diff #{idx} of {} names no to-snap (only the last may end at HEAD)",
                    self.chain.count
                ),
                _ => {}
            }
            self.chain.prev_to = sum.to_snap.clone();
            if last {
                self.inner.check_eof("the last embedded diff")?;
            }
            self.chain.pos = self.inner.position();
            self.chain.next += 1;
            self.chain.open = false;
        }
        Ok(rec)
    }

    /// See [`DiffReader::summary`].
    pub fn summary(&self) -> &DiffSummary {
        self.inner.summary()
    }

    /// See [`DiffReader::read_data`].
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.inner.read_data(buf)
    }

    /// See [`DiffReader::read_data_exact`].
    pub fn read_data_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.inner.read_data_exact(buf)
    }

    /// See [`DiffReader::copy_data_to`].
    pub fn copy_data_to<W: Write + ?Sized>(&mut self, w: &mut W) -> Result<u64> {
        self.inner.copy_data_to(w)
    }

    /// See [`DiffReader::read_data_to_vec`].
    pub fn read_data_to_vec(&mut self) -> Result<Vec<u8>> {
        self.inner.read_data_to_vec()
    }

    /// See [`DiffReader::skip_data`].
    pub fn skip_data(&mut self, n: u64) -> Result<()> {
        self.inner.skip_data(n)
    }

    /// See [`DiffReader::data_remaining`].
    pub fn data_remaining(&self) -> u64 {
        self.inner.data_remaining()
    }

    /// See [`DiffReader::data_reader`].
    pub fn data_reader(&mut self) -> DataReader<'_, &'a mut R> {
        self.inner.data_reader()
    }

    /// Reads (and discards) the rest of this diff, checking the chain.
    pub fn drain(&mut self) -> Result<DiffSummary> {
        while self.next_record()?.is_some() {}
        Ok(self.inner.summary().clone())
    }
}

/// What a whole export-format-2 stream contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageExportSummary {
    /// The image header.
    pub header: ImageHeader,
    /// One summary per embedded diff, in stream order.
    pub diffs: Vec<DiffSummary>,
}

/// Reads a whole `rbd export --export-format 2` stream without applying it.
pub fn validate_image_export<R: Read>(r: R) -> Result<ImageExportSummary> {
    let mut reader = ImageExportReader::new(io::BufReader::with_capacity(1 << 16, r))?;
    let mut diffs = Vec::new();
    while let Some(mut d) = reader.next_diff()? {
        diffs.push(d.drain()?);
    }
    Ok(ImageExportSummary {
        header: reader.header.clone(),
        diffs,
    })
}
