//! `rbd merge-diff` semantics.

mod common;

use common::{apply, kind_of, read_diff, write_diff, Diff, Ext};
use rbd_streams::{merge_diffs, merge_diffs_as, DiffFormat, StreamErrorKind as K};

fn d(from: Option<&str>, to: Option<&str>, size: u64, exts: Vec<Ext>) -> Diff {
    Diff {
        from: from.map(Into::into),
        to: to.map(Into::into),
        protected: None,
        size,
        exts,
    }
}

fn w(off: u64, byte: u8, len: usize) -> Ext {
    Ext::Data(off, vec![byte; len])
}

fn merge(a: &Diff, b: &Diff) -> rbd_streams::Result<Diff> {
    let mut out = Vec::new();
    let sum = merge_diffs(
        &write_diff(DiffFormat::V1, a)[..],
        &write_diff(DiffFormat::V2, b)[..],
        &mut out,
    )?;
    let (fmt, m) = read_diff(&out).unwrap();
    assert_eq!(fmt, DiffFormat::V1, "rbd merge-diff writes v1");
    assert_eq!(sum.stream_len, out.len() as u64);
    check_equivalent(a, b, &m);
    Ok(m)
}

/// Applying the merged diff equals applying both, on any starting image.
fn check_equivalent(a: &Diff, b: &Diff, m: &Diff) {
    for base_len in [0usize, 50, 150, 300] {
        let base: Vec<u8> = (0..base_len).map(|i| (i % 200 + 1) as u8).collect();
        let mut seq = base.clone();
        apply(&mut seq, a);
        apply(&mut seq, b);
        let mut merged = base;
        apply(&mut merged, m);
        assert_eq!(seq, merged, "base length {base_len}");
    }
}

#[test]
fn second_overrides_first() {
    let a = d(
        None,
        Some("s1"),
        100,
        vec![w(0, b'A', 10), Ext::Zero(20, 10), w(50, b'B', 10)],
    );
    let b = d(
        Some("s1"),
        Some("s2"),
        100,
        vec![w(5, b'C', 20), Ext::Zero(55, 2)],
    );
    let m = merge(&a, &b).unwrap();
    assert_eq!(m.from, None);
    assert_eq!(m.to.as_deref(), Some("s2"));
    assert_eq!(m.size, 100);
    assert_eq!(
        m.exts,
        vec![
            w(0, b'A', 5),
            w(5, b'C', 20),
            Ext::Zero(25, 5),
            w(50, b'B', 5),
            Ext::Zero(55, 2),
            w(57, b'B', 3),
        ]
    );
}

#[test]
fn from_and_to_names_come_from_first_and_second() {
    let a = d(Some("s0"), Some("s1"), 10, vec![]);
    let b = d(Some("s1"), None, 10, vec![w(0, 1, 1)]);
    let m = merge(&a, &b).unwrap();
    assert_eq!(m.from.as_deref(), Some("s0"));
    assert_eq!(m.to, None);
}

#[test]
fn snapshot_mismatch_is_refused() {
    let a = d(None, Some("s1"), 10, vec![]);
    let b = d(Some("other"), Some("s2"), 10, vec![]);
    assert_eq!(kind_of(merge(&a, &b)), K::SnapMismatch);
    let b = d(None, Some("s2"), 10, vec![]);
    assert_eq!(kind_of(merge(&a, &b)), K::SnapMismatch);
}

#[test]
fn shrink_cuts_first_extents() {
    let a = d(
        None,
        Some("s1"),
        100,
        vec![w(10, b'A', 10), w(30, b'B', 20), Ext::Zero(60, 40)],
    );
    let b = d(Some("s1"), Some("s2"), 40, vec![w(12, b'C', 2)]);
    let m = merge(&a, &b).unwrap();
    assert_eq!(m.size, 40);
    assert_eq!(
        m.exts,
        vec![
            w(10, b'A', 2),
            w(12, b'C', 2),
            w(14, b'A', 6),
            w(30, b'B', 10)
        ]
    );
}

#[test]
fn grow_after_shrink_zeroes_the_gap() {
    // Image shrank to 50 in the first interval and grew to 200 in the second:
    // old data in [50, 200) must not reappear.
    let a = d(None, Some("s1"), 50, vec![w(0, b'A', 5)]);
    let b = d(Some("s1"), Some("s2"), 200, vec![w(100, b'C', 10)]);
    let m = merge(&a, &b).unwrap();
    assert_eq!(
        m.exts,
        vec![
            w(0, b'A', 5),
            Ext::Zero(50, 50),
            w(100, b'C', 10),
            Ext::Zero(110, 90)
        ]
    );
}

#[test]
fn empty_inputs() {
    let a = d(None, Some("s1"), 0, vec![]);
    let b = d(Some("s1"), Some("s2"), 0, vec![]);
    assert_eq!(merge(&a, &b).unwrap().exts, vec![]);
}

#[test]
fn v2_output_keeps_protection() {
    let a = d(None, Some("s1"), 10, vec![w(0, 1, 2)]);
    let mut b = d(Some("s1"), Some("s2"), 10, vec![w(4, 2, 2)]);
    b.protected = Some(true);
    let mut out = Vec::new();
    merge_diffs_as(
        &write_diff(DiffFormat::V2, &a)[..],
        &write_diff(DiffFormat::V2, &b)[..],
        &mut out,
        DiffFormat::V2,
    )
    .unwrap();
    let (fmt, m) = read_diff(&out).unwrap();
    assert_eq!(fmt, DiffFormat::V2);
    assert_eq!(m.protected, Some(true));
    assert_eq!(m.exts, vec![w(0, 1, 2), w(4, 2, 2)]);
}

#[test]
fn corrupt_inputs_are_refused() {
    let a = write_diff(DiffFormat::V1, &d(None, Some("s1"), 10, vec![w(0, 1, 2)]));
    let mut b = write_diff(DiffFormat::V1, &d(Some("s1"), None, 10, vec![w(4, 2, 2)]));
    b.push(b'x');
    assert_eq!(
        kind_of(merge_diffs(&a[..], &b[..], Vec::new())),
        K::TrailingData
    );
    assert_eq!(
        kind_of(merge_diffs(&a[..a.len() - 1], &b[..], Vec::new())),
        K::MissingEnd
    );
    assert_eq!(
        kind_of(merge_diffs(&b"junk"[..], &a[..], Vec::new())),
        K::BadBanner
    );
}
