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
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]
    #[test]
    fn engine_matches_oracle(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(run_on(Arc::new(MemBackend::new()), ops));
    }
}
