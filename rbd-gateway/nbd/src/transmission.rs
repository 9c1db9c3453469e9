//! Transmission phase: a reader loop parses requests and spawns one task per
//! request (bounded by a semaphore); a single writer task serializes the
//! replies, which may go out in any order.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, warn};

use crate::backend::{ExportBackend, ExportError, Extent, NbdErrno, ZeroFlags};
use crate::config::{wait_true, BoxStream, ServerConfig};
use crate::handshake::{truncate_utf8, Negotiated};
use crate::metrics::{ExportMetrics, Op};
use crate::proto::*;

/// One reply message (all chunks of one request), written contiguously.
type Reply = Vec<Bytes>;

/// Holes shorter than this inside a larger read are sent as data (saves chunks).
const MIN_HOLE_CHUNK: u32 = 4096;

#[derive(Default)]
pub(crate) struct ConnStats {
    pub(crate) requests: u64,
}

struct Ctx {
    backend: Arc<dyn ExportBackend>,
    structured: bool,
    contexts: Vec<(u32, String)>,
    size: u64,
    read_only: bool,
    max_payload: u32,
    sparse_reads: bool,
    metrics: Arc<ExportMetrics>,
}

#[derive(Clone, Copy, Debug)]
struct Request {
    flags: u16,
    typ: u16,
    handle: u64,
    offset: u64,
    len: u32,
}

impl Request {
    fn parse(hdr: &[u8; REQUEST_HEADER_LEN]) -> (u32, Request) {
        let mut h = &hdr[..];
        let magic = h.get_u32();
        let req = Request {
            flags: h.get_u16(),
            typ: h.get_u16(),
            handle: h.get_u64(),
            offset: h.get_u64(),
            len: h.get_u32(),
        };
        (magic, req)
    }
}

pub(crate) async fn transmission(
    stream: BoxStream,
    neg: Negotiated,
    cfg: &ServerConfig,
    metrics: Arc<ExportMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<ConnStats> {
    let backend = neg.backend;
    let sparse_reads = cfg.sparse_reads
        && neg.structured
        && backend
            .meta_contexts(BASE_ALLOCATION)
            .iter()
            .any(|c| c == BASE_ALLOCATION);
    let ctx = Arc::new(Ctx {
        size: backend.size(),
        read_only: backend.read_only(),
        backend,
        structured: neg.structured,
        contexts: neg.contexts,
        max_payload: cfg.max_payload,
        sparse_reads,
        metrics,
    });

    let (rd, wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(128 * 1024, rd);
    let in_flight = cfg.max_in_flight.max(1);
    let (tx, rx) = mpsc::channel::<Reply>(in_flight);
    let mut writer = AbortOnDrop(tokio::spawn(writer_loop(wr, rx)));
    let slots = Arc::new(Semaphore::new(in_flight));
    let byte_budget = cfg.max_in_flight_bytes.max(1);
    let bytes = Arc::new(Semaphore::new(byte_budget as usize));
    // Shared by every connection: waited for after this connection's own
    // budget, before a write's payload is read or a read is started.
    let (global_bytes, global_max) = cfg.limits.byte_budget();
    let mut stats = ConnStats::default();

    let result: io::Result<()> = loop {
        let mut hdr = [0u8; REQUEST_HEADER_LEN];
        let read = tokio::select! {
            biased;
            _ = wait_true(&mut shutdown) => break Ok(()),
            r = rd.read_exact(&mut hdr) => r,
        };
        if let Err(e) = read {
            break if e.kind() == io::ErrorKind::UnexpectedEof {
                Err(io::Error::new(
                    e.kind(),
                    "client closed the connection without NBD_CMD_DISC",
                ))
            } else {
                Err(e)
            };
        }
        let (magic, req) = Request::parse(&hdr);
        if magic != REQUEST_MAGIC {
            break Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad request magic {magic:#x}"),
            ));
        }
        stats.requests += 1;
        if req.typ == CMD_DISC {
            debug!("NBD_CMD_DISC");
            break Ok(());
        }
        // Take a slot before reading any payload: bounds memory and tasks.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break Ok(());
        };
        let cost = match req.typ {
            CMD_READ | CMD_WRITE => req.len.min(ctx.max_payload).min(byte_budget),
            _ => 0,
        };
        let Ok(bytes_permit) = bytes.clone().acquire_many_owned(cost).await else {
            break Ok(());
        };
        let global_permit = tokio::select! {
            biased;
            _ = wait_true(&mut shutdown) => break Ok(()),
            p = global_bytes.clone().acquire_many_owned(cost.min(global_max)) => match p {
                Ok(p) => p,
                Err(_) => break Ok(()),
            },
        };
        let mut payload = None;
        if req.typ == CMD_WRITE {
            if req.len > ctx.max_payload {
                if u64::from(req.len) > cfg.max_discard {
                    break Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("oversized write of {} bytes", req.len),
                    ));
                }
                // Stay in sync: swallow the payload, then fail the request.
                let n = tokio::io::copy(
                    &mut (&mut rd).take(u64::from(req.len)),
                    &mut tokio::io::sink(),
                )
                .await?;
                if n != u64::from(req.len) {
                    break Err(io::ErrorKind::UnexpectedEof.into());
                }
            } else {
                // A short read means the client went away mid-payload: the
                // write is dropped entirely, never half-applied.
                match read_payload(&mut rd, req.len).await {
                    Ok(p) => payload = Some(p),
                    Err(e) => break Err(e),
                }
            }
        }
        let ctx = ctx.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let reply = process(&ctx, req, payload).await;
            // The writer is gone only if the connection is dead.
            let _ = tx.send(reply).await;
            drop((permit, bytes_permit, global_permit));
        });
    };
    // Let every in-flight request finish and its reply go out, then close.
    drop(tx);
    match (&mut writer.0).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "reply writer failed"),
        Err(e) => warn!(error = %e, "reply writer task failed"),
    }
    result.map(|()| stats)
}

