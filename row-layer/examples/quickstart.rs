//! A first try on the embedded local store: create an image, write, take
//! snapshots, overwrite, and list the changed blocks between them.
//!
//! `cargo run -p row-layer --example quickstart [STORE_DIR]`

use bytes::Bytes;
use row_layer::backend::local::LocalBackend;
use row_layer::{CreateOptions, ErrorKind, Store};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("rbd-row-quickstart"));
    let store = Store::new(Arc::new(LocalBackend::open(&dir)?));
    println!("store: {}", dir.display());
    match store.remove("demo").await {
        Err(e) if e.kind() == ErrorKind::Busy => {
            // Left over from an earlier run with snapshots: purge them.
            let img = store.open("demo").await?;
            for s in img.snap_list() {
                img.snap_remove(&s.name).await?;
            }
            img.close().await?;
            store.remove("demo").await?;
        }
        _ => {}
    }
    store
        .create("demo", CreateOptions::with_size(64 << 20))
        .await?;
    let img = store.open("demo").await?;

    img.write(0, Bytes::from(vec![0xaa; 1 << 20])).await?;
    img.snap_create("monday").await?;
    img.write(4096, Bytes::from(vec![0xbb; 8192])).await?; // two grains
    img.write(10 << 20, Bytes::from_static(b"hello")).await?; // sub-grain write
    img.discard(512 << 10, 64 << 10).await?;
    img.snap_create("tuesday").await?;
    img.flush().await?;

    println!("snapshots:");
    for s in img.snap_list() {
        println!("  {:>3} {:<8} {} bytes", s.id.0, s.name, s.size);
    }
    println!("changed since monday (what an incremental backup copies):");
    for e in img.diff(Some("monday"))? {
        let kind = if e.exists { "data" } else { "zero" };
        println!("  offset {:>9} length {:>7} {kind}", e.offset, e.length);
    }
    let u = img.space_usage()?;
    println!(
        "space: provisioned {} used by head {} stored {}",
        u.provisioned, u.head_used, u.stored
    );
    let monday = store.open_snapshot("demo", "monday").await?;
    let byte = monday.read(4096, 1).await?;
    println!("monday still reads {:#x} at offset 4096", byte[0]);
    img.close().await?;
    Ok(())
}
