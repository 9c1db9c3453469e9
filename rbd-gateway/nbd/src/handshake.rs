//! Fixed-newstyle handshake and option haggling.

use std::io;
use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use crate::backend::{ExportBackend, ExportError, ExportRegistry, NbdErrno};
use crate::config::{BoxStream, ServerConfig};
use crate::proto::*;

/// Largest option payload we accept; bigger ones are a DoS attempt (names
/// are ≤ 4096 bytes, so even many meta-context queries fit easily).
const MAX_OPTION_LEN: u32 = 1 << 20;
/// Longest string (export name, query) the spec allows.
const MAX_STRING: usize = 4096;

/// State negotiated for the transmission phase.
pub(crate) struct Negotiated {
    pub(crate) export_name: String,
    pub(crate) backend: Arc<dyn ExportBackend>,
    pub(crate) structured: bool,
    /// (context id, context name) selected by `NBD_OPT_SET_META_CONTEXT`.
    pub(crate) contexts: Vec<(u32, String)>,
}

pub(crate) enum HandshakeOutcome {
    Transmission(BoxStream, Negotiated),
    /// The session ended in negotiation (abort, protocol violation, refused export).
    Closed(String),
}

/// Transmission flags for `backend` given the negotiated features.
pub(crate) fn transmission_flags(backend: &dyn ExportBackend, structured: bool) -> u16 {
    let mut f = TF_HAS_FLAGS
        | TF_SEND_FLUSH
        | TF_SEND_FUA
        | TF_SEND_TRIM
        | TF_SEND_WRITE_ZEROES
        | TF_SEND_CACHE
        | TF_SEND_FAST_ZERO;
    if backend.read_only() {
        f |= TF_READ_ONLY;
    }
    if structured {
        f |= TF_SEND_DF;
    }
    if backend.can_multi_conn() {
        f |= TF_CAN_MULTI_CONN;
    }
    f
}

struct State {
    no_zeroes: bool,
    structured: bool,
    tls_active: bool,
    /// Export the meta contexts were selected for, and the selection.
    meta: Option<(String, Vec<(u32, String)>)>,
}

