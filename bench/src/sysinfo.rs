//! What machine a run was on, for the report's header: CPU model and count,
//! memory, kernel, and the resident memory of a process (the gateway's).

use std::path::Path;

fn first_field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// "CPU model, N CPUs, M GiB RAM, kernel K".
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = first_field(&cpu, "model name").unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: u64 = first_field(&mem, "MemTotal")
        .and_then(|v| v.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {n} CPUs, {:.1} GiB RAM, Linux {}",
        kib as f64 / (1u64 << 20) as f64,
        kernel.trim()
    )
}

/// The git commit of the source tree this crate was built from, as it is
/// when the run starts, and whether it has uncommitted changes: which code
/// a recorded figure belongs to.
pub fn source_tree() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        None => "unknown (not a git checkout)".into(),
        // The benches' own outputs do not count as changes to the code.
        Some(head) => match git(&[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ":(top)",
            ":(top,exclude)bench/RESULTS.md",
            ":(top,exclude)bench/results",
        ]) {
            Some(s) if s.is_empty() => format!("git {head}"),
            _ => format!("git {head} with uncommitted changes"),
        },
    }
}

/// Resident set size of process `pid`, bytes (`VmRSS`).
pub fn rss(pid: u32) -> anyhow::Result<u64> {
    let p = Path::new("/proc").join(pid.to_string()).join("status");
    let s = std::fs::read_to_string(&p)?;
    let kib: u64 = first_field(&s, "VmRSS")
        .and_then(|v| v.split_whitespace().next().and_then(|x| x.parse().ok()))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in {}", p.display()))?;
    Ok(kib * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_rss_and_machine() {
        let r = super::rss(std::process::id()).expect("rss");
        assert!(r > 1 << 20, "{r}");
        assert!(super::machine().contains("CPUs"));
    }

    #[test]
    fn source_tree_names_a_commit() {
        let t = super::source_tree();
        assert!(t.starts_with("git ") || t.starts_with("unknown"), "{t}");
    }
}
