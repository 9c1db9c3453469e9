//! Which store a command talks to, chosen the way the Ceph tools choose a
//! cluster, and opening [`Store`]s for a pool and namespace in it.
//!
//! Precedence (first match wins):
//! 1. `--store DIR`: the embedded local store in DIR;
//! 2. `-c/--conf PATH`, `--id`, `--name`, `--keyring`, `--cluster`: Ceph;
//! 3. `$RBD_ROW_STORE`: local store;
//! 4. `$CEPH_CONF`, or `$CEPH_ARGS` naming `-c/--conf`: Ceph;
//! 5. `/etc/ceph/ceph.conf` exists: Ceph;
//! 6. otherwise the default local store, `$XDG_DATA_HOME/rbd-row/store`
//!    (or `~/.local/share/rbd-row/store`), announced once on stderr (when it
//!    is first created).
//!
//! On a local store, pool and namespace are subdirectories
//! (`DIR/<pool>` for the default namespace, `DIR/<pool>/<namespace>`
//! otherwise), each an independent [`LocalBackend`], so names in different
//! pools or namespaces never collide. On Ceph they are the RADOS pool and
//! namespace ([`RadosCluster::open_pool`]).

use crate::error::{CliError, CliResult};
use row_layer::backend::local::LocalBackend;
use row_layer::backend::Backend;
use row_layer::Store;
use row_rados::{ClusterConfig, RadosCluster};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Command-line options that select the store (global on every verb).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StoreArgs {
    /// Path to the Ceph configuration file (also `$CEPH_CONF`).
    #[arg(short = 'c', long = "conf", global = true, value_name = "PATH")]
    pub conf: Option<PathBuf>,
    /// Client id, without the `client.` prefix.
    #[arg(long = "id", global = true, value_name = "ID")]
    pub id: Option<String>,
    /// Client name (`client.NAME`).
    #[arg(short = 'n', long = "name", global = true, value_name = "NAME")]
    pub name: Option<String>,
    /// Path to the keyring.
    #[arg(short = 'k', long = "keyring", global = true, value_name = "PATH")]
    pub keyring: Option<PathBuf>,
    /// Cluster name (selects `/etc/ceph/$cluster.conf`).
    #[arg(long = "cluster", global = true, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Embedded local store directory instead of Ceph (also `$RBD_ROW_STORE`).
    #[arg(long = "store", global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
}

/// The selected store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreTarget {
    /// A Ceph cluster.
    Ceph(CephTarget),
    /// The embedded local store rooted at `dir`.
    Local {
        /// Root directory.
        dir: PathBuf,
        /// True when this is the default store (nothing was configured).
        is_default: bool,
    },
}

/// How to connect to Ceph.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CephTarget {
    /// ceph.conf path; `None`: librados' search (`$CEPH_CONF`, `/etc/ceph`).
    pub conf: Option<PathBuf>,
    /// Full entity name (`client.admin`).
    pub client_name: Option<String>,
    /// Keyring path.
    pub keyring: Option<PathBuf>,
    /// Cluster name.
    pub cluster: Option<String>,
}

impl CephTarget {
    /// As a [`ClusterConfig`] for [`RadosCluster::connect`].
    pub fn cluster_config(&self) -> ClusterConfig {
        ClusterConfig {
            conf_path: self.conf.clone(),
            client_name: self.client_name.clone(),
            keyring: self.keyring.clone(),
            cluster_name: self.cluster.clone(),
            options: vec![("client_mount_timeout".into(), "30".into())],
        }
    }
}

fn ceph_args_name_conf(args: &str) -> bool {
    args.split_whitespace()
        .any(|a| a == "-c" || a == "--conf" || a.starts_with("--conf=") || a.starts_with("-c="))
}

/// Chooses the store from `args` and the environment (`env` looks a
/// variable up; pass `|k| std::env::var(k).ok()`), see the module docs.
pub fn select(args: &StoreArgs, env: &dyn Fn(&str) -> Option<String>) -> CliResult<StoreTarget> {
    select_with(args, env, Path::new("/etc/ceph/ceph.conf").exists())
}

