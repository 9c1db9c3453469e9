//! The backend conformance suite, written once and run by every backend
//! (in-memory, local, fault-injecting wrapper, RADOS).
//!
//! Each check takes a fresh, empty backend and a unique object-name prefix so
//! that it can run against a shared real pool. Call [`run_all`] from a test.

use super::{Action, Backend, Guard, WriteOp};
use crate::error::{ErrorKind, Result};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

fn check(cond: bool, what: &str) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(crate::Error::new(
            ErrorKind::Io,
            format!("conformance: {what}"),
        ))
    }
}

fn expect_kind<T: std::fmt::Debug>(r: Result<T>, kind: ErrorKind, what: &str) -> Result<()> {
    match r {
        Err(e) if e.kind() == kind => Ok(()),
        other => check(false, &format!("{what}: expected {kind:?}, got {other:?}")),
    }
}

/// Runs every conformance check; object names all start with `prefix`.
pub async fn run_all(backend: Arc<dyn Backend>, prefix: &str) -> Result<()> {
    data_io(&*backend, prefix).await?;
    zero_semantics(&*backend, prefix).await?;
    omap_paging(&*backend, prefix).await?;
    compound_atomicity(&*backend, prefix).await?;
    guards(&*backend, prefix).await?;
    listing_and_remove(&*backend, prefix).await?;
    locks(&*backend, prefix).await?;
    watch_notify(&*backend, prefix).await?;
    concurrency(backend.clone(), prefix).await?;
    Ok(())
}

async fn data_io(be: &dyn Backend, p: &str) -> Result<()> {
    let o = format!("{p}data");
    expect_kind(
        be.read(&o, 0, 10).await,
        ErrorKind::NotFound,
        "read of missing object",
    )?;
    expect_kind(
        be.stat(&o).await,
        ErrorKind::NotFound,
        "stat of missing object",
    )?;
    be.operate(&o, WriteOp::new().write(4, b(b"abcd"))).await?;
    let st = be.stat(&o).await?;
    check(st.size == 8, "write extends object")?;
    check(
        be.read(&o, 0, 8).await? == b(b"\0\0\0\0abcd"),
        "hole reads as zeros",
    )?;
    check(be.read(&o, 6, 100).await? == b(b"cd"), "short read at end")?;
    check(
        be.read(&o, 100, 10).await?.is_empty(),
        "read past end is empty",
    )?;
    be.operate(&o, WriteOp::new().write_full(b(b"xy"))).await?;
    check(
        be.read(&o, 0, 100).await? == b(b"xy"),
        "write_full replaces",
    )?;
    let st2 = be.stat(&o).await?;
    check(st2.version > st.version, "version increases")?;
    be.operate(&o, WriteOp::new().action(Action::Truncate(5)))
        .await?;
    check(
        be.read(&o, 0, 100).await? == b(b"xy\0\0\0"),
        "truncate extends with zeros",
    )?;
    be.operate(&o, WriteOp::new().action(Action::Create))
        .await?;
    check(
        be.stat(&o).await?.size == 5,
        "create of existing keeps data",
    )?;
    Ok(())
}

async fn zero_semantics(be: &dyn Backend, p: &str) -> Result<()> {
    let o = format!("{p}zero");
    be.operate(&o, WriteOp::new().write(0, b(&[7u8; 16])))
        .await?;
    be.operate(
        &o,
        WriteOp::new().action(Action::Zero { offset: 4, len: 4 }),
    )
    .await?;
    let mut want = vec![7u8; 16];
    want[4..8].fill(0);
    check(
        be.read(&o, 0, 16).await? == want,
        "zero in the middle writes zeros",
    )?;
    be.operate(
        &o,
        WriteOp::new().action(Action::Zero {
            offset: 12,
            len: 100,
        }),
    )
    .await?;
    check(
        be.stat(&o).await?.size == 12,
        "zero reaching the end truncates",
    )?;
    be.operate(
        &o,
        WriteOp::new().action(Action::Zero {
            offset: 50,
            len: 10,
        }),
    )
    .await?;
    check(
        be.stat(&o).await?.size == 12,
        "zero past the end is a no-op",
    )?;
    Ok(())
}

