//! The backend conformance suite, written once and run by every backend
//! (in-memory, local, local through the multi-process proxy,
//! fault-injecting wrapper, RADOS).
//!
//! There is one public check per item of the contract in the
//! [`backend`](super) module docs and docs/DESIGN.md §2; each check's doc
//! comment quotes the sentence it checks. Every check takes a backend and a
//! unique object-name prefix, so that it can run against a shared real pool
//! and next to the other checks. [`CHECKS`] lists them; [`run_check`] runs
//! one by name and [`run_all`] runs them all.
//!
//! Backends run each check as its own test, so that a failure names the
//! contract item: [`backend_conformance_tests!`](crate::backend_conformance_tests)
//! generates one `#[test]` per check in a module named after the backend
//! (`mem::zero_semantics`, `rados_admin::locks`, ...).
//!
//! Where a backend may differ from the reference behaviour without the
//! engine noticing, the difference is an explicit, named [`Allowances`] entry
//! for that backend kind, never a silently weakened check.

use super::{Action, Backend, Guard, WriteOp};
use crate::error::{ErrorKind, Result};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// The name of every check, in the order [`run_all`] runs them.
pub const CHECKS: &[&str] = &[
    "data_io",
    "zero_semantics",
    "zero_to_object_end",
    "omap_paging",
    "xattrs",
    "compound_atomicity",
    "guards",
    "listing_and_removal",
    "locks",
    "watch_notify",
    "concurrency",
];

/// Documented differences a backend kind may show from the reference
/// (in-memory) behaviour, each one allowed by name. A check that meets a
/// difference not allowed here fails, and its message names the allowance.
/// An allowance permits a difference, it does not require it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Allowances {
    /// A `Zero` whose range ends exactly at the object's end may write zeros
    /// and keep the object's size instead of truncating to the range start.
    /// The bytes read back are zeros either way, and the engine treats
    /// missing bytes as zeros, so it cannot tell. No backend has it today:
    /// DESIGN.md had RADOS keep the size, but Ceph 16.2.15 truncates like the
    /// reference (measured by `rados_conformance.rs`,
    /// `allowances_match_measured_rados_behaviour`).
    pub zero_to_exact_end_keeps_size: bool,
    /// An `XattrEquals(name, "")` guard may hold when the object exists
    /// without the xattr (RADOS `cmpxattr` compares an absent xattr as
    /// empty). The engine never guards on an empty value (owner cookies are
    /// never empty).
    pub xattr_equals_empty_matches_absent: bool,
}

impl Allowances {
    /// No differences: the reference behaviour (mem, local).
    pub const STRICT: Allowances = Allowances {
        zero_to_exact_end_keeps_size: false,
        xattr_equals_empty_matches_absent: false,
    };

    /// RADOS (the crate docs of `row-rados`; docs/DESIGN.md §2).
    pub const RADOS: Allowances = Allowances {
        zero_to_exact_end_keeps_size: false,
        xattr_equals_empty_matches_absent: true,
    };

    /// The allowances of a backend, by [`Backend::kind`] (wrappers such as
    /// the fault backend report their inner backend's kind).
    pub fn for_kind(kind: &str) -> Allowances {
        match kind {
            "rados" => Allowances::RADOS,
            _ => Allowances::STRICT,
        }
    }
}

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

/// Runs the check named `name` (one of [`CHECKS`]); object names all start
/// with `prefix`. An error names the check.
pub async fn run_check(name: &str, backend: &dyn Backend, prefix: &str) -> Result<()> {
    let r = match name {
        "data_io" => data_io(backend, prefix).await,
        "zero_semantics" => zero_semantics(backend, prefix).await,
        "zero_to_object_end" => zero_to_object_end(backend, prefix).await,
        "omap_paging" => omap_paging(backend, prefix).await,
        "xattrs" => xattrs(backend, prefix).await,
        "compound_atomicity" => compound_atomicity(backend, prefix).await,
        "guards" => guards(backend, prefix).await,
        "listing_and_removal" => listing_and_removal(backend, prefix).await,
        "locks" => locks(backend, prefix).await,
        "watch_notify" => watch_notify(backend, prefix).await,
        "concurrency" => concurrency(backend, prefix).await,
        other => {
            return Err(crate::Error::new(
                ErrorKind::InvalidInput,
                format!("conformance: no check named {other:?}"),
            ))
        }
    };
    r.map_err(|e| crate::Error::new(e.kind(), format!("[{name}] {}", e.message())))
}