/// [`select`] with the existence of `/etc/ceph/ceph.conf` given.
pub fn select_with(
    args: &StoreArgs,
    env: &dyn Fn(&str) -> Option<String>,
    etc_ceph_conf_exists: bool,
) -> CliResult<StoreTarget> {
    let nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(dir) = &args.store {
        return Ok(StoreTarget::Local {
            dir: dir.clone(),
            is_default: false,
        });
    }
    let client_name = match (&args.name, &args.id) {
        (Some(n), _) => Some(n.clone()),
        (None, Some(id)) => Some(format!("client.{id}")),
        (None, None) => None,
    };
    let ceph = CephTarget {
        conf: args.conf.clone(),
        client_name,
        keyring: args.keyring.clone(),
        cluster: args.cluster.clone(),
    };
    let ceph_flags = ceph != CephTarget::default();
    if ceph_flags {
        return Ok(StoreTarget::Ceph(ceph));
    }
    if let Some(dir) = nonempty("RBD_ROW_STORE") {
        return Ok(StoreTarget::Local {
            dir: PathBuf::from(dir),
            is_default: false,
        });
    }
    if nonempty("CEPH_CONF").is_some()
        || nonempty("CEPH_ARGS").is_some_and(|a| ceph_args_name_conf(&a))
        || etc_ceph_conf_exists
    {
        return Ok(StoreTarget::Ceph(ceph));
    }
    let base =
        match nonempty("XDG_DATA_HOME") {
            Some(x) => PathBuf::from(x),
            None => match nonempty("HOME") {
                Some(h) => PathBuf::from(h).join(".local/share"),
                None => return Err(CliError::usage(
                    "rbd-row: no store configured and neither $XDG_DATA_HOME nor $HOME is set; \
                     use --store DIR or -c ceph.conf",
                )),
            },
        };
    Ok(StoreTarget::Local {
        dir: base.join("rbd-row").join("store"),
        is_default: true,
    })
}

fn check_component(what: &str, s: &str) -> CliResult<()> {
    if s.is_empty()
        || s == "."
        || s == ".."
        || s.contains(['/', '\0'])
        || s.starts_with('.')
        || s.len() > 255
    {
        return Err(CliError::usage(format!(
            "rbd-row: invalid {what} name '{s}'"
        )));
    }
    Ok(())
}

/// The directory of `pool`/`namespace` in a local store rooted at `root`.
pub fn local_dir(root: &Path, pool: &str, namespace: &str) -> CliResult<PathBuf> {
    check_component("pool", pool)?;
    let mut d = root.join(pool);
    if !namespace.is_empty() {
        check_component("namespace", namespace)?;
        d = d.join(namespace);
    }
    Ok(d)
}