async fn omap_paging(be: &dyn Backend, p: &str) -> Result<()> {
    let o = format!("{p}omap");
    expect_kind(
        be.omap_get(&o, "", "", 10).await,
        ErrorKind::NotFound,
        "omap of missing",
    )?;
    let kvs: Vec<(String, Bytes)> = (0..50)
        .map(|i| (format!("k{i:03}"), b(format!("v{i}").as_bytes())))
        .chain((0..5).map(|i| (format!("z{i}"), b(b"z"))))
        .collect();
    be.operate(&o, WriteOp::new().action(Action::OmapSet(kvs)))
        .await?;
    let mut got = Vec::new();
    let mut after = String::new();
    loop {
        let page = be.omap_get(&o, &after, "k", 7).await?;
        if page.is_empty() {
            break;
        }
        check(page.len() <= 7, "page bounded by max")?;
        after = page.last().map(|(k, _)| k.clone()).unwrap_or_default();
        got.extend(page);
    }
    check(got.len() == 50, "prefix paging returns every key once")?;
    check(got.windows(2).all(|w| w[0].0 < w[1].0), "keys in order")?;
    check(got[3] == ("k003".to_string(), b(b"v3")), "values intact")?;
    be.operate(
        &o,
        WriteOp::new().action(Action::OmapRemove(vec!["k000".into(), "nope".into()])),
    )
    .await?;
    check(
        be.omap_get(&o, "", "k", 1).await?[0].0 == "k001",
        "omap remove",
    )?;
    be.operate(&o, WriteOp::new().action(Action::OmapClear))
        .await?;
    check(be.omap_get(&o, "", "", 100).await?.is_empty(), "omap clear")?;
    Ok(())
}

async fn compound_atomicity(be: &dyn Backend, p: &str) -> Result<()> {
    let o = format!("{p}compound");
    let op = WriteOp::new()
        .write(0, b(b"data"))
        .omap_set1("g0", b(b"D"))
        .action(Action::SetXattr("gen".into(), b(b"1")));
    be.operate(&o, op).await?;
    check(be.read(&o, 0, 4).await? == b(b"data"), "compound data")?;
    check(
        be.omap_get(&o, "", "", 10).await?.len() == 1,
        "compound omap",
    )?;
    check(
        be.get_xattr(&o, "gen").await? == Some(b(b"1")),
        "compound xattr",
    )?;
    check(be.get_xattr(&o, "none").await?.is_none(), "absent xattr")?;
    // A failing guard applies nothing.
    let op = WriteOp::new()
        .guard(Guard::XattrEquals("gen".into(), b(b"2")))
        .write(0, b(b"XXXX"))
        .omap_set1("g1", b(b"D"));
    expect_kind(
        be.operate(&o, op).await,
        ErrorKind::PreconditionFailed,
        "xattr guard",
    )?;
    check(
        be.read(&o, 0, 4).await? == b(b"data"),
        "failed op wrote no data",
    )?;
    check(
        be.omap_get(&o, "", "", 10).await?.len() == 1,
        "failed op set no key",
    )?;
    // Remove plus re-create in one op.
    be.operate(
        &o,
        WriteOp::new().action(Action::Remove).write(0, b(b"new")),
    )
    .await?;
    check(
        be.omap_get(&o, "", "", 10).await?.is_empty(),
        "remove clears omap",
    )?;
    check(be.read(&o, 0, 10).await? == b(b"new"), "recreated")?;
    Ok(())
}

async fn guards(be: &dyn Backend, p: &str) -> Result<()> {
    let o = format!("{p}guards");
    expect_kind(
        be.operate(&o, WriteOp::new().guard(Guard::Exists).write(0, b(b"x")))
            .await,
        ErrorKind::NotFound,
        "exists guard on missing",
    )?;
    be.operate(&o, WriteOp::new().guard(Guard::NotExists).write(0, b(b"x")))
        .await?;
    expect_kind(
        be.operate(&o, WriteOp::new().guard(Guard::NotExists).write(0, b(b"y")))
            .await,
        ErrorKind::AlreadyExists,
        "exclusive create",
    )?;
    let v = be.stat(&o).await?.version;
    expect_kind(
        be.operate(
            &o,
            WriteOp::new()
                .guard(Guard::VersionEquals(v + 1))
                .write(0, b(b"z")),
        )
        .await,
        ErrorKind::PreconditionFailed,
        "version guard mismatch",
    )?;
    be.operate(
        &o,
        WriteOp::new()
            .guard(Guard::VersionEquals(v))
            .write(0, b(b"z")),
    )
    .await?;
    check(be.read(&o, 0, 1).await? == b(b"z"), "version guard match")?;
    Ok(())
}

