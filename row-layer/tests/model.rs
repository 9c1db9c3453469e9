//! Model test: random operation sequences against a naive oracle (a `Vec<u8>`
//! per head, snapshot and clone); every read and every diff is compared with
//! the oracle and `self_check()` runs after every step.

mod common;

use common::model_impl::*;
use proptest::prelude::*;
use row_layer::backend::mem::MemBackend;
use std::sync::Arc;

fn cases() -> u32 {
    std::env::var("ROW_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    })]
    #[test]
    fn engine_matches_oracle(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(run_on(Arc::new(MemBackend::new()), ops));
    }
}

/// Minimal failing sequences the model test found, kept as fixed cases.
#[test]
fn model_regressions() {
    use Op::*;
    let cases: Vec<Vec<Op>> = vec![
        // A clone's snapshot must keep the parent overlap it had when taken
        // (the clone shrank afterwards).
        vec![
            Snap { img: 0 },
            Write {
                img: 0,
                off: 116847,
                len: 26514,
                seed: 0,
            },
            Snap { img: 0 },
            Clone { img: 0, which: 1 },
            Snap { img: 1 },
            Resize {
                img: 1,
                size: 32768,
            },
        ],
        // A diff from a bookmark whose snapshot was removed must work after a
        // rollback to an older snapshot (the bookmarked epoch keeps its delta).
        vec![
            Snap { img: 0 },
            Write {
                img: 0,
                off: 48076,
                len: 29749,
                seed: 0,
            },
            Snap { img: 0 },
            Write {
                img: 0,
                off: 29691,
                len: 15366,
                seed: 0,
            },
            Bookmark { img: 0, which: 1 },
            RemoveSnap { img: 0, which: 1 },
            Rollback { img: 0, which: 0 },
        ],
        // A clone of a clone's snapshot taken before that clone shrank sees
        // the grandparent with the overlap of that snapshot.
        vec![
            Snap { img: 0 },
            Snap { img: 0 },
            Snap { img: 0 },
            Write {
                img: 0,
                off: 116847,
                len: 26514,
                seed: 0,
            },
            Snap { img: 0 },
            Clone { img: 0, which: 3 },
            Snap { img: 1 },
            Resize {
                img: 1,
                size: 32768,
            },
            Clone { img: 1, which: 0 },
        ],
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for ops in cases {
        rt.block_on(run_on(Arc::new(MemBackend::new()), ops));
    }
}
