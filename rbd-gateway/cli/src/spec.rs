//! Image specs `[pool[/namespace]/]image[@snap]` and the `-p/--pool`,
//! `--namespace`, `--image`, `--snap` flags, resolved as `rbd` does.

use crate::error::{CliError, CliResult};

/// Pool used when neither the spec nor `-p` names one.
pub const DEFAULT_POOL: &str = "rbd";

/// A resolved image (or snapshot) spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// Pool name.
    pub pool: String,
    /// Namespace (`""` for the default namespace).
    pub namespace: String,
    /// Image name.
    pub image: String,
    /// Snapshot name, if any.
    pub snap: Option<String>,
}

impl ImageSpec {
    /// `pool/[namespace/]image`, as `rbd children` prints it.
    pub fn pool_path(&self) -> String {
        if self.namespace.is_empty() {
            format!("{}/{}", self.pool, self.image)
        } else {
            format!("{}/{}/{}", self.pool, self.namespace, self.image)
        }
    }
}

/// Whether a spec may, must or must not name a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapMode {
    /// `image` only.
    None,
    /// `image` or `image@snap`.
    Permitted,
    /// `image@snap`.
    Required,
}

/// Flags that complete or replace a positional spec.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SpecFlags {
    /// Pool name (default `rbd`).
    #[arg(short = 'p', long = "pool", global = true)]
    pub pool: Option<String>,
    /// Namespace name.
    #[arg(long = "namespace", global = true)]
    pub namespace: Option<String>,
    /// Image name.
    #[arg(long = "image", global = true)]
    pub image: Option<String>,
    /// Snapshot name.
    #[arg(long = "snap", global = true)]
    pub snap: Option<String>,
}

/// Parses `spec` (or the flags when absent) into an [`ImageSpec`].
pub fn parse(spec: Option<&str>, flags: &SpecFlags, mode: SnapMode) -> CliResult<ImageSpec> {
    let (mut pool, mut namespace, mut image, mut snap) = (None, None, None, None);
    if let Some(s) = spec {
        let (path, sn) = match s.split_once('@') {
            Some((p, sn)) => (p, Some(sn.to_string())),
            None => (s, None),
        };
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            [i] => image = Some(i.to_string()),
            [p, i] => {
                pool = Some(p.to_string());
                image = Some(i.to_string());
            }
            [p, n, i] => {
                pool = Some(p.to_string());
                namespace = Some(n.to_string());
                image = Some(i.to_string());
            }
            _ => return Err(CliError::usage(format!("rbd-row: invalid spec '{s}'"))),
        }
        snap = sn;
    }
    let pool = pool
        .or_else(|| flags.pool.clone())
        .unwrap_or_else(|| DEFAULT_POOL.to_string());
    let namespace = namespace
        .or_else(|| flags.namespace.clone())
        .unwrap_or_default();
    let image = image.or_else(|| flags.image.clone()).unwrap_or_default();
    if image.is_empty() {
        return Err(CliError::usage("rbd-row: image name was not specified"));
    }
    let snap = snap.or_else(|| flags.snap.clone());
    match (mode, &snap) {
        (SnapMode::None, Some(_)) => {
            return Err(CliError::usage(
                "rbd-row: snapshot name specified for a command that doesn't use it",
            ))
        }
        (SnapMode::Required, None) => {
            return Err(CliError::usage("rbd-row: snapshot name was not specified"))
        }
        (_, Some(s)) if s.is_empty() => {
            return Err(CliError::usage("rbd-row: snapshot name was not specified"))
        }
        _ => {}
    }
    if pool.is_empty() {
        return Err(CliError::usage("rbd-row: pool name was not specified"));
    }
    Ok(ImageSpec {
        pool,
        namespace,
        image,
        snap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let f = SpecFlags::default();
        let s = parse(Some("a"), &f, SnapMode::None).ok();
        assert_eq!(
            s.map(|s| (s.pool, s.image)),
            Some(("rbd".into(), "a".into()))
        );
        let s = parse(Some("p/n/a@s"), &f, SnapMode::Required).ok();
        assert_eq!(
            s.map(|s| (s.pool, s.namespace, s.image, s.snap)),
            Some(("p".into(), "n".into(), "a".into(), Some("s".into())))
        );
        assert!(parse(Some("a@s"), &f, SnapMode::None).is_err());
        assert!(parse(Some("a"), &f, SnapMode::Required).is_err());
        assert!(parse(Some("a/b/c/d"), &f, SnapMode::None).is_err());
        let f = SpecFlags {
            pool: Some("q".into()),
            image: Some("i".into()),
            snap: Some("s".into()),
            ..Default::default()
        };
        let s = parse(None, &f, SnapMode::Permitted).ok();
        assert_eq!(
            s.map(|s| (s.pool, s.image, s.snap)),
            Some(("q".into(), "i".into(), Some("s".into())))
        );
    }
}