async fn listing_and_remove(be: &dyn Backend, p: &str) -> Result<()> {
    let pre = format!("{p}list.");
    for i in 0..5 {
        be.operate(&format!("{pre}{i}"), WriteOp::new().action(Action::Create))
            .await?;
    }
    let mut names = be.list(&pre).await?;
    names.sort();
    check(
        names.len() == 5 && names[0] == format!("{pre}0"),
        "list by prefix",
    )?;
    be.operate(&format!("{pre}0"), WriteOp::remove()).await?;
    be.operate(&format!("{pre}0"), WriteOp::remove()).await?;
    check(be.list(&pre).await?.len() == 4, "remove is idempotent")?;
    expect_kind(
        be.operate(&format!("{pre}0"), WriteOp::remove().guard(Guard::Exists))
            .await,
        ErrorKind::NotFound,
        "guarded remove of missing",
    )?;
    Ok(())
}

async fn locks(be: &dyn Backend, p: &str) -> Result<()> {
    let o = format!("{p}lock");
    be.lock_exclusive(&o, "owner", "c1", "test").await?;
    be.lock_exclusive(&o, "owner", "c1", "test").await?;
    expect_kind(
        be.lock_exclusive(&o, "owner", "c2", "test").await,
        ErrorKind::Busy,
        "second locker refused",
    )?;
    let owners = be.lock_owners(&o, "owner").await?;
    check(
        owners.len() == 1 && owners[0].cookie == "c1",
        "owner listed",
    )?;
    be.break_lock(&o, "owner", &owners[0]).await?;
    be.lock_exclusive(&o, "owner", "c2", "test").await?;
    be.unlock(&o, "owner", "c2").await?;
    check(be.lock_owners(&o, "owner").await?.is_empty(), "unlocked")?;
    Ok(())
}

async fn watch_notify(be: &dyn Backend, p: &str) -> Result<()> {
    let o = format!("{p}watch");
    be.operate(&o, WriteOp::new().action(Action::Create))
        .await?;
    let mut w = be.watch(&o).await?;
    let responder = tokio::spawn(async move {
        if let Some(n) = w.events.recv().await {
            let mut reply = b"re:".to_vec();
            reply.extend_from_slice(&n.payload);
            let _ = n.reply.send(Bytes::from(reply));
        }
        w.id
    });
    let replies = be.notify(&o, b(b"ping"), Duration::from_secs(10)).await?;
    check(
        replies == vec![b(b"re:ping")],
        "notify gets the watcher's reply",
    )?;
    let id = responder
        .await
        .map_err(|e| crate::Error::io(format!("responder task: {e}")))?;
    be.unwatch(id).await?;
    Ok(())
}

async fn concurrency(be: Arc<dyn Backend>, p: &str) -> Result<()> {
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let be = be.clone();
        let o = format!("{p}conc.{}", i % 4);
        tasks.push(tokio::spawn(async move {
            let op = WriteOp::new()
                .write(i * 8, Bytes::from(i.to_le_bytes().to_vec()))
                .omap_set1(format!("k{i:02}"), Bytes::from(vec![i as u8]));
            be.operate(&o, op).await
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| crate::Error::io(format!("task: {e}")))??;
    }
    be.flush().await?;
    for i in 0..32u64 {
        let o = format!("{p}conc.{}", i % 4);
        let got = be.read(&o, i * 8, 8).await?;
        check(
            got.as_ref() == i.to_le_bytes(),
            "concurrent writes all land",
        )?;
    }
    Ok(())
}
