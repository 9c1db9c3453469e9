//! `rbd-row` binary: parse, run, report errors the way `rbd` does.

use clap::Parser;
use rbd_row_cli::{run, Cli};
use std::io::Write;

fn main() -> anyhow::Result<()> {
    restore_sigpipe();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 22 } else { 0 };
            e.print()?;
            std::process::exit(code);
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let r = run(cli, &mut out);
    out.flush()?;
    drop(out);
    if let Err(e) = r {
        if let Some(d) = &e.detail {
            eprintln!("rbd-row: {d}");
        }
        eprintln!("rbd-row: {}", e.message.trim_start_matches("rbd-row: "));
        std::process::exit(e.exit_code());
    }
    Ok(())
}

/// Rust starts with SIGPIPE ignored, so a write to a reader that went away
/// (`rbd-row ls | head -1`) fails with EPIPE and would be reported as an
/// error. Like `rbd` and other command-line tools, end quietly instead.
fn restore_sigpipe() {
    // SAFETY: called first thing in main, before any thread exists;
    // SIG_DFL is a valid action for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
