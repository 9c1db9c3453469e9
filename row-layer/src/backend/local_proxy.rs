//! The local store across processes: the store server's socket and the
//! client-mode handle (see "Several processes" in the parent module).
//!
//! # Wire format
//! One Unix stream connection per client process. Every message is a frame:
//! `length (u32 le) | record`, where the record is a [`crate::envelope`]
//! record (magic, version, postcard payload, crc32c) and the magic names the
//! message kind. Frames longer than [`MAX_FRAME`] are refused, and nothing
//! read from the socket is trusted: a frame that does not decode ends the
//! connection, never the process.
//!
//! | magic  | direction        | message                                    |
//! |--------|------------------|--------------------------------------------|
//! | `RLPH` | client → server  | hello: protocol version, client pid        |
//! | `RLPW` | server → client  | welcome: protocol version, server pid      |
//! | `RLPQ` | client → server  | request: id, call                          |
//! | `RLPR` | server → client  | reply: id, answer or error                 |
//! | `RLPN` | server → client  | notification for a watch: notify id, data  |
//! | `RLPK` | client → server  | the watcher's reply to a notification      |
//!
//! Requests carry ids and run concurrently on the server; replies come back
//! in any order and a reader task hands each to its waiting caller. The
//! reply to a watch request is queued before any notification of that watch,
//! and the client registers the watch before it hands the reply over, so no
//! notification can arrive for an unknown watch.
//!
//! # Server loss
//! A request that was never written to the socket (the connection was
//! already dead) is retried after reconnecting; one that was written but not
//! answered fails with `Io`, since it may or may not have been applied.

use super::{
    client_name, lock_or_recover, open_db, Answer, Call, LocalBackend, LocalOptions, Store,
};
use crate::backend::{Action, Guard, LockOwner, Notification, ObjectStat, Watch, WriteOp};
use crate::envelope::{self, RecordType};
use crate::error::{Error, ErrorKind, Result};
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Name of the server's socket inside the store directory.
const SOCKET_FILE: &str = "store.sock";
/// Largest frame either side sends or accepts.
const MAX_FRAME: usize = 64 << 20;
/// Version of the protocol; both sides must speak the same one.
const PROTOCOL: u32 = 1;
/// How long `open` keeps trying to reach the process that has the store
/// open (it may be starting up or shutting down).
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a call may find the connection dead before it was sent.
const MAX_RESENDS: u32 = 5;

const fn message(magic: [u8; 4]) -> RecordType {
    RecordType {
        magic,
        current_version: 1,
        oldest_readable: 1,
    }
}
const HELLO: RecordType = message(*b"RLPH");
const WELCOME: RecordType = message(*b"RLPW");
const REQUEST: RecordType = message(*b"RLPQ");
const REPLY: RecordType = message(*b"RLPR");
const PUSH: RecordType = message(*b"RLPN");
const ACK: RecordType = message(*b"RLPK");

fn gone() -> Error {
    Error::io("local store server went away")
}

// ---------------------------------------------------------------------------
// Wire types.
// ---------------------------------------------------------------------------

/// Bytes serialised as one postcard byte string (not a sequence of u8).
#[derive(Debug, Clone, Default)]
struct Buf(Vec<u8>);

