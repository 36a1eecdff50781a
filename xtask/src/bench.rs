//! `cargo xtask bench`: install what the comparison needs (GStreamer's dev
//! packages for the `compare-gstreamer` feature; fontconfig, pkg-config and
//! a font for the chart), run mediamem against GStreamer's C API in
//! interleaved rounds (`crates/mediamem/benches/compare.rs` with its C
//! harness), put the report into `bench/results.md` (between the
//! generated-section markers, keeping the older sections below) and have
//! `tools/bench-report` draw `bench/results.png`.

use std::fs;
use std::path::Path;
use std::process::Command;

/// Rounds of the interleaved run: each round runs every row's mediamem and C
/// batches back to back; ratios are the median [min..max] over rounds.
const ROUNDS: &str = "12";

/// What the benchmark run reports as its reproducing command.
pub const COMMAND: &str = "cargo bench -p mediamem --bench compare --features compare-gstreamer";

const BEGIN: &str = "<!-- cargo xtask bench: generated section begins -->";
const END: &str = "<!-- cargo xtask bench: generated section ends -->";

const PACKAGES: &[&str] = &[
    "libgstreamer1.0-dev",
    "libgstreamer-plugins-base1.0-dev",
    "pkg-config",
    "libfontconfig1-dev",
    "fonts-dejavu-core",
];

fn succeeds(cmd: &mut Command) -> bool {
    cmd.status().is_ok_and(|s| s.success())
}

fn provision() -> Result<(), String> {
    crate::host::install_missing("bench", PACKAGES)
}

/// `results` with the generated section replaced by `section` (inserted
/// after the title when the markers are missing).
pub fn splice(results: &str, section: &str) -> String {
    let block = format!("{BEGIN}\n\n{}\n{END}", section.trim_end());
    if let (Some(b), Some(e)) = (results.find(BEGIN), results.find(END)) {
        if b < e {
            return format!("{}{block}{}", &results[..b], &results[e + END.len()..]);
        }
    }
    let (title, rest) = match results.find('\n') {
        Some(i) if results.starts_with("# ") => (&results[..=i], &results[i + 1..]),
        _ => ("# mediamem benchmarks\n", results),
    };
    format!(
        "{title}\n## Against GStreamer's C API\n\n{block}\n\n{}",
        rest.trim_start()
    )
}

/// Run everything; `report_only` skips the measurements and reuses
/// `target/compare`.
pub fn bench(root: &Path, report_only: bool) -> Result<(), String> {
    provision()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = root.join("target/compare");
    if !report_only
        && !succeeds(
            Command::new(&cargo)
                .current_dir(root)
                .args(COMMAND.split_whitespace().skip(1))
                .args(["--", "--rounds", ROUNDS, "--out"])
                .arg(&out),
        )
    {
        return Err("the benchmarks failed".into());
    }
    let section = fs::read_to_string(out.join("compare.md"))
        .map_err(|e| format!("{}: {e}", out.join("compare.md").display()))?;
    let results_md = root.join("bench/results.md");
    let old = fs::read_to_string(&results_md).unwrap_or_default();
    fs::write(&results_md, splice(&old, &section)).map_err(|e| e.to_string())?;
    let manifest = root.join("tools/bench-report/Cargo.toml");
    if !succeeds(
        Command::new(&cargo)
            .current_dir(root)
            .args(["run", "-q", "--release", "--manifest-path"])
            .arg(&manifest)
            .arg("--")
            .arg(out.join("compare.tsv"))
            .arg(root.join("bench/results.png")),
    ) {
        return Err("bench-report failed".into());
    }
    eprintln!("bench: wrote bench/results.md and bench/results.png");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_the_generated_section() {
        let first = splice("# t\n\n## Older\n\nold text\n", "new 1\n");
        assert!(first.starts_with("# t\n\n## Against GStreamer's C API\n\n"));
        assert!(first.contains("new 1") && first.ends_with("## Older\n\nold text\n"));
        let second = splice(&first, "new 2");
        assert!(second.contains("new 2") && !second.contains("new 1"));
        assert!(second.ends_with("## Older\n\nold text\n"));
        assert_eq!(second.matches(BEGIN).count(), 1);
    }
}
