#![allow(dead_code, unreachable_pub)]

use rbd_streams::{DiffFormat, DiffReader, DiffWriter, StreamErrorKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ext {
    Data(u64, Vec<u8>),
    Zero(u64, u64),
}

impl Ext {
    pub fn off(&self) -> u64 {
        match self {
            Ext::Data(o, _) | Ext::Zero(o, _) => *o,
        }
    }
    pub fn len(&self) -> u64 {
        match self {
            Ext::Data(_, d) => d.len() as u64,
            Ext::Zero(_, l) => *l,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diff {
    pub from: Option<String>,
    pub to: Option<String>,
    pub protected: Option<bool>,
    pub size: u64,
    pub exts: Vec<Ext>,
}

pub fn fixture(name: &str) -> Vec<u8> {
    let p = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {p}: {e}"))
}

/// Writes `d` with the public writer.
pub fn write_diff(format: DiffFormat, d: &Diff) -> Vec<u8> {
    let mut w = DiffWriter::new(Vec::new(), format).unwrap();
    if let Some(f) = &d.from {
        w.from_snap(f).unwrap();
    }
    if let Some(t) = &d.to {
        w.to_snap(t).unwrap();
    }
    if let Some(p) = d.protected {
        w.protection(p).unwrap();
    }
    w.size(d.size).unwrap();
    for e in &d.exts {
        match e {
            Ext::Data(o, data) => w.data(*o, data).unwrap(),
            Ext::Zero(o, l) => w.zero(*o, *l).unwrap(),
        }
    }
    w.finish().unwrap()
}

/// Reads all records of anything with `next_record` / `read_data_to_vec`
/// (DiffReader or EmbeddedDiff) into a [`Diff`].
#[macro_export]
macro_rules! read_loop {
    ($r:expr) => {{
        let mut d = $crate::common::Diff::default();
        let mut ended = false;
        let mut res: rbd_streams::Result<()> = Ok(());
        loop {
            match $r.next_record() {
                Err(e) => {
                    res = Err(e);
                    break;
                }
                Ok(None) => break,
                Ok(Some(rec)) => match rec {
                    rbd_streams::DiffRecord::FromSnap(s) => d.from = Some(s),
                    rbd_streams::DiffRecord::ToSnap(s) => d.to = Some(s),
                    rbd_streams::DiffRecord::Protected(p) => d.protected = Some(p),
                    rbd_streams::DiffRecord::Size(s) => d.size = s,
                    rbd_streams::DiffRecord::Data { offset, len } => match $r.read_data_to_vec() {
                        Ok(v) => {
                            assert_eq!(v.len() as u64, len);
                            d.exts.push($crate::common::Ext::Data(offset, v))
                        }
                        Err(e) => {
                            res = Err(e);
                            break;
                        }
                    },
                    rbd_streams::DiffRecord::Zero { offset, len } => {
                        d.exts.push($crate::common::Ext::Zero(offset, len))
                    }
                    rbd_streams::DiffRecord::End => ended = true,
                },
            }
        }
        res.map(|()| {
            assert!(ended, "reader returned None without End");
            d
        })
    }};
}

/// Parses a whole stand-alone diff with the public reader.
pub fn read_diff(bytes: &[u8]) -> rbd_streams::Result<(DiffFormat, Diff)> {
    let mut r = DiffReader::new(bytes)?;
    let fmt = r.format();
    let d = read_loop!(r)?;
    Ok((fmt, d))
}

/// Applies a parsed diff to an in-memory image like `rbd import-diff`.
pub fn apply(image: &mut Vec<u8>, d: &Diff) {
    image.resize(d.size as usize, 0);
    for e in &d.exts {
        match e {
            Ext::Data(o, data) => {
                image[*o as usize..*o as usize + data.len()].copy_from_slice(data)
            }
            Ext::Zero(o, l) => image[*o as usize..(*o + *l) as usize].fill(0),
        }
    }
}

pub fn kind_of<T: std::fmt::Debug>(r: rbd_streams::Result<T>) -> StreamErrorKind {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => {
            assert!(!e.message.is_empty(), "error without message");
            // Display must carry both the kind and the message.
            let shown = e.to_string();
            assert!(shown.contains(&e.message), "{shown}");
            e.kind
        }
    }
}
