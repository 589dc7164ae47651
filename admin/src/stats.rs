//! Cluster-wide figures for `GET /admin/v1/stats`. Every natter process publishes its
//! metrics on `natter.stats` every few seconds (`StatsReport`, Prometheus text); the
//! collector keeps each process's last two reports and computes rates and latencies
//! over the interval between them, so the figures cover the last few seconds.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt as _;
use natter_bus::{Bus, BusEvent};
use natter_proto::{Subject, bus::StatsReport};
use prost::Message as _;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::unix_ms;

/// A process that has not reported for this long is left out.
const STALE_AFTER_MS: u64 = 30_000;
/// Processes tracked at most (a flood of bogus instance names cannot grow memory).
const MAX_PROCESSES: usize = 4096;

/// One parsed sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses Prometheus text format lines (comments and malformed lines are skipped).
fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line[open..].find('}')? + open;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let (name, rest) = line.split_once(char::is_whitespace)?;
            (name, Vec::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.trim().to_owned(),
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.strip_prefix('"')?;
        // Values are escaped with backslashes; ours never contain quotes, but skip
        // escaped ones correctly anyway.
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, next)) = chars.next() {
                        value.push(next);
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        labels.push((key.trim().trim_start_matches(',').trim().to_owned(), value));
        rest = after[end + 1..].trim_start_matches(',').trim();
    }
    Some(labels)
}

#[derive(Debug, Clone)]
struct Report {
    role: String,
    at_ms: u64,
    samples: Arc<Vec<Sample>>,
}

#[derive(Debug, Default)]
struct Process {
    latest: Option<Report>,
    previous: Option<Report>,
}

/// Keeps the last two reports of every process. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StatsCollector {
    processes: Arc<Mutex<HashMap<String, Process>>>,
}

impl StatsCollector {
    /// Subscribes to `natter.stats` until `stop`.
    pub async fn start(
        bus: Arc<dyn Bus>,
        stop: CancellationToken,
    ) -> Result<StatsCollector, natter_bus::BusError> {
        let collector = StatsCollector::default();
        let mut sub = bus.subscribe(&Subject::stats(), 256).await?;
        let c = collector.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => break,
                    e = sub.next() => e,
                };
                match event {
                    Some(BusEvent::Message(m)) => match StatsReport::decode(m.payload) {
                        Ok(report) => c.add(report),
                        Err(e) => tracing::debug!(error = %e, "undecodable StatsReport"),
                    },
                    Some(BusEvent::Lagged) => tracing::debug!("stats subscription lagged"),
                    None => break,
                }
            }
        });
        Ok(collector)
    }

    /// Takes one report (also used by tests).
    pub fn add(&self, report: StatsReport) {
        let samples = Arc::new(parse(&report.metrics));
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        let now = unix_ms();
        if processes.len() >= MAX_PROCESSES && !processes.contains_key(&report.instance) {
            processes.retain(|_, p| {
                p.latest
                    .as_ref()
                    .is_some_and(|r| now.saturating_sub(r.at_ms) < STALE_AFTER_MS)
            });
            if processes.len() >= MAX_PROCESSES {
                return;
            }
        }
        let process = processes.entry(report.instance).or_default();
        if process
            .latest
            .as_ref()
            .is_some_and(|l| l.at_ms >= report.at_ms)
        {
            return; // out of order or repeated
        }
        process.previous = process.latest.take();
        process.latest = Some(Report {
            role: report.role,
            at_ms: report.at_ms,
            samples,
        });
    }

    /// The figures now.
    pub fn snapshot(&self) -> Stats {
        let now = unix_ms();
        let processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        let mut live: Vec<(&String, &Process)> = processes
            .iter()
            .filter(|(_, p)| {
                p.latest
                    .as_ref()
                    .is_some_and(|r| now.saturating_sub(r.at_ms) < STALE_AFTER_MS)
            })
            .collect();
        live.sort_by(|a, b| a.0.cmp(b.0));

        let mut stats = Stats {
            at_ms: now,
            processes: Vec::new(),
            connections: 0,
            totals: Totals::default(),
            rates: None,
            ack_latency: None,
            delivery_latency: None,
            store_latency: None,
            bus_latency: None,
        };
        let mut window = Window::default();
        for (instance, process) in live {
            let Some(latest) = &process.latest else {
                continue;
            };
            stats.processes.push(ProcessInfo {
                instance: instance.clone(),
                role: latest.role.clone(),
                reported_at_ms: latest.at_ms,
            });
            stats.connections += sum(&latest.samples, "natter_connections", None) as u64;
            stats.totals.messages_sent += sum(
                &latest.samples,
                "natter_frames_in_total",
                Some(("type", "send")),
            ) as u64;
            stats.totals.deliveries += sum(
                &latest.samples,
                "natter_delivery_latency_seconds_count",
                None,
            ) as u64;
            stats.totals.errors += sum(&latest.samples, "natter_errors_total", None) as u64;
            if let Some(previous) = &process.previous {
                window.add(previous, latest);
            }
        }
        if window.seconds > 0.0 {
            stats.rates = Some(window.rates());
            stats.ack_latency = window.latency("natter_ack_latency_seconds");
            stats.delivery_latency = window.latency("natter_delivery_latency_seconds");
            stats.store_latency = window.latency("natter_store_latency_seconds");
            stats.bus_latency = window.latency("natter_bus_request_seconds");
        }
        stats
    }
}

