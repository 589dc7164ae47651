//! `--report DIR`: the summary as JSON, the per-second series as CSV, and two charts
//! (latency percentiles, throughput over time) as PNG and SVG for people to look at.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use hdrhistogram::Histogram;
use plotters::{
    coord::Shift,
    prelude::*,
    style::{
        FontStyle, register_font,
        text_anchor::{HPos, Pos, VPos},
    },
};
use serde_json::Value;

use crate::stats::{self, Series};

const SIZE: (u32, u32) = (1000, 600);
const FONT: &str = "sans-serif";

/// plotters draws text with fonts registered by name; DejaVu Sans is compiled in.
fn fonts() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the built-in font cannot be loaded".to_owned())
        })
        .clone()
}

/// Writes summary.json, series.csv, latency.{png,svg} and throughput.{png,svg} into
/// `dir` (created if missing). Returns the paths written.
pub fn write(
    dir: &Path,
    summary: &Value,
    series: &Series,
    latency: &Histogram<u64>,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    fonts()?;
    let mut written = Vec::new();
    let save = |name: &str, bytes: &[u8], written: &mut Vec<PathBuf>| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
        Ok::<(), String>(())
    };
    let json = serde_json::to_string_pretty(summary)
        .map_err(|e| format!("{}: {e}", dir.join("summary.json").display()))?;
    save("summary.json", format!("{json}\n").as_bytes(), &mut written)?;
    let per_second =
        decode_latency(series).map_err(|e| format!("{}: {e}", dir.join("series.csv").display()))?;
    save(
        "series.csv",
        csv(series, &per_second).as_bytes(),
        &mut written,
    )?;

    let scenario = summary["scenario"].as_str().unwrap_or("run");
    for (name, draw) in [
        ("latency", Chart::Latency),
        ("throughput", Chart::Throughput),
    ] {
        let svg_path = dir.join(format!("{name}.svg"));
        let svg = SVGBackend::new(&svg_path, SIZE);
        render(
            svg,
            &svg_path,
            draw,
            scenario,
            summary,
            series,
            &per_second,
            latency,
        )?;
        written.push(svg_path);
        let png_path = dir.join(format!("{name}.png"));
        let png = BitMapBackend::new(&png_path, SIZE);
        render(
            png,
            &png_path,
            draw,
            scenario,
            summary,
            series,
            &per_second,
            latency,
        )?;
        written.push(png_path);
    }
    Ok(written)
}

