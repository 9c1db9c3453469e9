//! Every external command the benchmarks run (fio, rbd, ceph, the rbd-row
//! CLI, perf) goes through [`output`], which kills a command that runs past
//! its deadline and returns a [`TimedOut`] error saying so. A full report
//! runs for hours against a cluster that can fill up or stall; one stuck
//! `rbd snap create` must cost that step a "timed out" row in RESULTS.md,
//! not the rest of the run.

use anyhow::Context;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Deadline of a command that does not set its own, in seconds.
static DEFAULT_SECS: AtomicU64 = AtomicU64::new(1800);

/// Sets the deadline of commands that do not set their own.
pub fn set_default_timeout(d: Duration) {
    DEFAULT_SECS.store(d.as_secs().max(1), Ordering::Relaxed);
}

/// The deadline of commands that do not set their own.
pub fn default_timeout() -> Duration {
    Duration::from_secs(DEFAULT_SECS.load(Ordering::Relaxed))
}

/// A command that was killed at its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    /// The command line, shortened.
    pub command: String,
    /// The deadline it ran past.
    pub after: Duration,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "timed out: `{}` still running after {} s, killed",
            self.command,
            self.after.as_secs()
        )
    }
}

impl std::error::Error for TimedOut {}

/// Whether `e` (or what it wraps) is a [`TimedOut`].
pub fn is_timeout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<TimedOut>().is_some())
}

fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    if s.chars().count() > 120 {
        s = format!("{}…", s.chars().take(120).collect::<String>());
    }
    s
}

/// Drains a pipe on its own thread, so a chatty command cannot block on a
/// full pipe while we wait for it.
fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut v);
        }
        v
    })
}

/// Runs `cmd` to completion (stdout and stderr captured, stdin closed), or
/// kills it once it has run for `timeout` and returns [`TimedOut`].
pub fn output(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {what}"))?;
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            let _ = (out.join(), err.join());
            return Err(TimedOut {
                command: what,
                after: timeout,
            }
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_its_deadline_is_killed_and_says_so() {
        let t = Instant::now();
        let e = output(Command::new("sleep").arg("30"), Duration::from_millis(300))
            .expect_err("must time out");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(is_timeout(&e), "{e:#}");
        assert!(format!("{e}").starts_with("timed out: `sleep 30`"), "{e}");
        let e = e.context("step x");
        assert!(is_timeout(&e));
    }

    #[test]
    fn a_command_within_its_deadline_gives_its_output() {
        let o = output(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .expect("runs");
        assert_eq!(o.stdout, b"out\n");
        assert_eq!(o.stderr, b"err\n");
        assert_eq!(o.status.code(), Some(3));
        assert!(!is_timeout(&anyhow::anyhow!("other")));
    }
}