fn sum(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| label.is_none_or(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
        .filter(|v| v.is_finite())
        .sum()
}

/// Deltas between two reports of each process, summed over processes.
#[derive(Debug, Default)]
struct Window {
    /// Longest interval of any process (rates divide by each process's own interval).
    seconds: f64,
    messages_per_s: f64,
    deliveries_per_s: f64,
    errors_per_s: f64,
    /// Histogram deltas by metric name: bucket bound → count, and sum, count.
    histograms: HashMap<String, Histogram>,
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Window {
    fn add(&mut self, previous: &Report, latest: &Report) {
        let seconds = latest.at_ms.saturating_sub(previous.at_ms) as f64 / 1000.0;
        if seconds <= 0.0 {
            return;
        }
        self.seconds = self.seconds.max(seconds);
        let delta = |name: &str, label: Option<(&str, &str)>| {
            // A restarted process's counters start over: never a negative rate.
            (sum(&latest.samples, name, label) - sum(&previous.samples, name, label)).max(0.0)
        };
        self.messages_per_s += delta("natter_frames_in_total", Some(("type", "send"))) / seconds;
        self.deliveries_per_s += delta("natter_delivery_latency_seconds_count", None) / seconds;
        self.errors_per_s += delta("natter_errors_total", None) / seconds;
        for metric in [
            "natter_ack_latency_seconds",
            "natter_delivery_latency_seconds",
            "natter_store_latency_seconds",
            "natter_bus_request_seconds",
        ] {
            let h = self.histograms.entry(metric.to_owned()).or_default();
            h.sum += delta(&format!("{metric}_sum"), None);
            h.count += delta(&format!("{metric}_count"), None);
            let bucket = format!("{metric}_bucket");
            let mut bounds: Vec<f64> = latest
                .samples
                .iter()
                .filter(|s| s.name == bucket)
                .filter_map(|s| s.label("le").and_then(parse_le))
                .collect();
            bounds.sort_by(f64::total_cmp);
            bounds.dedup();
            for le in bounds {
                let count = |samples: &[Sample]| -> f64 {
                    samples
                        .iter()
                        .filter(|s| s.name == bucket)
                        .filter(|s| s.label("le").and_then(parse_le) == Some(le))
                        .map(|s| s.value)
                        .sum()
                };
                let d = (count(&latest.samples) - count(&previous.samples)).max(0.0);
                match h.buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, c)) => *c += d,
                    None => h.buckets.push((le, d)),
                }
            }
            h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
    }

    fn rates(&self) -> Rates {
        Rates {
            window_s: self.seconds,
            messages_per_s: round2(self.messages_per_s),
            deliveries_per_s: round2(self.deliveries_per_s),
            errors_per_s: round2(self.errors_per_s),
        }
    }

    fn latency(&self, metric: &str) -> Option<Latency> {
        let h = self.histograms.get(metric)?;
        if h.count < 1.0 {
            return None;
        }
        let quantile = |q: f64| -> Option<f64> {
            let target = q * h.count;
            h.buckets
                .iter()
                .find(|(_, cumulative)| *cumulative >= target)
                .map(|(le, _)| *le)
                .filter(|le| le.is_finite())
                .map(|le| round2(le * 1000.0))
        };
        Some(Latency {
            count: h.count as u64,
            mean_ms: round2(h.sum / h.count * 1000.0),
            p50_ms_at_most: quantile(0.5),
            p99_ms_at_most: quantile(0.99),
        })
    }
}

