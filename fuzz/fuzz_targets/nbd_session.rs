//! The NBD server past the handshake: the first input byte chooses a VALID
//! handshake (client flags, structured replies, meta contexts, `GO` or
//! `EXPORT_NAME`, export, extra options, server limits), the rest becomes
//! well-framed transmission requests with fuzzed commands, flags, offsets
//! and lengths (and optionally a raw tail), so most inputs reach
//! transmission. Same session driver as `nbd_raw`.
//!
//! Asserts, besides no panic and no hang: the server's byte stream is a
//! correct NBD conversation for what the client sent (see
//! `rbd_row_fuzz::nbd::check_session`): option replies ending in ACK, the
//! export size and read-only flag, well-formed simple/structured replies to
//! requests that were sent, reads covering exactly their range, block
//! status per negotiated context, NBD errno values only, no success where
//! the server must refuse, and every request before DISC answered once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rbd_row_fuzz::nbd::{check_session, config, plan, run_session};

fuzz_target!(|data: &[u8]| {
    let Some(p) = plan(data) else {
        return;
    };
    let out = run_session(&p.client, config(p.small));
    check_session(&p, &out);
});
