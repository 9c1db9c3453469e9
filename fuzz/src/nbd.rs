//! One NBD session against the in-process server (`row_nbd::serve_connection`)
//! over `tokio::io::duplex`, with in-memory exports, bounded in time and
//! bytes; and the structured variant's client side: a valid handshake
//! prefix, requests decoded from the fuzz input, and a checker for the
//! server's replies.
//!
//! Exports (all 1 MiB except `ro`):
//! * `mem` (default): row-nbd's `MemExport`;
//! * `ro`: a read-only `MemExport` of 64 KiB;
//! * `img`: the gateway's `ImageExport` over a row-layer image on
//!   `MemBackend` (64 KiB objects, 4 KiB grains, data in two objects,
//!   snapshot `s1`, then more writes and a discard), built on first open;
//! * `img@s1`: the same image's snapshot view (read-only).
//!
//! Time: the session runs on a current-thread runtime with a paused clock,
//! which jumps ahead only when no task can make progress. The client writes
//! its whole input and then half-closes, and reads everything the server
//! sends, so a session that is still pending after an hour of virtual time
//! is a server that can neither finish nor make progress: reported as a
//! hang (a panic), at once, without wall-clock waiting.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::gateway_export::ImageExport;
use bytes::Bytes;
use row_layer::backend::mem::MemBackend;
use row_layer::{CreateOptions, Image, Store};
use row_nbd::proto::*;
use row_nbd::{
    BoxFuture, ExportBackend, ExportError, ExportRegistry, ExportResult, MemExport, NbdErrno,
    ServerConfig, ServerLimits,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, OnceCell};

/// Export names, in the order the session selector picks them.
pub const EXPORTS: [&str; 4] = ["mem", "ro", "img", "img@s1"];
/// Size of every export but `ro`.
pub const SIZE: u64 = 1 << 20;
/// Size of `ro`.
pub const RO_SIZE: u64 = 64 << 10;

fn export_size(name: &str) -> u64 {
    if name == "ro" {
        RO_SIZE
    } else {
        SIZE
    }
}

fn export_read_only(name: &str) -> bool {
    matches!(name, "ro" | "img@s1")
}

/// Name → export, built per session so that no state leaks between inputs.
/// Every export is built on its first open (most raw inputs never get that
/// far), then shared by later opens of the same session.
#[derive(Default)]
pub struct FuzzRegistry {
    mem: OnceCell<Arc<MemExport>>,
    ro: OnceCell<Arc<MemExport>>,
    images: OnceCell<(Image, Image)>,
}

fn mem_export() -> Arc<MemExport> {
    Arc::new(MemExport::new(SIZE).with_description("fuzz mem export"))
}

fn ro_export() -> Arc<MemExport> {
    let mut ro = vec![0u8; RO_SIZE as usize];
    ro[..5].copy_from_slice(b"hello");
    ro[40_000..44_096].fill(0xee);
    Arc::new(MemExport::from_vec(ro).with_read_only(true))
}

async fn build_images() -> row_layer::Result<(Image, Image)> {
    let store = Store::new(Arc::new(MemBackend::new()));
    store
        .create(
            "img",
            CreateOptions {
                size: SIZE,
                object_size: 64 << 10,
                grain_size: 4096,
            },
        )
        .await?;
    let img = store.open("img").await?;
    img.write(0, Bytes::from(vec![0xa5; 8192])).await?;
    img.write(200 << 10, Bytes::from(vec![0x5a; 3 * 4096]))
        .await?;
    img.snap_create("s1").await?;
    img.write(4096, Bytes::from(vec![0x11; 4096])).await?;
    img.write(900 << 10, Bytes::from(vec![0x22; 100])).await?;
    img.discard(204 << 10, 4096).await?;
    let snap = store.open_snapshot("img", "s1").await?;
    Ok((img, snap))
}

