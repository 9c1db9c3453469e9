//! export / import / export-diff / import-diff / merge-diff.
//!
//! Exports read the engine asynchronously and feed the synchronous codecs.
//! Imports validate the whole input
//! first (stdin is spooled to a temporary file) and refuse a bad stream
//! before the image is touched; `import-diff` then applies under a
//! temporary snapshot and rolls back to it if applying fails.

use crate::cli::PathArg;
use crate::create_opts::CreateOpts;
use crate::ctx::{finish, Ctx};
use crate::error::{CliError, CliResult};
use crate::spec::ImageSpec;
use crate::util::Progress;
use bytes::Bytes;
use rbd_streams::{
    DiffFormat, DiffReader, DiffRecord, DiffWriter, EmbeddedDiff, ImageExportReader, ProtectionLen,
};
use row_layer::{CreateOptions, DiffExtent, Image};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

/// Largest single engine read or write issued by exports and imports.
const CHUNK: u64 = 4 << 20;
/// Writes in flight while applying a diff.
const APPLY_DEPTH: usize = 8;
/// Test hook: make `import-diff` fail after this many applied extents.
pub const FAIL_AFTER_ENV: &str = "RBD_ROW_TEST_FAIL_IMPORT_AFTER";

/// Coarsens extents to whole objects (clipped to `size`); an object exists
/// if any of its changed extents does.
pub fn whole_object(ext: &[DiffExtent], object_size: u64, size: u64) -> Vec<DiffExtent> {
    let os = object_size.max(1);
    let mut out: Vec<DiffExtent> = Vec::new();
    for e in ext {
        if e.length == 0 {
            continue;
        }
        let first = e.offset / os;
        let last = (e.offset + e.length - 1) / os;
        for o in first..=last {
            let offset = o * os;
            let length = os.min(size.saturating_sub(offset));
            if length == 0 {
                continue;
            }
            match out.last_mut() {
                Some(l) if l.offset == offset => l.exists |= e.exists,
                _ => out.push(DiffExtent {
                    offset,
                    length,
                    exists: e.exists,
                }),
            }
        }
    }
    out
}

/// Splits `[off, off+len)` at object boundaries and at most [`CHUNK`] bytes.
fn pieces(off: u64, len: u64, object_size: u64) -> Vec<(u64, u64)> {
    let step = object_size.clamp(1, CHUNK);
    let mut v = Vec::new();
    let (mut o, end) = (off, off + len);
    while o < end {
        let next = ((o / step) + 1) * step;
        let n = next.min(end) - o;
        v.push((o, n));
        o += n;
    }
    v
}

/// Writes the extents `ext` of `img` into `dw`, reading their data
/// (extents that read back as zeros become `'z'`, as in `rbd`).
async fn emit<W: Write>(
    img: &Image,
    ext: &[DiffExtent],
    whole: bool,
    dw: &mut DiffWriter<W>,
    ctx: &str,
    progress: &mut dyn FnMut(u64),
) -> CliResult<()> {
    let os = img.info().object_size;
    for e in ext {
        if !e.exists && !whole {
            dw.zero(e.offset, e.length)
                .map_err(|x| CliError::stream(ctx, &x))?;
            progress(e.length);
            continue;
        }
        for (o, n) in pieces(e.offset, e.length, os) {
            let data = img.read(o, n).await.map_err(|x| CliError::row(ctx, &x))?;
            if data.len() as u64 != n {
                return Err(CliError::msg(
                    5,
                    format!("{ctx}: short read at {o}: {} of {n} bytes", data.len()),
                ));
            }
            dw.extent(o, &data).map_err(|x| CliError::stream(ctx, &x))?;
            progress(n);
        }
    }
    Ok(())
}

/// Opens the output: stdout, or a new file. Like rbd (`O_CREAT | O_EXCL`),
/// an existing file is refused (EEXIST) and left alone.
fn open_out(path: &PathArg, ctx: &str) -> CliResult<(Box<dyn Write>, Option<File>)> {
    match path {
        PathArg::Std => Ok((
            Box::new(BufWriter::with_capacity(1 << 20, std::io::stdout())),
            None,
        )),
        PathArg::File(p) => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p)
                .map_err(|e| {
                    let mut err = CliError::io(ctx, &e);
                    err.detail = Some(format!("error creating {}: {e}", p.display()));
                    err
                })?;
            let f2 = f
                .try_clone()
                .map_err(|e| CliError::io("rbd-row: error opening output", &e))?;
            Ok((Box::new(BufWriter::with_capacity(1 << 20, f)), Some(f2)))
        }
    }
}

