//! Property tests: random extent lists round-trip; merge equals sequential
//! application; the readers never panic on mutated input.

mod common;

use common::{apply, read_diff, write_diff, Diff, Ext};
use proptest::prelude::*;
use rbd_streams::{merge_diffs, validate_diff, validate_image_export, DiffFormat};

/// (gap before, length, is data, fill seed)
fn extents() -> impl Strategy<Value = Vec<(u64, u64, bool, u8)>> {
    prop::collection::vec((0u64..64, 1u64..96, any::<bool>(), any::<u8>()), 0..24)
}

fn build(raw: &[(u64, u64, bool, u8)], extra: u64) -> (u64, Vec<Ext>) {
    let mut pos = 0;
    let mut exts = Vec::new();
    for &(gap, len, data, seed) in raw {
        let off = pos + gap;
        exts.push(if data {
            Ext::Data(off, (0..len).map(|i| seed.wrapping_add(i as u8)).collect())
        } else {
            Ext::Zero(off, len)
        });
        pos = off + len;
    }
    (pos + extra, exts)
}

fn name() -> impl Strategy<Value = Option<String>> {
    prop::option::of("[a-zA-Z0-9_.@-]{0,20}")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_extent_lists_round_trip(
        raw in extents(),
        extra in 0u64..100,
        from in name(),
        to in name(),
        prot in any::<Option<bool>>(),
        v2 in any::<bool>(),
    ) {
        let (size, exts) = build(&raw, extra);
        let fmt = if v2 { DiffFormat::V2 } else { DiffFormat::V1 };
        let protected = if v2 && to.is_some() { prot } else { None };
        let d = Diff { from, to, protected, size, exts };
        let bytes = write_diff(fmt, &d);
        let (got_fmt, got) = read_diff(&bytes).unwrap();
        prop_assert_eq!(got_fmt, fmt);
        prop_assert_eq!(&got, &d);
        let s = validate_diff(&bytes[..]).unwrap();
        prop_assert_eq!(s.stream_len, bytes.len() as u64);
    }

    #[test]
    fn merge_equals_sequential_apply(
        raw1 in extents(), extra1 in 0u64..200,
        raw2 in extents(), extra2 in 0u64..200,
        base_len in 0usize..3000,
    ) {
        let (s1, e1) = build(&raw1, extra1);
        let (s2, e2) = build(&raw2, extra2);
        let a = Diff { from: Some("a".into()), to: Some("b".into()), protected: None, size: s1, exts: e1 };
        let b = Diff { from: Some("b".into()), to: Some("c".into()), protected: None, size: s2, exts: e2 };
        let mut out = Vec::new();
        merge_diffs(&write_diff(DiffFormat::V1, &a)[..], &write_diff(DiffFormat::V2, &b)[..], &mut out).unwrap();
        let (_, m) = read_diff(&out).unwrap();
        prop_assert_eq!(m.from.as_deref(), Some("a"));
        prop_assert_eq!(m.to.as_deref(), Some("c"));
        prop_assert_eq!(m.size, s2);
        let base: Vec<u8> = (0..base_len).map(|i| (i % 251 + 1) as u8).collect();
        let mut seq = base.clone();
        apply(&mut seq, &a);
        apply(&mut seq, &b);
        let mut merged = base;
        apply(&mut merged, &m);
        prop_assert_eq!(seq, merged);
    }

    #[test]
    fn mutated_streams_never_panic(
        which in 0usize..4,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let name = ["diff_v1.bin", "diff_v2.bin", "diff_v2_unknown_tag.bin", "image_export_v2.bin"][which];
        let mut b = common::fixture(name);
        for (i, v) in edits {
            let i = i.index(b.len());
            b[i] = v;
        }
        if do_cut {
            b.truncate(cut.index(b.len()));
        }
        let _ = validate_diff(&b[..]);
        let _ = validate_image_export(&b[..]);
    }
}