fn parse_le(le: &str) -> Option<f64> {
    if le == "+Inf" {
        Some(f64::INFINITY)
    } else {
        le.parse().ok()
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `GET /admin/v1/stats`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Stats {
    pub at_ms: u64,
    /// Every natter process that reported in the last 30 s.
    pub processes: Vec<ProcessInfo>,
    /// Open WebSocket connections, summed over the edges.
    pub connections: u64,
    /// Counters since each process started.
    pub totals: Totals,
    /// Over the interval between each process's last two reports (about 5 s); absent
    /// until every process has reported twice.
    pub rates: Option<Rates>,
    /// Send → ack, at the edges.
    pub ack_latency: Option<Latency>,
    /// Acceptance by the conversation's owner → the frame written to a device.
    pub delivery_latency: Option<Latency>,
    /// Message store calls, every operation.
    pub store_latency: Option<Latency>,
    /// Bus requests from the edges to the services.
    pub bus_latency: Option<Latency>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProcessInfo {
    pub instance: String,
    pub role: String,
    pub reported_at_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Totals {
    /// `Send` frames the edges took.
    pub messages_sent: u64,
    /// Messages written to devices.
    pub deliveries: u64,
    /// Error frames sent to clients.
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Rates {
    pub window_s: f64,
    pub messages_per_s: f64,
    pub deliveries_per_s: f64,
    pub errors_per_s: f64,
}

/// From histogram buckets: quantiles are the upper bound of the bucket they fall in.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms_at_most: Option<f64>,
    pub p99_ms_at_most: Option<f64>,
}

/// Publishes this process's metrics on `natter.stats` now and then every `every`, until
/// `stop`. `render` returns the Prometheus text of the process's metrics.
pub fn spawn_reporter(
    bus: Arc<dyn Bus>,
    role: String,
    instance: String,
    every: Duration,
    render: impl Fn() -> String + Send + 'static,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let metrics: String = render()
                .lines()
                .filter(|l| l.starts_with("natter_"))
                .flat_map(|l| [l, "\n"])
                .collect();
            let report = StatsReport {
                role: role.clone(),
                instance: instance.clone(),
                at_ms: unix_ms(),
                metrics,
            };
            if let Err(e) = bus
                .publish(
                    &Subject::stats(),
                    bytes::Bytes::from(report.encode_to_vec()),
                )
                .await
            {
                tracing::debug!(error = %e, "publishing stats failed");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"# TYPE natter_connections gauge
natter_connections 3
natter_frames_in_total{type="send"} 10
natter_frames_in_total{type="ping"} 99
natter_delivery_latency_seconds_bucket{le="0.001"} 1
natter_delivery_latency_seconds_bucket{le="0.01"} 5
natter_delivery_latency_seconds_bucket{le="0.1"} 10
natter_delivery_latency_seconds_bucket{le="+Inf"} 10
natter_delivery_latency_seconds_sum 0.2
natter_delivery_latency_seconds_count 10
natter_store_latency_seconds_bucket{op="append",le="0.01"} 4
natter_store_latency_seconds_bucket{op="append",le="+Inf"} 4
natter_store_latency_seconds_sum{op="append"} 0.02
natter_store_latency_seconds_count{op="append"} 4
"#;

    const B: &str = r#"natter_connections 5
natter_frames_in_total{type="send"} 30
natter_delivery_latency_seconds_bucket{le="0.001"} 1
natter_delivery_latency_seconds_bucket{le="0.01"} 5
natter_delivery_latency_seconds_bucket{le="0.1"} 108
natter_delivery_latency_seconds_bucket{le="+Inf"} 110
natter_delivery_latency_seconds_sum 5.2
natter_delivery_latency_seconds_count 110
natter_store_latency_seconds_bucket{op="append",le="0.01"} 14
natter_store_latency_seconds_bucket{op="append",le="+Inf"} 14
natter_store_latency_seconds_sum{op="append"} 0.07
natter_store_latency_seconds_count{op="append"} 14
natter_store_latency_seconds_bucket{op="read",le="0.01"} 0
natter_store_latency_seconds_bucket{op="read",le="+Inf"} 2
natter_store_latency_seconds_sum{op="read"} 0.5
natter_store_latency_seconds_count{op="read"} 2
"#;

    fn report(instance: &str, at_ms: u64, metrics: &str) -> StatsReport {
        StatsReport {
            role: "edge".into(),
            instance: instance.into(),
            at_ms,
            metrics: metrics.into(),
        }
    }

    #[test]
    fn parses_prometheus_text() {
        let s = parse(A);
        assert_eq!(s.len(), 13);
        assert_eq!(s[0].name, "natter_connections");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].label("type"), Some("send"));
        assert_eq!(s[6].label("le"), Some("+Inf"));
        assert_eq!(
            parse_line(r#"x{a="q\"uote",b="2"} 1.5"#)
                .unwrap()
                .labels
                .len(),
            2
        );
        assert!(parse_line("garbage{").is_none());
        assert!(parse_line("name notanumber").is_none());
    }

    #[test]
    fn rates_and_latencies_over_the_last_interval() {
        let now = unix_ms();
        let c = StatsCollector::default();
        c.add(report("e1", now - 5000, A));
        let first = c.snapshot();
        assert_eq!(first.connections, 3);
        assert_eq!(first.totals.messages_sent, 10);
        assert!(first.rates.is_none(), "one report gives no rate");

        c.add(report("e1", now, B));
        let s = c.snapshot();
        assert_eq!(s.connections, 5);
        assert_eq!(s.totals.deliveries, 110);
        let rates = s.rates.unwrap();
        assert_eq!(rates.window_s, 5.0);
        assert_eq!(rates.messages_per_s, 4.0); // (30 - 10) / 5
        assert_eq!(rates.deliveries_per_s, 20.0); // (110 - 10) / 5
        let d = s.delivery_latency.unwrap();
        assert_eq!(d.count, 100);
        assert_eq!(d.mean_ms, 50.0); // (5.2 - 0.2) / 100
        // 98 of the 100 new samples are ≤ 100 ms, so the median is in that bucket and the
        // 99th percentile is past it (+Inf: unknown).
        assert_eq!(d.p50_ms_at_most, Some(100.0));
        assert_eq!(d.p99_ms_at_most, None);
        let store = s.store_latency.unwrap();
        assert_eq!(store.count, 12); // 10 appends + 2 reads, summed over ops
    }

    #[test]
    fn sums_processes_and_ignores_stale_or_reordered_reports() {
        let now = unix_ms();
        let c = StatsCollector::default();
        c.add(report("e1", now, A));
        c.add(report("e2", now, B));
        c.add(report("old", now - STALE_AFTER_MS - 1, B));
        let s = c.snapshot();
        assert_eq!(s.connections, 8);
        assert_eq!(s.processes.len(), 2);
        // An older report than the latest is dropped.
        c.add(report("e1", now - 1000, B));
        assert_eq!(c.snapshot().connections, 8);
    }

    #[test]
    fn a_restarted_process_never_gives_negative_rates() {
        let now = unix_ms();
        let c = StatsCollector::default();
        c.add(report("e1", now - 5000, B));
        c.add(report("e1", now, A));
        let rates = c.snapshot().rates.unwrap();
        assert_eq!(rates.messages_per_s, 0.0);
        assert_eq!(rates.deliveries_per_s, 0.0);
    }
}