/// Removes an output file this command created (never one it refused).
fn remove_partial(path: &PathArg) {
    if let PathArg::File(p) = path {
        let _ = std::fs::remove_file(p);
    }
}

fn flush_err(ctx: &str, e: std::io::Error) -> CliError {
    CliError::io(ctx, &e)
}

/// Refuses a diff from `from` to the snapshot `end` when `from` is newer,
/// as librbd's diff_iterate does (EINVAL): rbd compares snapshot ids; a
/// bookmark is placed by the epoch its snapshot sealed. The head (no `end`)
/// is newer than everything; `from == end` is an empty diff.
pub(crate) fn check_from_not_newer(
    img: &Image,
    end: Option<&str>,
    from: Option<&str>,
    context: &str,
) -> CliResult<()> {
    let (Some(end), Some(from)) = (end, from) else {
        return Ok(());
    };
    let h = img.header();
    let Some(e) = h.snap(end) else {
        return Ok(());
    };
    let newer = match h.snap(from) {
        Some(f) => f.id.0 > e.id.0,
        None => match h.bookmarks.iter().find(|b| b.name == from) {
            Some(b) => b.epoch > e.epoch,
            None => return Ok(()), // the diff reports the missing name
        },
    };
    if newer {
        let mut err = CliError::errno(context, 22);
        err.detail = Some(format!(
            "from snapshot '{from}' is newer than the end snapshot '{end}'"
        ));
        return Err(err);
    }
    Ok(())
}

/// `export-diff`: an `rbd diff v1` stream of `spec` (head or snapshot) since
/// `from` (or since creation).
pub(crate) async fn export_diff(
    ctx: &Ctx,
    spec: &ImageSpec,
    from: Option<&str>,
    whole: bool,
    path: PathArg,
    _out: &mut dyn Write,
) -> CliResult<()> {
    const C: &str = "rbd-row: export-diff error";
    let (_, img) = ctx.open_view(spec).await?;
    let r = async {
        check_from_not_newer(&img, spec.snap.as_deref(), from, C)?;
        let ext = img.diff(from).map_err(|e| CliError::row(C, &e))?;
        let ext = if whole {
            whole_object(&ext, img.info().object_size, img.size())
        } else {
            ext
        };
        let total: u64 = ext.iter().map(|e| e.length).sum();
        let p = Progress::new("Exporting image", total, ctx.progress);
        let (w, _) = open_out(&path, C)?;
        let mut done = 0u64;
        let res = async {
            let mut dw = DiffWriter::new(w, DiffFormat::V1).map_err(|e| CliError::stream(C, &e))?;
            let meta = (|| {
                if let Some(f) = from {
                    dw.from_snap(f)?;
                }
                if let Some(t) = &spec.snap {
                    dw.to_snap(t)?;
                }
                dw.size(img.size())
            })();
            meta.map_err(|e| CliError::stream(C, &e))?;
            emit(&img, &ext, whole, &mut dw, C, &mut |n| {
                done += n;
                p.set(done);
            })
            .await?;
            dw.finish()
                .map_err(|e| CliError::stream(C, &e))?
                .flush()
                .map_err(|e| flush_err(C, e))
        }
        .await;
        p.finish(res.is_ok());
        if res.is_err() {
            remove_partial(&path);
        }
        res
    }
    .await;
    finish(img, r).await
}

