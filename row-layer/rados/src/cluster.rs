//! Cluster connections (`rados_t`) and pool handles (`rados_ioctx_t`).
//!
//! Depends only on `error`; `aio` and `backend` build on it (see the
//! module layering in the crate docs).

use crate::error::{check, invalid, io, rados_error};
use bytes::Bytes;
use librados_sys as sys;
use row_layer::Result;
use std::ffi::{c_char, CStr, CString};
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How to reach a cluster. Every field is optional; the defaults are what
/// the `ceph` and `rados` tools use.
#[derive(Debug, Clone, Default)]
pub struct ClusterConfig {
    /// A ceph.conf to read. `None`: librados' search (`$CEPH_CONF`, then
    /// `/etc/ceph/$cluster.conf`, `~/.ceph/$cluster.conf`, `./$cluster.conf`).
    pub conf_path: Option<PathBuf>,
    /// The entity to authenticate as (`client.admin`, `client.rbdrow`).
    /// `None`: `--id`/`--name`/`-n`/`--user` from `$CEPH_ARGS` if present,
    /// else `client.admin`.
    pub client_name: Option<String>,
    /// Keyring file; overrides the `keyring` option of the conf file.
    pub keyring: Option<PathBuf>,
    /// Cluster name (`ceph` if `None`); selects `$cluster.conf`.
    pub cluster_name: Option<String>,
    /// Further config options, set last (after the conf file and
    /// `$CEPH_ARGS`), e.g. `("client_mount_timeout", "15")`. If none of
    /// them sets `rados_osd_op_timeout` and it is 0 (wait forever) after the
    /// conf file and `$CEPH_ARGS`, it is set to
    /// [`DEFAULT_OSD_OP_TIMEOUT_SECS`].
    pub options: Vec<(String, String)>,
}

/// The librados handle. Dropped (shut down) after the last pool handle.
pub(crate) struct ClusterInner {
    ptr: sys::rados_t,
    name: String,
    /// Completed waits for the latest OSD map.
    osdmap_waits: AtomicU64,
    /// False for a caller's handle borrowed by `borrowed.rs`: never shut down.
    owned: bool,
}

// SAFETY: a connected rados_t is internally synchronized; librados documents
// its handles as usable from several threads at once.
unsafe impl Send for ClusterInner {}
// SAFETY: see above.
unsafe impl Sync for ClusterInner {}

impl Drop for ClusterInner {
    fn drop(&mut self) {
        if !self.owned {
            return; // the caller's handle: the caller shuts it down
        }
        // SAFETY: every IoCtx holds an Arc to us, so none outlives this call;
        // in-flight completions hold IoCtx Arcs and are never dropped on a
        // librados thread (see aio::drop_elsewhere).
        unsafe { sys::rados_shutdown(self.ptr) };
    }
}

impl ClusterInner {
    pub(crate) fn ptr(&self) -> sys::rados_t {
        self.ptr
    }

    /// A connected handle owned by someone else, which dropping leaves open.
    pub(crate) fn borrowed(ptr: sys::rados_t, name: String) -> ClusterInner {
        ClusterInner {
            ptr,
            name,
            osdmap_waits: AtomicU64::new(0),
            owned: false,
        }
    }
}

/// A connected cluster handle; cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct RadosCluster {
    pub(crate) inner: Arc<ClusterInner>,
}

impl std::fmt::Debug for RadosCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RadosCluster")
            .field("client", &self.inner.name)
            .finish_non_exhaustive()
    }
}

/// A pool (and namespace) handle; outlives no cluster.
pub(crate) struct IoCtx {
    ptr: sys::rados_ioctx_t,
    pub(crate) cluster: Arc<ClusterInner>,
}

// SAFETY: librados I/O contexts may be used from several threads at once for
// I/O; the only non-thread-safe calls (set_namespace, snap setters) are made
// once, before the handle is shared.
unsafe impl Send for IoCtx {}
// SAFETY: see above.
unsafe impl Sync for IoCtx {}

impl IoCtx {
    pub(crate) fn ptr(&self) -> sys::rados_ioctx_t {
        self.ptr
    }

    /// Takes ownership of `ptr` (destroyed on drop), an ioctx of `cluster`.
    pub(crate) fn from_raw(ptr: sys::rados_ioctx_t, cluster: Arc<ClusterInner>) -> IoCtx {
        IoCtx { ptr, cluster }
    }
}

impl Drop for IoCtx {
    fn drop(&mut self) {
        // SAFETY: no operation is in flight: each holds an Arc<IoCtx>.
        unsafe { sys::rados_ioctx_destroy(self.ptr) };
    }
}

pub(crate) fn cstring(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| invalid(format!("{what} {s:?} contains a NUL byte")))
}

