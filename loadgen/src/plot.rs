//! Charts of runs as SVG (plotters, no system fonts: the SVG names a font family and the
//! viewer draws it): latency percentile spectra on a log percentile axis as HdrHistogram's
//! plotter draws them, the node's RSS against open connections, and messages received per
//! second over time. `--plot FILE.svg` draws one run's charts; `ringpush-loadgen plot`
//! overlays several runs' JSON summaries (`--json` output) in one chart.
//!
//! Invariants:
//! - Charts are drawn only from the JSON summary (`spectrum_us`, `timeline`), so a chart of
//!   a saved run is the chart of the live one.
//! - A run without the figures a chart needs is named in the error, never drawn as empty.

use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

use crate::cli::{ChartKind, PlotArgs};

/// Chart size in pixels.
const SIZE: (u32, u32) = (960, 540);

/// The highest percentile drawn: 99.999 % (5 nines), x = 5 on the log axis.
const NINES_MAX: f64 = 5.0;

/// One chart: what it shows and a line per run.
pub struct Chart {
    pub kind: ChartKind,
    /// The latency a spectrum shows (its JSON name).
    pub measured: String,
    pub series: Vec<Series>,
}

/// One line of a chart.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// `ringpush-loadgen plot`: overlays the runs named on the command line.
pub fn plot_command(args: &PlotArgs) -> Result<(), String> {
    let mut runs = Vec::new();
    for spec in &args.runs {
        let (label, path) = match spec.split_once('=') {
            Some((label, path)) => (label.to_string(), path.to_string()),
            None => {
                let stem = Path::new(spec).file_stem().map(|s| s.to_string_lossy());
                (stem.unwrap_or_default().into_owned(), spec.clone())
            }
        };
        runs.push((label, read_summary(Path::new(&path))?));
    }
    let chart = Chart::from_args(args.chart, &args.latency, &runs)?;
    let title = args.title.clone().unwrap_or_else(|| chart.title());
    let root = SVGBackend::new(&args.out, SIZE).into_drawing_area();
    draw(&root, &title, &chart)?;
    root.present()
        .map_err(|e| format!("{}: {e}", args.out.display()))
}