/// Header of an `rbd image v2` stream, as `rbd export --export-format 2`
/// writes it ('O' and 'M' records, then the diffs banner and count).
fn image_v2_header(order: u64, meta: &[(String, String)], count: u64) -> CliResult<Vec<u8>> {
    use rbd_streams::tag;
    let mut b = rbd_streams::IMAGE_BANNER_V2.to_vec();
    b.push(tag::EXPORT_ORDER);
    b.extend_from_slice(&8u64.to_le_bytes());
    b.extend_from_slice(&order.to_le_bytes());
    for (k, v) in meta {
        let len = k.len() as u64 + v.len() as u64 + 8;
        if len > rbd_streams::MAX_META_RECORD_LEN {
            return Err(CliError::msg(
                27,
                format!("rbd-row: image-meta pair {k} is too large to export"),
            ));
        }
        b.push(tag::EXPORT_META);
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&(k.len() as u32).to_le_bytes());
        b.extend_from_slice(k.as_bytes());
        b.extend_from_slice(&(v.len() as u32).to_le_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    b.push(tag::EXPORT_END);
    b.extend_from_slice(rbd_streams::IMAGE_DIFFS_BANNER_V2);
    b.extend_from_slice(&count.to_le_bytes());
    Ok(b)
}

/// `export`: format 1 (raw) or 2 (`rbd image v2` with every snapshot).
pub(crate) async fn export(
    ctx: &Ctx,
    spec: &ImageSpec,
    path: PathArg,
    format: u32,
    sparse_size: u64,
    _out: &mut dyn Write,
) -> CliResult<()> {
    if format != 1 && format != 2 {
        return Err(CliError::usage("rbd-row: --export-format must be 1 or 2"));
    }
    let (store, img) = ctx.open_view(spec).await?;
    let r = match open_out(&path, "rbd-row: export error") {
        Err(e) => Err(e),
        Ok((w, file)) => {
            let r = if format == 1 {
                export_raw(ctx, &img, w, file, sparse_size).await
            } else {
                export_v2(ctx, &store, spec, &img, w).await
            };
            if r.is_err() {
                remove_partial(&path);
            }
            r
        }
    };
    finish(img, r).await
}

/// Raw export. To stdout every byte is written; to a file, like `rbd
/// export` (which seeks over all-zero reads and sets the length with
/// `ftruncate`) but at `sparse_size` granularity: all-zero blocks of that
/// size, aligned to the image, are left as holes (0: write every byte).
async fn export_raw(
    ctx: &Ctx,
    img: &Image,
    mut w: Box<dyn Write>,
    file: Option<File>,
    sparse_size: u64,
) -> CliResult<()> {
    const C: &str = "rbd-row: export error";
    let size = img.size();
    let p = Progress::new("Exporting image", size, ctx.progress);
    // Reads are whole multiples of the sparse size, so holes stay aligned.
    let step = match sparse_size {
        0 => CHUNK,
        s if s >= CHUNK => s,
        s => CHUNK / s * s,
    };
    let res = async {
        let mut off = 0;
        while off < size {
            let n = step.min(size - off);
            let data = img.read(off, n).await.map_err(|e| CliError::row(C, &e))?;
            if data.len() as u64 != n {
                return Err(CliError::msg(
                    5,
                    format!("{C}: short read at {off}: {} of {n} bytes", data.len()),
                ));
            }
            match &file {
                None => w.write_all(&data).map_err(|e| flush_err(C, e))?,
                Some(f) => {
                    use std::os::unix::fs::FileExt;
                    let gran = if sparse_size == 0 {
                        data.len()
                    } else {
                        sparse_size as usize
                    };
                    for (o, len, zero) in rbd_streams::ZeroDetect::runs(&data, gran) {
                        if !zero || sparse_size == 0 {
                            f.write_all_at(&data[o..o + len], off + o as u64)
                                .map_err(|e| flush_err(C, e))?;
                        }
                    }
                }
            }
            off += n;
            p.set(off);
        }
        w.flush().map_err(|e| flush_err(C, e))?;
        if let Some(f) = &file {
            f.set_len(size).map_err(|e| flush_err(C, e))?;
        }
        Ok(())
    }
    .await;
    p.finish(res.is_ok());
    res
}

async fn export_v2(
    ctx: &Ctx,
    store: &row_layer::Store,
    spec: &ImageSpec,
    img: &Image,
    mut w: Box<dyn Write>,
) -> CliResult<()> {
    const C: &str = "rbd-row: export error";
    // One v2 diff per snapshot older than the view, then the view itself.
    let header = img.header();
    let mut snaps: Vec<SnapEntry> = Vec::new();
    for s in &header.snapshots {
        if spec.snap.as_deref() == Some(s.name.as_str()) {
            break;
        }
        snaps.push((s.name.clone(), s.size, s.protected));
    }
    let meta = store
        .meta_list(&spec.image)
        .await
        .map_err(|e| CliError::row(C, &e))?;
    let mut views = Vec::new();
    for (name, _, _) in &snaps {
        views.push(
            store
                .open_snapshot(&spec.image, name)
                .await
                .map_err(|e| CliError::row(C, &e))?,
        );
    }
    let order = u64::from(63 - img.info().object_size.max(1).leading_zeros());
    w.write_all(&image_v2_header(order, &meta, snaps.len() as u64 + 1)?)
        .map_err(|e| flush_err(C, e))?;
    let total: u64 = snaps.iter().map(|s| s.1).sum::<u64>() + img.size();
    let p = Progress::new("Exporting image", total, ctx.progress);
    let res = async {
        let mut done = 0u64;
        let mut prev: Option<String> = None;
        let mut all: Vec<(&Image, Option<&SnapEntry>)> = views
            .iter()
            .zip(snaps.iter())
            .map(|(v, s)| (v, Some(s)))
            .collect();
        all.push((img, None));
        for (view, snap) in all {
            let ext = view
                .diff(prev.as_deref())
                .map_err(|e| CliError::row(C, &e))?;
            let mut dw =
                DiffWriter::new(&mut w, DiffFormat::V2).map_err(|e| CliError::stream(C, &e))?;
            dw.set_protection_len(ProtectionLen::Pacific);
            let meta = (|| {
                if let Some(f) = &prev {
                    dw.from_snap(f)?;
                }
                if let Some((name, _, prot)) = snap {
                    dw.to_snap(name)?;
                    dw.protection(*prot)?;
                }
                dw.size(view.size())
            })();
            meta.map_err(|e| CliError::stream(C, &e))?;
            emit(view, &ext, false, &mut dw, C, &mut |_| {}).await?;
            dw.finish().map_err(|e| CliError::stream(C, &e))?;
            done += view.size();
            p.set(done);
            prev = snap.map(|s| s.0.clone());
        }
        w.flush().map_err(|e| flush_err(C, e))
    }
    .await;
    p.finish(res.is_ok());
    res
}

/// (name, size, protected) of a snapshot being exported.
type SnapEntry = (String, u64, bool);

/// An input file, spooled from stdin when needed (kept until dropped).
struct Spooled {
    path: PathBuf,
    _tmp: Option<tempfile::TempPath>,
}

impl Spooled {
    fn open(&self) -> CliResult<File> {
        File::open(&self.path).map_err(|e| {
            CliError::io(
                format!("rbd-row: error opening {}", self.path.display()),
                &e,
            )
        })
    }
}

fn spool(path: &PathArg) -> CliResult<Spooled> {
    match path {
        PathArg::File(p) => {
            let md = std::fs::metadata(p)
                .map_err(|e| CliError::io(format!("rbd-row: error opening {}", p.display()), &e))?;
            if md.is_dir() {
                return Err(CliError::errno(
                    format!("rbd-row: error opening {}", p.display()),
                    21,
                ));
            }
            Ok(Spooled {
                path: p.clone(),
                _tmp: None,
            })
        }
        PathArg::Std => {
            let mut tmp = tempfile::NamedTempFile::new()
                .map_err(|e| CliError::io("rbd-row: creating a temporary file", &e))?;
            std::io::copy(&mut std::io::stdin().lock(), tmp.as_file_mut())
                .map_err(|e| CliError::io("rbd-row: reading stdin", &e))?;
            tmp.as_file_mut()
                .flush()
                .map_err(|e| CliError::io("rbd-row: spooling stdin", &e))?;
            let tp = tmp.into_temp_path();
            Ok(Spooled {
                path: tp.to_path_buf(),
                _tmp: Some(tp),
            })
        }
    }
}

/// A source of diff records (a stand-alone diff or one embedded in an export).
trait Records {
    fn next(&mut self) -> rbd_streams::Result<Option<DiffRecord>>;
    fn read_exact(&mut self, buf: &mut [u8]) -> rbd_streams::Result<()>;
}

impl<R: Read> Records for DiffReader<R> {
    fn next(&mut self) -> rbd_streams::Result<Option<DiffRecord>> {
        self.next_record()
    }
    fn read_exact(&mut self, buf: &mut [u8]) -> rbd_streams::Result<()> {
        self.read_data_exact(buf)
    }
}

impl<R: Read> Records for EmbeddedDiff<'_, R> {
    fn next(&mut self) -> rbd_streams::Result<Option<DiffRecord>> {
        self.next_record()
    }
    fn read_exact(&mut self, buf: &mut [u8]) -> rbd_streams::Result<()> {
        self.read_data_exact(buf)
    }
}

