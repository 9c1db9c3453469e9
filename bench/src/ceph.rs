//! The Ceph command-line tools as the report uses them: `rbd` for native
//! images, `ceph` for pools, pool statistics and the version, and a
//! derived ceph.conf that turns librbd's writeback cache off (rbd-row
//! acknowledges a write only once RADOS has committed it, so the fair
//! comparison is native RBD without the cache).

use anyhow::{anyhow, Context};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `prog args`, returning stdout, or an error with its stderr (a
/// [`crate::proc::TimedOut`] past the default deadline).
pub fn run(prog: &str, args: &[&str]) -> anyhow::Result<String> {
    run_within(prog, args, crate::proc::default_timeout())
}

/// [`run`] with its own deadline.
pub fn run_within(prog: &str, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
    let out = crate::proc::output(Command::new(prog).args(args), timeout)?;
    if !out.status.success() {
        anyhow::bail!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `prog args` and returns its wall time (process start included).
pub fn timed(prog: &str, args: &[&str]) -> anyhow::Result<Duration> {
    let t = Instant::now();
    run(prog, args)?;
    Ok(t.elapsed())
}

/// [`timed`] with its own deadline.
pub fn timed_within(prog: &str, args: &[&str], timeout: Duration) -> anyhow::Result<Duration> {
    let t = Instant::now();
    run_within(prog, args, timeout)?;
    Ok(t.elapsed())
}

/// `rbd args`.
pub fn rbd(args: &[&str]) -> anyhow::Result<String> {
    run("rbd", args)
}

/// `ceph args --format json`, parsed.
pub fn ceph_json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    let out = run("ceph", &a)?;
    serde_json::from_str(&out).context("ceph JSON")
}

/// The cluster's Ceph version (`ceph version`).
pub fn version() -> anyhow::Result<String> {
    Ok(run("ceph", &["version"])?.trim().to_owned())
}

/// Creates an RBD pool if it does not exist.
pub fn ensure_pool(pool: &str) -> anyhow::Result<()> {
    let pools = ceph_json(&["osd", "pool", "ls"])?;
    if pools
        .as_array()
        .is_some_and(|a| a.iter().any(|p| p.as_str() == Some(pool)))
    {
        return Ok(());
    }
    run("ceph", &["osd", "pool", "create", pool, "8"])?;
    rbd(&["pool", "init", pool])?;
    Ok(())
}

/// Stored bytes and objects of a pool, as the cluster's statistics report
/// them (`ceph df`; updated by the manager every few seconds, so a figure
/// may lag the last I/O by that much).
pub fn pool_stats(pool: &str) -> anyhow::Result<(u64, u64)> {
    pool_stats_in(&ceph_json(&["df", "detail"])?, pool)
}

/// [`pool_stats`] from a `ceph df` already read.
pub fn pool_stats_in(df: &serde_json::Value, pool: &str) -> anyhow::Result<(u64, u64)> {
    let p = df["pools"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"].as_str() == Some(pool)))
        .ok_or_else(|| anyhow!("pool {pool} not in ceph df"))?;
    let stored = p["stats"]["stored"].as_u64().unwrap_or(0);
    let objects = p["stats"]["objects"].as_u64().unwrap_or(0);
    Ok((stored, objects))
}

/// Raw bytes used and total of the whole cluster (`ceph df`).
pub fn raw_usage() -> anyhow::Result<(u64, u64)> {
    raw_usage_in(&ceph_json(&["df"])?)
}

/// [`raw_usage`] from a `ceph df` already read.
pub fn raw_usage_in(df: &serde_json::Value) -> anyhow::Result<(u64, u64)> {
    let st = &df["stats"];
    let used = st["total_used_raw_bytes"]
        .as_u64()
        .ok_or_else(|| anyhow!("no total_used_raw_bytes in ceph df"))?;
    Ok((used, st["total_bytes"].as_u64().unwrap_or(0)))
}

/// Writes a copy of `conf` with `rbd cache = false` in `[global]` to `dir`
/// and returns its path.
pub fn conf_without_cache(conf: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let text =
        std::fs::read_to_string(conf).with_context(|| format!("reading {}", conf.display()))?;
    let mut out = String::new();
    let mut added = false;
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if !added && line.trim() == "[global]" {
            out.push_str("rbd cache = false\n");
            added = true;
        }
    }
    if !added {
        out.push_str("[global]\nrbd cache = false\n");
    }
    let path = dir.join("ceph-nocache.conf");
    std::fs::write(&path, out)?;
    Ok(path)
}

/// Removes a native image with its snapshots; errors are ignored (cleanup).
pub fn remove_native(spec: &str) {
    let _ = rbd(&["snap", "purge", spec]);
    let _ = rbd(&["rm", "--no-progress", spec]);
}

#[cfg(test)]
mod tests {
    #[test]
    fn cache_off_goes_into_global() {
        let d = tempfile::tempdir().expect("tempdir");
        let src = d.path().join("c.conf");
        std::fs::write(&src, "[global]\nfsid = x\n[client]\nkeyring = k\n").expect("write");
        let out = super::conf_without_cache(&src, d.path()).expect("conf");
        let text = std::fs::read_to_string(out).expect("read");
        assert_eq!(
            text,
            "[global]\nrbd cache = false\nfsid = x\n[client]\nkeyring = k\n"
        );
    }
}
