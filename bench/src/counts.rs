//! Counts that need no profiler, sampled around one measurement (the
//! benches' `--counts`): backend ops by kind, this process's context
//! switches and CPU time, the OSDs' own read and write latency, and a
//! CLOCK_MONOTONIC timestamp to cut a `perf record -k CLOCK_MONOTONIC`
//! profile to the measurement (`perf report --time start,end`).
//!
//! They say where a ratio comes from: an extra backend op per I/O shows in
//! the op counts, extra CPU or lock waits in the CPU and switches per I/O,
//! and a slower OSD in its latency per op, which the client cannot tell
//! apart from its own time.

use crate::ceph::ceph_json;
use anyhow::anyhow;
use row_layer::backend::fault::OpCounts;

/// OSD counters summed over every OSD (`ceph tell osd.N perf dump`).
#[derive(Debug, Clone, Copy, Default)]
pub struct OsdCounters {
    /// `osd.op_r`, `osd.op_r_latency` sum (s), `osd.op_r_process_latency`
    /// sum (s): client reads, receipt to reply and processing.
    pub reads: (f64, f64, f64),
    /// The same for writes (`op_w`).
    pub writes: (f64, f64, f64),
    /// The same for read-modify-writes (`op_rw`): an op with a read and a
    /// write, such as a guarded header op (an xattr compare plus omap set).
    pub rmw: (f64, f64, f64),
    /// `bluestore.read_lat` sum (s) and count, `read_onode_meta_lat` sum
    /// (onode and extent map) and `read_wait_aio_lat` sum (the device).
    pub bluestore_read: (f64, f64, f64, f64),
}

fn sub3(a: (f64, f64, f64), b: (f64, f64, f64)) -> (f64, f64, f64) {
    (a.0 - b.0, a.1 - b.1, a.2 - b.2)
}

impl std::ops::Sub for OsdCounters {
    type Output = OsdCounters;
    fn sub(self, o: OsdCounters) -> OsdCounters {
        let (a, b) = (self.bluestore_read, o.bluestore_read);
        OsdCounters {
            reads: sub3(self.reads, o.reads),
            writes: sub3(self.writes, o.writes),
            rmw: sub3(self.rmw, o.rmw),
            bluestore_read: (a.0 - b.0, a.1 - b.1, a.2 - b.2, a.3 - b.3),
        }
    }
}

impl OsdCounters {
    /// Samples every OSD now.
    pub fn now() -> anyhow::Result<OsdCounters> {
        let ids = ceph_json(&["osd", "ls"])?;
        let mut out = OsdCounters::default();
        for id in ids.as_array().into_iter().flatten() {
            let id = id.as_u64().ok_or_else(|| anyhow!("osd ls: not an id"))?;
            let d = ceph_json(&["tell", &format!("osd.{id}"), "perf", "dump"])?;
            let num = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
            let (o, b) = (&d["osd"], &d["bluestore"]);
            let op = |k: &str| {
                (
                    num(&o[k]),
                    num(&o[format!("{k}_latency")]["sum"]),
                    num(&o[format!("{k}_process_latency")]["sum"]),
                )
            };
            out.reads = add3(out.reads, op("op_r"));
            out.writes = add3(out.writes, op("op_w"));
            out.rmw = add3(out.rmw, op("op_rw"));
            let r = &mut out.bluestore_read;
            r.0 += num(&b["read_lat"]["sum"]);
            r.1 += num(&b["read_lat"]["avgcount"]);
            r.2 += num(&b["read_onode_meta_lat"]["sum"]);
            r.3 += num(&b["read_wait_aio_lat"]["sum"]);
        }
        Ok(out)
    }

    /// One line: OSD ops per client I/O and latency per OSD op, in ms.
    pub fn describe(&self, ios: u64) -> String {
        let ms = |s: f64, n: f64| s * 1e3 / n.max(1.0);
        let per = |n: f64| n / ios.max(1) as f64;
        let (r, w, b) = (self.reads, self.writes, self.bluestore_read);
        let rw = self.rmw;
        format!(
            "OSD reads/io {:.3} (latency {:.3} ms, process {:.3} ms, bluestore read {:.3} ms: \
             onode meta {:.3} ms, aio wait {:.3} ms); OSD writes/io {:.3} (latency {:.3} ms, \
             process {:.3} ms); OSD read-modify-writes/io {:.3} (latency {:.3} ms)",
            per(r.0),
            ms(r.1, r.0),
            ms(r.2, r.0),
            ms(b.0, b.1),
            ms(b.2, b.1),
            ms(b.3, b.1),
            per(w.0),
            ms(w.1, w.0),
            ms(w.2, w.0),
            per(rw.0),
            ms(rw.1, rw.0),
        )
    }
}