impl ExportRegistry for FuzzRegistry {
    fn open(&self, name: &str) -> BoxFuture<'_, ExportResult<Arc<dyn ExportBackend>>> {
        let name = name.to_owned();
        Box::pin(async move {
            match name.as_str() {
                "mem" => {
                    let m = self.mem.get_or_init(|| async { mem_export() }).await;
                    Ok(m.clone() as Arc<dyn ExportBackend>)
                }
                "ro" => {
                    let m = self.ro.get_or_init(|| async { ro_export() }).await;
                    Ok(m.clone() as Arc<dyn ExportBackend>)
                }
                "img" | "img@s1" => {
                    let (head, snap) = self
                        .images
                        .get_or_try_init(build_images)
                        .await
                        .map_err(|e| ExportError::io(format!("building the image: {e}")))?;
                    let image = if name == "img" { head } else { snap };
                    Ok(Arc::new(ImageExport::new(image.clone(), name, false))
                        as Arc<dyn ExportBackend>)
                }
                _ => Err(ExportError::invalid(format!("no export named {name:?}"))),
            }
        })
    }
    fn list(&self) -> Vec<String> {
        EXPORTS.iter().map(|s| (*s).to_owned()).collect()
    }
    fn default_export(&self) -> Option<String> {
        Some("mem".into())
    }
}

/// Server configuration of a session: small limits so that the oversized
/// paths (EOVERFLOW, discarded payloads, closing on huge writes, the
/// in-flight byte budgets) are reachable with small inputs.
pub fn config(small: bool) -> ServerConfig {
    ServerConfig {
        max_payload: if small { 4096 } else { 64 << 10 },
        max_in_flight: if small { 2 } else { 16 },
        max_in_flight_bytes: if small { 8192 } else { 256 << 10 },
        limits: Arc::new(ServerLimits::new(4, if small { 6144 } else { 1 << 20 })),
        max_discard: if small { 16 << 10 } else { 128 << 10 },
        ..ServerConfig::default()
    }
}

/// Largest client stream a session sends (bounds time and memory).
pub const MAX_CLIENT_BYTES: usize = 1 << 20;

/// Runs one connection: `client` is everything the client sends (then it
/// half-closes); returns everything the server sent before closing.
/// Panics if the session hangs (see the module documentation).
pub fn run_session(client: &[u8], cfg: ServerConfig) -> Vec<u8> {
    let client = client[..client.len().min(MAX_CLIENT_BYTES)].to_vec();
    let sent = client.len();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let registry: Arc<dyn ExportRegistry> = Arc::new(FuzzRegistry::default());
        let (ours, theirs) = tokio::io::duplex(64 << 10);
        // The sender stays alive for the whole session: no shutdown.
        let (_stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(row_nbd::serve_connection(
            theirs,
            "fuzz".into(),
            registry,
            Arc::new(cfg),
            stop_rx,
        ));
        let (mut rd, mut wr) = tokio::io::split(ours);
        let send = async move {
            // The server may close first (protocol error): not our concern.
            let _ = wr.write_all(&client).await;
            let _ = wr.shutdown().await;
            wr
        };
        let recv = async move {
            let mut out = Vec::new();
            rd.read_to_end(&mut out).await.map(|_| out)
        };
        let session = async {
            let (_wr, out, done) = tokio::join!(send, recv, server);
            done.expect("server task");
            out.expect("reading from an in-memory duplex cannot fail")
        };
        match tokio::time::timeout(Duration::from_secs(3600), session).await {
            Ok(out) => out,
            Err(_) => panic!(
                "NBD session hung: the server neither closed nor made progress \
                 (client sent {} bytes and half-closed)",
                sent
            ),
        }
    })
}

/// The server must always open with the fixed-newstyle greeting.
pub fn check_greeting(out: &[u8]) {
    assert!(
        out.len() >= 18,
        "server sent no greeting ({} bytes)",
        out.len()
    );
    let mut g = Vec::new();
    g.extend_from_slice(&NBDMAGIC.to_be_bytes());
    g.extend_from_slice(&IHAVEOPT.to_be_bytes());
    g.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    assert_eq!(&out[..18], &g[..], "greeting");
}

/// One request of the structured variant.
#[derive(Debug, Clone, Copy)]
pub struct PlannedRequest {
    /// Command type (may be unknown).
    pub typ: u16,
    /// Command flags (may be unknown).
    pub flags: u16,
    /// Handle (`HANDLE_BASE | index`).
    pub handle: u64,
    /// Offset.
    pub offset: u64,
    /// Length.
    pub len: u32,
}

/// Handles of generated requests carry this tag, so replies to requests
/// injected through a raw tail are told apart.
pub const HANDLE_BASE: u64 = 0x5eed_0000_0000_0000;

