//! Wire constants of the RBD stream formats and the little-endian primitives
//! used to read and write them.
//!
//! Layouts (see Ceph `doc/dev/rbd-diff.rst`, `doc/dev/rbd-export.rst` and
//! `src/tools/rbd/action/Export.cc`):
//!
//! * diff v1: banner `"rbd diff v1\n"`, then `tag` + payload records:
//!   `'f'`/`'t'` le32 len + name, `'s'` le64 size, `'w'` le64 offset +
//!   le64 length + data, `'z'` le64 offset + le64 length, `'e'` end.
//! * diff v2: banner `"rbd diff v2\n"`, every record except `'e'` is
//!   `tag` + le64 record length + payload (so unknown tags can be skipped);
//!   adds `'p'` (le64 1, u8 is_protected).
//! * image export v2: `"rbd image v2\n"`, `'O' 'T' 'U' 'C'` (le64 8, le64
//!   value), `'M'` (le64 klen+vlen+8, le32 klen, key, le32 vlen, value),
//!   `'E'` (tag only), then `"rbd image diffs v2\n"`, le64 N = snaps + 1 and
//!   N complete v2 diff streams.

use std::io::{self, Read, Write};

use crate::error::{bail, Error, Result};

/// Banner of a v1 diff stream (what `rbd export-diff` always writes).
pub const DIFF_BANNER_V1: &[u8] = b"rbd diff v1\n";
/// Banner of a v2 diff stream (only found inside `rbd export --export-format 2`).
pub const DIFF_BANNER_V2: &[u8] = b"rbd diff v2\n";
/// Banner of a full image export, format 2.
pub const IMAGE_BANNER_V2: &[u8] = b"rbd image v2\n";
/// Second banner of a full image export, format 2, before the diff count.
pub const IMAGE_DIFFS_BANNER_V2: &[u8] = b"rbd image diffs v2\n";

/// Longest snapshot name accepted, in bytes (the 4 KiB limit `rbd import-diff` uses).
pub const MAX_NAME_LEN: usize = 4096;
/// Largest accepted `'M'` image-meta record (key + value + 8), in bytes.
pub const MAX_META_RECORD_LEN: u64 = 1 << 20;

/// Diff record tags.
pub mod tag {
    /// `'f'`: from-snapshot name.
    pub const FROM_SNAP: u8 = b'f';
    /// `'t'`: to-snapshot name.
    pub const TO_SNAP: u8 = b't';
    /// `'s'`: image size at the end snapshot.
    pub const IMAGE_SIZE: u8 = b's';
    /// `'p'`: protection status of the to-snapshot (v2 only).
    pub const PROTECTION: u8 = b'p';
    /// `'w'`: data extent.
    pub const WRITE: u8 = b'w';
    /// `'z'`: zeroed / discarded extent.
    pub const ZERO: u8 = b'z';
    /// `'e'`: end of stream.
    pub const END: u8 = b'e';

    /// `'O'`: image order (object size = 1 << order).
    pub const EXPORT_ORDER: u8 = b'O';
    /// `'T'`: image feature bits.
    pub const EXPORT_FEATURES: u8 = b'T';
    /// `'U'`: stripe unit.
    pub const EXPORT_STRIPE_UNIT: u8 = b'U';
    /// `'C'`: stripe count.
    pub const EXPORT_STRIPE_COUNT: u8 = b'C';
    /// `'M'`: one image-meta key/value pair.
    pub const EXPORT_META: u8 = b'M';
    /// `'E'`: end of the image header.
    pub const EXPORT_END: u8 = b'E';
}

/// Version of a diff stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiffFormat {
    /// `"rbd diff v1\n"`: `rbd export-diff`, `rbd merge-diff`, `rbd import-diff`.
    V1,
    /// `"rbd diff v2\n"`: length-prefixed records, embedded in image exports.
    V2,
}

impl DiffFormat {
    /// The banner that starts a stream of this format.
    pub fn banner(self) -> &'static [u8] {
        match self {
            DiffFormat::V1 => DIFF_BANNER_V1,
            DiffFormat::V2 => DIFF_BANNER_V2,
        }
    }
}

/// What kind of RBD stream a prefix of bytes looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// `rbd export-diff` output.
    DiffV1,
    /// Stand-alone v2 diff.
    DiffV2,
    /// `rbd export --export-format 2` output.
    ImageExportV2,
    /// Anything else; `rbd export` format 1 is raw image bytes and has no banner.
    RawOrUnknown,
}

/// Classifies a stream from its first bytes (at least 13 are needed to
/// recognise an image export, 12 for diffs).
pub fn sniff(prefix: &[u8]) -> StreamKind {
    if prefix.starts_with(IMAGE_BANNER_V2) {
        StreamKind::ImageExportV2
    } else if prefix.starts_with(DIFF_BANNER_V1) {
        StreamKind::DiffV1
    } else if prefix.starts_with(DIFF_BANNER_V2) {
        StreamKind::DiffV2
    } else {
        StreamKind::RawOrUnknown
    }
}

