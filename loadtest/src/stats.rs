//! Measurements: HDR latency histograms (microseconds), per-second series, and what
//! `/proc` says about the server process (RSS, CPU time).

use std::{path::PathBuf, time::Duration};

use base64::Engine as _;
use hdrhistogram::{
    Histogram,
    serialization::{Deserializer, Serializer as _, V2Serializer},
};
use serde::{Deserialize, Serialize};

/// Highest latency a histogram holds (longer ones are clamped to it): one hour, in µs.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low,
    // sigfig <= 5), so construction cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Records a latency given in nanoseconds.
pub fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record((ns / 1_000).clamp(1, MAX_LATENCY_US));
}

/// A histogram as text (V2 encoding, base64) to cross a process boundary.
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    // Serializing into a Vec cannot fail for a histogram we built: V2 only fails on I/O
    // errors of the writer.
    if V2Serializer::new().serialize(h, &mut buf).is_err() {
        buf.clear();
    }
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// The inverse of [`encode_histogram`].
pub fn decode_histogram(s: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("histogram base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("histogram: {e:?}"))
}

/// Adds `other` into `into` (values above the range are clamped, not lost).
pub fn merge(into: &mut Histogram<u64>, other: &Histogram<u64>) {
    for v in other.iter_recorded() {
        into.saturating_record_n(
            v.value_iterated_to().min(MAX_LATENCY_US),
            v.count_at_value(),
        );
    }
}

/// Milliseconds at `quantile` (0 for an empty histogram).
pub fn ms_at(h: &Histogram<u64>, quantile: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Per-second counts of a worker (index = second since the measured phase began).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Series {
    pub sent: Vec<u64>,
    pub acked: Vec<u64>,
    pub delivered: Vec<u64>,
    pub connections: Vec<u64>,
    /// Latency histogram of each second's deliveries (encoded).
    pub latency: Vec<String>,
}

/// Counts events into one-second buckets relative to `start_ns`; events before it go to
/// second 0.
pub fn per_second(times_ns: impl Iterator<Item = u64>, start_ns: u64) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for t in times_ns {
        let s = (t.saturating_sub(start_ns) / 1_000_000_000) as usize;
        if out.len() <= s {
            out.resize(s + 1, 0);
        }
        out[s] += 1;
    }
    out
}

/// Element-wise sum of per-second vectors of different lengths.
pub fn add_series(into: &mut Vec<u64>, other: &[u64]) {
    if into.len() < other.len() {
        into.resize(other.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(other) {
        *a += b;
    }
}

/// What `/proc/<pid>` tells about a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// Resident set size now.
    pub rss_bytes: u64,
    /// Peak resident set size over the process's life (VmHWM).
    pub rss_peak_bytes: u64,
    /// User + system CPU time so far.
    pub cpu_s: f64,
}

/// Reads a process's memory and CPU from `/proc`.
#[derive(Debug, Clone)]
pub struct ProcProbe {
    dir: PathBuf,
    ticks_per_s: f64,
}

impl ProcProbe {
    /// A probe of process `pid`; fails now if it cannot be read (wrong pid, not Linux).
    pub fn new(pid: u32) -> Result<ProcProbe, String> {
        let probe = ProcProbe {
            dir: PathBuf::from(format!("/proc/{pid}")),
            ticks_per_s: rustix::param::clock_ticks_per_second() as f64,
        };
        probe.sample().map(|_| probe)
    }

    pub fn sample(&self) -> Result<ProcSample, String> {
        let status = std::fs::read_to_string(self.dir.join("status"))
            .map_err(|e| format!("{}: {e}", self.dir.join("status").display()))?;
        let stat = std::fs::read_to_string(self.dir.join("stat"))
            .map_err(|e| format!("{}: {e}", self.dir.join("stat").display()))?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .map(|k| k * 1024)
        };
        let rss_bytes = kib("VmRSS:").ok_or("no VmRSS in /proc status")?;
        let rss_peak_bytes = kib("VmHWM:").unwrap_or(rss_bytes);
        // Fields after the command name (which may contain spaces and parentheses):
        // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after ')'.
        let after = stat.rsplit_once(')').map(|(_, r)| r).ok_or("bad stat")?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        let (utime, stime) = ticks(11).zip(ticks(12)).ok_or("no utime/stime in stat")?;
        Ok(ProcSample {
            rss_bytes,
            rss_peak_bytes,
            cpu_s: (utime + stime) as f64 / self.ticks_per_s,
        })
    }
}

/// Seconds as f64 with millisecond precision, for summaries.
pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_cross_a_process_boundary_intact() {
        let mut h = histogram();
        for ns in [1_000, 2_000_000, 2_000_000, 50_000_000] {
            record_ns(&mut h, ns);
        }
        let back = decode_histogram(&encode_histogram(&h)).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back.max(), h.max());
        let mut sum = histogram();
        merge(&mut sum, &back);
        merge(&mut sum, &h);
        assert_eq!(sum.len(), 8);
        assert!(
            (ms_at(&sum, 0.5) - 2.0).abs() < 0.01,
            "{}",
            ms_at(&sum, 0.5)
        );
        assert!(decode_histogram("not base64!").is_err());
        assert_eq!(ms_at(&histogram(), 0.99), 0.0);
    }

    #[test]
    fn per_second_buckets() {
        let s = per_second(
            [0, 999_999_999, 1_000_000_000, 3_500_000_000].into_iter(),
            0,
        );
        assert_eq!(s, vec![2, 1, 0, 1]);
        let mut a = vec![1, 1];
        add_series(&mut a, &[1, 2, 3]);
        assert_eq!(a, vec![2, 3, 3]);
    }

    #[test]
    fn reads_its_own_process() {
        let p = ProcProbe::new(std::process::id()).unwrap();
        let s = p.sample().unwrap();
        assert!(s.rss_bytes > 0 && s.rss_peak_bytes >= s.rss_bytes);
        assert!(s.cpu_s >= 0.0);
        assert!(ProcProbe::new(u32::MAX).is_err());
    }
}
