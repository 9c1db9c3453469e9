//! Watch/notify: librados callbacks to tokio channels, and the notify reply
//! format.

use crate::error::corrupt;
use bytes::Bytes;
use row_layer::Result;
use std::ffi::{c_int, c_void};
use tokio::sync::mpsc;

/// What the watch callbacks forward to the watch's tokio task.
#[derive(Debug)]
pub(crate) enum WatchEvent {
    /// A notification to acknowledge.
    Notify {
        notify_id: u64,
        cookie: u64,
        notifier_id: u64,
        payload: Bytes,
    },
    /// The watch failed (e.g. -ENOTCONN after a disconnection); it must be
    /// re-established by the user.
    Error { cookie: u64, err: c_int },
}

/// The callback argument of one watch: lives (boxed, at a stable address)
/// until `rados_unwatch2` and `rados_watch_flush` have returned.
pub(crate) struct WatchCtx {
    pub(crate) tx: mpsc::UnboundedSender<WatchEvent>,
}

/// `rados_watchcb2_t`: copies the payload and forwards it; never blocks.
pub(crate) unsafe extern "C" fn on_notify(
    arg: *mut c_void,
    notify_id: u64,
    cookie: u64,
    notifier_id: u64,
    data: *mut c_void,
    data_len: usize,
) {
    // SAFETY: `arg` is the WatchCtx registered with this watch; it outlives
    // every callback (freed only after unwatch + watch_flush).
    let ctx = unsafe { &*arg.cast::<WatchCtx>() };
    let payload = if data.is_null() || data_len == 0 {
        Bytes::new()
    } else {
        // SAFETY: librados passes data_len readable bytes at data.
        Bytes::copy_from_slice(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), data_len) })
    };
    let _ = ctx.tx.send(WatchEvent::Notify {
        notify_id,
        cookie,
        notifier_id,
        payload,
    });
}

/// `rados_watcherrcb_t`.
pub(crate) unsafe extern "C" fn on_watch_error(arg: *mut c_void, cookie: u64, err: c_int) {
    // SAFETY: as in `on_notify`.
    let ctx = unsafe { &*arg.cast::<WatchCtx>() };
    let _ = ctx.tx.send(WatchEvent::Error { cookie, err });
}

/// One watcher's answer in a notify reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyAck {
    /// Global id of the watching client (`client.<gid>`).
    pub gid: u64,
    /// The watch's cookie.
    pub cookie: u64,
    /// The payload the watcher acknowledged with.
    pub payload: Bytes,
}

/// A decoded notify reply: who answered and who timed out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyReply {
    /// Watchers that acknowledged, with their payloads.
    pub acks: Vec<NotifyAck>,
    /// (gid, cookie) of watchers that did not answer in time.
    pub timeouts: Vec<(u64, u64)>,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(corrupt(format!(
                "notify reply truncated reading {what}: need {n} bytes, {} left",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

/// Decodes the reply buffer of `rados_notify2`: le32 count, then per ack
/// le64 gid, le64 cookie, le32 length and the payload; then le32 count and
/// per timed-out watcher le64 gid, le64 cookie. The count of timeouts may be
/// absent in an empty buffer.
pub fn parse_notify_reply(buf: &[u8]) -> Result<NotifyReply> {
    let mut r = Reader { buf };
    let mut out = NotifyReply::default();
    if buf.is_empty() {
        return Ok(out);
    }
    let n = r.u32("ack count")?;
    for _ in 0..n {
        let gid = r.u64("ack gid")?;
        let cookie = r.u64("ack cookie")?;
        let len = r.u32("ack length")? as usize;
        let payload = Bytes::copy_from_slice(r.take(len, "ack payload")?);
        out.acks.push(NotifyAck {
            gid,
            cookie,
            payload,
        });
    }
    if r.buf.is_empty() {
        return Ok(out);
    }
    let n = r.u32("timeout count")?;
    for _ in 0..n {
        let gid = r.u64("timeout gid")?;
        let cookie = r.u64("timeout cookie")?;
        out.timeouts.push((gid, cookie));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(acks: &[(u64, u64, &[u8])], timeouts: &[(u64, u64)]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(acks.len() as u32).to_le_bytes());
        for (g, c, p) in acks {
            v.extend_from_slice(&g.to_le_bytes());
            v.extend_from_slice(&c.to_le_bytes());
            v.extend_from_slice(&(p.len() as u32).to_le_bytes());
            v.extend_from_slice(p);
        }
        v.extend_from_slice(&(timeouts.len() as u32).to_le_bytes());
        for (g, c) in timeouts {
            v.extend_from_slice(&g.to_le_bytes());
            v.extend_from_slice(&c.to_le_bytes());
        }
        v
    }

    #[test]
    fn round_trip() {
        let buf = encode(&[(4123, 7, b"re:ping"), (4124, 8, b"")], &[(4125, 9)]);
        let r = parse_notify_reply(&buf).unwrap();
        assert_eq!(r.acks.len(), 2);
        assert_eq!(r.acks[0].gid, 4123);
        assert_eq!(r.acks[0].payload, Bytes::from_static(b"re:ping"));
        assert!(r.acks[1].payload.is_empty());
        assert_eq!(r.timeouts, vec![(4125, 9)]);
        assert_eq!(parse_notify_reply(&[]).unwrap(), NotifyReply::default());
    }

    #[test]
    fn truncated_or_hostile_input_is_an_error_not_a_panic() {
        let buf = encode(&[(1, 2, b"abcdef")], &[(3, 4)]);
        for cut in 1..buf.len() {
            let _ = parse_notify_reply(&buf[..cut]);
        }
        // A huge claimed payload length.
        let mut bad = Vec::new();
        bad.extend_from_slice(&1u32.to_le_bytes());
        bad.extend_from_slice(&[0u8; 16]);
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_notify_reply(&bad).is_err());
        // A huge claimed count.
        assert!(parse_notify_reply(&u32::MAX.to_le_bytes()).is_err());
    }
}