/// Printable rendering of a tag byte for error messages.
pub(crate) fn show_tag(t: u8) -> String {
    if t.is_ascii_graphic() {
        format!("'{}' (0x{t:02x})", t as char)
    } else {
        format!("0x{t:02x}")
    }
}

/// A reader that tracks its byte position and maps EOF to `Truncated`.
#[derive(Debug)]
pub(crate) struct Input<R> {
    pub(crate) r: R,
    pub(crate) pos: u64,
}

impl<R: Read> Input<R> {
    pub(crate) fn new(r: R, pos: u64) -> Self {
        Self { r, pos }
    }

    /// Reads up to `buf.len()` bytes, retrying on `Interrupted`.
    pub(crate) fn read_some(&mut self, buf: &mut [u8], what: &str) -> Result<usize> {
        loop {
            match self.r.read(buf) {
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::io(
                        e,
                        format_args!("reading {what} at byte {}", self.pos),
                    ))
                }
            }
        }
    }

    /// Reads one tag byte; `None` on a clean EOF.
    pub(crate) fn read_tag(&mut self) -> Result<Option<u8>> {
        let mut b = [0u8; 1];
        match self.read_some(&mut b, "record tag")? {
            0 => Ok(None),
            _ => Ok(Some(b[0])),
        }
    }

    pub(crate) fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let start = self.pos;
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_some(&mut buf[done..], what)?;
            if n == 0 {
                bail!(
                    Truncated,
                    "EOF while reading {what} ({} of {} bytes) at byte {start}",
                    done,
                    buf.len()
                );
            }
            done += n;
        }
        Ok(())
    }

    pub(crate) fn read_u8(&mut self, what: &str) -> Result<u8> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b, what)?;
        Ok(b[0])
    }

    pub(crate) fn read_u32(&mut self, what: &str) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    pub(crate) fn read_u64(&mut self, what: &str) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads and discards exactly `n` bytes.
    pub(crate) fn skip(&mut self, mut n: u64, what: &str) -> Result<()> {
        let start = self.pos;
        let total = n;
        let mut buf = [0u8; 8192];
        while n > 0 {
            let want = n.min(buf.len() as u64) as usize;
            let got = self.read_some(&mut buf[..want], what)?;
            if got == 0 {
                bail!(
                    Truncated,
                    "EOF while skipping {what} ({} of {total} bytes) starting at byte {start}",
                    total - n
                );
            }
            n -= got as u64;
        }
        Ok(())
    }

    /// Reads exactly `expected.len()` bytes and compares them with `expected`.
    pub(crate) fn expect_banner(&mut self, expected: &[u8], what: &str) -> Result<()> {
        let mut buf = vec![0u8; expected.len()];
        let start = self.pos;
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_some(&mut buf[done..], what)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        if buf[..done] != expected[..done] {
            bail!(
                BadBanner,
                "expected {what} {:?} at byte {start}, found {:?}",
                String::from_utf8_lossy(expected),
                String::from_utf8_lossy(&buf[..done])
            );
        }
        if done < buf.len() {
            bail!(
                Truncated,
                "EOF inside {what} at byte {start} (got {done} of {} bytes)",
                buf.len()
            );
        }
        Ok(())
    }

    /// True if the reader is at EOF (consumes one byte otherwise).
    pub(crate) fn at_eof(&mut self) -> Result<bool> {
        let mut b = [0u8; 1];
        Ok(self.read_some(&mut b, "end of stream")? == 0)
    }

    /// Reads a Ceph `encode(std::string)`: le32 length then bytes, with a
    /// length limit checked before allocating.
    pub(crate) fn read_string_bytes(
        &mut self,
        max: usize,
        what: &str,
        too_long: crate::StreamErrorKind,
    ) -> Result<Vec<u8>> {
        let at = self.pos;
        let len = self.read_u32(what)? as usize;
        if len > max {
            return Err(Error::new(
                too_long,
                format!("{what} at byte {at} is {len} bytes long, limit is {max}"),
            ));
        }
        let mut v = vec![0u8; len];
        self.read_exact(&mut v, what)?;
        Ok(v)
    }
}

/// A writer that tracks its byte position and refuses use after an I/O error.
#[derive(Debug)]
pub(crate) struct Output<W> {
    pub(crate) w: W,
    pub(crate) pos: u64,
    pub(crate) poisoned: bool,
}

impl<W: Write> Output<W> {
    pub(crate) fn new(w: W) -> Self {
        Self {
            w,
            pos: 0,
            poisoned: false,
        }
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.poisoned {
            bail!(
                Usage,
                "writer is finished, or unusable after an earlier error left a partial record"
            );
        }
        Ok(())
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.check()?;
        if let Err(e) = self.w.write_all(bytes) {
            self.poisoned = true;
            return Err(Error::io(e, format_args!("writing at byte {}", self.pos)));
        }
        self.pos += bytes.len() as u64;
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> Result<()> {
        self.check()?;
        self.w.flush().map_err(|e| {
            self.poisoned = true;
            Error::io(e, "flushing output")
        })
    }
}