/// Runs a blocking librados call on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io(format!("blocking librados call failed: {e}")))?
}

/// The entity named by `--id X`, `--user X`, `--name T.X` or `-n T.X` in `args`.
fn name_from_ceph_args(args: &str) -> Option<String> {
    let mut it = args.split_whitespace();
    let mut found = None;
    while let Some(a) = it.next() {
        let (flag, val) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (a, None),
        };
        let is_id = matches!(flag, "--id" | "--user");
        let is_name = matches!(flag, "--name" | "-n");
        if !is_id && !is_name {
            continue;
        }
        let Some(v) = val.or_else(|| it.next().map(str::to_string)) else {
            break;
        };
        found = Some(if is_id { format!("client.{v}") } else { v });
    }
    found
}

/// A librados string from `rados_getaddrs`/`rados_mon_command`, freed here.
///
/// # Safety
/// `buf` must be null or a buffer of `len` bytes allocated by librados.
unsafe fn take_rados_buffer(buf: *mut c_char, len: usize) -> Bytes {
    if buf.is_null() {
        return Bytes::new();
    }
    // SAFETY: per the caller, buf holds len bytes.
    let out = Bytes::copy_from_slice(unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) });
    // SAFETY: allocated by librados, freed exactly once.
    unsafe { sys::rados_buffer_free(buf) };
    out
}

/// `rados_osd_op_timeout` set by [`RadosCluster::connect`] when neither the
/// config file, `$CEPH_ARGS` nor [`ClusterConfig::options`] set one.
pub const DEFAULT_OSD_OP_TIMEOUT_SECS: u64 = 120;

/// Whether config option name `k` is `name` (Ceph treats `_`, `-` and ` `
/// alike).
fn is_option(k: &str, name: &str) -> bool {
    k.trim().replace(['-', ' '], "_") == name
}

