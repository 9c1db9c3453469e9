//! `rbd-row` binary: parse, run, report errors the way `rbd` does.

use clap::Parser;
use rbd_row_cli::{run, Cli};
use std::io::Write;

fn main() -> anyhow::Result<()> {
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
