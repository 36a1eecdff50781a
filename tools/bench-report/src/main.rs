//! `bench-report <compare.tsv> <results.png>`: draw the ratios of
//! `benches/compare.rs` (mediamem against GStreamer's C API, median over
//! interleaved rounds, with the min..max range as a whisker) as a bar chart.
//! `cargo xtask bench` runs it after the measurements.

use std::fs;
use std::path::Path;
use std::process::ExitCode;

use plotters::prelude::*;

/// One row of compare.tsv.
struct Row {
    label: String,
    median: f64,
    min: f64,
    max: f64,
}

fn read(tsv: &Path) -> Result<Vec<Row>, String> {
    let text = fs::read_to_string(tsv).map_err(|e| format!("{}: {e}", tsv.display()))?;
    let mut rows = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let num = |i: usize| {
            f.get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| format!("bad line: {line}"))
        };
        rows.push(Row {
            label: f.get(1).unwrap_or(&"").replace('`', ""),
            median: num(2)?,
            min: num(3)?,
            max: num(4)?,
        });
    }
    Ok(rows)
}

fn chart(rows: &[Row], out: &Path) -> Result<(), String> {
    if rows.is_empty() {
        return Err("no results to chart".into());
    }
    let max = rows.iter().map(|r| r.max).fold(1.0f64, f64::max) * 1.15;
    let height = 90 + rows.len() as u32 * 30;
    let root = BitMapBackend::new(out, (1300, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "mediamem against GStreamer's C API (interleaved rounds: median, min..max)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(560)
        .build_cartesian_2d(0f64..max, (0usize..rows.len()).into_segmented())
        .map_err(|e| e.to_string())?;
    let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows.len())
        .y_label_formatter(&|v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("GStreamer time / mediamem time (right of 1: mediamem is faster)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, r)| {
            let color = if r.median >= 1.0 {
                RGBColor(46, 125, 50)
            } else {
                RGBColor(198, 40, 40)
            };
            Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (r.median, SegmentValue::Exact(i + 1)),
                ],
                color.mix(0.8).filled(),
            )
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, r)| {
            PathElement::new(
                vec![
                    (r.min, SegmentValue::CenterOf(i)),
                    (r.max, SegmentValue::CenterOf(i)),
                ],
                BLACK.stroke_width(2),
            )
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, r)| {
            Text::new(
                format!("{:.2}x", r.median),
                (r.max + max * 0.01, SegmentValue::CenterOf(i)),
                ("sans-serif", 14),
            )
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![
                (1.0, SegmentValue::Exact(0)),
                (1.0, SegmentValue::Exact(rows.len())),
            ],
            BLACK.stroke_width(2),
        )))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [tsv, png] = args.as_slice() else {
        return Err("usage: bench-report <compare.tsv> <results.png>".into());
    };
    let rows = read(Path::new(tsv))?;
    chart(&rows, Path::new(png))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-report: {e}");
            ExitCode::FAILURE
        }
    }
}
