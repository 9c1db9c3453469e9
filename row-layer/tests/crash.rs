//! Crash test: random operation sequences on the fault-injecting backend,
//! crashing at the N-th backend mutation (applied or not), then dropping an
//! arbitrary subset of the unflushed mutations (`MemBackend::crash`), reopening
//! and checking the crash-consistency properties of docs/DESIGN.md:
//! (a) flushed writes survive, (b) snapshots are exactly as created,
//! (c) every grain reads as a value it held since the last flush — never
//! zeros nobody wrote, never another location's data.

mod common;

use common::crash_impl::*;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("ROW_CRASH_CASES")
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
    fn crash_at_any_mutation_is_consistent(
        ops in proptest::collection::vec(op(), 1..30),
        crash_at in 1u64..80,
        applied in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(run(ops, crash_at, applied, seed));
    }
}
