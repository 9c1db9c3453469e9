//! Every in-process backend runs the one conformance suite.

use row_layer::backend::{conformance, fault::FaultBackend, mem::MemBackend, Backend};
use std::sync::Arc;

#[tokio::test]
async fn mem_backend_conforms() {
    let be: Arc<dyn Backend> = Arc::new(MemBackend::new());
    conformance::run_all(be, "conf.").await.expect("conformance");
}

#[tokio::test]
async fn fault_wrapper_without_faults_conforms() {
    let be: Arc<dyn Backend> = Arc::new(FaultBackend::new(Arc::new(MemBackend::new())));
    conformance::run_all(be, "conf.").await.expect("conformance");
}