/// Aborts the writer if the connection task itself is aborted (drain
/// timeout), so a client that stopped reading cannot pin it forever.
struct AbortOnDrop(tokio::task::JoinHandle<io::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn read_payload<R: AsyncRead + Unpin>(rd: &mut R, len: u32) -> io::Result<Bytes> {
    let len = len as usize;
    let mut buf = BytesMut::with_capacity(len);
    let mut limited = rd.take(len as u64);
    while buf.len() < len {
        if limited.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "client closed the connection in the middle of a write payload",
            ));
        }
    }
    Ok(buf.freeze())
}

async fn writer_loop<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<Reply>,
) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(256 * 1024, wr);
    while let Some(msg) = rx.recv().await {
        for part in &msg {
            w.write_all(part).await?;
        }
        // Batch whatever is already queued before paying for a flush.
        while let Ok(msg) = rx.try_recv() {
            for part in &msg {
                w.write_all(part).await?;
            }
        }
        w.flush().await?;
    }
    w.shutdown().await
}

fn op_of(typ: u16) -> Op {
    match typ {
        CMD_READ => Op::Read,
        CMD_WRITE => Op::Write,
        CMD_FLUSH => Op::Flush,
        CMD_TRIM => Op::Trim,
        CMD_WRITE_ZEROES => Op::WriteZeroes,
        CMD_CACHE => Op::Cache,
        CMD_BLOCK_STATUS => Op::BlockStatus,
        _ => Op::Other,
    }
}

async fn process(ctx: &Ctx, req: Request, payload: Option<Bytes>) -> Reply {
    let op = op_of(req.typ);
    let start = Instant::now();
    ctx.metrics.inc_in_flight();
    let res = execute(ctx, &req, payload).await;
    ctx.metrics.dec_in_flight();
    let bytes = if op == Op::Flush {
        0
    } else {
        u64::from(req.len)
    };
    ctx.metrics.record(op, bytes, res.is_ok(), start.elapsed());
    match res {
        Ok(r) => r,
        Err(e) => {
            debug!(handle = req.handle, typ = req.typ, offset = req.offset, len = req.len,
                error = %e, "request failed");
            error_reply(ctx, &req, &e)
        }
    }
}

