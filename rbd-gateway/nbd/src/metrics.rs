//! Per-export counters and latency histograms with a Prometheus text renderer.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Operation classes that are counted separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `NBD_CMD_READ`.
    Read,
    /// `NBD_CMD_WRITE`.
    Write,
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_TRIM`.
    Trim,
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes,
    /// `NBD_CMD_CACHE`.
    Cache,
    /// `NBD_CMD_BLOCK_STATUS`.
    BlockStatus,
    /// Anything rejected before dispatch (unknown command, bad flags, ...).
    Other,
}

impl Op {
    /// All op classes, in rendering order.
    pub const ALL: [Op; 8] = [
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Trim,
        Op::WriteZeroes,
        Op::Cache,
        Op::BlockStatus,
        Op::Other,
    ];
    /// Label value.
    pub const fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Trim => "trim",
            Op::WriteZeroes => "write_zeroes",
            Op::Cache => "cache",
            Op::BlockStatus => "block_status",
            Op::Other => "other",
        }
    }
    const fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds (seconds) of the latency histogram buckets; `+Inf` is implicit.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    5.0,
];

/// Counters of one op class.
#[derive(Default)]
pub struct OpStats {
    ops: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    latency_sum_ns: AtomicU64,
    /// Non-cumulative bucket counts; the last slot is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
}

impl OpStats {
    /// Completed operations (including failed ones).
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }
    /// Failed operations.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    /// Bytes moved/affected by successful operations.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Metrics of one export (shared by all its connections).
#[derive(Default)]
pub struct ExportMetrics {
    ops: [OpStats; 8],
    in_flight: AtomicI64,
    connections: AtomicI64,
    connections_total: AtomicU64,
}

impl ExportMetrics {
    /// Stats of one op class.
    pub fn op(&self, op: Op) -> &OpStats {
        &self.ops[op.index()]
    }
    /// Requests currently being processed.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }
    /// Connections currently in transmission phase on this export.
    pub fn connections(&self) -> i64 {
        self.connections.load(Ordering::Relaxed)
    }
    /// Connections that ever entered transmission phase on this export.
    pub fn connections_total(&self) -> u64 {
        self.connections_total.load(Ordering::Relaxed)
    }
    /// Record a completed operation.
    pub fn record(&self, op: Op, bytes: u64, ok: bool, latency: Duration) {
        let s = &self.ops[op.index()];
        s.ops.fetch_add(1, Ordering::Relaxed);
        if ok {
            s.bytes.fetch_add(bytes, Ordering::Relaxed);
        } else {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        s.latency_sum_ns.fetch_add(ns, Ordering::Relaxed);
        let secs = latency.as_secs_f64();
        let idx = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        s.buckets[idx].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn inc_in_flight(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn dec_in_flight(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
    pub(crate) fn conn_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn conn_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Server-wide metrics: one [`ExportMetrics`] per export name plus
/// connection counters. Share an `Arc<Metrics>` between the server
/// ([`crate::ServerConfig::metrics`]) and an HTTP `/metrics` endpoint.
#[derive(Default)]
pub struct Metrics {
    exports: Mutex<BTreeMap<String, Arc<ExportMetrics>>>,
    accepted: AtomicU64,
    active: AtomicI64,
    handshake_failures: AtomicU64,
    refused: AtomicU64,
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Self::default()
    }
    /// Metrics of `export` (created on first use).
    pub fn export(&self, export: &str) -> Arc<ExportMetrics> {
        let mut m = self.exports.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(export.to_owned()).or_default().clone()
    }
    /// Existing metrics of `export`, if any.
    pub fn get(&self, export: &str) -> Option<Arc<ExportMetrics>> {
        let m = self.exports.lock().unwrap_or_else(|p| p.into_inner());
        m.get(export).cloned()
    }
    /// TCP connections accepted.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
    /// Connections currently open (any phase).
    pub fn active(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }
    /// Connections that ended during the handshake without reaching transmission
    /// (client aborts included).
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }
    /// Connections closed right after `accept` because the server had
    /// [`crate::ServerLimits::max_connections`] open already.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
    pub(crate) fn conn_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn conn_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn conn_done(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
    pub(crate) fn handshake_failed(&self) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Render everything in the Prometheus text exposition format (0.0.4).
    pub fn render_prometheus(&self) -> String {
        let exports: Vec<(String, Arc<ExportMetrics>)> = {
            let m = self.exports.lock().unwrap_or_else(|p| p.into_inner());
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let mut out = String::new();
        let w = &mut out;
        header(
            w,
            "nbd_connections_accepted_total",
            "counter",
            "TCP connections accepted",
        );
        let _ = writeln!(w, "nbd_connections_accepted_total {}", self.accepted());
        header(
            w,
            "nbd_connections_active",
            "gauge",
            "Open connections (any phase)",
        );
        let _ = writeln!(w, "nbd_connections_active {}", self.active());
        header(
            w,
            "nbd_connections_refused_total",
            "counter",
            "Connections closed at accept: connection limit reached",
        );
        let _ = writeln!(w, "nbd_connections_refused_total {}", self.refused());
        header(
            w,
            "nbd_handshake_failures_total",
            "counter",
            "Connections that ended before transmission",
        );
        let _ = writeln!(
            w,
            "nbd_handshake_failures_total {}",
            self.handshake_failures()
        );

        header(
            w,
            "nbd_export_connections",
            "gauge",
            "Connections in transmission phase",
        );
        for (name, m) in &exports {
            let _ = writeln!(
                w,
                "nbd_export_connections{{export=\"{}\"}} {}",
                esc(name),
                m.connections()
            );
        }
        header(
            w,
            "nbd_export_connections_total",
            "counter",
            "Connections that entered transmission",
        );
        for (name, m) in &exports {
            let _ = writeln!(
                w,
                "nbd_export_connections_total{{export=\"{}\"}} {}",
                esc(name),
                m.connections_total()
            );
        }
        header(
            w,
            "nbd_requests_in_flight",
            "gauge",
            "Requests being processed",
        );
        for (name, m) in &exports {
            let _ = writeln!(
                w,
                "nbd_requests_in_flight{{export=\"{}\"}} {}",
                esc(name),
                m.in_flight()
            );
        }
        type Getter = fn(&OpStats) -> u64;
        let counters: [(&str, &str, Getter); 3] = [
            ("nbd_requests_total", "Completed requests", OpStats::ops),
            (
                "nbd_request_errors_total",
                "Requests answered with an error",
                OpStats::errors,
            ),
            (
                "nbd_request_bytes_total",
                "Bytes of successful requests",
                OpStats::bytes,
            ),
        ];
        for (metric, help, get) in counters {
            header(w, metric, "counter", help);
            for (name, m) in &exports {
                for op in Op::ALL {
                    let _ = writeln!(
                        w,
                        "{metric}{{export=\"{}\",op=\"{}\"}} {}",
                        esc(name),
                        op.name(),
                        get(m.op(op))
                    );
                }
            }
        }
        let metric = "nbd_request_duration_seconds";
        header(w, metric, "histogram", "Request latency");
        for (name, m) in &exports {
            for op in Op::ALL {
                let s = m.op(op);
                let labels = format!("export=\"{}\",op=\"{}\"", esc(name), op.name());
                let mut cum = 0u64;
                for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
                    cum += s.buckets[i].load(Ordering::Relaxed);
                    let _ = writeln!(w, "{metric}_bucket{{{labels},le=\"{le}\"}} {cum}");
                }
                cum += s.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
                let _ = writeln!(w, "{metric}_bucket{{{labels},le=\"+Inf\"}} {cum}");
                let sum = s.latency_sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
                let _ = writeln!(w, "{metric}_sum{{{labels}}} {sum}");
                let _ = writeln!(w, "{metric}_count{{{labels}}} {cum}");
            }
        }
        out
    }
}

fn header(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {help}");
    let _ = writeln!(w, "# TYPE {name} {kind}");
}

/// Escape a label value per the exposition format.
fn esc(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render() {
        let m = Metrics::new();
        let e = m.export("img\"1");
        e.record(Op::Read, 4096, true, Duration::from_micros(70));
        e.record(Op::Read, 4096, false, Duration::from_secs(10));
        let text = m.render_prometheus();
        assert!(text.contains("nbd_requests_total{export=\"img\\\"1\",op=\"read\"} 2"));
        assert!(text.contains("nbd_request_errors_total{export=\"img\\\"1\",op=\"read\"} 1"));
        assert!(text.contains("nbd_request_bytes_total{export=\"img\\\"1\",op=\"read\"} 4096"));
        assert!(text.contains(
            "nbd_request_duration_seconds_bucket{export=\"img\\\"1\",op=\"read\",le=\"0.0001\"} 1"
        ));
        assert!(text.contains(
            "nbd_request_duration_seconds_bucket{export=\"img\\\"1\",op=\"read\",le=\"5\"} 1"
        ));
        assert!(text.contains(
            "nbd_request_duration_seconds_bucket{export=\"img\\\"1\",op=\"read\",le=\"+Inf\"} 2"
        ));
        assert!(
            text.contains("nbd_request_duration_seconds_count{export=\"img\\\"1\",op=\"read\"} 2")
        );
    }
}