/// Draws `chart` with `backend` and writes it out (to `path`, named in errors).
#[allow(clippy::too_many_arguments)]
fn render<DB: DrawingBackend>(
    backend: DB,
    path: &Path,
    chart: Chart,
    scenario: &str,
    summary: &Value,
    series: &Series,
    per_second: &[Histogram<u64>],
    latency: &Histogram<u64>,
) -> Result<(), String> {
    let root = backend.into_drawing_area();
    chart
        .draw(&root, scenario, summary, series, per_second, latency)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    root.present()
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn decode_latency(series: &Series) -> Result<Vec<Histogram<u64>>, String> {
    series
        .latency
        .iter()
        .enumerate()
        .map(|(i, s)| stats::decode_histogram(s).map_err(|e| format!("second {i}: {e}")))
        .collect()
}

fn at(v: &[u64], i: usize) -> u64 {
    v.get(i).copied().unwrap_or(0)
}

/// One row per second: counts, and that second's latency percentiles.
fn csv(series: &Series, latency: &[Histogram<u64>]) -> String {
    let seconds = [
        series.sent.len(),
        series.acked.len(),
        series.delivered.len(),
        series.connections.len(),
        latency.len(),
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    let mut out = String::from("second,sent,acked,delivered,connections,p50_ms,p99_ms,max_ms\n");
    for s in 0..seconds {
        let (p50, p99, max) = match latency.get(s) {
            Some(h) if !h.is_empty() => (
                stats::ms_at(h, 0.5),
                stats::ms_at(h, 0.99),
                h.max() as f64 / 1000.0,
            ),
            _ => (0.0, 0.0, 0.0),
        };
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{s},{},{},{},{},{p50:.3},{p99:.3},{max:.3}",
            at(&series.sent, s),
            at(&series.acked, s),
            at(&series.delivered, s),
            at(&series.connections, s),
        );
    }
    out
}

#[derive(Clone, Copy)]
enum Chart {
    Latency,
    Throughput,
}

type Drawn = Result<(), String>;

impl Chart {
    fn draw<DB: DrawingBackend>(
        self,
        root: &DrawingArea<DB, Shift>,
        scenario: &str,
        summary: &Value,
        series: &Series,
        per_second: &[Histogram<u64>],
        latency: &Histogram<u64>,
    ) -> Drawn {
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        match self {
            Chart::Latency => latency_chart(root, scenario, summary, latency),
            Chart::Throughput => throughput_chart(root, scenario, series, per_second),
        }
    }
}

/// Latency by percentile, on a scale that spreads the tail: x = -log10(1 - q), so
/// 90 %, 99 %, 99.9 % and 99.99 % are evenly spaced.
fn latency_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    scenario: &str,
    summary: &Value,
    h: &Histogram<u64>,
) -> Drawn {
    let kind = summary["latency"].as_str().unwrap_or("latency");
    if h.is_empty() {
        let area = root
            .margin(20, 20, 20, 20)
            .titled(&format!("{scenario}: {kind}"), (FONT, 20))
            .map_err(|e| e.to_string())?;
        return note(&area, "no latency samples were recorded in this run");
    }
    // The tail goes as far as the samples resolve it: 99 % for a hundred, 99.999 % for
    // a hundred thousand or more.
    let max_x = (h.len() as f64).log10().ceil().clamp(2.0, 5.0);
    let points: Vec<(f64, f64)> = (0..=500)
        .map(|i| {
            let x = max_x * f64::from(i) / 500.0;
            let q = (1.0 - 10f64.powf(-x)).min(1.0);
            (x, stats::ms_at(h, q))
        })
        .chain(std::iter::once((max_x, h.max() as f64 / 1000.0)))
        .collect();
    let top = points.iter().map(|p| p.1).fold(0.0, f64::max).max(0.001) * 1.1;
    let title = format!(
        "{scenario}: {kind} (p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, n = {})",
        stats::ms_at(h, 0.5),
        stats::ms_at(h, 0.99),
        h.max() as f64 / 1000.0,
        h.len()
    );
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 20))
        .margin(20)
        .margin_right(40)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_x, 0.0..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("milliseconds")
        .x_labels(max_x as usize + 1)
        .x_label_formatter(&|x| {
            let pct = 100.0 * (1.0 - 10f64.powf(-x));
            format!("{}%", trim(pct))
        })
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(points, BLUE.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label(kind)
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn trim(pct: f64) -> String {
    let s = format!("{pct:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Messages per second over time (or connections, for idle and connect) above, each
/// second's p99 latency below.
fn throughput_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    scenario: &str,
    series: &Series,
    per_second: &[Histogram<u64>],
) -> Drawn {
    let messages = series.sent.iter().chain(&series.delivered).any(|&n| n > 0);
    // Sent is drawn wide and pale under delivered, so both show where they coincide.
    let lines: Vec<(&str, &[u64], ShapeStyle)> = if messages {
        vec![
            (
                "sent/s",
                &series.sent,
                RGBColor(255, 165, 60).stroke_width(6),
            ),
            ("delivered/s", &series.delivered, BLUE.stroke_width(2)),
        ]
    } else {
        vec![(
            "connections opened/s",
            &series.connections,
            BLUE.stroke_width(2),
        )]
    };
    let seconds = lines
        .iter()
        .map(|l| l.1.len())
        .chain(std::iter::once(per_second.len()))
        .max()
        .unwrap_or(0)
        .max(1);
    let peak = lines
        .iter()
        .flat_map(|l| l.1.iter().copied())
        .max()
        .unwrap_or(0);
    let top = peak.max(1) as f64 * 1.1;
    // At most one label per whole number, so "{:.0}" never repeats a label.
    let x_labels = (seconds + 1).min(11);
    let y_labels = (top as usize + 1).min(10);
    let (upper, lower) = root.split_vertically(SIZE.1 * 62 / 100);
    let mut chart = ChartBuilder::on(&upper)
        .caption(format!("{scenario}: throughput per second"), (FONT, 20))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..seconds as f64, 0.0..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("second")
        .y_desc(if messages {
            "messages per second"
        } else {
            "connections per second"
        })
        .x_labels(x_labels)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_labels(y_labels)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    for (label, values, style) in lines {
        let points = values
            .iter()
            .enumerate()
            .map(|(s, &n)| (s as f64 + 0.5, n as f64));
        chart
            .draw_series(LineSeries::new(points, style))
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    if peak == 0 {
        note(&upper, "nothing was sent, delivered or connected")?;
    } else {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .position(SeriesLabelPosition::LowerMiddle)
            .draw()
            .map_err(|e| e.to_string())?;
    }

    let p99: Vec<(f64, f64)> = per_second
        .iter()
        .enumerate()
        .filter(|(_, h)| !h.is_empty())
        .map(|(s, h)| (s as f64 + 0.5, stats::ms_at(h, 0.99)))
        .collect();
    if p99.is_empty() {
        return note(&lower, "no per-second latency samples");
    }
    let top = p99.iter().map(|p| p.1).fold(0.0, f64::max).max(0.001) * 1.1;
    let mut chart = ChartBuilder::on(&lower)
        .caption("p99 latency of each second's deliveries", (FONT, 16))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..seconds as f64, 0.0..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("second")
        .y_desc("p99 ms")
        .x_labels(x_labels)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(p99, RED.stroke_width(2)))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// A line of grey text in the middle of `area`, for a chart with nothing to show.
fn note<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, text: &str) -> Drawn {
    let (w, h) = area.dim_in_pixel();
    let style = TextStyle::from((FONT, 18).into_font())
        .color(&RGBColor(110, 110, 110))
        .pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new(
        text.to_owned(),
        (w as i32 / 2, h as i32 / 2),
        style,
    ))
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILES: [&str; 6] = [
        "summary.json",
        "series.csv",
        "latency.svg",
        "latency.png",
        "throughput.svg",
        "throughput.png",
    ];

    /// Three seconds; second `s` delivers latencies of (1..=100) + 100 s ms.
    fn sample() -> (Series, Histogram<u64>) {
        let mut all = stats::histogram();
        let mut latency = Vec::new();
        for s in 0..3u64 {
            let mut h = stats::histogram();
            for v in 1..=100 {
                stats::record_ns(&mut h, (v + s * 100) * 1_000_000);
                stats::record_ns(&mut all, (v + s * 100) * 1_000_000);
            }
            latency.push(stats::encode_histogram(&h));
        }
        let series = Series {
            sent: vec![100, 100, 100],
            acked: vec![100, 100, 100],
            // One more second than the others: the drain after sending stopped.
            delivered: vec![90, 100, 110, 5],
            connections: vec![],
            latency,
        };
        (series, all)
    }

    fn assert_all_files(dir: &Path, paths: &[PathBuf], scenario: &str) {
        assert_eq!(paths.len(), FILES.len(), "{paths:?}");
        for name in FILES {
            let path = dir.join(name);
            assert!(paths.contains(&path), "{name} not returned: {paths:?}");
            assert!(path.is_file(), "{name} not written");
        }
        for png in ["latency.png", "throughput.png"] {
            let bytes = std::fs::read(dir.join(png)).expect("png");
            assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{png}");
        }
        for svg in ["latency.svg", "throughput.svg"] {
            let text = std::fs::read_to_string(dir.join(svg)).expect("svg");
            assert!(text.contains("<svg"), "{svg}");
            assert!(text.contains(scenario), "{svg} has no title");
        }
    }

    fn floats(row: &str) -> Vec<f64> {
        row.split(',')
            .map(|f| f.parse::<f64>().expect("number"))
            .collect()
    }

    #[test]
    fn writes_json_csv_and_charts() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory that does not exist yet.
        let out = dir.path().join("a").join("b");
        let (series, all) = sample();
        let summary = serde_json::json!({"scenario": "direct", "latency": "send_to_arrival"});
        let paths = write(&out, &summary, &series, &all).expect("report");
        assert_all_files(&out, &paths, "direct");

        let csv = std::fs::read_to_string(out.join("series.csv")).expect("csv");
        let rows: Vec<&str> = csv.lines().collect();
        assert_eq!(rows.len(), 1 + 4, "header and one row a second: {csv}");
        assert_eq!(
            rows[0],
            "second,sent,acked,delivered,connections,p50_ms,p99_ms,max_ms"
        );
        let near = |a: f64, b: f64| (a - b).abs() <= b * 0.002 + 0.001;
        for (s, row) in rows[1..4].iter().enumerate() {
            let f = floats(row);
            let base = 100.0 * s as f64;
            assert_eq!(
                f[..5],
                [s as f64, 100.0, 100.0, [90.0, 100.0, 110.0][s], 0.0]
            );
            assert!(near(f[5], base + 50.0), "p50 of second {s}: {row}");
            assert!(near(f[6], base + 99.0), "p99 of second {s}: {row}");
            assert!(near(f[7], base + 100.0), "max of second {s}: {row}");
        }
        // Missing entries are zeros; a second without latency has zero percentiles.
        assert_eq!(rows[4], "3,0,0,5,0,0.000,0.000,0.000");

        let json: Value =
            serde_json::from_slice(&std::fs::read(out.join("summary.json")).expect("json"))
                .expect("valid JSON");
        assert_eq!(json, summary);
        let text = std::fs::read_to_string(out.join("summary.json")).expect("json");
        assert!(text.contains("\n  \"scenario\""), "pretty-printed: {text}");

        // The latency chart's title has the percentiles.
        let svg = std::fs::read_to_string(out.join("latency.svg")).expect("svg");
        assert!(svg.contains("p99 297"), "{svg}");

        // Writing again into the same directory replaces the files.
        write(&out, &summary, &series, &all).expect("second report");
    }

    #[test]
    fn a_connect_run_charts_connections() {
        let dir = tempfile::tempdir().expect("tempdir");
        let series = Series {
            connections: vec![500, 1500, 40],
            ..Series::default()
        };
        let mut h = stats::histogram();
        for ms in 1..=20 {
            stats::record_ns(&mut h, ms * 1_000_000);
        }
        let summary = serde_json::json!({"scenario": "connect", "latency": "connect"});
        let paths = write(dir.path(), &summary, &series, &h).expect("report");
        assert_all_files(dir.path(), &paths, "connect");
        let svg = std::fs::read_to_string(dir.path().join("throughput.svg")).expect("svg");
        assert!(svg.contains("connections opened/s"), "{svg}");
        assert!(svg.contains("no per-second latency samples"), "{svg}");
        let csv = std::fs::read_to_string(dir.path().join("series.csv")).expect("csv");
        assert_eq!(csv.lines().nth(2), Some("1,0,0,0,1500,0.000,0.000,0.000"));
    }

    #[test]
    fn an_empty_run_still_gets_a_report() {
        let dir = tempfile::tempdir().expect("tempdir");
        let summary = serde_json::json!({"scenario": "idle"});
        let paths = write(
            dir.path(),
            &summary,
            &Series::default(),
            &stats::histogram(),
        )
        .expect("report");
        assert_all_files(dir.path(), &paths, "idle");
        let csv = std::fs::read_to_string(dir.path().join("series.csv")).expect("csv");
        assert_eq!(csv.lines().count(), 1, "header only: {csv}");
        let svg = std::fs::read_to_string(dir.path().join("latency.svg")).expect("svg");
        assert!(svg.contains("no latency samples"), "{svg}");
    }

    #[test]
    fn a_summary_without_a_scenario_and_zero_counts_is_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let series = Series {
            sent: vec![0, 0],
            connections: vec![0],
            latency: vec![stats::encode_histogram(&stats::histogram())],
            ..Series::default()
        };
        let paths = write(dir.path(), &Value::Null, &series, &stats::histogram()).expect("report");
        assert_all_files(dir.path(), &paths, "run");
        let csv = std::fs::read_to_string(dir.path().join("series.csv")).expect("csv");
        assert_eq!(csv.lines().count(), 3, "{csv}");
    }

    #[test]
    fn failures_name_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").expect("file");
        let summary = serde_json::json!({"scenario": "direct"});
        let e = write(&file, &summary, &Series::default(), &stats::histogram())
            .expect_err("a file is no directory");
        assert!(e.contains("not-a-dir"), "{e}");

        let bad = Series {
            latency: vec!["not base64!".to_owned()],
            ..Series::default()
        };
        let out = dir.path().join("out");
        let e = write(&out, &summary, &bad, &stats::histogram()).expect_err("bad histogram");
        assert!(e.contains("series.csv") && e.contains("second 0"), "{e}");
    }
}
