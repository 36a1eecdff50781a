//! `cargo xtask bench`: install what the comparison needs (GStreamer's dev
//! packages for the `compare-gstreamer` feature; fontconfig, pkg-config and
//! a font for the chart), run the benchmarks, and have `tools/bench-report`
//! write `bench/results.md` and `bench/results.png`.

use std::path::Path;
use std::process::Command;

/// What the benchmark run reports as its reproducing command.
pub const COMMAND: &str =
    "cargo bench -p mediamem --bench memory --features compare-gstreamer -- --warm-up-time 1 --measurement-time 2";

const PACKAGES: &[&str] = &[
    "libgstreamer1.0-dev",
    "libgstreamer-plugins-base1.0-dev",
    "pkg-config",
    "libfontconfig1-dev",
    "fonts-dejavu-core",
];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.status().is_ok_and(|s| s.success())
}

fn provision() -> Result<(), String> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("bench: installing {}", missing.join(" "));
    if succeeds(Command::new("apt-get").args(["-q", "update"]))
        && succeeds(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["-q", "-y", "install"])
                .args(&missing),
        )
    {
        Ok(())
    } else {
        Err(format!("apt-get could not install {}", missing.join(" ")))
    }
}

/// Run everything; `report_only` skips the measurements and reuses
/// `target/criterion`.
pub fn bench(root: &Path, report_only: bool) -> Result<(), String> {
    provision()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if !report_only
        && !succeeds(
            Command::new(&cargo)
                .current_dir(root)
                .args(COMMAND.split_whitespace().skip(1)),
        )
    {
        return Err("the benchmarks failed".into());
    }
    let manifest = root.join("tools/bench-report/Cargo.toml");
    if !succeeds(
        Command::new(&cargo)
            .current_dir(root)
            .args(["run", "-q", "--release", "--manifest-path"])
            .arg(&manifest)
            .arg("--")
            .arg(root.join("target/criterion"))
            .arg(root.join("bench"))
            .arg(COMMAND),
    ) {
        return Err("bench-report failed".into());
    }
    eprintln!("bench: wrote bench/results.md and bench/results.png");
    Ok(())
}