/// Run the handshake. I/O errors (including a client hanging up) are
/// returned as `Err`; protocol-level refusals as `Ok(Closed)`.
pub(crate) async fn negotiate(
    mut s: BoxStream,
    registry: &dyn ExportRegistry,
    cfg: &ServerConfig,
) -> io::Result<HandshakeOutcome> {
    let mut hello = BytesMut::with_capacity(18);
    hello.put_u64(NBDMAGIC);
    hello.put_u64(IHAVEOPT);
    hello.put_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    s.write_all(&hello).await?;
    s.flush().await?;

    let client_flags = s.read_u32().await?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Ok(HandshakeOutcome::Closed(format!(
            "unknown client flags {client_flags:#x}"
        )));
    }
    let mut st = State {
        no_zeroes: client_flags & FLAG_C_NO_ZEROES != 0,
        structured: false,
        tls_active: false,
        meta: None,
    };
    let tls_required = cfg.tls.as_ref().is_some_and(|t| t.required);

    loop {
        let mut hdr = [0u8; 16];
        s.read_exact(&mut hdr).await?;
        let mut h = &hdr[..];
        let magic = h.get_u64();
        let opt = h.get_u32();
        let len = h.get_u32();
        if magic != IHAVEOPT {
            return Ok(HandshakeOutcome::Closed(format!(
                "bad option magic {magic:#x}"
            )));
        }
        if len > MAX_OPTION_LEN {
            return Ok(HandshakeOutcome::Closed(format!(
                "option {opt} data too long ({len} bytes)"
            )));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await?;
        debug!(opt, len, "nbd option");

        if tls_required && !st.tls_active {
            match opt {
                OPT_STARTTLS | OPT_ABORT => {}
                OPT_EXPORT_NAME => {
                    return Ok(HandshakeOutcome::Closed(
                        "EXPORT_NAME without required TLS".into(),
                    ))
                }
                _ => {
                    reply_err(&mut s, opt, REP_ERR_TLS_REQD, "TLS is required").await?;
                    continue;
                }
            }
        }

        match opt {
            OPT_ABORT => {
                // Best effort: the client may already be gone.
                let _ = reply(&mut s, opt, REP_ACK, &[]).await;
                return Ok(HandshakeOutcome::Closed("client aborted".into()));
            }
            OPT_EXPORT_NAME => {
                let Ok(name) = String::from_utf8(data) else {
                    return Ok(HandshakeOutcome::Closed("export name not UTF-8".into()));
                };
                let (name, backend) = match open(registry, &name).await {
                    Ok(v) => v,
                    Err(e) => {
                        return Ok(HandshakeOutcome::Closed(format!(
                            "EXPORT_NAME {name:?} refused: {e}"
                        )))
                    }
                };
                let mut b = BytesMut::with_capacity(134);
                b.put_u64(backend.size());
                b.put_u16(transmission_flags(&*backend, st.structured));
                if !st.no_zeroes {
                    b.put_bytes(0, 124);
                }
                s.write_all(&b).await?;
                s.flush().await?;
                let contexts = take_contexts(&mut st, &name);
                return Ok(HandshakeOutcome::Transmission(
                    s,
                    Negotiated {
                        export_name: name,
                        backend,
                        structured: st.structured,
                        contexts,
                    },
                ));
            }
            OPT_LIST => {
                if !data.is_empty() {
                    reply_err(&mut s, opt, REP_ERR_INVALID, "LIST takes no data").await?;
                    continue;
                }
                for name in registry.list() {
                    let mut b = BytesMut::with_capacity(4 + name.len());
                    b.put_u32(name.len() as u32);
                    b.put_slice(name.as_bytes());
                    reply(&mut s, opt, REP_SERVER, &b).await?;
                }
                reply(&mut s, opt, REP_ACK, &[]).await?;
            }
            OPT_STARTTLS => {
                if !data.is_empty() {
                    reply_err(&mut s, opt, REP_ERR_INVALID, "STARTTLS takes no data").await?;
                    continue;
                }
                if st.tls_active {
                    reply_err(&mut s, opt, REP_ERR_INVALID, "TLS already active").await?;
                    continue;
                }
                let acceptor = cfg.tls.as_ref().and_then(|t| t.acceptor.clone());
                let Some(acceptor) = acceptor else {
                    reply_err(&mut s, opt, REP_ERR_POLICY, "TLS is not configured").await?;
                    continue;
                };
                reply(&mut s, opt, REP_ACK, &[]).await?;
                s = match acceptor.accept(s).await {
                    Ok(s) => s,
                    Err(e) => {
                        return Ok(HandshakeOutcome::Closed(format!(
                            "TLS handshake failed: {e}"
                        )))
                    }
                };
                // Nothing negotiated in plain text survives the upgrade.
                st.tls_active = true;
                st.structured = false;
                st.meta = None;
            }
            OPT_INFO | OPT_GO => {
                let Some((name, infos)) = parse_info_request(&data) else {
                    reply_err(&mut s, opt, REP_ERR_INVALID, "malformed INFO/GO request").await?;
                    continue;
                };
                let (name, backend) = match open(registry, &name).await {
                    Ok(v) => v,
                    Err(e) => {
                        reply_open_err(&mut s, opt, &e).await?;
                        continue;
                    }
                };
                send_infos(&mut s, opt, &name, &*backend, &infos, st.structured, cfg).await?;
                reply(&mut s, opt, REP_ACK, &[]).await?;
                if opt == OPT_GO {
                    let contexts = take_contexts(&mut st, &name);
                    return Ok(HandshakeOutcome::Transmission(
                        s,
                        Negotiated {
                            export_name: name,
                            backend,
                            structured: st.structured,
                            contexts,
                        },
                    ));
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    reply_err(
                        &mut s,
                        opt,
                        REP_ERR_INVALID,
                        "STRUCTURED_REPLY takes no data",
                    )
                    .await?;
                    continue;
                }
                st.structured = true;
                reply(&mut s, opt, REP_ACK, &[]).await?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                if !st.structured {
                    reply_err(
                        &mut s,
                        opt,
                        REP_ERR_INVALID,
                        "structured replies not negotiated",
                    )
                    .await?;
                    continue;
                }
                let Some((name, queries)) = parse_meta_request(&data) else {
                    reply_err(
                        &mut s,
                        opt,
                        REP_ERR_INVALID,
                        "malformed meta context request",
                    )
                    .await?;
                    continue;
                };
                let (name, backend) = match open(registry, &name).await {
                    Ok(v) => v,
                    Err(e) => {
                        reply_open_err(&mut s, opt, &e).await?;
                        continue;
                    }
                };
                let mut selected: Vec<String> = Vec::new();
                let mut push = |c: String| {
                    if !selected.contains(&c) {
                        selected.push(c);
                    }
                };
                if opt == OPT_LIST_META_CONTEXT {
                    if queries.is_empty() {
                        backend.meta_contexts("").into_iter().for_each(&mut push);
                    } else {
                        for q in &queries {
                            backend.meta_contexts(q).into_iter().for_each(&mut push);
                        }
                    }
                } else {
                    for q in &queries {
                        backend
                            .meta_contexts(q)
                            .into_iter()
                            .filter(|c| c == q)
                            .for_each(&mut push);
                    }
                }
                let mut chosen = Vec::new();
                for (i, ctx) in selected.into_iter().enumerate() {
                    let id = if opt == OPT_SET_META_CONTEXT {
                        i as u32 + 1
                    } else {
                        0
                    };
                    let mut b = BytesMut::with_capacity(4 + ctx.len());
                    b.put_u32(id);
                    b.put_slice(ctx.as_bytes());
                    reply(&mut s, opt, REP_META_CONTEXT, &b).await?;
                    chosen.push((id, ctx));
                }
                if opt == OPT_SET_META_CONTEXT {
                    st.meta = Some((name, chosen));
                }
                reply(&mut s, opt, REP_ACK, &[]).await?;
            }
            _ => {
                reply_err(&mut s, opt, REP_ERR_UNSUP, "option not supported").await?;
            }
        }
    }
}

