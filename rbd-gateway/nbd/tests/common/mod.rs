//! Shared test helpers: in-process server and a tiny raw NBD client.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use row_nbd::proto::*;
use row_nbd::{serve, ExportBackend, MemExport, ServerConfig, StaticRegistry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub addr: SocketAddr,
    pub registry: Arc<StaticRegistry>,
    pub config: ServerConfig,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start(registry: Arc<StaticRegistry>, config: ServerConfig) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let cfg = config.clone();
        let reg: Arc<dyn row_nbd::ExportRegistry> = registry.clone();
        let task = tokio::spawn(serve(listener, reg, cfg, async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            registry,
            config,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Registry with one writable MemExport "disk" of `size` bytes (also the default)
    /// and a read-only "ro" export.
    pub async fn with_mem(size: u64) -> (TestServer, Arc<MemExport>) {
        let reg = Arc::new(StaticRegistry::new());
        let mem = Arc::new(MemExport::new(size).with_description("test disk"));
        reg.insert("disk", mem.clone() as Arc<dyn ExportBackend>);
        let mut ro = vec![0u8; 1 << 20];
        ro[..5].copy_from_slice(b"hello");
        reg.insert("ro", Arc::new(MemExport::from_vec(ro).with_read_only(true)));
        reg.set_default(Some("disk".into()));
        (TestServer::start(reg, ServerConfig::default()).await, mem)
    }

    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("server stops in time")
                .expect("join")
                .expect("serve result");
        }
    }
}

pub async fn timed<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test timed out")
}

#[derive(Debug)]
pub enum Reply {
    Simple {
        err: u32,
        handle: u64,
    },
    Chunk {
        flags: u16,
        typ: u16,
        handle: u64,
        payload: Vec<u8>,
    },
}

pub struct GoInfo {
    pub size: u64,
    pub flags: u16,
    pub block_size: Option<(u32, u32, u32)>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub contexts: Vec<(u32, String)>,
}

