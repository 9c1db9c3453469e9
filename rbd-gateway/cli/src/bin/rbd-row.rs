//! `rbd-row` binary: parse, run, report errors the way `rbd` does.

use clap::Parser;
use rbd_row_cli::{run, Cli};
use std::io::Write;

fn main() -> anyhow::Result<()> {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 22 } else { 0 };
            quiet_on_broken_pipe(e.print())?;
            std::process::exit(code);
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(QuietPipe(stdout.lock()));
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

/// Standard output that ends the process quietly when its reader goes away
/// (`rbd-row ls | head -1`). SIGPIPE stays ignored, as Rust sets it: the
/// local store's Unix sockets must see EPIPE as an error, not kill us.
struct QuietPipe<W: Write>(W);

fn quiet_on_broken_pipe<T>(r: std::io::Result<T>) -> std::io::Result<T> {
    if let Err(e) = &r {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
    r
}

impl<W: Write> Write for QuietPipe<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        quiet_on_broken_pipe(self.0.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        quiet_on_broken_pipe(self.0.flush())
    }
}