/// What the client of a structured session sends and expects.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The client byte stream.
    pub client: Vec<u8>,
    /// Small-limits configuration.
    pub small: bool,
    /// Export opened.
    pub export: &'static str,
    /// Client flag `NO_ZEROES`.
    pub no_zeroes: bool,
    /// `STRUCTURED_REPLY` negotiated.
    pub structured: bool,
    /// `EXPORT_NAME` used instead of `GO`.
    pub export_name: bool,
    /// Options sent before `GO`/`EXPORT_NAME`, in order.
    pub options: Vec<u32>,
    /// Generated requests, in order.
    pub requests: Vec<PlannedRequest>,
    /// How many leading requests must be answered (those before the first
    /// `DISC` or the first write too large even to discard).
    pub must_answer: usize,
    /// Raw bytes were appended after the requests.
    pub raw_tail: bool,
}

fn opt(out: &mut Vec<u8>, opt: u32, data: &[u8]) {
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&opt.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

fn name_data(name: &str) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d
}

fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = name_data(name);
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = name_data(name);
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

/// Most generated requests per session.
pub const MAX_REQUESTS: usize = 64;

/// Builds the client side of a structured session from fuzz input.
///
/// Byte 0 selects the handshake: bit 0 `NO_ZEROES`, bit 1
/// `STRUCTURED_REPLY`, bit 2 `SET_META_CONTEXT` (when structured), bit 3
/// `EXPORT_NAME` instead of `GO`, bits 4-5 the export ([`EXPORTS`]), bit 6
/// extra options first (`LIST`, `INFO`, an unsupported option, and
/// `LIST_META_CONTEXT` when structured), bit 7 the small-limits config.
///
/// Then requests, 6 bytes each: `op, flags, offset (u16 be), length (u16
/// be)`. `op` bits 0-2 are the command (bit 3 makes it an unknown command
/// number), bits 4-5 how the offset is formed (grain-aligned, raw bytes,
/// back from the end of the export, near `u64::MAX`), bits 6-7 the length
/// (as is, in 512-byte units, near `u32::MAX`, zero). `flags` bits 0-4 are
/// the NBD command flags, bit 7 adds an unknown flag. Writes carry a
/// payload of the stated length (a byte pattern) unless the length is too
/// large even to discard. `op == 0xff` appends the rest of the input raw.
pub fn plan(input: &[u8]) -> Option<Plan> {
    let (&sel, mut rest) = input.split_first()?;
    let small = sel & 0x80 != 0;
    let cfg = config(small);
    let export = EXPORTS[usize::from((sel >> 4) & 3)];
    let size = export_size(export);
    let no_zeroes = sel & 1 != 0;
    let structured = sel & 2 != 0;
    let set_meta = structured && sel & 4 != 0;
    let export_name = sel & 8 != 0;
    let extra = sel & 0x40 != 0;

    let mut c = Vec::new();
    let mut flags = FLAG_C_FIXED_NEWSTYLE;
    if no_zeroes {
        flags |= FLAG_C_NO_ZEROES;
    }
    c.extend_from_slice(&flags.to_be_bytes());
    let mut options = Vec::new();
    if extra {
        opt(&mut c, OPT_LIST, &[]);
        options.push(OPT_LIST);
        opt(
            &mut c,
            OPT_INFO,
            &info_data(export, &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE]),
        );
        options.push(OPT_INFO);
        opt(&mut c, OPT_EXTENDED_HEADERS, &[]);
        options.push(OPT_EXTENDED_HEADERS);
    }
    if structured {
        opt(&mut c, OPT_STRUCTURED_REPLY, &[]);
        options.push(OPT_STRUCTURED_REPLY);
        if extra {
            opt(&mut c, OPT_LIST_META_CONTEXT, &meta_data(export, &[]));
            options.push(OPT_LIST_META_CONTEXT);
        }
    }
    if set_meta {
        let queries: &[&str] = if export.starts_with("img") {
            &[
                BASE_ALLOCATION,
                "rbd-row:diff:s1",
                "qemu:dirty-bitmap:s1",
                "nope:x",
            ]
        } else {
            &[BASE_ALLOCATION, "nope:x"]
        };
        opt(&mut c, OPT_SET_META_CONTEXT, &meta_data(export, queries));
        options.push(OPT_SET_META_CONTEXT);
    }
    if export_name {
        opt(&mut c, OPT_EXPORT_NAME, export.as_bytes());
    } else {
        opt(&mut c, OPT_GO, &info_data(export, &[INFO_NAME]));
        options.push(OPT_GO);
    }

    let mut requests = Vec::new();
    let mut must_answer = None;
    let mut raw_tail = false;
    while requests.len() < MAX_REQUESTS && must_answer.is_none() {
        let Some((&op, r)) = rest.split_first() else {
            break;
        };
        if op == 0xff {
            c.extend_from_slice(r);
            raw_tail = !r.is_empty();
            break;
        }
        let [f, o1, o2, l1, l2, r @ ..] = r else {
            break;
        };
        rest = r;
        let typ = if op & 8 != 0 {
            8 + u16::from(op >> 4)
        } else {
            u16::from(op & 7)
        };
        let mut flags = u16::from(f & 0x1f);
        if f & 0x80 != 0 {
            flags |= 0x4000;
        }
        let o = u64::from(u16::from_be_bytes([*o1, *o2]));
        let offset = match (op >> 4) & 3 {
            0 => (o * 4096) % (size + 8192),
            1 => o,
            2 => size.wrapping_sub(o),
            _ => u64::MAX - o,
        };
        let l = u32::from(u16::from_be_bytes([*l1, *l2]));
        let len = match op >> 6 {
            0 => l,
            1 => l * 512,
            2 => u32::MAX - l,
            _ => 0,
        };
        let handle = HANDLE_BASE | requests.len() as u64;
        c.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        c.extend_from_slice(&flags.to_be_bytes());
        c.extend_from_slice(&typ.to_be_bytes());
        c.extend_from_slice(&handle.to_be_bytes());
        c.extend_from_slice(&offset.to_be_bytes());
        c.extend_from_slice(&len.to_be_bytes());
        requests.push(PlannedRequest {
            typ,
            flags,
            handle,
            offset,
            len,
        });
        if typ == CMD_DISC {
            must_answer = Some(requests.len() - 1);
        } else if typ == CMD_WRITE {
            if u64::from(len) > cfg.max_discard && len > cfg.max_payload {
                // The server closes the connection on this one.
                must_answer = Some(requests.len() - 1);
            } else if c.len() + len as usize > MAX_CLIENT_BYTES {
                // Would be cut off: stop before it.
                requests.pop();
                c.truncate(c.len() - REQUEST_HEADER_LEN);
                break;
            } else {
                let start = c.len();
                c.resize(start + len as usize, 0);
                for (i, b) in c[start..].iter_mut().enumerate() {
                    *b = (i as u8).wrapping_mul(31).wrapping_add(*o2) | 1;
                }
            }
        }
    }
    let must_answer = must_answer.unwrap_or(requests.len());
    Some(Plan {
        client: c,
        small,
        export,
        no_zeroes,
        structured,
        export_name,
        options,
        requests,
        must_answer,
        raw_tail,
    })
}

