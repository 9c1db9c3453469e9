//! Engine CPU paths on the in-memory backend: a 4 KiB overwrite and a read
//! with 0 and 1000 snapshots (should not change), and diff between distant
//! snapshots (grows with changed grains only).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use row_layer::backend::mem::MemBackend;
use row_layer::{CreateOptions, Image, Store};
use std::sync::Arc;

fn image(rt: &tokio::runtime::Runtime, snapshots: u32) -> Image {
    rt.block_on(async {
        let store = Store::new(Arc::new(MemBackend::new()));
        store
            .create("img", CreateOptions::with_size(256 << 20))
            .await
            .expect("create");
        let img = store.open("img").await.expect("open");
        img.write(0, Bytes::from(vec![1u8; 16 << 20]))
            .await
            .expect("fill");
        for i in 0..snapshots {
            img.write(u64::from(i % 4096) * 4096, Bytes::from(vec![2u8; 4096]))
                .await
                .expect("write");
            img.snap_create(&format!("s{i}")).await.expect("snap");
        }
        img
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for snaps in [0u32, 1000] {
        let img = image(&rt, snaps);
        let data = Bytes::from(vec![3u8; 4096]);
        let mut off = 0u64;
        c.bench_function(&format!("write 4K, {snaps} snapshots"), |b| {
            b.iter(|| {
                off = (off + 4096 * 7) % (16 << 20);
                rt.block_on(img.write(off, data.clone())).expect("write")
            })
        });
        c.bench_function(&format!("read 64K, {snaps} snapshots"), |b| {
            b.iter(|| rt.block_on(img.read(1 << 20, 65536)).expect("read"))
        });
        if snaps > 0 {
            c.bench_function(&format!("diff s0..head, {snaps} snapshots"), |b| {
                b.iter(|| img.diff(Some("s0")).expect("diff"))
            });
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