fn add3(a: (f64, f64, f64), b: (f64, f64, f64)) -> (f64, f64, f64) {
    (a.0 + b.0, a.1 + b.1, a.2 + b.2)
}

/// Process-wide counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    ops: OpCounts,
    /// Voluntary and involuntary context switches of this process.
    csw: (i64, i64),
    /// User + system CPU seconds of this process (not of its children).
    cpu: f64,
    /// CLOCK_MONOTONIC seconds, taken last.
    mono: f64,
    osd: Option<OsdCounters>,
}

impl Sample {
    /// Samples now; `ops` are the backend op counts of the side measured,
    /// `osd` also samples the OSDs (Ceph only; a few `ceph` calls).
    pub fn now(ops: OpCounts, osd: bool) -> anyhow::Result<Sample> {
        let osd = if osd { Some(OsdCounters::now()?) } else { None };
        // SAFETY: plain out-parameter syscalls on zeroed structs.
        let (ru, ts) = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut ru);
            let mut ts: libc::timespec = std::mem::zeroed();
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
            (ru, ts)
        };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        Ok(Sample {
            ops,
            csw: (ru.ru_nvcsw, ru.ru_nivcsw),
            cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
            mono: ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9,
            osd,
        })
    }

    /// What happened from `self` to `end`, per I/O of the `ios` done.
    /// `end`'s OSD sample is taken before its clock, so the monotonic
    /// window covers the measurement and the end's `ceph` calls.
    pub fn describe(&self, end: &Sample, ios: u64) -> String {
        let d = end.ops - self.ops;
        let n = ios.max(1) as f64;
        let per = |x: u64| x as f64 / n;
        let mut s = format!(
            "backend reads/io {:.3} metadata/io {:.3} mutations/io {:.3} flushes/io {:.3}; \
             process vcsw/io {:.2} ivcsw/io {:.2} cpu_us/io {:.1}; mono {:.3},{:.3}",
            per(d.reads),
            per(d.metadata_reads),
            per(d.mutations),
            per(d.flushes),
            (end.csw.0 - self.csw.0) as f64 / n,
            (end.csw.1 - self.csw.1) as f64 / n,
            (end.cpu - self.cpu) * 1e6 / n,
            self.mono,
            end.mono
        );
        if let (Some(a), Some(b)) = (self.osd, end.osd) {
            s.push_str("; ");
            s.push_str(&(b - a).describe(ios));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_ops_are_per_io_of_the_interval() {
        let ops = |reads, mutations| OpCounts {
            reads,
            metadata_reads: 7,
            mutations,
            flushes: 0,
        };
        let a = Sample::now(ops(10, 5), false).expect("sample");
        let b = Sample::now(ops(410, 25), false).expect("sample");
        let d = a.describe(&b, 400);
        assert!(
            d.starts_with(
                "backend reads/io 1.000 metadata/io 0.000 mutations/io 0.050 flushes/io 0.000;"
            ),
            "{d}"
        );
        assert!(!d.contains("OSD"), "no OSD sample was asked for: {d}");
    }

    #[test]
    fn osd_latency_is_per_osd_op_and_ops_per_client_io() {
        let at = |n: f64| OsdCounters {
            reads: (n, n * 0.002, n * 0.001),
            writes: (n / 2.0, n * 0.004, n * 0.003),
            rmw: (0.0, 0.0, 0.0),
            bluestore_read: (n * 0.0005, n, n * 0.0001, n * 0.0004),
        };
        let d = (at(300.0) - at(100.0)).describe(100);
        assert_eq!(
            d,
            "OSD reads/io 2.000 (latency 2.000 ms, process 1.000 ms, bluestore read 0.500 ms: \
             onode meta 0.100 ms, aio wait 0.400 ms); OSD writes/io 1.000 (latency 8.000 ms, \
             process 6.000 ms); OSD read-modify-writes/io 0.000 (latency 0.000 ms)"
        );
    }
}