/// A cursor over the server's bytes; running out means the checker's
/// expectations and the server disagree (the server closed early).
struct Cur<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        assert!(
            self.b.len() >= n,
            "server output ended inside {} (needed {n} more bytes, have {})",
            self.what,
            self.b.len()
        );
        let (h, t) = self.b.split_at(n);
        self.b = t;
        h
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take(2).try_into().expect("2"))
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().expect("4"))
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take(8).try_into().expect("8"))
    }
}

fn valid_errno(code: u32) -> bool {
    NbdErrno::from_code(code).is_some()
}

/// What the transmission checker knows about the session.
struct Session {
    size: u64,
    ro: bool,
    contexts: usize,
    structured: bool,
    max_payload: u32,
}

/// Whether `req` must be refused: this server's contract (row-nbd
/// `transmission::validate`), which the NBD spec allows or requires.
fn must_fail(req: &PlannedRequest, s: &Session) -> bool {
    const KNOWN: u16 =
        CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_DF | CMD_FLAG_REQ_ONE | CMD_FLAG_FAST_ZERO;
    let allowed = CMD_FLAG_FUA
        | match req.typ {
            CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM | CMD_CACHE => 0,
            CMD_WRITE_ZEROES => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
            _ => return true,
        }
        | if req.typ == CMD_READ && s.structured {
            CMD_FLAG_DF
        } else {
            0
        };
    if req.flags & !KNOWN != 0 || req.flags & !allowed != 0 {
        return true;
    }
    if matches!(req.typ, CMD_READ | CMD_WRITE) && req.len > s.max_payload {
        return true;
    }
    if req.typ != CMD_FLUSH
        && req
            .offset
            .checked_add(u64::from(req.len))
            .is_none_or(|e| e > s.size)
    {
        return true;
    }
    if s.ro && matches!(req.typ, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES) {
        return true;
    }
    req.typ == CMD_BLOCK_STATUS && (s.contexts == 0 || req.len == 0)
}

#[derive(Default)]
struct Progress {
    covered: u64,
    error: bool,
    chunks: usize,
}