fn validate(ctx: &Ctx, req: &Request) -> Result<(), ExportError> {
    const KNOWN: u16 =
        CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_DF | CMD_FLAG_REQ_ONE | CMD_FLAG_FAST_ZERO;
    let allowed = CMD_FLAG_FUA
        | match req.typ {
            CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM | CMD_CACHE => 0,
            CMD_WRITE_ZEROES => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
            t => return Err(ExportError::invalid(format!("unknown command {t}"))),
        }
        | if req.typ == CMD_READ && ctx.structured {
            CMD_FLAG_DF
        } else {
            0
        };
    if req.flags & !KNOWN != 0 {
        return Err(ExportError::invalid(format!(
            "unknown command flags {:#x}",
            req.flags
        )));
    }
    if req.flags & !allowed != 0 {
        return Err(ExportError::invalid(format!(
            "command flags {:#x} not valid for command {} in this session",
            req.flags, req.typ
        )));
    }
    if req.typ == CMD_BLOCK_STATUS && ctx.contexts.is_empty() {
        return Err(ExportError::invalid("no metadata context negotiated"));
    }
    let writes = matches!(req.typ, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && ctx.read_only {
        return Err(ExportError::perm("export is read-only"));
    }
    if matches!(req.typ, CMD_READ | CMD_WRITE) && req.len > ctx.max_payload {
        return Err(ExportError::overflow(format!(
            "request length {} exceeds the maximum payload {}",
            req.len, ctx.max_payload
        )));
    }
    if req.typ != CMD_FLUSH {
        let end = req.offset.checked_add(u64::from(req.len));
        if end.is_none_or(|e| e > ctx.size) {
            let msg = format!(
                "request [{}, +{}) beyond the end of the export ({} bytes)",
                req.offset, req.len, ctx.size
            );
            return Err(if matches!(req.typ, CMD_WRITE | CMD_WRITE_ZEROES) {
                ExportError::no_space(msg)
            } else {
                ExportError::invalid(msg)
            });
        }
    }
    if req.typ == CMD_BLOCK_STATUS && req.len == 0 {
        return Err(ExportError::invalid("zero-length block status request"));
    }
    Ok(())
}

async fn execute(ctx: &Ctx, req: &Request, payload: Option<Bytes>) -> Result<Reply, ExportError> {
    validate(ctx, req)?;
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let b = &*ctx.backend;
    match req.typ {
        CMD_READ => {
            if ctx.structured {
                structured_read(ctx, req).await
            } else {
                let data = if req.len == 0 {
                    Bytes::new()
                } else {
                    read_exact(b, req.offset, req.len).await?
                };
                Ok(vec![simple_reply(0, req.handle), data])
            }
        }
        CMD_WRITE => {
            let data = payload.ok_or_else(|| ExportError::io("missing write payload"))?;
            if !data.is_empty() {
                b.write(req.offset, data, fua).await?;
            }
            Ok(vec![simple_reply(0, req.handle)])
        }
        CMD_FLUSH => {
            b.flush().await?;
            Ok(vec![simple_reply(0, req.handle)])
        }
        CMD_TRIM => {
            if req.len > 0 {
                b.trim(req.offset, req.len, fua).await?;
            }
            Ok(vec![simple_reply(0, req.handle)])
        }
        CMD_WRITE_ZEROES => {
            if req.len > 0 {
                let flags = ZeroFlags {
                    may_unmap: req.flags & CMD_FLAG_NO_HOLE == 0,
                    fast_only: req.flags & CMD_FLAG_FAST_ZERO != 0,
                    fua,
                };
                b.write_zeroes(req.offset, req.len, flags).await?;
            }
            Ok(vec![simple_reply(0, req.handle)])
        }
        CMD_CACHE => {
            if req.len > 0 {
                b.cache(req.offset, req.len).await?;
            }
            Ok(vec![simple_reply(0, req.handle)])
        }
        CMD_BLOCK_STATUS => {
            let req_one = req.flags & CMD_FLAG_REQ_ONE != 0;
            let mut chunks = Vec::with_capacity(ctx.contexts.len());
            for (i, (id, name)) in ctx.contexts.iter().enumerate() {
                let ext = b.block_status(name, req.offset, req.len).await?;
                let ext = normalize_extents(ext, req.len, req_one);
                let last = i + 1 == ctx.contexts.len();
                let mut c = chunk_header(
                    if last { REPLY_FLAG_DONE } else { 0 },
                    REPLY_TYPE_BLOCK_STATUS,
                    req.handle,
                    4 + 8 * ext.len(),
                );
                c.put_u32(*id);
                for e in &ext {
                    c.put_u32(e.length);
                    c.put_u32(e.flags);
                }
                chunks.push(c.freeze());
            }
            Ok(chunks)
        }
        t => Err(ExportError::invalid(format!("unknown command {t}"))),
    }
}

async fn read_exact(b: &dyn ExportBackend, off: u64, len: u32) -> Result<Bytes, ExportError> {
    let data = b.read(off, len).await?;
    if data.len() != len as usize {
        return Err(ExportError::io(format!(
            "backend returned {} bytes for a {len}-byte read",
            data.len()
        )));
    }
    Ok(data)
}

/// Clip to `len`, drop empty extents, merge equal neighbours; never empty.
fn normalize_extents(ext: Vec<Extent>, len: u32, req_one: bool) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    let mut total: u32 = 0;
    for e in ext {
        let remain = len - total;
        if remain == 0 {
            break;
        }
        if e.length == 0 {
            continue;
        }
        let l = e.length.min(remain);
        match out.last_mut() {
            Some(last) if last.flags == e.flags => last.length += l,
            _ => out.push(Extent::new(l, e.flags)),
        }
        total += l;
    }
    if out.is_empty() {
        out.push(Extent::new(len, 0));
    }
    if req_one {
        out.truncate(1);
    }
    out
}