/// What an applied diff ends at.
#[derive(Default)]
struct Applied {
    to_snap: Option<String>,
    protected: bool,
}

async fn drain(
    set: &mut tokio::task::JoinSet<row_layer::Result<()>>,
    keep: usize,
    ctx: &str,
) -> CliResult<()> {
    while set.len() > keep {
        match set.join_next().await {
            Some(Ok(Ok(()))) | None => {}
            Some(Ok(Err(e))) => return Err(CliError::row(ctx, &e)),
            Some(Err(e)) => return Err(CliError::msg(5, format!("{ctx}: {e}"))),
        }
    }
    Ok(())
}

/// Applies records to `img`: resize on `'s'`, writes, zeroes.
async fn apply(
    img: &Image,
    src: &mut dyn Records,
    ctx: &str,
    fail_after: Option<u64>,
    p: &Progress,
    done: &mut u64,
) -> CliResult<Applied> {
    let mut set = tokio::task::JoinSet::new();
    let mut a = Applied::default();
    let mut applied = 0u64;
    let r: CliResult<()> = async {
        loop {
            let rec = src.next().map_err(|e| CliError::stream(ctx, &e))?;
            match rec {
                None | Some(DiffRecord::End) => break,
                Some(DiffRecord::FromSnap(_)) => {}
                Some(DiffRecord::ToSnap(t)) => a.to_snap = Some(t),
                Some(DiffRecord::Protected(b)) => a.protected = b,
                Some(DiffRecord::Size(s)) => {
                    drain(&mut set, 0, ctx).await?;
                    if s != img.size() {
                        img.resize(s).await.map_err(|e| CliError::row(ctx, &e))?;
                    }
                }
                Some(DiffRecord::Data { offset, len }) | Some(DiffRecord::Zero { offset, len })
                    if fail_after.is_some_and(|f| applied >= f) =>
                {
                    let _ = (offset, len);
                    return Err(CliError::errno(format!("{ctx} (injected failure)"), 5));
                }
                Some(DiffRecord::Data { offset, len }) => {
                    for (o, n) in pieces(offset, len, CHUNK) {
                        let mut buf = vec![0u8; n as usize];
                        src.read_exact(&mut buf)
                            .map_err(|e| CliError::stream(ctx, &e))?;
                        let i = img.clone();
                        set.spawn(async move { i.write(o, Bytes::from(buf)).await });
                        drain(&mut set, APPLY_DEPTH, ctx).await?;
                        *done += n;
                        p.set(*done);
                    }
                    applied += 1;
                }
                Some(DiffRecord::Zero { offset, len }) => {
                    let i = img.clone();
                    set.spawn(async move { i.write_zeroes(offset, len).await });
                    drain(&mut set, APPLY_DEPTH, ctx).await?;
                    *done += len;
                    p.set(*done);
                    applied += 1;
                }
            }
        }
        drain(&mut set, 0, ctx).await?;
        img.flush().await.map_err(|e| CliError::row(ctx, &e))
    }
    .await;
    // Never leave writes running behind an error.
    while set.join_next().await.is_some() {}
    r.map(|()| a)
}

