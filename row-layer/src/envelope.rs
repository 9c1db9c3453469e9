//! The versioned envelope around every record row-layer stores.
//!
//! Layout: `magic (4) | format version (u16 le) | payload length (u32 le) |
//! payload (postcard) | crc32c of everything before it (u32 le)`. Postcard has a
//! documented, stable wire format; the magic names the record type so that a
//! header can never be decoded as an epoch record; the version lets later
//! releases read old records (fixtures of every version are kept in
//! `row-layer/tests/fixtures`). Decoding never panics on hostile bytes.

use crate::error::{Error, ErrorKind, Result};
use serde::{de::DeserializeOwned, Serialize};

/// Every record type has its own four-byte magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordType {
    /// Four ASCII bytes naming the record.
    pub magic: [u8; 4],
    /// The version this build writes.
    pub current_version: u16,
    /// The oldest version this build can still read.
    pub oldest_readable: u16,
}

const HEADER_LEN: usize = 4 + 2 + 4;
const CRC_LEN: usize = 4;

/// Encodes `value` as a record of type `rt` in its current version.
pub fn encode<T: Serialize>(rt: RecordType, value: &T) -> Result<Vec<u8>> {
    encode_version(rt, rt.current_version, value)
}

/// Encodes `value` as version `version` of record type `rt`: a type whose
/// newer version only adds what most records lack keeps writing the older
/// one when it can, so that older builds still read those records.
pub fn encode_version<T: Serialize>(rt: RecordType, version: u16, value: &T) -> Result<Vec<u8>> {
    let payload = postcard::to_allocvec(value)
        .map_err(|e| Error::invalid(format!("cannot encode {} record: {e}", rt.name())))?;
    let payload_len = u32::try_from(payload.len())
        .map_err(|_| Error::invalid(format!("{} record too large", rt.name())))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + CRC_LEN);
    out.extend_from_slice(&rt.magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Checks magic, length and crc, returning the version and the payload.
pub fn open(rt: RecordType, bytes: &[u8]) -> Result<(u16, &[u8])> {
    let name = rt.name();
    if bytes.len() < HEADER_LEN + CRC_LEN {
        return Err(Error::corrupt(format!(
            "{name} record truncated: {} bytes",
            bytes.len()
        )));
    }
    if bytes[0..4] != rt.magic {
        return Err(Error::corrupt(format!(
            "{name} record has wrong magic {:?}",
            &bytes[0..4]
        )));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    let len = u32::from_le_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]) as usize;
    let expected = HEADER_LEN
        .checked_add(len)
        .and_then(|n| n.checked_add(CRC_LEN))
        .ok_or_else(|| Error::corrupt(format!("{name} record length overflows")))?;
    if bytes.len() != expected {
        return Err(Error::corrupt(format!(
            "{name} record length mismatch: header says {expected} bytes, have {}",
            bytes.len()
        )));
    }
    let body_end = HEADER_LEN + len;
    let stored = u32::from_le_bytes([
        bytes[body_end],
        bytes[body_end + 1],
        bytes[body_end + 2],
        bytes[body_end + 3],
    ]);
    let actual = crc32c::crc32c(&bytes[..body_end]);
    if stored != actual {
        return Err(Error::corrupt(format!(
            "{name} record checksum mismatch (stored {stored:08x}, computed {actual:08x})"
        )));
    }
    if version > rt.current_version {
        // Intact (the crc matches) but written by a newer rbd-row: not damage.
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "unsupported version {version} of {name} record; this rbd-row reads up to {} \
                 (upgrade rbd-row to read it)",
                rt.current_version
            ),
        ));
    }
    if version < rt.oldest_readable {
        return Err(Error::corrupt(format!(
            "{name} record version {version} not readable by this build (reads {}..={})",
            rt.oldest_readable, rt.current_version
        )));
    }
    Ok((version, &bytes[HEADER_LEN..body_end]))
}

/// Decodes a record of the current version (types with a single version so far).
pub fn decode<T: DeserializeOwned>(rt: RecordType, bytes: &[u8]) -> Result<T> {
    let (_version, payload) = open(rt, bytes)?;
    postcard::from_bytes(payload)
        .map_err(|e| Error::corrupt(format!("{} record payload does not decode: {e}", rt.name())))
}

impl RecordType {
    fn name(&self) -> String {
        String::from_utf8_lossy(&self.magic).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: RecordType = RecordType {
        magic: *b"TEST",
        current_version: 1,
        oldest_readable: 1,
    };

    #[test]
    fn round_trip_and_every_corruption_is_detected() {
        let value = (7u64, String::from("snap"), vec![1u8, 2, 3]);
        let bytes = encode(T, &value).expect("encode");
        let back: (u64, String, Vec<u8>) = decode(T, &bytes).expect("decode");
        assert_eq!(back, value);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let err = decode::<(u64, String, Vec<u8>)>(T, &bad).expect_err("flip detected");
            assert_eq!(err.kind(), ErrorKind::Corrupt);
        }
        for cut in 0..bytes.len() {
            assert!(decode::<(u64, String, Vec<u8>)>(T, &bytes[..cut]).is_err());
        }
    }

    /// An intact record of a newer version is "unsupported", not "corrupt";
    /// one below the readable range (never written) is damage.
    #[test]
    fn newer_version_is_unsupported() {
        let bytes = encode(T, &7u64).expect("encode");
        let with_version = |v: u16| {
            let mut b = bytes.clone();
            b[4..6].copy_from_slice(&v.to_le_bytes());
            let body = b.len() - CRC_LEN;
            let crc = crc32c::crc32c(&b[..body]);
            b[body..].copy_from_slice(&crc.to_le_bytes());
            b
        };
        for v in [2, 3, u16::MAX] {
            let err = decode::<u64>(T, &with_version(v)).expect_err("newer");
            assert_eq!(err.kind(), ErrorKind::Unsupported);
            assert!(
                err.message().contains(&format!(
                    "unsupported version {v} of TEST record; this rbd-row reads up to 1"
                )),
                "{err}"
            );
        }
        let err = decode::<u64>(T, &with_version(0)).expect_err("v0");
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.message().contains("version 0"), "{err}");
    }
}