/// (offset, len, reads-as-zero) pieces covering the whole request.
async fn read_segments(ctx: &Ctx, off: u64, len: u32) -> Vec<(u64, u32, bool)> {
    let whole = vec![(off, len, false)];
    if !ctx.sparse_reads {
        return whole;
    }
    let ext = match ctx.backend.block_status(BASE_ALLOCATION, off, len).await {
        Ok(e) => normalize_extents(e, len, false),
        Err(e) => {
            debug!(error = %e, "base:allocation lookup failed; sending data");
            return whole;
        }
    };
    let mut segs: Vec<(u64, u32, bool)> = Vec::with_capacity(ext.len() + 1);
    let mut pos = off;
    for e in &ext {
        let zero = e.flags & STATE_ZERO != 0 && (e.length >= MIN_HOLE_CHUNK || e.length == len);
        match segs.last_mut() {
            Some(last) if last.2 == zero => last.1 += e.length,
            _ => segs.push((pos, e.length, zero)),
        }
        pos += u64::from(e.length);
    }
    let covered = (pos - off) as u32;
    if covered < len {
        match segs.last_mut() {
            Some(last) if !last.2 => last.1 += len - covered,
            _ => segs.push((pos, len - covered, false)),
        }
    }
    segs
}

async fn structured_read(ctx: &Ctx, req: &Request) -> Result<Reply, ExportError> {
    let h = req.handle;
    if req.len == 0 {
        return Ok(vec![
            chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, h, 0).freeze()
        ]);
    }
    let segs = read_segments(ctx, req.offset, req.len).await;
    let b = &*ctx.backend;
    if let [(off, len, true)] = segs[..] {
        return Ok(vec![hole_chunk(REPLY_FLAG_DONE, h, off, len)]);
    }
    if segs.len() == 1 || req.flags & CMD_FLAG_DF != 0 {
        let data = read_exact(b, req.offset, req.len).await?;
        return Ok(data_chunk(REPLY_FLAG_DONE, h, req.offset, data));
    }
    // Fetch all data pieces concurrently; nothing is sent unless all succeed.
    let reads = segs
        .iter()
        .filter(|s| !s.2)
        .map(|&(off, len, _)| read_exact(b, off, len));
    let mut datas = futures::future::try_join_all(reads).await?.into_iter();
    let mut out = Vec::with_capacity(segs.len() * 2);
    for (i, &(off, len, zero)) in segs.iter().enumerate() {
        let flags = if i + 1 == segs.len() {
            REPLY_FLAG_DONE
        } else {
            0
        };
        if zero {
            out.push(hole_chunk(flags, h, off, len));
        } else {
            let data = datas
                .next()
                .ok_or_else(|| ExportError::io("internal: missing read segment"))?;
            out.extend(data_chunk(flags, h, off, data));
        }
    }
    Ok(out)
}

fn simple_reply(err: u32, handle: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(16);
    b.put_u32(SIMPLE_REPLY_MAGIC);
    b.put_u32(err);
    b.put_u64(handle);
    b.freeze()
}

fn chunk_header(flags: u16, typ: u16, handle: u64, len: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(20 + len.min(4096));
    b.put_u32(STRUCTURED_REPLY_MAGIC);
    b.put_u16(flags);
    b.put_u16(typ);
    b.put_u64(handle);
    b.put_u32(len as u32);
    b
}

fn data_chunk(flags: u16, handle: u64, off: u64, data: Bytes) -> Reply {
    let mut h = chunk_header(flags, REPLY_TYPE_OFFSET_DATA, handle, 8 + data.len());
    h.put_u64(off);
    vec![h.freeze(), data]
}

fn hole_chunk(flags: u16, handle: u64, off: u64, len: u32) -> Bytes {
    let mut h = chunk_header(flags, REPLY_TYPE_OFFSET_HOLE, handle, 12);
    h.put_u64(off);
    h.put_u32(len);
    h.freeze()
}

fn error_reply(ctx: &Ctx, req: &Request, e: &ExportError) -> Reply {
    let code = NbdErrno::from_code(e.code()).map_or(NbdErrno::Io.code(), |c| c.code());
    if ctx.structured {
        let msg = truncate_utf8(&e.message, 4096);
        let mut c = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, req.handle, 6 + msg.len());
        c.put_u32(code);
        c.put_u16(msg.len() as u16);
        c.put_slice(msg.as_bytes());
        vec![c.freeze()]
    } else {
        vec![simple_reply(code, req.handle)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize() {
        let e = vec![
            Extent::new(0, 1),
            Extent::new(100, 3),
            Extent::new(100, 3),
            Extent::new(500, 0),
        ];
        assert_eq!(
            normalize_extents(e.clone(), 250, false),
            vec![Extent::new(200, 3), Extent::new(50, 0)]
        );
        assert_eq!(normalize_extents(e, 250, true), vec![Extent::new(200, 3)]);
        assert_eq!(normalize_extents(vec![], 7, false), vec![Extent::new(7, 0)]);
    }
}