fn fail_after() -> Option<u64> {
    std::env::var(FAIL_AFTER_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
}

/// `import-diff`: validates the whole stream, checks it against the image,
/// applies it under a temporary snapshot (rolled back on failure) and
/// creates the to-snapshot.
pub(crate) async fn import_diff(ctx: &Ctx, spec: &ImageSpec, path: PathArg) -> CliResult<()> {
    const C: &str = "rbd-row: import-diff failed";
    let input = spool(&path)?;
    let sum = rbd_streams::validate_diff(input.open()?).map_err(|e| CliError::stream(C, &e))?;
    let (_, img) = ctx.open_head(spec).await?;
    let r = async {
        let size = sum.size.ok_or_else(|| CliError::errno(C, 22))?;
        let hdr = img.header();
        if let Some(f) = &sum.from_snap {
            if hdr.snap(f).is_none() {
                return Err(CliError::msg(
                    2,
                    format!("rbd-row: start snapshot '{f}' does not exist in the image, aborting"),
                ));
            }
        }
        if let Some(t) = &sum.to_snap {
            if hdr.snap(t).is_some() {
                return Err(CliError::msg(
                    17,
                    format!("rbd-row: end snapshot '{t}' already exists, aborting"),
                ));
            }
            row_layer::layout::validate_name("snapshot", t).map_err(|e| CliError::row(C, &e))?;
        }
        let _ = size;
        let guard = format!("rbd-row-import-diff-{:016x}", rand::random::<u64>());
        img.snap_create(&guard)
            .await
            .map_err(|e| CliError::row(C, &e))?;
        let p = Progress::new(
            "Importing image diff",
            sum.data_bytes + sum.zero_bytes,
            ctx.progress,
        );
        let mut done = 0;
        let applied = async {
            let mut rd = DiffReader::new(BufReader::with_capacity(1 << 20, input.open()?))
                .map_err(|e| CliError::stream(C, &e))?;
            let a = apply(&img, &mut rd, C, fail_after(), &p, &mut done).await?;
            if let Some(t) = &a.to_snap {
                img.snap_create(t).await.map_err(|e| CliError::row(C, &e))?;
            }
            Ok(())
        }
        .await;
        p.finish(applied.is_ok());
        if let Err(e) = applied {
            if let Err(re) = img.snap_rollback(&guard).await {
                eprintln!("rbd-row: rolling back to {guard} failed: {re}; the snapshot is kept");
                return Err(e);
            }
            let _ = img.snap_remove(&guard).await;
            return Err(e);
        }
        img.snap_remove(&guard)
            .await
            .map_err(|e| CliError::row(C, &e))
    }
    .await;
    finish(img, r).await
}

/// `import`: raw bytes (format 1) or an `rbd image v2` export (format 2)
/// into a new image.
pub(crate) async fn import(
    ctx: &Ctx,
    spec: &ImageSpec,
    path: PathArg,
    format: u32,
    co: &CreateOpts,
    sparse_size: u64,
) -> CliResult<()> {
    const C: &str = "rbd-row: import failed";
    if format != 1 && format != 2 {
        return Err(CliError::usage("rbd-row: --export-format must be 1 or 2"));
    }
    let input = spool(&path)?;
    let mut opts = CreateOptions::with_size(0);
    let summary = if format == 2 {
        let s = rbd_streams::validate_image_export(input.open()?)
            .map_err(|e| CliError::stream(C, &e))?;
        if let Some(o) = s.header.order {
            if (12..=25).contains(&o) {
                opts.object_size = 1 << o;
            }
        }
        opts.size = s.diffs.first().and_then(|d| d.size).unwrap_or(0);
        Some(s)
    } else {
        opts.size = input
            .open()?
            .metadata()
            .map_err(|e| CliError::io(C, &e))?
            .len();
        None
    };
    // Like rbd: options given on the command line win over the export's.
    if let Some(o) = co.object_size {
        opts.object_size = o;
    }
    if let Some(g) = co.grain_size {
        opts.grain_size = g;
    }
    co.check_striping(opts.object_size, C)?;
    let store = ctx.store(spec, true).await?;
    store
        .create(&spec.image, opts)
        .await
        .map_err(|e| CliError::row("rbd-row: image creation failed", &e))?;
    let (_, img) = match ctx.open_head(spec).await {
        Ok(x) => x,
        Err(e) => {
            let _ = store.remove(&spec.image).await;
            return Err(e);
        }
    };
    let r = async {
        if let Some(s) = &summary {
            for (k, v) in &s.header.metadata {
                let v = std::str::from_utf8(v).map_err(|_| {
                    CliError::msg(22, format!("{C}: image-meta value of {k} is not UTF-8"))
                })?;
                store
                    .meta_set(&spec.image, k, v)
                    .await
                    .map_err(|e| CliError::row(C, &e))?;
            }
            let total: u64 = s.diffs.iter().map(|d| d.data_bytes + d.zero_bytes).sum();
            let p = Progress::new("Importing image", total, ctx.progress);
            let mut done = 0;
            let res = async {
                let mut rd =
                    ImageExportReader::new(BufReader::with_capacity(1 << 20, input.open()?))
                        .map_err(|e| CliError::stream(C, &e))?;
                while let Some(mut d) = rd.next_diff().map_err(|e| CliError::stream(C, &e))? {
                    let a = apply(&img, &mut d, C, None, &p, &mut done).await?;
                    if let Some(t) = &a.to_snap {
                        img.snap_create(t).await.map_err(|e| CliError::row(C, &e))?;
                        if a.protected {
                            img.snap_set_protected(t, true)
                                .await
                                .map_err(|e| CliError::row(C, &e))?;
                        }
                    }
                }
                Ok(())
            }
            .await;
            p.finish(res.is_ok());
            res
        } else {
            let size = opts.size;
            let p = Progress::new("Importing image", size, ctx.progress);
            let mut f = BufReader::with_capacity(1 << 20, input.open()?);
            let mut set = tokio::task::JoinSet::new();
            let mut off = 0u64;
            let res = async {
                while off < size {
                    let n = CHUNK.min(size - off);
                    let mut buf = vec![0u8; n as usize];
                    f.read_exact(&mut buf).map_err(|e| CliError::io(C, &e))?;
                    let buf = Bytes::from(buf);
                    let gran = if sparse_size == 0 {
                        buf.len()
                    } else {
                        sparse_size as usize
                    };
                    for (o, len, zero) in rbd_streams::ZeroDetect::runs(&buf, gran) {
                        let zero = zero && sparse_size != 0;
                        if !zero {
                            let i = img.clone();
                            let data = buf.slice(o..o + len);
                            let at = off + o as u64;
                            set.spawn(async move { i.write(at, data).await });
                            drain(&mut set, APPLY_DEPTH, C).await?;
                        }
                    }
                    off += n;
                    p.set(off);
                }
                drain(&mut set, 0, C).await?;
                img.flush().await.map_err(|e| CliError::row(C, &e))
            }
            .await;
            while set.join_next().await.is_some() {}
            p.finish(res.is_ok());
            res
        }
    }
    .await;
    if r.is_err() {
        // Like rbd: a failed import leaves no image behind.
        for s in img.snap_list().iter().rev() {
            let _ = img.snap_set_protected(&s.name, false).await;
            let _ = img.snap_remove(&s.name).await;
        }
        let _ = img.clone().close().await;
        let _ = store.remove(&spec.image).await;
        return r;
    }
    finish(img, r).await
}

/// `merge-diff FIRST SECOND OUT`.
pub(crate) fn merge_diff(
    ctx: &Ctx,
    first: PathArg,
    second: PathArg,
    out_path: PathArg,
    _out: &mut dyn Write,
) -> CliResult<()> {
    const C: &str = "rbd-row: merge-diff failed";
    if second == PathArg::Std {
        return Err(CliError::usage(
            "rbd-row: the second diff cannot be read from stdin",
        ));
    }
    let a = spool(&first)?;
    let b = spool(&second)?;
    let (fa, fb) = (a.open()?, b.open()?);
    let (w, _) = open_out(&out_path, C)?;
    let p = Progress::new("Merging image diff", 1, ctx.progress);
    let r = rbd_streams::merge_diffs(
        BufReader::with_capacity(1 << 20, fa),
        BufReader::with_capacity(1 << 20, fb),
        w,
    );
    p.finish(r.is_ok());
    r.map(|_| ()).map_err(|e| {
        remove_partial(&out_path);
        CliError::stream(C, &e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarsen() {
        let e = [
            DiffExtent {
                offset: 10,
                length: 5,
                exists: false,
            },
            DiffExtent {
                offset: 100,
                length: 30,
                exists: true,
            },
            DiffExtent {
                offset: 250,
                length: 10,
                exists: false,
            },
        ];
        let w = whole_object(&e, 64, 255);
        let got: Vec<(u64, u64, bool)> = w.iter().map(|x| (x.offset, x.length, x.exists)).collect();
        assert_eq!(
            got,
            vec![
                (0, 64, false),
                (64, 64, true),
                (128, 64, true),
                (192, 63, false)
            ]
        );
        assert_eq!(pieces(3, 10, 4), vec![(3, 1), (4, 4), (8, 4), (12, 1)]);
    }
}
