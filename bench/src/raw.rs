//! The RADOS ceiling: plain 4 KiB object writes (and the engine's compound
//! op, a write plus one omap key) straight through row-rados with a bounded
//! number in flight, the most any RBD layer over this cluster could reach
//! at the same concurrency.

use bytes::Bytes;
use row_layer::backend::{Backend, WriteOp};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// `ops` 4 KiB writes over 128 objects of 4 MiB with `depth` in flight
/// (`with_omap`: each also sets one omap key, as an rbd-row write does);
/// returns ops/s.
pub async fn rados_writes(
    be: Arc<dyn Backend>,
    ops: u64,
    depth: usize,
    with_omap: bool,
) -> anyhow::Result<f64> {
    let sem = Arc::new(Semaphore::new(depth));
    let mut set = tokio::task::JoinSet::new();
    let data = Bytes::from(vec![7u8; 4096]);
    let start = Instant::now();
    for i in 0..ops {
        let permit = sem.clone().acquire_owned().await?;
        let be = be.clone();
        let d = data.clone();
        set.spawn(async move {
            let oid = format!("raw.{}", i % 128);
            let off = (i * 7919 % 1024) * 4096;
            let mut op = WriteOp::new().write(off, d);
            if with_omap {
                op = op.omap_set1(format!("{:06x}", off / 4096), Bytes::from_static(b"D"));
            }
            let r = be.operate(&oid, op).await;
            drop(permit);
            r
        });
        while let Some(r) = set.try_join_next() {
            r??;
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64().max(1e-9))
}

/// [`rados_writes`] for `secs` instead of a count (what a step measures
/// alongside fio's timed jobs); returns ops/s.
pub async fn rados_writes_for(
    be: Arc<dyn Backend>,
    secs: std::time::Duration,
    depth: usize,
    with_omap: bool,
) -> anyhow::Result<f64> {
    let sem = Arc::new(Semaphore::new(depth));
    let mut set = tokio::task::JoinSet::new();
    let data = Bytes::from(vec![7u8; 4096]);
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < secs {
        let permit = sem.clone().acquire_owned().await?;
        let (be, d) = (be.clone(), data.clone());
        let (oid, off) = (format!("raw.{}", i % 128), (i * 7919 % 1024) * 4096);
        let mut op = WriteOp::new().write(off, d);
        if with_omap {
            op = op.omap_set1(format!("{:06x}", off / 4096), Bytes::from_static(b"D"));
        }
        set.spawn(async move {
            let r = be.operate(&oid, op).await;
            drop(permit);
            r
        });
        while let Some(r) = set.try_join_next() {
            r??;
        }
        i += 1;
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(i as f64 / start.elapsed().as_secs_f64().max(1e-9))
}

/// Removes the objects [`rados_writes`] wrote.
pub async fn remove_raw_objects(be: &dyn Backend) -> anyhow::Result<()> {
    for i in 0..128 {
        be.operate(&format!("raw.{i}"), WriteOp::remove()).await?;
    }
    Ok(())
}