pub struct Client {
    pub s: TcpStream,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        Client { s }
    }

    /// Read the greeting and send client flags.
    pub async fn hello(&mut self, client_flags: u32) {
        assert_eq!(self.s.read_u64().await.unwrap(), NBDMAGIC);
        assert_eq!(self.s.read_u64().await.unwrap(), IHAVEOPT);
        let hs = self.s.read_u16().await.unwrap();
        assert_eq!(hs, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        self.s.write_u32(client_flags).await.unwrap();
    }

    pub async fn connect_hello(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr).await;
        c.hello(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
        c
    }

    pub async fn send_opt(&mut self, opt: u32, data: &[u8]) {
        let mut b = Vec::new();
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).await.unwrap();
    }

    pub async fn read_opt_reply(&mut self) -> (u32, u32, Vec<u8>) {
        assert_eq!(self.s.read_u64().await.unwrap(), OPT_REPLY_MAGIC);
        let opt = self.s.read_u32().await.unwrap();
        let typ = self.s.read_u32().await.unwrap();
        let len = self.s.read_u32().await.unwrap();
        let mut d = vec![0; len as usize];
        self.s.read_exact(&mut d).await.unwrap();
        (opt, typ, d)
    }

    /// All replies up to and including the final one (ACK or error).
    pub async fn opt_replies(&mut self, opt: u32) -> Vec<(u32, Vec<u8>)> {
        let mut v = Vec::new();
        loop {
            let (o, typ, d) = self.read_opt_reply().await;
            assert_eq!(o, opt);
            let fin = typ == REP_ACK || typ & (1 << 31) != 0;
            v.push((typ, d));
            if fin {
                return v;
            }
        }
    }

    /// Send an option and return only the final reply type.
    pub async fn opt_final(&mut self, opt: u32, data: &[u8]) -> u32 {
        self.send_opt(opt, data).await;
        self.opt_replies(opt).await.last().unwrap().0
    }

    pub async fn structured(&mut self) {
        assert_eq!(self.opt_final(OPT_STRUCTURED_REPLY, &[]).await, REP_ACK);
    }

    pub fn meta_data(export: &str, queries: &[&str]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(export.len() as u32).to_be_bytes());
        b.extend_from_slice(export.as_bytes());
        b.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            b.extend_from_slice(&(q.len() as u32).to_be_bytes());
            b.extend_from_slice(q.as_bytes());
        }
        b
    }

    pub async fn meta(
        &mut self,
        opt: u32,
        export: &str,
        queries: &[&str],
    ) -> (u32, Vec<(u32, String)>) {
        self.send_opt(opt, &Self::meta_data(export, queries)).await;
        let replies = self.opt_replies(opt).await;
        let mut ctxs = Vec::new();
        let mut fin = 0;
        for (typ, d) in replies {
            if typ == REP_META_CONTEXT {
                let id = u32::from_be_bytes(d[..4].try_into().unwrap());
                ctxs.push((id, String::from_utf8(d[4..].to_vec()).unwrap()));
            } else {
                fin = typ;
            }
        }
        (fin, ctxs)
    }

    pub fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(name.len() as u32).to_be_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            b.extend_from_slice(&i.to_be_bytes());
        }
        b
    }

    /// INFO or GO; returns Err(final error type) on failure.
    pub async fn info_or_go(&mut self, opt: u32, name: &str, infos: &[u16]) -> Result<GoInfo, u32> {
        self.send_opt(opt, &Self::info_data(name, infos)).await;
        let mut gi = GoInfo {
            size: 0,
            flags: 0,
            block_size: None,
            name: None,
            description: None,
            contexts: vec![],
        };
        let mut saw_export = false;
        for (typ, d) in self.opt_replies(opt).await {
            match typ {
                REP_INFO => {
                    let t = u16::from_be_bytes([d[0], d[1]]);
                    match t {
                        INFO_EXPORT => {
                            assert_eq!(d.len(), 12);
                            gi.size = u64::from_be_bytes(d[2..10].try_into().unwrap());
                            gi.flags = u16::from_be_bytes([d[10], d[11]]);
                            saw_export = true;
                        }
                        INFO_BLOCK_SIZE => {
                            assert_eq!(d.len(), 14);
                            let g = |i: usize| u32::from_be_bytes(d[i..i + 4].try_into().unwrap());
                            gi.block_size = Some((g(2), g(6), g(10)));
                        }
                        INFO_NAME => gi.name = Some(String::from_utf8(d[2..].to_vec()).unwrap()),
                        INFO_DESCRIPTION => {
                            gi.description = Some(String::from_utf8(d[2..].to_vec()).unwrap())
                        }
                        other => panic!("unexpected info {other}"),
                    }
                }
                REP_ACK => {}
                e => return Err(e),
            }
        }
        assert!(saw_export, "INFO_EXPORT missing");
        Ok(gi)
    }

    /// Full negotiation: structured replies (optional), meta contexts, GO.
    pub async fn negotiate(
        addr: SocketAddr,
        export: &str,
        structured: bool,
        contexts: &[&str],
    ) -> (Client, GoInfo) {
        let mut c = Client::connect_hello(addr).await;
        if structured {
            c.structured().await;
        }
        let mut ids = Vec::new();
        if !contexts.is_empty() {
            let (fin, got) = c.meta(OPT_SET_META_CONTEXT, export, contexts).await;
            assert_eq!(fin, REP_ACK);
            ids = got;
        }
        let mut gi = c
            .info_or_go(OPT_GO, export, &[INFO_BLOCK_SIZE])
            .await
            .expect("GO");
        gi.contexts = ids;
        (c, gi)
    }

    pub async fn send_req(
        &mut self,
        flags: u16,
        typ: u16,
        handle: u64,
        off: u64,
        len: u32,
        payload: &[u8],
    ) {
        let mut b = Vec::with_capacity(28 + payload.len());
        b.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&typ.to_be_bytes());
        b.extend_from_slice(&handle.to_be_bytes());
        b.extend_from_slice(&off.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.s.write_all(&b).await.unwrap();
    }

    pub async fn read_reply(&mut self) -> Reply {
        let magic = self.s.read_u32().await.unwrap();
        match magic {
            SIMPLE_REPLY_MAGIC => {
                let err = self.s.read_u32().await.unwrap();
                let handle = self.s.read_u64().await.unwrap();
                Reply::Simple { err, handle }
            }
            STRUCTURED_REPLY_MAGIC => {
                let flags = self.s.read_u16().await.unwrap();
                let typ = self.s.read_u16().await.unwrap();
                let handle = self.s.read_u64().await.unwrap();
                let len = self.s.read_u32().await.unwrap();
                let mut payload = vec![0; len as usize];
                self.s.read_exact(&mut payload).await.unwrap();
                Reply::Chunk {
                    flags,
                    typ,
                    handle,
                    payload,
                }
            }
            m => panic!("bad reply magic {m:#x}"),
        }
    }

    /// Error code of a non-data reply (simple or structured), with its handle.
    pub async fn read_status(&mut self) -> (u64, u32) {
        match self.read_reply().await {
            Reply::Simple { err, handle } => (handle, err),
            Reply::Chunk {
                flags,
                typ,
                handle,
                payload,
            } => {
                assert!(flags & REPLY_FLAG_DONE != 0, "single-chunk reply expected");
                if typ == REPLY_TYPE_ERROR {
                    (handle, u32::from_be_bytes(payload[..4].try_into().unwrap()))
                } else {
                    assert_eq!(typ, REPLY_TYPE_NONE);
                    (handle, 0)
                }
            }
        }
    }

    /// Simple (non-structured) read.
    pub async fn simple_read(&mut self, handle: u64, off: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.send_req(0, CMD_READ, handle, off, len, &[]).await;
        match self.read_reply().await {
            Reply::Simple { err: 0, handle: h } => {
                assert_eq!(h, handle);
                let mut d = vec![0; len as usize];
                self.s.read_exact(&mut d).await.unwrap();
                Ok(d)
            }
            Reply::Simple { err, .. } => Err(err),
            r => panic!("unexpected {r:?}"),
        }
    }

    /// Collect all chunks of one structured reply (the only one outstanding).
    pub async fn chunks(&mut self, handle: u64) -> Vec<(u16, u16, Vec<u8>)> {
        let mut v = Vec::new();
        loop {
            match self.read_reply().await {
                Reply::Chunk {
                    flags,
                    typ,
                    handle: h,
                    payload,
                } => {
                    assert_eq!(h, handle);
                    v.push((flags, typ, payload));
                    if flags & REPLY_FLAG_DONE != 0 {
                        return v;
                    }
                }
                r => panic!("expected chunk, got {r:?}"),
            }
        }
    }

    /// Structured read; reassembles data/hole chunks. Returns (data, #hole chunks, #data chunks).
    pub async fn sread(
        &mut self,
        flags: u16,
        handle: u64,
        off: u64,
        len: u32,
    ) -> Result<(Vec<u8>, usize, usize), u32> {
        self.send_req(flags, CMD_READ, handle, off, len, &[]).await;
        let mut buf = vec![0xAAu8; len as usize];
        let mut covered = 0u64;
        let (mut holes, mut datas) = (0, 0);
        for (_f, typ, p) in self.chunks(handle).await {
            match typ {
                REPLY_TYPE_OFFSET_DATA => {
                    let o = u64::from_be_bytes(p[..8].try_into().unwrap());
                    let d = &p[8..];
                    let s = (o - off) as usize;
                    buf[s..s + d.len()].copy_from_slice(d);
                    covered += d.len() as u64;
                    datas += 1;
                }
                REPLY_TYPE_OFFSET_HOLE => {
                    let o = u64::from_be_bytes(p[..8].try_into().unwrap());
                    let l = u32::from_be_bytes(p[8..12].try_into().unwrap()) as usize;
                    let s = (o - off) as usize;
                    buf[s..s + l].fill(0);
                    covered += l as u64;
                    holes += 1;
                }
                REPLY_TYPE_NONE => {}
                REPLY_TYPE_ERROR => return Err(u32::from_be_bytes(p[..4].try_into().unwrap())),
                t => panic!("unexpected chunk type {t}"),
            }
        }
        assert_eq!(covered, u64::from(len), "read reply must cover the request");
        Ok((buf, holes, datas))
    }

    /// Block status; returns per context id the list of (len, flags).
    pub async fn block_status(
        &mut self,
        flags: u16,
        handle: u64,
        off: u64,
        len: u32,
    ) -> Result<Vec<(u32, Vec<(u32, u32)>)>, u32> {
        self.send_req(flags, CMD_BLOCK_STATUS, handle, off, len, &[])
            .await;
        let mut out = Vec::new();
        for (_f, typ, p) in self.chunks(handle).await {
            match typ {
                REPLY_TYPE_BLOCK_STATUS => {
                    let id = u32::from_be_bytes(p[..4].try_into().unwrap());
                    let ext = p[4..]
                        .chunks(8)
                        .map(|c| {
                            (
                                u32::from_be_bytes(c[..4].try_into().unwrap()),
                                u32::from_be_bytes(c[4..].try_into().unwrap()),
                            )
                        })
                        .collect();
                    out.push((id, ext));
                }
                REPLY_TYPE_ERROR => return Err(u32::from_be_bytes(p[..4].try_into().unwrap())),
                t => panic!("unexpected chunk type {t}"),
            }
        }
        Ok(out)
    }

    /// Assert the server closes the connection (EOF or reset) soon.
    pub async fn expect_closed(&mut self) {
        let mut buf = [0u8; 256];
        let r = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match self.s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(r.is_ok(), "server did not close the connection");
    }
}
