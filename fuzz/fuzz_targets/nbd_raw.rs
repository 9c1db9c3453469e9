//! The NBD server's whole state machine (handshake, option haggling,
//! transmission) over a fuzzed client byte stream: `row_nbd::serve_connection`
//! on one end of a `tokio::io::duplex`, the input written to the other end
//! (then half-closed) while everything the server sends is read back.
//! Exports: `MemExport`s and the gateway's `ImageExport` over a row-layer
//! image on `MemBackend` (see `src/nbd.rs`).
//!
//! Input: `config selector | client bytes`. Asserts: no panic in the server
//! or its per-request tasks; no hang (paused clock: a session that can make
//! no progress is reported at once); the server always greets first and
//! then answers or closes (the session ends).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rbd_row_fuzz::nbd::{check_greeting, config, run_session};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, client)) = data.split_first() else {
        return;
    };
    let out = run_session(client, config(sel & 1 != 0));
    check_greeting(&out);
});