/// Meta contexts apply only to the export they were selected for.
fn take_contexts(st: &mut State, export: &str) -> Vec<(u32, String)> {
    match st.meta.take() {
        Some((name, ctxs)) if name == export && st.structured => ctxs,
        _ => Vec::new(),
    }
}

async fn open(
    registry: &dyn ExportRegistry,
    name: &str,
) -> Result<(String, Arc<dyn ExportBackend>), ExportError> {
    let name = if name.is_empty() {
        registry
            .default_export()
            .ok_or_else(|| ExportError::invalid("no default export"))?
    } else {
        name.to_owned()
    };
    let backend = registry.open(&name).await?;
    Ok((name, backend))
}

async fn reply_open_err(s: &mut BoxStream, opt: u32, e: &ExportError) -> io::Result<()> {
    let code = match e.errno {
        NbdErrno::Shutdown => REP_ERR_SHUTDOWN,
        NbdErrno::Perm => REP_ERR_POLICY,
        _ => REP_ERR_UNKNOWN,
    };
    reply_err(s, opt, code, &e.message).await
}

/// `u32 namelen, name, u16 n, n × u16 info` → (name, infos).
fn parse_info_request(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let mut d = data;
    let name = take_string(&mut d)?;
    if d.remaining() < 2 {
        return None;
    }
    let n = d.get_u16() as usize;
    if d.remaining() != n * 2 {
        return None;
    }
    let infos = (0..n).map(|_| d.get_u16()).collect();
    Some((name, infos))
}

/// `u32 namelen, name, u32 nqueries, nqueries × (u32 len, query)`.
fn parse_meta_request(data: &[u8]) -> Option<(String, Vec<String>)> {
    let mut d = data;
    let name = take_string(&mut d)?;
    if d.remaining() < 4 {
        return None;
    }
    let n = d.get_u32() as usize;
    // Each query needs at least its 4-byte length.
    if n > d.remaining() / 4 {
        return None;
    }
    let mut queries = Vec::with_capacity(n);
    for _ in 0..n {
        queries.push(take_string(&mut d)?);
    }
    if d.has_remaining() {
        return None;
    }
    Some((name, queries))
}

