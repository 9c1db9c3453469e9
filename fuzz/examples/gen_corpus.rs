//! Writes the committed seed corpora: `cargo run --example gen_corpus` in
//! `fuzz/` (replaces `corpus/<target>/*.bin`; files the fuzzer added
//! locally, named by their hash, are left alone and are not committed).
//! With `--check`, fails if a committed seed differs from what this build
//! generates (encodings must not drift silently).

use std::path::PathBuf;

fn main() {
    let check = std::env::args().any(|a| a == "--check");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut stale = 0;
    for (target, name, bytes) in rbd_row_fuzz::corpus::seeds() {
        let dir = root.join(target);
        let path = dir.join(&name);
        if check {
            if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
                eprintln!("stale seed: {}", path.display());
                stale += 1;
            }
            continue;
        }
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(&path, &bytes).expect("write seed");
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
    if stale > 0 {
        std::process::exit(1);
    }
}
