//! `bench-report <criterion dir> <out dir> <command>`: read criterion's
//! results and write `results.md` (every measurement, and a headline of
//! mediamem against its reference) and `results.png` (the headline as a
//! bar chart).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::ExitCode;

use plotters::prelude::*;

/// One measured benchmark.
#[derive(Debug, Clone)]
struct Point {
    group: String,
    function: String,
    /// Mean time per iteration, ns.
    mean_ns: f64,
}

fn read_results(criterion: &Path) -> Result<Vec<Point>, String> {
    let mut points = Vec::new();
    let groups = fs::read_dir(criterion).map_err(|e| format!("{}: {e}", criterion.display()))?;
    for group in groups.filter_map(|e| e.ok()) {
        let Ok(functions) = fs::read_dir(group.path()) else {
            continue;
        };
        for f in functions.filter_map(|e| e.ok()) {
            let new = f.path().join("new");
            let (Ok(b), Ok(e)) = (
                fs::read_to_string(new.join("benchmark.json")),
                fs::read_to_string(new.join("estimates.json")),
            ) else {
                continue;
            };
            let b: serde_json::Value = serde_json::from_str(&b).map_err(|e| e.to_string())?;
            let e: serde_json::Value = serde_json::from_str(&e).map_err(|e| e.to_string())?;
            if let (Some(group), Some(function), Some(mean)) = (
                b["group_id"].as_str(),
                b["function_id"].as_str(),
                e["mean"]["point_estimate"].as_f64(),
            ) {
                points.push(Point {
                    group: group.to_owned(),
                    function: function.to_owned(),
                    mean_ns: mean,
                });
            }
        }
    }
    points.sort_by(|a, b| (&a.group, &a.function).cmp(&(&b.group, &b.function)));
    Ok(points)
}

fn human(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.1} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

type Groups<'a> = BTreeMap<String, Vec<&'a Point>>;

/// One headline row: group, mediamem's time, the reference and its time.
struct Headline {
    group: String,
    ours: f64,
    reference: String,
    theirs: f64,
}

/// Extra headline rows: group prefix, label, mediamem entry, reference.
const SECOND_ROWS: &[(&str, &str, &str, &str)] = &[
    (
        "alloc_map_free",
        "shm",
        "mediamem shm",
        "syscall floor (memfd)",
    ),
    (
        "map_unmap",
        "owned, write",
        "mediamem sysmem map_mut",
        "gstreamer sysmem map_writable",
    ),
    (
        "map_unmap",
        "shm",
        "mediamem shm map_readable",
        "gstreamer fd keep-mapped map_readable",
    ),
    (
        "ipc_round_trip",
        "receiver's checks",
        "mediamem",
        "syscall floor + seals, fstat, mmap, munmap",
    ),
    (
        "map_unmap",
        "floor",
        "mediamem sysmem map_readable",
        "lock-word floor (2 CAS)",
    ),
];

/// mediamem's main entry of each group against GStreamer's main entry, or
/// the syscall floor where GStreamer has no counterpart.
fn headline(groups: &Groups<'_>) -> Vec<Headline> {
    let main_ours = [
        "mediamem",
        "mediamem sysmem",
        "mediamem sysmem map_readable",
    ];
    let main_gst = [
        "gstreamer",
        "gstreamer sysmem",
        "gstreamer sysmem map_readable",
        "gstreamer BufferPool",
    ];
    let mut rows = Vec::new();
    for (g, ps) in groups {
        let find = |names: &[&str], prefix: &str| {
            ps.iter()
                .find(|p| names.contains(&p.function.as_str()))
                .or_else(|| ps.iter().find(|p| p.function.starts_with(prefix)))
                .copied()
        };
        let Some(ours) = find(&main_ours, "mediamem") else {
            continue;
        };
        let Some(reference) = find(&main_gst, "gstreamer").or_else(|| find(&[], "syscall floor"))
        else {
            continue;
        };
        rows.push(Headline {
            group: g.clone(),
            ours: ours.mean_ns,
            reference: reference.function.clone(),
            theirs: reference.mean_ns,
        });
        // Second rows (SECOND_ROWS): other pairs worth a headline in
        // this group.
        for (prefix, label, ours, theirs) in SECOND_ROWS {
            if !g.starts_with(prefix) {
                continue;
            }
            let exact = |name: &str| ps.iter().find(|p| p.function == name).copied();
            if let (Some(o), Some(t)) = (exact(ours), exact(theirs)) {
                rows.push(Headline {
                    group: format!("{g} ({label})"),
                    ours: o.mean_ns,
                    reference: t.function.clone(),
                    theirs: t.mean_ns,
                });
            }
        }
    }
    rows
}