/// `rados_conf_get` into a string.
pub(crate) fn conf_get(ptr: sys::rados_t, option: &str) -> Result<String> {
    let c_opt = cstring(option, "config option")?;
    let mut cap = 256usize;
    loop {
        let mut buf = vec![0u8; cap];
        // SAFETY: valid handle and option name; a buffer of `cap` bytes.
        let r = unsafe {
            sys::rados_conf_get(ptr, c_opt.as_ptr(), buf.as_mut_ptr().cast::<c_char>(), cap)
        };
        if r == -crate::error::errno::ENAMETOOLONG && cap < (1 << 20) {
            cap *= 8;
            continue;
        }
        check(r, format_args!("reading config option {option}"))?;
        let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        return Ok(String::from_utf8_lossy(&buf[..len]).into_owned());
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl RadosCluster {
    /// Creates, configures and connects a librados handle, as the Ceph
    /// tools do: `rados_create2`, `rados_conf_read_file` (the given path or
    /// librados' search, which honours `$CEPH_CONF`), `rados_conf_parse_env`
    /// (`$CEPH_ARGS`), then `keyring` and `options`, then `rados_connect`.
    pub async fn connect(config: ClusterConfig) -> Result<RadosCluster> {
        blocking(move || Self::connect_blocking(&config)).await
    }

    /// [`RadosCluster::connect`] for callers outside an async runtime. Blocks
    /// up to `client_mount_timeout` (librados default 300 s).
    pub fn connect_blocking(config: &ClusterConfig) -> Result<RadosCluster> {
        let name = match &config.client_name {
            Some(n) => n.clone(),
            None => std::env::var("CEPH_ARGS")
                .ok()
                .and_then(|a| name_from_ceph_args(&a))
                .unwrap_or_else(|| "client.admin".to_string()),
        };
        let cluster_name = config.cluster_name.clone().unwrap_or_else(|| "ceph".into());
        let c_name = cstring(&name, "client name")?;
        let c_cluster = cstring(&cluster_name, "cluster name")?;
        let mut ptr: sys::rados_t = ptr::null_mut();
        // SAFETY: out-pointer and NUL-terminated strings valid for the call.
        let r = unsafe { sys::rados_create2(&mut ptr, c_cluster.as_ptr(), c_name.as_ptr(), 0) };
        check(r, format_args!("rados_create2({cluster_name}, {name})"))?;
        // From here on the handle is shut down on every path.
        let inner = Arc::new(ClusterInner {
            ptr,
            name: name.clone(),
            osdmap_waits: AtomicU64::new(0),
            owned: true,
        });
        let conf = match &config.conf_path {
            Some(p) => Some(cstring(
                p.to_str()
                    .ok_or_else(|| invalid(format!("conf path {p:?} is not UTF-8")))?,
                "conf path",
            )?),
            None => None,
        };
        let conf_ptr = conf.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        // SAFETY: valid handle, path NUL-terminated or null (search).
        let r = unsafe { sys::rados_conf_read_file(ptr, conf_ptr) };
        let shown = config
            .conf_path
            .as_ref()
            .map(|p| p.display().to_string())
            .or_else(|| std::env::var("CEPH_CONF").ok())
            .unwrap_or_else(|| "default search path".into());
        check(r, format_args!("reading ceph config {shown}"))?;
        // SAFETY: valid handle; null selects $CEPH_ARGS.
        let r = unsafe { sys::rados_conf_parse_env(ptr, ptr::null()) };
        check(r, "parsing CEPH_ARGS")?;
        let mut opts: Vec<(String, String)> = Vec::new();
        if let Some(k) = &config.keyring {
            let k = k
                .to_str()
                .ok_or_else(|| invalid(format!("keyring path {k:?} is not UTF-8")))?;
            opts.push(("keyring".into(), k.into()));
        }
        opts.extend(config.options.iter().cloned());
        // Bound every OSD op unless the caller chose: librados' default (0)
        // waits forever for an op to an OSD that never answers.
        if !opts
            .iter()
            .any(|(k, _)| is_option(k, "rados_osd_op_timeout"))
            && conf_get(ptr, "rados_osd_op_timeout")
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                == Some(0.0)
        {
            opts.push((
                "rados_osd_op_timeout".into(),
                DEFAULT_OSD_OP_TIMEOUT_SECS.to_string(),
            ));
        }
        for (k, v) in &opts {
            let ck = cstring(k, "config option")?;
            let cv = cstring(v, "config value")?;
            // SAFETY: valid handle and strings.
            let r = unsafe { sys::rados_conf_set(ptr, ck.as_ptr(), cv.as_ptr()) };
            check(r, format_args!("setting config option {k}={v}"))?;
        }
        // SAFETY: configured handle.
        let r = unsafe { sys::rados_connect(ptr) };
        check(
            r,
            format_args!("connecting to ceph cluster {cluster_name} as {name} (config {shown})"),
        )?;
        tracing::debug!(client = %name, conf = %shown, "connected to RADOS");
        Ok(RadosCluster { inner })
    }

    /// Creates an I/O context on `pool` (C string `c_pool`, shown as `pool`
    /// in errors) with `c_ns` as its namespace. Blocking: callers run it on
    /// the blocking pool (`RadosCluster::open_pool`, in `backend`, wraps the
    /// context in a backend; it lives there so that this module does not
    /// depend on the backend).
    pub(crate) fn open_ioctx_blocking(
        &self,
        c_pool: &CStr,
        c_ns: &CStr,
        pool: &str,
    ) -> Result<Arc<IoCtx>> {
        let mut io: sys::rados_ioctx_t = ptr::null_mut();
        // SAFETY: connected handle, valid out-pointer and name.
        let r = unsafe { sys::rados_ioctx_create(self.inner.ptr, c_pool.as_ptr(), &mut io) };
        check(r, format_args!("opening pool {pool}"))?;
        // SAFETY: fresh ioctx, not yet shared.
        unsafe { sys::rados_ioctx_set_namespace(io, c_ns.as_ptr()) };
        Ok(Arc::new(IoCtx {
            ptr: io,
            cluster: self.inner.clone(),
        }))
    }

    /// Creates an I/O context on pool id `pool_id` with namespace `c_ns`.
    /// Blocking (quick once connected: the pool is looked up in the
    /// client's OSD map).
    pub(crate) fn open_ioctx_by_id_blocking(
        &self,
        pool_id: i64,
        c_ns: &CStr,
    ) -> Result<Arc<IoCtx>> {
        let mut io: sys::rados_ioctx_t = ptr::null_mut();
        // SAFETY: connected handle, valid out-pointer.
        let r = unsafe { sys::rados_ioctx_create2(self.inner.ptr, pool_id, &mut io) };
        check(r, format_args!("opening pool id {pool_id}"))?;
        // SAFETY: fresh ioctx, not yet shared.
        unsafe { sys::rados_ioctx_set_namespace(io, c_ns.as_ptr()) };
        Ok(Arc::new(IoCtx::from_raw(io, self.inner.clone())))
    }

    /// The value of a librados config option of this handle (e.g.
    /// `rados_osd_op_timeout`).
    pub fn conf_get(&self, option: &str) -> Result<String> {
        conf_get(self.inner.ptr, option)
    }

    /// The client entity this handle authenticated as.
    pub fn client_name(&self) -> &str {
        &self.inner.name
    }

    /// This client's global instance id (the `4123` of `client.4123`).
    pub fn instance_id(&self) -> u64 {
        // SAFETY: connected handle.
        unsafe { sys::rados_get_instance_id(self.inner.ptr) }
    }

    /// This client's address as the OSDs see it (what `osd blocklist add` takes).
    pub fn instance_addr(&self) -> Result<String> {
        let mut buf: *mut c_char = ptr::null_mut();
        // SAFETY: connected handle, valid out-pointer.
        let r = unsafe { sys::rados_getaddrs(self.inner.ptr, &mut buf) };
        check(r, "rados_getaddrs")?;
        if buf.is_null() {
            return Err(io("rados_getaddrs returned no address"));
        }
        // SAFETY: librados returns a NUL-terminated string.
        let len = unsafe { CStr::from_ptr(buf) }.to_bytes().len();
        // SAFETY: buf from librados, len bytes before the NUL.
        let bytes = unsafe { take_rados_buffer(buf, len) };
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Sends a JSON command to the monitors; returns (output, status string).
    pub async fn mon_command(&self, json: &str) -> Result<(Bytes, String)> {
        let cluster = self.inner.clone();
        let cmd = cstring(json, "mon command")?;
        let shown = json.to_string();
        blocking(move || {
            let mut cmds = [cmd.as_ptr()];
            let (mut out, mut out_len) = (ptr::null_mut::<c_char>(), 0usize);
            let (mut outs, mut outs_len) = (ptr::null_mut::<c_char>(), 0usize);
            // SAFETY: one valid command string; out-pointers valid; buffers
            // returned by librados are freed below.
            let r = unsafe {
                sys::rados_mon_command(
                    cluster.ptr,
                    cmds.as_mut_ptr(),
                    1,
                    ptr::null(),
                    0,
                    &mut out,
                    &mut out_len,
                    &mut outs,
                    &mut outs_len,
                )
            };
            // SAFETY: buffers (or null) from librados with their lengths.
            let (out, outs) = unsafe {
                (
                    take_rados_buffer(out, out_len),
                    take_rados_buffer(outs, outs_len),
                )
            };
            let outs = String::from_utf8_lossy(&outs).into_owned();
            if r < 0 {
                return Err(rados_error(r, format_args!("mon command {shown}: {outs}")));
            }
            Ok((out, outs))
        })
        .await
    }

    /// Blocklists (fences) a client address, e.g. another client's
    /// [`RadosCluster::instance_addr`]; its further I/O fails with `Fenced`.
    ///
    /// Returns only once this client has the OSD map that carries the
    /// blocklist entry (`rados_wait_for_latest_osdmap`, as librados' own
    /// `blocklist_add` and librbd's lock breaking do): every later op of this
    /// client carries that epoch, and an OSD handles it only once it has the
    /// map too, so no op of the fenced client can land after it.
    pub async fn blocklist_add(&self, addr: &str) -> Result<()> {
        let cmd = format!(
            "{{\"prefix\":\"osd blocklist\",\"blocklistop\":\"add\",\"addr\":{}}}",
            json_string(addr)
        );
        self.mon_command(&cmd).await?;
        self.wait_for_latest_osdmap().await
    }

    /// Waits until this client has the newest OSD map the monitors have.
    pub async fn wait_for_latest_osdmap(&self) -> Result<()> {
        let cluster = self.inner.clone();
        blocking(move || {
            // SAFETY: connected handle.
            let r = unsafe { sys::rados_wait_for_latest_osdmap(cluster.ptr) };
            check(r, "waiting for the latest OSD map")?;
            cluster.osdmap_waits.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .await
    }

    /// How many waits for the latest OSD map (one per
    /// [`RadosCluster::blocklist_add`]) this handle has completed.
    pub fn osdmap_waits(&self) -> u64 {
        self.inner.osdmap_waits.load(Ordering::Relaxed)
    }

    /// Removes an address from the blocklist.
    pub async fn blocklist_rm(&self, addr: &str) -> Result<()> {
        let cmd = format!(
            "{{\"prefix\":\"osd blocklist\",\"blocklistop\":\"rm\",\"addr\":{}}}",
            json_string(addr)
        );
        self.mon_command(&cmd).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceph_args_names() {
        assert_eq!(
            name_from_ceph_args("--id rbdrow"),
            Some("client.rbdrow".into())
        );
        assert_eq!(
            name_from_ceph_args("-n client.x --foo"),
            Some("client.x".into())
        );
        assert_eq!(
            name_from_ceph_args("--name=client.y"),
            Some("client.y".into())
        );
        assert_eq!(name_from_ceph_args("--keyring /k --user"), None);
        assert_eq!(name_from_ceph_args(""), None);
    }

    #[test]
    fn json_escaping() {
        assert_eq!(json_string("1.2.3.4:0/5"), "\"1.2.3.4:0/5\"");
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