impl Serialize for Buf {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Buf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Buf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<Buf, E> {
                Ok(Buf(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(
                self,
                v: Vec<u8>,
            ) -> std::result::Result<Buf, E> {
                Ok(Buf(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<Buf, A::Error> {
                let mut v = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(Buf(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

impl From<&Bytes> for Buf {
    fn from(b: &Bytes) -> Self {
        Buf(b.to_vec())
    }
}

impl From<Buf> for Bytes {
    fn from(b: Buf) -> Self {
        Bytes::from(b.0)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    protocol: u32,
    pid: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Welcome {
    protocol: u32,
    server_pid: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireRequest {
    id: u64,
    call: WireCall,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireReply {
    id: u64,
    result: std::result::Result<WireAnswer, WireError>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WirePush {
    watch_id: u64,
    notify_id: u64,
    payload: Buf,
}

/// The watcher's reply; `None`: the watch no longer exists in the client.
#[derive(Debug, Serialize, Deserialize)]
struct WireAck {
    notify_id: u64,
    reply: Option<Buf>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireError {
    kind: u8,
    message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WireOwner {
    client: String,
    cookie: String,
    address: String,
}

#[derive(Debug, Serialize, Deserialize)]
enum WireGuard {
    Exists,
    NotExists,
    XattrEquals(String, Buf),
    VersionEquals(u64),
}

#[derive(Debug, Serialize, Deserialize)]
enum WireAction {
    Create,
    Write { offset: u64, data: Buf },
    WriteFull(Buf),
    Zero { offset: u64, len: u64 },
    Truncate(u64),
    OmapSet(Vec<(String, Buf)>),
    OmapRemove(Vec<String>),
    OmapClear,
    SetXattr(String, Buf),
    RemoveXattr(String),
    Remove,
}

#[derive(Debug, Serialize, Deserialize)]
enum WireCall {
    Read {
        oid: String,
        offset: u64,
        len: u64,
    },
    Stat {
        oid: String,
    },
    OmapGet {
        oid: String,
        start_after: String,
        prefix: String,
        max: u64,
    },
    GetXattr {
        oid: String,
        name: String,
    },
    Operate {
        oid: String,
        guards: Vec<WireGuard>,
        actions: Vec<WireAction>,
    },
    List {
        prefix: String,
    },
    Flush,
    Lock {
        oid: String,
        name: String,
        cookie: String,
        description: String,
    },
    Unlock {
        oid: String,
        name: String,
        cookie: String,
    },
    LockOwners {
        oid: String,
        name: String,
    },
    BreakLock {
        oid: String,
        name: String,
        owner: WireOwner,
    },
    Watch {
        oid: String,
    },
    Unwatch {
        id: u64,
    },
    Fence {
        owner: WireOwner,
    },
    Notify {
        oid: String,
        payload: Buf,
        timeout_ms: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum WireAnswer {
    Unit,
    Data(Buf),
    Stat { size: u64, version: u64 },
    Omap(Vec<(String, Buf)>),
    Xattr(Option<Buf>),
    Names(Vec<String>),
    Owners(Vec<WireOwner>),
    Watched(u64),
    Replies(Vec<Buf>),
}

const KINDS: [ErrorKind; 12] = [
    ErrorKind::NotFound,
    ErrorKind::AlreadyExists,
    ErrorKind::PreconditionFailed,
    ErrorKind::InvalidInput,
    ErrorKind::ReadOnly,
    ErrorKind::Busy,
    ErrorKind::Corrupt,
    ErrorKind::Transient,
    ErrorKind::Io,
    ErrorKind::Fenced,
    ErrorKind::Unsupported,
    ErrorKind::NoSpace,
];

impl From<&Error> for WireError {
    fn from(e: &Error) -> Self {
        let kind = KINDS.iter().position(|k| *k == e.kind()).unwrap_or(8);
        WireError {
            kind: u8::try_from(kind).unwrap_or(8),
            message: e.message().to_string(),
        }
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        let kind = KINDS
            .get(usize::from(e.kind))
            .copied()
            .unwrap_or(ErrorKind::Io);
        Error::new(kind, e.message)
    }
}

impl From<&LockOwner> for WireOwner {
    fn from(o: &LockOwner) -> Self {
        WireOwner {
            client: o.client.clone(),
            cookie: o.cookie.clone(),
            address: o.address.clone(),
        }
    }
}

impl From<WireOwner> for LockOwner {
    fn from(o: WireOwner) -> Self {
        LockOwner {
            client: o.client,
            cookie: o.cookie,
            address: o.address,
        }
    }
}

fn guard_to_wire(g: &Guard) -> WireGuard {
    match g {
        Guard::Exists => WireGuard::Exists,
        Guard::NotExists => WireGuard::NotExists,
        Guard::XattrEquals(n, v) => WireGuard::XattrEquals(n.clone(), v.into()),
        Guard::VersionEquals(v) => WireGuard::VersionEquals(*v),
    }
}

fn guard_from_wire(g: WireGuard) -> Guard {
    match g {
        WireGuard::Exists => Guard::Exists,
        WireGuard::NotExists => Guard::NotExists,
        WireGuard::XattrEquals(n, v) => Guard::XattrEquals(n, v.into()),
        WireGuard::VersionEquals(v) => Guard::VersionEquals(v),
    }
}

fn action_to_wire(a: &Action) -> WireAction {
    match a {
        Action::Create => WireAction::Create,
        Action::Write { offset, data } => WireAction::Write {
            offset: *offset,
            data: data.into(),
        },
        Action::WriteFull(d) => WireAction::WriteFull(d.into()),
        Action::Zero { offset, len } => WireAction::Zero {
            offset: *offset,
            len: *len,
        },
        Action::Truncate(n) => WireAction::Truncate(*n),
        Action::OmapSet(kvs) => {
            WireAction::OmapSet(kvs.iter().map(|(k, v)| (k.clone(), v.into())).collect())
        }
        Action::OmapRemove(keys) => WireAction::OmapRemove(keys.clone()),
        Action::OmapClear => WireAction::OmapClear,
        Action::SetXattr(n, v) => WireAction::SetXattr(n.clone(), v.into()),
        Action::RemoveXattr(n) => WireAction::RemoveXattr(n.clone()),
        Action::Remove => WireAction::Remove,
    }
}

fn action_from_wire(a: WireAction) -> Action {
    match a {
        WireAction::Create => Action::Create,
        WireAction::Write { offset, data } => Action::Write {
            offset,
            data: data.into(),
        },
        WireAction::WriteFull(d) => Action::WriteFull(d.into()),
        WireAction::Zero { offset, len } => Action::Zero { offset, len },
        WireAction::Truncate(n) => Action::Truncate(n),
        WireAction::OmapSet(kvs) => {
            Action::OmapSet(kvs.into_iter().map(|(k, v)| (k, v.into())).collect())
        }
        WireAction::OmapRemove(keys) => Action::OmapRemove(keys),
        WireAction::OmapClear => Action::OmapClear,
        WireAction::SetXattr(n, v) => Action::SetXattr(n, v.into()),
        WireAction::RemoveXattr(n) => Action::RemoveXattr(n),
        WireAction::Remove => Action::Remove,
    }
}

fn call_to_wire(c: &Call) -> WireCall {
    match c {
        Call::Read { oid, offset, len } => WireCall::Read {
            oid: oid.clone(),
            offset: *offset,
            len: *len,
        },
        Call::Stat { oid } => WireCall::Stat { oid: oid.clone() },
        Call::OmapGet {
            oid,
            start_after,
            prefix,
            max,
        } => WireCall::OmapGet {
            oid: oid.clone(),
            start_after: start_after.clone(),
            prefix: prefix.clone(),
            max: u64::try_from(*max).unwrap_or(u64::MAX),
        },
        Call::GetXattr { oid, name } => WireCall::GetXattr {
            oid: oid.clone(),
            name: name.clone(),
        },
        Call::Operate { oid, op } => WireCall::Operate {
            oid: oid.clone(),
            guards: op.guards.iter().map(guard_to_wire).collect(),
            actions: op.actions.iter().map(action_to_wire).collect(),
        },
        Call::List { prefix } => WireCall::List {
            prefix: prefix.clone(),
        },
        Call::Flush => WireCall::Flush,
        Call::Lock {
            oid,
            name,
            cookie,
            description,
        } => WireCall::Lock {
            oid: oid.clone(),
            name: name.clone(),
            cookie: cookie.clone(),
            description: description.clone(),
        },
        Call::Unlock { oid, name, cookie } => WireCall::Unlock {
            oid: oid.clone(),
            name: name.clone(),
            cookie: cookie.clone(),
        },
        Call::LockOwners { oid, name } => WireCall::LockOwners {
            oid: oid.clone(),
            name: name.clone(),
        },
        Call::BreakLock { oid, name, owner } => WireCall::BreakLock {
            oid: oid.clone(),
            name: name.clone(),
            owner: owner.into(),
        },
        Call::Watch { oid } => WireCall::Watch { oid: oid.clone() },
        Call::Unwatch { id } => WireCall::Unwatch { id: *id },
        Call::Fence { owner } => WireCall::Fence {
            owner: owner.into(),
        },
        Call::Notify {
            oid,
            payload,
            timeout,
        } => WireCall::Notify {
            oid: oid.clone(),
            payload: payload.into(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        },
    }
}

fn call_from_wire(c: WireCall) -> Call {
    match c {
        WireCall::Read { oid, offset, len } => Call::Read { oid, offset, len },
        WireCall::Stat { oid } => Call::Stat { oid },
        WireCall::OmapGet {
            oid,
            start_after,
            prefix,
            max,
        } => Call::OmapGet {
            oid,
            start_after,
            prefix,
            max: usize::try_from(max).unwrap_or(usize::MAX),
        },
        WireCall::GetXattr { oid, name } => Call::GetXattr { oid, name },
        WireCall::Operate {
            oid,
            guards,
            actions,
        } => Call::Operate {
            oid,
            op: WriteOp {
                guards: guards.into_iter().map(guard_from_wire).collect(),
                actions: actions.into_iter().map(action_from_wire).collect(),
            },
        },
        WireCall::List { prefix } => Call::List { prefix },
        WireCall::Flush => Call::Flush,
        WireCall::Lock {
            oid,
            name,
            cookie,
            description,
        } => Call::Lock {
            oid,
            name,
            cookie,
            description,
        },
        WireCall::Unlock { oid, name, cookie } => Call::Unlock { oid, name, cookie },
        WireCall::LockOwners { oid, name } => Call::LockOwners { oid, name },
        WireCall::BreakLock { oid, name, owner } => Call::BreakLock {
            oid,
            name,
            owner: owner.into(),
        },
        WireCall::Watch { oid } => Call::Watch { oid },
        WireCall::Unwatch { id } => Call::Unwatch { id },
        WireCall::Fence { owner } => Call::Fence {
            owner: owner.into(),
        },
        WireCall::Notify {
            oid,
            payload,
            timeout_ms,
        } => Call::Notify {
            oid,
            payload: payload.into(),
            timeout: Duration::from_millis(timeout_ms),
        },
    }
}

/// The wire form of an answer other than a watch (handled by the server).
fn answer_to_wire(a: Answer) -> Result<WireAnswer> {
    Ok(match a {
        Answer::Unit => WireAnswer::Unit,
        Answer::Data(b) => WireAnswer::Data((&b).into()),
        Answer::Stat(s) => WireAnswer::Stat {
            size: s.size,
            version: s.version,
        },
        Answer::Omap(kvs) => {
            WireAnswer::Omap(kvs.into_iter().map(|(k, v)| (k, (&v).into())).collect())
        }
        Answer::Xattr(v) => WireAnswer::Xattr(v.as_ref().map(Buf::from)),
        Answer::Names(n) => WireAnswer::Names(n),
        Answer::Owners(o) => WireAnswer::Owners(o.iter().map(WireOwner::from).collect()),
        Answer::Replies(r) => WireAnswer::Replies(r.iter().map(Buf::from).collect()),
        Answer::Watch(_) => return Err(Error::io("local store: a watch has no wire form")),
    })
}

/// The answer to a call from its wire form; `watch` is the receiving end
/// the client prepared for a watch request.
fn answer_from_wire(
    a: WireAnswer,
    watch: Option<mpsc::UnboundedReceiver<Notification>>,
) -> Result<Answer> {
    Ok(match a {
        WireAnswer::Unit => Answer::Unit,
        WireAnswer::Data(b) => Answer::Data(b.into()),
        WireAnswer::Stat { size, version } => Answer::Stat(ObjectStat { size, version }),
        WireAnswer::Omap(kvs) => {
            Answer::Omap(kvs.into_iter().map(|(k, v)| (k, v.into())).collect())
        }
        WireAnswer::Xattr(v) => Answer::Xattr(v.map(Bytes::from)),
        WireAnswer::Names(n) => Answer::Names(n),
        WireAnswer::Owners(o) => Answer::Owners(o.into_iter().map(LockOwner::from).collect()),
        WireAnswer::Replies(r) => Answer::Replies(r.into_iter().map(Bytes::from).collect()),
        WireAnswer::Watched(id) => match watch {
            Some(events) => Answer::Watch(Watch { id, events }),
            None => {
                return Err(Error::io(
                    "local store server answered a non-watch request with a watch",
                ))
            }
        },
    })
}

// ---------------------------------------------------------------------------
// Framing.
// ---------------------------------------------------------------------------

/// Encodes `value` as one frame.
fn frame<T: Serialize>(rt: RecordType, value: &T) -> Result<Vec<u8>> {
    let record = envelope::encode(rt, value)?;
    if record.len() > MAX_FRAME {
        return Err(Error::invalid(format!(
            "local store: message of {} bytes exceeds the {MAX_FRAME}-byte frame limit",
            record.len()
        )));
    }
    let len = u32::try_from(record.len())
        .map_err(|_| Error::invalid("local store: message too large"))?;
    let mut out = Vec::with_capacity(4 + record.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&record);
    Ok(out)
}

fn frame_len(header: [u8; 4]) -> std::io::Result<usize> {
    let n = u32::from_le_bytes(header) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {n} bytes exceeds the {MAX_FRAME}-byte limit"),
        ));
    }
    Ok(n)
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header).await?;
    let mut buf = vec![0u8; frame_len(header)?];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

fn read_frame_sync(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header)?;
    let mut buf = vec![0u8; frame_len(header)?];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

fn is(rt: RecordType, frame: &[u8]) -> bool {
    frame.get(..4) == Some(rt.magic.as_slice())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io(format!("local store: starting the proxy runtime: {e}")))
}

// ---------------------------------------------------------------------------
// Mode selection and calls.
// ---------------------------------------------------------------------------

/// What a handle talks to: the database itself or a server process.
#[derive(Clone)]
pub(super) enum Link {
    Server(Arc<Server>),
    Client(Arc<Client>),
}

impl Link {
    fn usable(&self) -> bool {
        match self {
            Link::Server(_) => true,
            Link::Client(c) => !c.shared.dead.load(Ordering::SeqCst),
        }
    }
}

/// Opens the database as its server, or connects to the process that has
/// it open; retries for a while when neither works yet (a server starting or
/// shutting down).
pub(super) fn establish(dir: &Path, options: &LocalOptions, pid: u32) -> Result<Link> {
    let deadline = Instant::now() + CONNECT_PATIENCE;
    let sock = dir.join(SOCKET_FILE);
    loop {
        if let Some(store) = open_db(dir, options, pid)? {
            return Ok(Link::Server(Arc::new(Server::start(store, &sock)?)));
        }
        let err = match Client::connect(&sock, pid) {
            Ok(c) => {
                tracing::debug!(
                    store = %dir.display(),
                    server_pid = c.server_pid,
                    "local store: client of the store server"
                );
                return Ok(Link::Client(Arc::new(c)));
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(Error::busy(format!(
                "local store {} is open in another process that does not answer on {}: {err}",
                dir.display(),
                sock.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Executes `call` for `be`: directly on the database in server mode,
/// through the server otherwise, reconnecting (or taking over) first when
/// the server went away.
pub(super) async fn call(be: &LocalBackend, call: Call) -> Result<Answer> {
    let mut resends = 0;
    loop {
        let link = current_link(be).await?;
        match link {
            Link::Server(s) => return s.store.execute(call, be.pid).await,
            Link::Client(c) => match c.request(&call).await {
                Ok(r) => return r,
                Err(NotSent) if resends < MAX_RESENDS => resends += 1,
                Err(NotSent) => return Err(gone()),
            },
        }
    }
}

async fn current_link(be: &LocalBackend) -> Result<Link> {
    let link = lock_or_recover(&be.link).clone();
    if link.usable() {
        return Ok(link);
    }
    drop(link);
    let _one_at_a_time = be.recovery.lock().await;
    let link = lock_or_recover(&be.link).clone();
    if link.usable() {
        return Ok(link);
    }
    tracing::warn!(
        store = %be.dir.display(),
        "local store server went away: reconnecting or taking over"
    );
    let (dir, options, pid) = (be.dir.clone(), be.options.clone(), be.pid);
    let new = tokio::task::spawn_blocking(move || establish(&dir, &options, pid))
        .await
        .map_err(|e| Error::io(format!("local store: reconnect task failed: {e}")))??;
    let old = std::mem::replace(&mut *lock_or_recover(&be.link), new.clone());
    drop(old);
    drop(link);
    Ok(new)
}

// ---------------------------------------------------------------------------
// The store server.
// ---------------------------------------------------------------------------

/// The database plus, when the socket could be bound, a thread serving it to
/// other processes. Dropping it stops serving (removing the socket) before
/// the database is released.
pub(super) struct Server {
    store: Arc<Store>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(store: Store, sock: &Path) -> Result<Server> {
        let store = Arc::new(store);
        if std::fs::symlink_metadata(sock).is_ok() {
            if std::os::unix::net::UnixStream::connect(sock).is_ok() {
                return Err(Error::busy(format!(
                    "local store {}: another process answers on {} although this one \
                     opened the database",
                    store.dir.display(),
                    sock.display()
                )));
            }
            std::fs::remove_file(sock).map_err(|e| {
                Error::io(format!(
                    "local store: removing the stale socket {}: {e}",
                    sock.display()
                ))
            })?;
        }
        let listener = match std::os::unix::net::UnixListener::bind(sock)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(
                    socket = %sock.display(),
                    error = %e,
                    "local store: cannot listen; other processes cannot use this store \
                     while this one has it open"
                );
                return Ok(Server {
                    store,
                    stop: None,
                    thread: None,
                });
            }
        };
        let rt = runtime()?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let st = store.clone();
        let path = sock.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("local-store-server".into())
            .spawn(move || {
                rt.block_on(serve(st, listener, path, stop_rx));
                // Dropping the runtime ends every connection task.
            })
            .map_err(|e| Error::io(format!("local store: starting the server thread: {e}")))?;
        Ok(Server {
            store,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    store: Arc<Store>,
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "local store: cannot serve the socket");
            let _ = std::fs::remove_file(&path);
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(store.clone(), stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "local store: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(&path);
}

/// One client process, as the server sees it.
struct Conn {
    pid: u32,
    out: mpsc::UnboundedSender<Vec<u8>>,
    /// Notifications pushed to the client and not answered yet:
    /// notify id → (watch id, where the reply goes).
    notifies: Mutex<HashMap<u64, (u64, oneshot::Sender<Bytes>)>>,
    /// Watches registered through this connection; `None` once it closed.
    watches: Mutex<Option<HashSet<u64>>>,
    next_notify: AtomicU64,
}

impl Conn {
    fn send_reply(&self, id: u64, result: Result<WireAnswer>) {
        let result = result.map_err(|e| WireError::from(&e));
        let f = frame(REPLY, &WireReply { id, result }).or_else(|e| {
            frame(
                REPLY,
                &WireReply {
                    id,
                    result: Err(WireError::from(&e)),
                },
            )
        });
        match f {
            Ok(f) => {
                let _ = self.out.send(f);
            }
            Err(e) => tracing::warn!(error = %e, "local store: cannot encode a reply"),
        }
    }
}

async fn serve_connection(store: Arc<Store>, stream: tokio::net::UnixStream) {
    let (mut rd, mut wr) = stream.into_split();
    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut rd)).await {
        Ok(Ok(f)) => f,
        _ => return,
    };
    let hello: Hello = match envelope::decode(HELLO, &hello) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "local store: bad hello from a client");
            return;
        }
    };
    if hello.protocol != PROTOCOL {
        tracing::warn!(
            protocol = hello.protocol,
            "local store: client speaks another protocol"
        );
        return;
    }
    let welcome = Welcome {
        protocol: PROTOCOL,
        server_pid: store.pid,
    };
    let Ok(welcome) = frame(WELCOME, &welcome) else {
        return;
    };
    if wr.write_all(&welcome).await.is_err() {
        return;
    }
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(f) = out_rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                break;
            }
        }
    });
    let conn = Arc::new(Conn {
        pid: hello.pid,
        out: out_tx,
        notifies: Mutex::new(HashMap::new()),
        watches: Mutex::new(Some(HashSet::new())),
        next_notify: AtomicU64::new(1),
    });
    tracing::debug!(pid = conn.pid, "local store: client connected");
    loop {
        let Ok(f) = read_frame(&mut rd).await else {
            break;
        };
        if is(REQUEST, &f) {
            match envelope::decode::<WireRequest>(REQUEST, &f) {
                Ok(req) => {
                    tokio::spawn(handle_request(store.clone(), conn.clone(), req));
                }
                Err(e) => {
                    tracing::warn!(pid = conn.pid, error = %e, "local store: bad request");
                    break;
                }
            }
        } else if is(ACK, &f) {
            match envelope::decode::<WireAck>(ACK, &f) {
                Ok(ack) => {
                    let waiting = lock_or_recover(&conn.notifies).remove(&ack.notify_id);
                    if let Some((watch_id, reply)) = waiting {
                        match ack.reply {
                            Some(b) => {
                                let _ = reply.send(b.into());
                            }
                            // The watch is gone in the client.
                            None => store.remove_watch(watch_id),
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(pid = conn.pid, error = %e, "local store: bad notify reply");
                    break;
                }
            }
        } else {
            tracing::warn!(pid = conn.pid, "local store: unknown message from a client");
            break;
        }
    }
    // The client is gone: its watches go (it no longer answers), its locks
    // stay (as on RADOS; the engine's liveness probe deals with them).
    let watches = lock_or_recover(&conn.watches).take().unwrap_or_default();
    for id in watches {
        store.remove_watch(id);
    }
    lock_or_recover(&conn.notifies).clear();
    writer.abort();
    tracing::debug!(pid = conn.pid, "local store: client disconnected");
}

async fn handle_request(store: Arc<Store>, conn: Arc<Conn>, req: WireRequest) {
    let WireRequest { id, call } = req;
    let result = if store.is_fenced(conn.pid) {
        Err(Error::new(
            ErrorKind::Fenced,
            format!(
                "{} is fenced from the local store {}",
                client_name(conn.pid),
                store.dir.display()
            ),
        ))
    } else {
        let call = call_from_wire(call);
        let unwatched = match &call {
            Call::Unwatch { id } => Some(*id),
            _ => None,
        };
        let r = store.execute(call, conn.pid).await;
        if let Some(w) = unwatched {
            if let Some(ws) = lock_or_recover(&conn.watches).as_mut() {
                ws.remove(&w);
            }
        }
        r
    };
    match result {
        Ok(Answer::Watch(w)) => {
            let open = match lock_or_recover(&conn.watches).as_mut() {
                Some(ws) => {
                    ws.insert(w.id);
                    true
                }
                None => false,
            };
            if !open {
                store.remove_watch(w.id);
                return;
            }
            // The reply is queued before the first notification of the watch.
            conn.send_reply(id, Ok(WireAnswer::Watched(w.id)));
            tokio::spawn(forward_notifications(conn, w));
        }
        Ok(a) => conn.send_reply(id, answer_to_wire(a)),
        Err(e) => conn.send_reply(id, Err(e)),
    }
}

/// Pushes the notifications of a client's watch to the client.
async fn forward_notifications(conn: Arc<Conn>, mut w: Watch) {
    while let Some(n) = w.events.recv().await {
        let notify_id = conn.next_notify.fetch_add(1, Ordering::Relaxed);
        let push = WirePush {
            watch_id: w.id,
            notify_id,
            payload: (&n.payload).into(),
        };
        let Ok(f) = frame(PUSH, &push) else {
            continue; // dropping the reply acknowledges with nothing
        };
        lock_or_recover(&conn.notifies).insert(notify_id, (w.id, n.reply));
        if conn.out.send(f).is_err() {
            lock_or_recover(&conn.notifies).remove(&notify_id);
            break;
        }
    }
}

// ---------------------------------------------------------------------------
// Client mode.
// ---------------------------------------------------------------------------

/// The call was not written to the server (safe to send again elsewhere).
#[derive(Debug)]
pub(super) struct NotSent;

enum Outcome {
    Reply(std::result::Result<WireAnswer, WireError>),
    NotSent,
}

struct PendingCall {
    tx: oneshot::Sender<Outcome>,
    /// For a watch request: where its notifications go once registered.
    watch: Option<mpsc::UnboundedSender<Notification>>,
}

/// The connection state shared by callers and the proxy tasks.
struct Shared {
    /// Frames to write, with the request id they carry (if any).
    out: mpsc::UnboundedSender<(Option<u64>, Vec<u8>)>,
    pending: Mutex<HashMap<u64, PendingCall>>,
    watches: Mutex<HashMap<u64, mpsc::UnboundedSender<Notification>>>,
    dead: AtomicBool,
    next_id: AtomicU64,
}

impl Shared {
    fn not_sent(&self, id: Option<u64>) {
        if let Some(id) = id {
            if let Some(p) = lock_or_recover(&self.pending).remove(&id) {
                let _ = p.tx.send(Outcome::NotSent);
            }
        }
    }

    fn send_ack(&self, notify_id: u64, reply: Option<Bytes>) {
        let ack = WireAck {
            notify_id,
            reply: reply.as_ref().map(Buf::from),
        };
        if let Ok(f) = frame(ACK, &ack) {
            let _ = self.out.send((None, f));
        }
    }
}

/// A connection to the store server, served by a thread of its own.
pub(super) struct Client {
    shared: Arc<Shared>,
    server_pid: u32,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn connect(sock: &Path, pid: u32) -> Result<Client> {
        let io = |what: &str, e: std::io::Error| {
            Error::io(format!("local store: {what} {}: {e}", sock.display()))
        };
        let mut s =
            std::os::unix::net::UnixStream::connect(sock).map_err(|e| io("connecting to", e))?;
        s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .and_then(|()| s.set_write_timeout(Some(HANDSHAKE_TIMEOUT)))
            .map_err(|e| io("configuring", e))?;
        let hello = frame(
            HELLO,
            &Hello {
                protocol: PROTOCOL,
                pid,
            },
        )?;
        s.write_all(&hello).map_err(|e| io("greeting", e))?;
        let welcome = read_frame_sync(&mut s).map_err(|e| io("handshake on", e))?;
        let welcome: Welcome = envelope::decode(WELCOME, &welcome)?;
        if welcome.protocol != PROTOCOL {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "local store server (pid {}) speaks protocol {}, this build {PROTOCOL}",
                    welcome.server_pid, welcome.protocol
                ),
            ));
        }
        s.set_read_timeout(None)
            .and_then(|()| s.set_write_timeout(None))
            .and_then(|()| s.set_nonblocking(true))
            .map_err(|e| io("configuring", e))?;
        let rt = runtime()?;
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            out: out_tx,
            pending: Mutex::new(HashMap::new()),
            watches: Mutex::new(HashMap::new()),
            dead: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("local-store-client".into())
            .spawn(move || rt.block_on(run_client(sh, s, out_rx, stop_rx)))
            .map_err(|e| Error::io(format!("local store: starting the client thread: {e}")))?;
        Ok(Client {
            shared,
            server_pid: welcome.server_pid,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Sends `call` and waits for its answer. `Err(NotSent)`: the connection
    /// was dead before the call was written.
    async fn request(&self, call: &Call) -> std::result::Result<Result<Answer>, NotSent> {
        let sh = &self.shared;
        if sh.dead.load(Ordering::SeqCst) {
            return Err(NotSent);
        }
        let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
        let f = match frame(
            REQUEST,
            &WireRequest {
                id,
                call: call_to_wire(call),
            },
        ) {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        let (tx, rx) = oneshot::channel();
        let (watch_tx, watch_rx) = match call {
            Call::Watch { .. } => {
                let (t, r) = mpsc::unbounded_channel();
                (Some(t), Some(r))
            }
            _ => (None, None),
        };
        lock_or_recover(&sh.pending).insert(
            id,
            PendingCall {
                tx,
                watch: watch_tx,
            },
        );
        if sh.out.send((Some(id), f)).is_err() {
            lock_or_recover(&sh.pending).remove(&id);
            return Err(NotSent);
        }
        match rx.await {
            Ok(Outcome::NotSent) => Err(NotSent),
            Ok(Outcome::Reply(Ok(a))) => Ok(answer_from_wire(a, watch_rx)),
            Ok(Outcome::Reply(Err(e))) => Ok(Err(e.into())),
            Err(_dropped) => Ok(Err(gone())),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run_client(
    sh: Arc<Shared>,
    s: std::os::unix::net::UnixStream,
    out_rx: mpsc::UnboundedReceiver<(Option<u64>, Vec<u8>)>,
    stop: oneshot::Receiver<()>,
) {
    let stream = match tokio::net::UnixStream::from_std(s) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "local store: cannot use the server connection");
            sh.dead.store(true, Ordering::SeqCst);
            lock_or_recover(&sh.pending).clear();
            return;
        }
    };
    let (rd, wr) = stream.into_split();
    let eof = Arc::new(tokio::sync::Notify::new());
    let reader = tokio::spawn(client_reader(sh.clone(), rd, eof.clone()));
    let writer = client_writer(sh, out_rx, wr, eof);
    tokio::select! {
        _ = stop => {}
        _ = writer => {}
    }
    reader.abort();
}

async fn client_reader(
    sh: Arc<Shared>,
    mut rd: tokio::net::unix::OwnedReadHalf,
    eof: Arc<tokio::sync::Notify>,
) {
    loop {
        let Ok(f) = read_frame(&mut rd).await else {
            break;
        };
        if is(REPLY, &f) {
            let Ok(rep) = envelope::decode::<WireReply>(REPLY, &f) else {
                tracing::warn!("local store: bad reply from the server");
                break;
            };
            let Some(p) = lock_or_recover(&sh.pending).remove(&rep.id) else {
                continue; // the caller gave up
            };
            if let (Ok(WireAnswer::Watched(wid)), Some(tx)) = (&rep.result, p.watch) {
                lock_or_recover(&sh.watches).insert(*wid, tx);
            }
            let _ = p.tx.send(Outcome::Reply(rep.result));
        } else if is(PUSH, &f) {
            let Ok(push) = envelope::decode::<WirePush>(PUSH, &f) else {
                tracing::warn!("local store: bad notification from the server");
                break;
            };
            let tx = lock_or_recover(&sh.watches).get(&push.watch_id).cloned();
            let (rtx, rrx) = oneshot::channel();
            let delivered = tx.is_some_and(|tx| {
                tx.send(Notification {
                    payload: push.payload.into(),
                    reply: rtx,
                })
                .is_ok()
            });
            if delivered {
                let sh = sh.clone();
                tokio::spawn(async move {
                    let reply = rrx.await.unwrap_or_default();
                    sh.send_ack(push.notify_id, Some(reply));
                });
            } else {
                lock_or_recover(&sh.watches).remove(&push.watch_id);
                sh.send_ack(push.notify_id, None);
            }
        } else {
            tracing::warn!("local store: unknown message from the server");
            break;
        }
    }
    eof.notify_one();
}

/// Writes frames until the connection fails or the reader saw its end; then
/// marks the connection dead and fails every call: `NotSent` for those not
/// written, "server went away" for those written but not answered.
async fn client_writer(
    sh: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<(Option<u64>, Vec<u8>)>,
    mut wr: tokio::net::unix::OwnedWriteHalf,
    eof: Arc<tokio::sync::Notify>,
) {
    let mut failed = None;
    loop {
        tokio::select! {
            biased;
            _ = eof.notified() => break,
            item = rx.recv() => match item {
                None => break,
                Some((id, f)) => {
                    if wr.write_all(&f).await.is_err() {
                        failed = Some(id);
                        break;
                    }
                }
            },
        }
    }
    sh.dead.store(true, Ordering::SeqCst);
    if let Some(id) = failed {
        sh.not_sent(id);
    }
    rx.close();
    while let Ok((id, _)) = rx.try_recv() {
        sh.not_sent(id);
    }
    // Written but unanswered: dropping the senders reports "went away".
    let pending: Vec<_> = lock_or_recover(&sh.pending).drain().collect();
    drop(pending);
    // The server dropped our watches with the connection.
    lock_or_recover(&sh.watches).clear();
    let _ = wr.shutdown().await;
}