fn take_string(d: &mut &[u8]) -> Option<String> {
    if d.remaining() < 4 {
        return None;
    }
    let len = d.get_u32() as usize;
    if len > MAX_STRING || len > d.remaining() {
        return None;
    }
    let s = std::str::from_utf8(&d[..len]).ok()?.to_owned();
    if s.contains('\0') {
        return None;
    }
    d.advance(len);
    Some(s)
}

async fn send_infos(
    s: &mut BoxStream,
    opt: u32,
    name: &str,
    backend: &dyn ExportBackend,
    requested: &[u16],
    structured: bool,
    cfg: &ServerConfig,
) -> io::Result<()> {
    let mut b = BytesMut::with_capacity(12);
    b.put_u16(INFO_EXPORT);
    b.put_u64(backend.size());
    b.put_u16(transmission_flags(backend, structured));
    reply(s, opt, REP_INFO, &b).await?;

    // Always advertised: min 1 imposes nothing, and qemu/libnbd use it.
    let preferred = backend.preferred_block();
    let preferred = if preferred.is_power_of_two() && (512..=cfg.max_payload).contains(&preferred) {
        preferred
    } else {
        4096
    };
    let mut b = BytesMut::with_capacity(14);
    b.put_u16(INFO_BLOCK_SIZE);
    b.put_u32(1);
    b.put_u32(preferred);
    b.put_u32(cfg.max_payload);
    reply(s, opt, REP_INFO, &b).await?;

    if requested.contains(&INFO_NAME) {
        let mut b = BytesMut::with_capacity(2 + name.len());
        b.put_u16(INFO_NAME);
        b.put_slice(name.as_bytes());
        reply(s, opt, REP_INFO, &b).await?;
    }
    if requested.contains(&INFO_DESCRIPTION) {
        if let Some(d) = backend.description() {
            let d = truncate_utf8(&d, MAX_STRING);
            let mut b = BytesMut::with_capacity(2 + d.len());
            b.put_u16(INFO_DESCRIPTION);
            b.put_slice(d.as_bytes());
            reply(s, opt, REP_INFO, &b).await?;
        }
    }
    Ok(())
}

pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

async fn reply(s: &mut BoxStream, opt: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut b = BytesMut::with_capacity(20 + data.len());
    b.put_u64(OPT_REPLY_MAGIC);
    b.put_u32(opt);
    b.put_u32(kind);
    b.put_u32(data.len() as u32);
    b.put_slice(data);
    s.write_all(&b).await?;
    s.flush().await
}

async fn reply_err(s: &mut BoxStream, opt: u32, kind: u32, msg: &str) -> io::Result<()> {
    debug!(opt, kind, msg, "nbd option error");
    reply(s, opt, kind, truncate_utf8(msg, MAX_STRING).as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_info() {
        let mut b = BytesMut::new();
        b.put_u32(3);
        b.put_slice(b"abc");
        b.put_u16(2);
        b.put_u16(INFO_NAME);
        b.put_u16(INFO_BLOCK_SIZE);
        assert_eq!(
            parse_info_request(&b),
            Some(("abc".to_owned(), vec![INFO_NAME, INFO_BLOCK_SIZE]))
        );
        assert_eq!(parse_info_request(&b[..b.len() - 1]), None);
        let mut bad = BytesMut::new();
        bad.put_u32(u32::MAX);
        assert_eq!(parse_info_request(&bad), None);
    }

    #[test]
    fn parse_meta() {
        let mut b = BytesMut::new();
        b.put_u32(1);
        b.put_slice(b"x");
        b.put_u32(2);
        b.put_u32(5);
        b.put_slice(b"base:");
        b.put_u32(0);
        assert_eq!(
            parse_meta_request(&b),
            Some(("x".to_owned(), vec!["base:".to_owned(), String::new()]))
        );
        let mut huge = BytesMut::new();
        huge.put_u32(0);
        huge.put_u32(u32::MAX);
        assert_eq!(parse_meta_request(&huge), None);
        let mut trailing = b.clone();
        trailing.put_u8(0);
        assert_eq!(parse_meta_request(&trailing), None);
    }
}