fn markdown(points: &[Point], groups: &Groups<'_>, command: &str) -> String {
    let mut md = String::from("# mediamem benchmarks\n\n");
    md.push_str(&format!(
        "Measured with `{command}` (criterion; mean time per iteration).\n\n"
    ));
    md.push_str(
        "## Headline\n\nRatio = reference time / mediamem time (above 1: mediamem is faster).\n\n",
    );
    md.push_str(
        "| benchmark | mediamem | reference | reference time | ratio |\n|---|---|---|---|---|\n",
    );
    for h in headline(groups) {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} |\n",
            h.group,
            human(h.ours),
            h.reference,
            human(h.theirs),
            h.theirs / h.ours
        ));
    }
    md.push_str("\n## Every measurement\n\n| benchmark | implementation | time |\n|---|---|---|\n");
    for p in points {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            p.group,
            p.function,
            human(p.mean_ns)
        ));
    }
    md
}

fn chart(groups: &Groups<'_>, out: &Path) -> Result<(), String> {
    let rows = headline(groups);
    if rows.is_empty() {
        return Err("no results to chart".into());
    }
    let ratios: Vec<f64> = rows.iter().map(|h| h.theirs / h.ours).collect();
    let max = ratios.iter().copied().fold(1.0f64, f64::max) * 1.18;
    let height = 90 + rows.len() as u32 * 30;
    let root = BitMapBackend::new(out, (1200, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "mediamem speed relative to GStreamer (or to the syscall floor)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(470)
        .build_cartesian_2d(0f64..max, (0usize..rows.len()).into_segmented())
        .map_err(|e| e.to_string())?;
    let labels: Vec<String> = rows
        .iter()
        .map(|h| format!("{}  vs {}", h.group, h.reference))
        .collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows.len())
        .y_label_formatter(&|v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("reference time / mediamem time (right of 1: mediamem is faster)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(ratios.iter().enumerate().map(|(i, &r)| {
            let color = if r >= 1.0 {
                RGBColor(46, 125, 50)
            } else {
                RGBColor(198, 40, 40)
            };
            Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (r, SegmentValue::Exact(i + 1)),
                ],
                color.mix(0.85).filled(),
            )
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(ratios.iter().enumerate().map(|(i, &r)| {
            Text::new(
                format!("{r:.2}x"),
                (r + max * 0.01, SegmentValue::CenterOf(i)),
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
    let [criterion, out, command] = args.as_slice() else {
        return Err("usage: bench-report <criterion dir> <out dir> <command>".into());
    };
    let points = read_results(Path::new(criterion))?;
    if points.is_empty() {
        return Err(format!("no criterion results under {criterion}"));
    }
    let mut groups: Groups<'_> = BTreeMap::new();
    for p in &points {
        groups.entry(p.group.clone()).or_default().push(p);
    }
    let out = Path::new(out);
    fs::create_dir_all(out).map_err(|e| e.to_string())?;
    fs::write(out.join("results.md"), markdown(&points, &groups, command))
        .map_err(|e| e.to_string())?;
    chart(&groups, &out.join("results.png"))
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