/// Runs every check of [`CHECKS`] in order, each under its own sub-prefix
/// `{prefix}{check}.`; stops at the first failure, which names its check.
pub async fn run_all(backend: Arc<dyn Backend>, prefix: &str) -> Result<()> {
    for name in CHECKS {
        run_check(name, &*backend, &format!("{prefix}{name}.")).await?;
    }
    Ok(())
}

/// Objects and data I/O. Contract: "An object has a byte payload ... and a
/// version that increases with every successful mutation"; `read` "reads up
/// to `len` bytes at `offset`; short at the end of the object. `NotFound` if
/// the object does not exist"; `Write` extends the object as needed,
/// `WriteFull` replaces the payload, `Truncate` sets its length and `Create`
/// is a no-op on an existing object.
pub async fn data_io(be: &dyn Backend, p: &str) -> Result<()> {
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

/// Zeroing. Contract: "As in RADOS, `Zero` of a range that reaches the end
/// of the object truncates the object to the start of the range instead of
/// writing zeros"; a range inside the object writes zeros, one wholly past
/// the end changes nothing. (A range ending exactly at the end is
/// [`zero_to_object_end`].)
pub async fn zero_semantics(be: &dyn Backend, p: &str) -> Result<()> {
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
        "zero reaching past the end truncates",
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

/// A `Zero` ending exactly at the object's end. Contract: "a `Zero` range
/// that reaches the object's end truncates the object to the range start;
/// reads past the end return short buffers, the engine treats missing bytes
/// as zeros".
///
/// What every backend must agree on: the object still exists, the bytes
/// before the range are intact, and every byte read back from the range is
/// zero (a short read counts as zeros). The size must be the range start,
/// unless the backend kind has [`Allowances::zero_to_exact_end_keeps_size`]
/// (then it may also be the old size).
pub async fn zero_to_object_end(be: &dyn Backend, p: &str) -> Result<()> {
    let allow = Allowances::for_kind(be.kind());
    for (name, offset) in [("tail", 8u64), ("whole", 0)] {
        let o = format!("{p}zero-end.{name}");
        be.operate(&o, WriteOp::new().write_full(b(&[7u8; 16])))
            .await?;
        be.operate(
            &o,
            WriteOp::new().action(Action::Zero {
                offset,
                len: 16 - offset,
            }),
        )
        .await?;
        let size = be.stat(&o).await?.size;
        let got = be.read(&o, 0, 32).await?;
        check(
            got.len() as u64 == size,
            &format!("{name}: a read of the whole object returns its size"),
        )?;
        check(
            got.len() >= offset as usize && got[..offset as usize].iter().all(|&x| x == 7),
            &format!("{name}: bytes before the zeroed range intact"),
        )?;
        check(
            got[offset as usize..].iter().all(|&x| x == 0),
            &format!("{name}: the zeroed range reads back as zeros"),
        )?;
        if allow.zero_to_exact_end_keeps_size {
            check(
                size == offset || size == 16,
                &format!("{name}: size {size} is neither truncated nor kept"),
            )?;
        } else {
            check(
                size == offset,
                &format!(
                    "{name}: zero ending at the object's end must truncate to {offset}, size is \
                     {size} (backend kind {:?} has no zero_to_exact_end_keeps_size allowance)",
                    be.kind()
                ),
            )?;
        }
    }
    Ok(())
}

/// Omap reads. Contract: an object has "an ordered string-keyed omap";
/// `omap_get` returns "up to `max` omap entries with keys `> start_after`
/// that begin with `prefix`, in key order. `NotFound` if the object does not
/// exist"; `OmapRemove` ignores missing keys, `OmapClear` removes every key.
pub async fn omap_paging(be: &dyn Backend, p: &str) -> Result<()> {
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

/// Xattrs. Contract: an object has "string-named xattrs"; `get_xattr`
/// returns "`Ok(None)` if the object exists without it, `NotFound` if the
/// object does not exist"; `SetXattr` sets one, `RemoveXattr` removes one
/// ("missing is ignored").
pub async fn xattrs(be: &dyn Backend, p: &str) -> Result<()> {
    let o = format!("{p}xattr");
    expect_kind(
        be.get_xattr(&o, "a").await,
        ErrorKind::NotFound,
        "xattr of missing object",
    )?;
    be.operate(
        &o,
        WriteOp::new()
            .action(Action::SetXattr("a".into(), b(b"1")))
            .action(Action::SetXattr("b".into(), b(b"2"))),
    )
    .await?;
    check(be.get_xattr(&o, "a").await? == Some(b(b"1")), "xattr set")?;
    check(be.get_xattr(&o, "none").await?.is_none(), "absent xattr")?;
    be.operate(
        &o,
        WriteOp::new().action(Action::SetXattr("a".into(), b(b"one"))),
    )
    .await?;
    check(
        be.get_xattr(&o, "a").await? == Some(b(b"one")),
        "xattr overwritten",
    )?;
    be.operate(
        &o,
        WriteOp::new()
            .action(Action::RemoveXattr("a".into()))
            .action(Action::RemoveXattr("nope".into())),
    )
    .await?;
    check(be.get_xattr(&o, "a").await?.is_none(), "xattr removed")?;
    check(
        be.get_xattr(&o, "b").await? == Some(b(b"2")),
        "other xattr kept",
    )?;
    Ok(())
}

/// Atomic compound op. Contract: "`operate(oid, WriteOp)` checks every
/// guard first ... If any guard fails, nothing is applied. Otherwise all
/// actions are applied in order, all or nothing" (data, omap and xattr in one
/// op; `Remove` then `Write` in one op re-creates the object empty).
pub async fn compound_atomicity(be: &dyn Backend, p: &str) -> Result<()> {
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

/// Guards. Contract: `Exists` ("`NotFound` otherwise"), `NotExists`
/// ("`AlreadyExists` otherwise"), `VersionEquals` ("the object's version
/// must equal this value") and `XattrEquals` ("the xattr must exist and
/// equal the value") fail the op as `PreconditionFailed` "(or `NotFound` /
/// `AlreadyExists` for existence guards) and nothing is applied". An empty
/// `XattrEquals` value on an absent xattr may pass only with
/// [`Allowances::xattr_equals_empty_matches_absent`].
pub async fn guards(be: &dyn Backend, p: &str) -> Result<()> {
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
    check(
        be.read(&o, 0, 1).await? == b(b"x"),
        "failed version guard wrote nothing",
    )?;
    be.operate(
        &o,
        WriteOp::new()
            .guard(Guard::VersionEquals(v))
            .write(0, b(b"z")),
    )
    .await?;
    check(be.read(&o, 0, 1).await? == b(b"z"), "version guard match")?;
    // XattrEquals: the xattr must exist and equal the value.
    be.operate(
        &o,
        WriteOp::new().action(Action::SetXattr("owner".into(), b(b"me"))),
    )
    .await?;
    expect_kind(
        be.operate(
            &o,
            WriteOp::new()
                .guard(Guard::XattrEquals("owner".into(), b(b"you")))
                .write(0, b(b"y")),
        )
        .await,
        ErrorKind::PreconditionFailed,
        "xattr guard mismatch",
    )?;
    be.operate(
        &o,
        WriteOp::new()
            .guard(Guard::XattrEquals("owner".into(), b(b"me")))
            .write(0, b(b"m")),
    )
    .await?;
    check(be.read(&o, 0, 1).await? == b(b"m"), "xattr guard match")?;
    let absent = be
        .operate(
            &o,
            WriteOp::new()
                .guard(Guard::XattrEquals("absent".into(), Bytes::new()))
                .write(0, b(b"a")),
        )
        .await;
    match absent {
        Err(e) if e.kind() == ErrorKind::PreconditionFailed => {
            check(
                be.read(&o, 0, 1).await? == b(b"m"),
                "failed xattr guard wrote nothing",
            )?;
        }
        Ok(()) if Allowances::for_kind(be.kind()).xattr_equals_empty_matches_absent => {}
        other => check(
            false,
            &format!(
                "xattr guard with an empty value on an absent xattr: expected \
                 PreconditionFailed, got {other:?} (backend kind {:?} has no \
                 xattr_equals_empty_matches_absent allowance)",
                be.kind()
            ),
        )?,
    }
    Ok(())
}

/// Listing and removal. Contract: `list` returns "names of all objects
/// starting with `prefix`, in any order"; "An unguarded pure `Remove` is
/// idempotent"; a guarded `Remove` of a missing object fails.
pub async fn listing_and_removal(be: &dyn Backend, p: &str) -> Result<()> {
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

/// Exclusive advisory locks. Contract: `lock_exclusive` gives "`Busy` when
/// another holder has it; re-taking one's own lock succeeds"; `lock_owners`
/// lists the holders; `break_lock` breaks another holder's lock; `unlock`
/// releases one's own.
pub async fn locks(be: &dyn Backend, p: &str) -> Result<()> {
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

/// Watch/notify. Contract: `notify` "sends `payload` to every watcher of
/// `oid` and collects their replies"; `unwatch` stops a watch.
pub async fn watch_notify(be: &dyn Backend, p: &str) -> Result<()> {
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

/// Concurrency and visibility. Contract: "Mutations whose futures are
/// outstanding at the same time may be applied in any order", and "a
/// mutation whose future completed successfully is visible to every later
/// read": 32 compound ops on 4 objects, all in flight at once, all land.
pub async fn concurrency(be: &dyn Backend, p: &str) -> Result<()> {
    let ops = (0..32u64).map(|i| {
        let o = format!("{p}conc.{}", i % 4);
        let op = WriteOp::new()
            .write(i * 8, Bytes::from(i.to_le_bytes().to_vec()))
            .omap_set1(format!("k{i:02}"), Bytes::from(vec![i as u8]));
        async move { be.operate(&o, op).await }
    });
    for r in futures::future::join_all(ops).await {
        r?;
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
    for k in 0..4u64 {
        let keys = be.omap_get(&format!("{p}conc.{k}"), "", "", 100).await?;
        check(keys.len() == 8, "concurrent omap sets all land")?;
    }
    Ok(())
}

/// Generates one test per conformance check ([`CHECKS`]) for one backend, in
/// a module `$module`, so that a failure names the backend and the contract
/// item (`mem::zero_to_object_end`). Also generates
/// `$module::every_check_has_a_test`, which fails if [`CHECKS`] and the
/// generated tests disagree.
///
/// `[$attrs]` are the attributes of each test (a tokio test attribute,
/// `#[ignore = ...]`); `$setup` names an async fn, reachable from the
/// generated module (it does `use super::*`), returning
/// `(Arc<dyn Backend>, G)` where `G` is kept alive until the test ends (a
/// temporary directory, a child process, ...). Each check gets a fresh
/// backend from `$setup` and the object-name prefix `"{check}."`.
///
/// ```text
/// async fn fresh_mem() -> (Arc<dyn Backend>, ()) {
///     (Arc::new(MemBackend::new()), ())
/// }
/// row_layer::backend_conformance_tests!(mem, [#[tokio::test]], fresh_mem);
/// ```
#[macro_export]
macro_rules! backend_conformance_tests {
    ($module:ident, [$($attr:tt)*], $setup:path) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $crate::backend_conformance_tests!(
                @each [$($attr)*] $setup; [];
                data_io
                zero_semantics
                zero_to_object_end
                omap_paging
                xattrs
                compound_atomicity
                guards
                listing_and_removal
                locks
                watch_notify
                concurrency
            );
        }
    };
    (@each [$($attr:tt)*] $setup:path; [$($done:ident)*]; $check:ident $($rest:ident)*) => {
        $($attr)*
        async fn $check() {
            let (be, _keep) = $setup().await;
            let be: ::std::sync::Arc<dyn $crate::backend::Backend> = be;
            let prefix = concat!(stringify!($check), ".");
            if let Err(e) = $crate::backend::conformance::$check(&*be, prefix).await {
                panic!(
                    "backend {:?} fails conformance check {}: {e}",
                    be.kind(),
                    stringify!($check)
                );
            }
        }
        $crate::backend_conformance_tests!(
            @each [$($attr)*] $setup; [$($done)* $check]; $($rest)*
        );
    };
    (@each [$($attr:tt)*] $setup:path; [$($done:ident)*];) => {
        #[test]
        fn every_check_has_a_test() {
            assert_eq!(
                &[$(stringify!($done)),*][..],
                $crate::backend::conformance::CHECKS,
                "backend_conformance_tests! and conformance::CHECKS disagree"
            );
        }
    };
}