/// Opens stores of one target, caching connections and open backends (a
/// local store directory can be opened once per process).
pub struct Stores {
    target: StoreTarget,
    cluster: tokio::sync::OnceCell<RadosCluster>,
    opened: Mutex<HashMap<(String, String), Store>>,
    announced: Mutex<bool>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Stores {
    /// Stores of `target`.
    pub fn new(target: StoreTarget) -> Self {
        Stores {
            target,
            cluster: tokio::sync::OnceCell::new(),
            opened: Mutex::new(HashMap::new()),
            announced: Mutex::new(false),
        }
    }

    /// The target.
    pub fn target(&self) -> &StoreTarget {
        &self.target
    }

    /// The connected cluster (Ceph targets only).
    pub async fn cluster(&self) -> CliResult<Option<&RadosCluster>> {
        let StoreTarget::Ceph(c) = &self.target else {
            return Ok(None);
        };
        let cfg = c.cluster_config();
        let cl = self
            .cluster
            .get_or_try_init(|| async move {
                RadosCluster::connect(cfg)
                    .await
                    .map_err(|e| CliError::row("rbd-row: couldn't connect to the cluster!", &e))
            })
            .await?;
        Ok(Some(cl))
    }

    /// The store of `pool`/`namespace`. With `create` false, a local pool
    /// directory that does not exist yields `Ok(None)` (nothing in it)
    /// instead of being created.
    pub async fn get(&self, pool: &str, namespace: &str, create: bool) -> CliResult<Option<Store>> {
        let key = (pool.to_string(), namespace.to_string());
        let cached = self
            .opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if let Some(s) = cached {
            return Ok(Some(s));
        }
        let backend: Arc<dyn Backend> = match &self.target {
            StoreTarget::Local { dir, is_default } => {
                let d = local_dir(dir, pool, namespace)?;
                if !d.exists() {
                    if !create {
                        return Ok(None);
                    }
                    let mut ann = self.announced.lock().unwrap_or_else(|p| p.into_inner());
                    if *is_default && !*ann && !dir.exists() {
                        eprintln!(
                            "rbd-row: no Ceph cluster or store configured; using the local store {} \
                             (choose one with --store DIR, RBD_ROW_STORE, -c PATH or CEPH_CONF)",
                            dir.display()
                        );
                        *ann = true;
                    }
                }
                let d2 = d.clone();
                let b = tokio::task::spawn_blocking(move || LocalBackend::open(&d2))
                    .await
                    .map_err(|e| CliError::msg(5, format!("rbd-row: opening local store: {e}")))?
                    .map_err(|e| {
                        CliError::row(format!("rbd-row: error opening pool {pool}"), &e)
                    })?;
                Arc::new(b)
            }
            StoreTarget::Ceph(_) => {
                let cl = self
                    .cluster()
                    .await?
                    .ok_or_else(|| CliError::msg(5, "rbd-row: no cluster"))?;
                let b = cl.open_pool(pool, namespace).await.map_err(|e| {
                    CliError::row(format!("rbd-row: error opening pool '{pool}'"), &e)
                })?;
                Arc::new(b)
            }
        };
        let store = Store::new(backend);
        self.opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, store.clone());
        Ok(Some(store))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let v: Vec<(String, String)> = vars
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        move |k: &str| v.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone())
    }

    #[test]
    fn precedence() {
        let none = StoreArgs::default();
        let e = env_of(&[("HOME", "/h")]);
        assert_eq!(
            select_with(&none, &e, false).ok(),
            Some(StoreTarget::Local {
                dir: "/h/.local/share/rbd-row/store".into(),
                is_default: true
            })
        );
        let e = env_of(&[("HOME", "/h"), ("XDG_DATA_HOME", "/x")]);
        assert!(matches!(
            select_with(&none, &e, false),
            Ok(StoreTarget::Local { dir, is_default: true }) if dir == Path::new("/x/rbd-row/store")
        ));
        assert!(matches!(
            select_with(&none, &e, true),
            Ok(StoreTarget::Ceph(_))
        ));
        let e = env_of(&[("CEPH_CONF", "/c.conf"), ("RBD_ROW_STORE", "/s")]);
        assert!(matches!(
            select_with(&none, &e, true),
            Ok(StoreTarget::Local {
                is_default: false,
                ..
            })
        ));
        let e = env_of(&[("CEPH_ARGS", "--id foo -c /x.conf")]);
        assert!(matches!(
            select_with(&none, &e, false),
            Ok(StoreTarget::Ceph(_))
        ));
        let a = StoreArgs {
            id: Some("rbdrow".into()),
            ..Default::default()
        };
        assert!(matches!(
            select_with(&a, &env_of(&[("RBD_ROW_STORE", "/s")]), false),
            Ok(StoreTarget::Ceph(CephTarget { client_name: Some(n), .. })) if n == "client.rbdrow"
        ));
        let a = StoreArgs {
            store: Some("/d".into()),
            conf: Some("/c".into()),
            ..Default::default()
        };
        assert!(matches!(
            select_with(&a, &env_of(&[]), true),
            Ok(StoreTarget::Local {
                is_default: false,
                ..
            })
        ));
        assert_eq!(
            local_dir(Path::new("/r"), "p", "ns").ok(),
            Some(PathBuf::from("/r/p/ns"))
        );
        assert!(local_dir(Path::new("/r"), "..", "").is_err());
    }
}