/// Checks everything the server sent in a structured session: the
/// greeting, one reply sequence per option ending in `ACK` (and the export
/// the client asked for), then in transmission: well-formed simple and
/// structured replies, each for a request that was sent and not yet
/// completed, reads covering exactly their range, block status per
/// negotiated context, only NBD errno values, no success where the protocol
/// demands an error, and every request before `DISC` (or before a fatal
/// oversized write) answered exactly once.
pub fn check_session(p: &Plan, out: &[u8]) {
    check_greeting(out);
    let mut cur = Cur {
        b: &out[18..],
        what: "option replies",
    };
    let size = export_size(p.export);
    let ro = export_read_only(p.export);
    let mut contexts: Vec<(u32, String)> = Vec::new();
    for &o in &p.options {
        loop {
            assert_eq!(cur.u64(), OPT_REPLY_MAGIC, "option reply magic");
            assert_eq!(cur.u32(), o, "option reply echoes the option");
            let typ = cur.u32();
            let len = cur.u32() as usize;
            let data = cur.take(len);
            if typ == REP_ACK {
                break;
            }
            if typ & (1 << 31) != 0 {
                assert_eq!(o, OPT_EXTENDED_HEADERS, "option {o} refused ({typ:#x})");
                break;
            }
            match (o, typ) {
                (OPT_LIST, REP_SERVER) => {}
                (OPT_INFO | OPT_GO, REP_INFO) => {
                    assert!(data.len() >= 2, "info reply");
                    let kind = u16::from_be_bytes([data[0], data[1]]);
                    if kind == INFO_EXPORT {
                        assert_eq!(data.len(), 12, "INFO_EXPORT length");
                        let sz = u64::from_be_bytes(data[2..10].try_into().expect("8"));
                        let tf = u16::from_be_bytes([data[10], data[11]]);
                        assert_eq!(sz, size, "export size");
                        assert_eq!(tf & TF_READ_ONLY != 0, ro, "read-only flag");
                    }
                }
                (OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT, REP_META_CONTEXT) => {
                    assert!(data.len() >= 4, "meta context reply");
                    let id = u32::from_be_bytes(data[..4].try_into().expect("4"));
                    let name = String::from_utf8(data[4..].to_vec()).expect("utf-8 context");
                    assert_ne!(name, "nope:x", "unknown context selected");
                    if o == OPT_SET_META_CONTEXT {
                        assert!(
                            contexts.iter().all(|(i, _)| *i != id),
                            "duplicate context id"
                        );
                        contexts.push((id, name));
                    }
                }
                _ => panic!("unexpected reply type {typ:#x} to option {o}"),
            }
        }
    }
    if p.export_name {
        cur.what = "EXPORT_NAME reply";
        assert_eq!(cur.u64(), size, "export size");
        let tf = cur.u16();
        assert_eq!(tf & TF_READ_ONLY != 0, ro, "read-only flag");
        if !p.no_zeroes {
            assert!(cur.take(124).iter().all(|b| *b == 0), "124 zero bytes");
        }
    }

    cur.what = "transmission replies";
    let sess = Session {
        size,
        ro,
        contexts: contexts.len(),
        structured: p.structured,
        max_payload: config(p.small).max_payload,
    };
    let by_handle: HashMap<u64, PlannedRequest> =
        p.requests.iter().map(|r| (r.handle, *r)).collect();
    let mut progress: HashMap<u64, Progress> = HashMap::new();
    let mut done: HashMap<u64, usize> = HashMap::new();
    while !cur.b.is_empty() {
        let magic = cur.u32();
        if magic == SIMPLE_REPLY_MAGIC {
            let err = cur.u32();
            let handle = cur.u64();
            let Some(req) = by_handle.get(&handle) else {
                assert!(p.raw_tail, "reply for a handle never sent: {handle:#x}");
                // A request of the raw tail: its payload length is unknown,
                // stop checking here.
                return;
            };
            assert!(
                !progress.contains_key(&handle),
                "simple reply after structured chunks"
            );
            *done.entry(handle).or_default() += 1;
            if err != 0 {
                assert!(valid_errno(err), "errno {err} outside the NBD set");
                continue;
            }
            assert!(
                !must_fail(req, &sess),
                "request succeeded but must fail: {req:?}"
            );
            match req.typ {
                CMD_READ => {
                    assert!(!p.structured, "simple reply to a structured read");
                    cur.take(req.len as usize);
                }
                CMD_BLOCK_STATUS => panic!("simple success reply to block status"),
                _ => {}
            }
        } else if magic == STRUCTURED_REPLY_MAGIC {
            assert!(p.structured, "structured reply not negotiated");
            let flags = cur.u16();
            let typ = cur.u16();
            let handle = cur.u64();
            let len = cur.u32() as usize;
            let data = cur.take(len);
            let Some(req) = by_handle.get(&handle) else {
                assert!(p.raw_tail, "chunk for a handle never sent: {handle:#x}");
                continue;
            };
            assert!(!done.contains_key(&handle), "chunk after the last chunk");
            let pr = progress.entry(handle).or_default();
            pr.chunks += 1;
            let in_range =
                |off: u64, n: u64| off >= req.offset && off + n <= req.offset + u64::from(req.len);
            match typ {
                REPLY_TYPE_NONE => {
                    assert_eq!(len, 0, "NONE chunk with payload");
                    assert!(flags & REPLY_FLAG_DONE != 0, "NONE chunk not last");
                }
                REPLY_TYPE_OFFSET_DATA => {
                    assert_eq!(req.typ, CMD_READ, "data chunk for a non-read");
                    assert!(len > 8, "data chunk without data");
                    let off = u64::from_be_bytes(data[..8].try_into().expect("8"));
                    let n = (len - 8) as u64;
                    assert!(in_range(off, n), "data chunk outside the request");
                    pr.covered += n;
                }
                REPLY_TYPE_OFFSET_HOLE => {
                    assert_eq!(req.typ, CMD_READ, "hole chunk for a non-read");
                    assert_eq!(len, 12, "hole chunk length");
                    let off = u64::from_be_bytes(data[..8].try_into().expect("8"));
                    let n = u64::from(u32::from_be_bytes(data[8..12].try_into().expect("4")));
                    assert!(n > 0 && in_range(off, n), "hole chunk outside the request");
                    pr.covered += n;
                }
                REPLY_TYPE_BLOCK_STATUS => {
                    assert_eq!(
                        req.typ, CMD_BLOCK_STATUS,
                        "status chunk for another command"
                    );
                    assert!(len >= 12 && (len - 4) % 8 == 0, "status chunk length {len}");
                    let id = u32::from_be_bytes(data[..4].try_into().expect("4"));
                    assert!(
                        contexts.iter().any(|(i, _)| *i == id),
                        "status for context id {id} never negotiated"
                    );
                    let mut total = 0u64;
                    for e in data[4..].chunks_exact(8) {
                        let l = u32::from_be_bytes(e[..4].try_into().expect("4"));
                        assert!(l > 0, "zero-length extent");
                        total += u64::from(l);
                    }
                    assert!(total <= u64::from(req.len), "extents beyond the request");
                    if req.flags & CMD_FLAG_REQ_ONE != 0 {
                        assert_eq!(len, 12, "REQ_ONE answered with several extents");
                    }
                }
                REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET => {
                    assert!(len >= 6, "error chunk length");
                    let code = u32::from_be_bytes(data[..4].try_into().expect("4"));
                    let mlen = usize::from(u16::from_be_bytes([data[4], data[5]]));
                    assert!(code != 0 && valid_errno(code), "error chunk errno {code}");
                    assert!(6 + mlen <= len, "error message longer than the chunk");
                    pr.error = true;
                }
                t => panic!("unknown structured reply type {t}"),
            }
            if flags & REPLY_FLAG_DONE != 0 {
                let pr = progress.remove(&handle).unwrap_or_default();
                *done.entry(handle).or_default() += 1;
                if !pr.error {
                    assert!(
                        !must_fail(req, &sess),
                        "request succeeded but must fail: {req:?}"
                    );
                    if req.typ == CMD_READ {
                        assert_eq!(pr.covered, u64::from(req.len), "read not fully covered");
                    }
                    if req.typ == CMD_BLOCK_STATUS {
                        assert_eq!(pr.chunks, contexts.len(), "one chunk per context");
                    }
                }
            }
        } else {
            panic!("bad reply magic {magic:#x}");
        }
    }
    assert!(progress.is_empty(), "a structured reply never finished");
    for (i, r) in p.requests.iter().enumerate() {
        let n = done.get(&r.handle).copied().unwrap_or(0);
        if i < p.must_answer {
            assert_eq!(n, 1, "request {i} ({r:?}) answered {n} times");
        } else {
            assert_eq!(n, 0, "request {i} after DISC/close answered: {r:?}");
        }
    }
}