/// `--plot FILE.svg`: the run's own charts stacked in one image (its main latency spectrum,
/// received messages per second, and RSS against connections when the node's pid was
/// given).
pub fn plot_run(path: &Path, summary: &Value) -> Result<(), String> {
    let runs = vec![("this run".to_string(), summary.clone())];
    let mut charts = vec![Chart::from_args(ChartKind::Spectrum, &None, &runs)?];
    if let Ok(rate) = Chart::from_args(ChartKind::Rate, &None, &runs) {
        charts.push(rate);
    }
    if let Ok(rss) = Chart::from_args(ChartKind::Rss, &None, &runs) {
        charts.push(rss);
    }
    let height = SIZE.1 * charts.len() as u32;
    let root = SVGBackend::new(path, (SIZE.0, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    for (area, chart) in root.split_evenly((charts.len(), 1)).iter().zip(&charts) {
        draw(area, &chart.title(), chart)?;
    }
    root.present()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The JSON summary in a file: the file itself, or the last line of a saved stdout.
pub fn read_summary(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json = text
        .lines()
        .rev()
        .find(|line| line.trim_start().starts_with('{'))
        .map_or(text.as_str(), |line| line);
    serde_json::from_str(json).map_err(|e| format!("{}: not a JSON summary: {e}", path.display()))
}

impl Chart {
    /// The chart of `kind` over the runs, with the series each run provides.
    pub fn from_args(
        kind: ChartKind,
        latency: &Option<String>,
        runs: &[(String, Value)],
    ) -> Result<Chart, String> {
        let mut series = Vec::new();
        let mut measured = String::new();
        for (label, run) in runs {
            let points = match kind {
                ChartKind::Spectrum => {
                    let spectra = &run["spectrum_us"];
                    let name = match latency {
                        Some(name) => name.clone(),
                        None => main_latency(spectra)
                            .ok_or_else(|| format!("{label}: no latency spectrum"))?,
                    };
                    measured.clone_from(&name);
                    spectrum_points(&spectra[&name])
                        .ok_or_else(|| format!("{label}: no {name:?} spectrum"))?
                }
                ChartKind::Rss => timeline_points(run, "open", "node_rss_bytes")
                    .map(|p| {
                        ramp_only(p)
                            .map(|(x, y)| (x, y / (1 << 20) as f64))
                            .collect()
                    })
                    .ok_or_else(|| format!("{label}: no node RSS (run with --node-pid)"))?,
                ChartKind::Rate => timeline_points(run, "t_s", "received_per_s")
                    .ok_or_else(|| format!("{label}: no timeline"))?,
            };
            series.push(Series {
                label: label.clone(),
                points,
            });
        }
        Ok(Chart {
            kind,
            measured,
            series,
        })
    }

    /// The default title.
    pub fn title(&self) -> String {
        match self.kind {
            ChartKind::Spectrum => format!("{} latency by percentile", self.measured),
            ChartKind::Rss => "node RSS against open connections".to_string(),
            ChartKind::Rate => "messages received per second".to_string(),
        }
    }
}

/// The latency a run is about: delivery, round trip or catch-up before connect latency.
fn main_latency(spectra: &Value) -> Option<String> {
    ["delivery", "rtt", "catch_up", "connect"]
        .into_iter()
        .find(|name| spectra[*name].as_array().is_some_and(|a| !a.is_empty()))
        .map(String::from)
}

/// `[[percentile, µs], ...]` as (nines, ms): x = log10(1 / (1 - p)).
fn spectrum_points(spectrum: &Value) -> Option<Vec<(f64, f64)>> {
    let points: Vec<(f64, f64)> = spectrum
        .as_array()?
        .iter()
        .filter_map(|pair| Some((pair[0].as_f64()?, pair[1].as_f64()?)))
        .filter(|(p, _)| *p < 1.0)
        .map(|(p, us)| ((1.0 / (1.0 - p)).log10().min(NINES_MAX), us / 1000.0))
        .collect();
    (!points.is_empty()).then_some(points)
}

/// The samples up to the first that holds the most connections: memory against connections
/// is the ramp's story (the close phase would draw the line back over itself).
fn ramp_only(points: Vec<(f64, f64)>) -> impl Iterator<Item = (f64, f64)> {
    let peak = points.iter().enumerate().fold(
        0,
        |best, (i, p)| if p.0 > points[best].0 { i } else { best },
    );
    points.into_iter().take(peak + 1)
}

/// Two fields of every timeline sample that has both.
fn timeline_points(run: &Value, x: &str, y: &str) -> Option<Vec<(f64, f64)>> {
    let points: Vec<(f64, f64)> = run["timeline"]
        .as_array()?
        .iter()
        .filter_map(|s| Some((s[x].as_f64()?, s[y].as_f64()?)))
        .collect();
    (!points.is_empty()).then_some(points)
}

/// A percentile axis label: 0 → "0%", 1 → "90%", 2 → "99%", 3 → "99.9%".
fn nines_label(x: &f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let digits = (x.round() as i32 - 2).max(0) as usize;
    format!("{p:.digits$}%")
}

/// Draws one chart on an area.
fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    chart: &Chart,
) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    area.fill(&WHITE).map_err(|e| fail(&e))?;
    let all = chart.series.iter().flat_map(|s| s.points.iter());
    let x_max = all.clone().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let y_max = all.map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.05;
    let (x_desc, y_desc) = match chart.kind {
        ChartKind::Spectrum => ("percentile", "latency (ms)"),
        ChartKind::Rss => ("open connections", "node RSS (MiB)"),
        ChartKind::Rate => ("time (s)", "messages received / s"),
    };
    let x_end = match chart.kind {
        ChartKind::Spectrum => x_max.ceil().max(1.0),
        _ => x_max,
    };
    let mut ctx = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_end, 0f64..y_max)
        .map_err(|e| fail(&e))?;
    let mut mesh = ctx.configure_mesh();
    mesh.x_desc(x_desc).y_desc(y_desc);
    if chart.kind == ChartKind::Spectrum {
        mesh.x_labels(x_end as usize + 1)
            .x_label_formatter(&nines_label);
    }
    mesh.draw().map_err(|e| fail(&e))?;
    for (i, series) in chart.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        ctx.draw_series(LineSeries::new(
            series.points.iter().copied(),
            color.stroke_width(2),
        ))
        .map_err(|e| fail(&e))?
        .label(series.label.clone())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    ctx.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_drawn_over_the_ramp_only() {
        let points = vec![(0.0, 1.0), (5.0, 2.0), (9.0, 3.0), (9.0, 3.5), (2.0, 3.0)];
        let ramp: Vec<_> = ramp_only(points).collect();
        assert_eq!(ramp, vec![(0.0, 1.0), (5.0, 2.0), (9.0, 3.0)]);
    }

    #[test]
    fn the_percentile_axis_counts_nines() {
        assert_eq!(nines_label(&0.0), "0%");
        assert_eq!(nines_label(&1.0), "90%");
        assert_eq!(nines_label(&2.0), "99%");
        assert_eq!(nines_label(&3.0), "99.9%");
        assert_eq!(nines_label(&5.0), "99.999%");
        let points =
            spectrum_points(&serde_json::json!([[0.5, 1000], [0.99, 5000], [1.0, 9000]])).unwrap();
        assert_eq!(points.len(), 2, "p = 1 has no place on a log axis");
        assert!((points[0].0 - 2f64.log10()).abs() < 1e-9);
        assert!((points[1].0 - 2.0).abs() < 1e-9);
        assert_eq!(points[1].1, 5.0);
    }
}
