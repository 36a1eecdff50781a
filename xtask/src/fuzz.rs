//! `cargo xtask fuzz [--time SECONDS] [--runs N] [TARGET...]`: coverage-guided
//! fuzzing of the IPC receiver's decoding with libFuzzer.
//!
//! The targets live in `fuzz/` (a crate outside the workspace, built only
//! here). They are built on the stable toolchain with `RUSTC_BOOTSTRAP=1`
//! and the flags `cargo fuzz` would pass: sanitizer coverage (inline 8-bit
//! counters, PC table, compare tracing), `--cfg fuzzing`, debug assertions
//! and overflow checks, and AddressSanitizer (if the toolchain cannot link
//! it, the targets are rebuilt without it, with a note). libFuzzer itself
//! comes from the `libfuzzer-sys` crate, so nothing needs installing.
//!
//! Each target runs one after the other (never two at once) from the
//! committed seeds in `fuzz/corpus/<target>` plus a working corpus in
//! `target/fuzz/corpus/<target>` (which keeps what a run learnt for the
//! next; `cargo xtask test` starts from the seeds alone instead); a crash, leak, hang or failed invariant writes its input under
//! `target/fuzz/artifacts/<target>/` and fails the task.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Every fuzz target, in the order they run.
pub const TARGETS: &[&str] = &["parse", "stream"];

const COVERAGE_FLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg",
    "fuzzing",
    "-Cdebug-assertions",
    "-Coverflow-checks",
];

/// How long (or how many inputs) each target runs.
pub struct Budget {
    /// Seconds per target (libFuzzer's `-max_total_time`).
    pub seconds: u64,
    /// At most this many inputs per target (`-runs`), if given.
    pub runs: Option<u64>,
    /// Start from the committed seeds alone, in a working corpus emptied
    /// first (`cargo xtask test`: its result depends on no earlier run).
    /// Otherwise the working corpus keeps growing from run to run.
    pub fresh: bool,
}

fn host_triple() -> Result<String, String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .map_err(|e| format!("rustc -vV: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .ok_or_else(|| "rustc -vV names no host".into())
}

fn build(root: &Path, triple: &str, asan: bool) -> bool {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut flags = COVERAGE_FLAGS.join(" ");
    if asan {
        flags.push_str(" -Zsanitizer=address");
    }
    eprintln!("fuzz: building the targets (RUSTFLAGS={flags})");
    Command::new(cargo)
        .current_dir(root)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", flags)
        // Flags of the outer cargo must not leak into this build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(["build", "--release", "--bins", "--manifest-path"])
        .arg(root.join("fuzz/Cargo.toml"))
        // An explicit target keeps the flags off build scripts.
        .args(["--target", triple, "--target-dir"])
        .arg(root.join("target/fuzz"))
        .status()
        .is_ok_and(|s| s.success())
}

/// Run one target; returns the number of inputs it executed.
fn run(root: &Path, binary: &Path, target: &str, budget: &Budget) -> Result<u64, String> {
    let corpora = if budget.fresh {
        "target/fuzz/corpus-fresh"
    } else {
        "target/fuzz/corpus"
    };
    let work = root.join(corpora).join(target);
    if budget.fresh && work.exists() {
        std::fs::remove_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    }
    let artifacts = root.join("target/fuzz/artifacts").join(target);
    for dir in [&work, &artifacts] {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut cmd = Command::new(binary);
    cmd.current_dir(root)
        .arg(format!("-max_total_time={}", budget.seconds))
        .arg("-max_len=4096")
        .arg("-timeout=20")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    if let Some(runs) = budget.runs {
        cmd.arg(format!("-runs={runs}"));
    }
    cmd.arg(&work).arg(root.join("fuzz/corpus").join(target));
    eprintln!("fuzz: running {target} for at most {} s", budget.seconds);
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let mut executed = 0;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
                executed = n.trim().parse().unwrap_or(0);
            }
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.success() {
        Ok(executed)
    } else {
        Err(format!(
            "{target} found a problem ({status}): its input is in {}",
            artifacts.display()
        ))
    }
}

/// Build and run `targets` (all when empty), one at a time.
pub fn fuzz(root: &Path, targets: &[String], budget: &Budget) -> Result<(), String> {
    for t in targets {
        if !TARGETS.contains(&t.as_str()) {
            return Err(format!(
                "unknown target {t} (targets: {})",
                TARGETS.join(", ")
            ));
        }
    }
    let chosen: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    let triple = host_triple()?;
    if !build(root, &triple, true) {
        eprintln!("fuzz: the build with AddressSanitizer failed; building without it");
        if !build(root, &triple, false) {
            return Err("the fuzz targets do not build".into());
        }
    }
    let bin_dir: PathBuf = root.join("target/fuzz").join(&triple).join("release");
    for target in chosen {
        let executed = run(root, &bin_dir.join(target), target, budget)?;
        eprintln!("fuzz: {target}: {executed} executions, no finding");
    }
    Ok(())
}
