//! Developer tasks: `cargo xtask <task>`.
//!
//! * `test`: the project's full check, as CI runs it: formatting, clippy
//!   with warnings denied, every test of the workspace (unit, conformance,
//!   integration, doc tests), the loom model checks, each fuzz target
//!   briefly, then the device tests under QEMU.
//! * `test --host-only`: the same without the QEMU guest. Both also run
//!   every example of the library once.
//! * `loom`: the model checks of mediamem's lock-free core (`Counted`, the
//!   lock word, the region's sequence lock) under `loom`: its unit tests
//!   named `loom`, built with `--cfg loom` in `target/loom` so the ordinary
//!   build cache stays as it is. `LOOM_MAX_PREEMPTIONS` defaults to 4
//!   (seconds on a 2-core machine, after a build of a few minutes).
//! * `vm-test`: the device tests on a real kernel under QEMU (see `vm.rs`).
//! * `bench [--report-only]`: mediamem against GStreamer's C API in
//!   interleaved rounds, with floors measured in the same run; writes the
//!   top section of `bench/results.md` and `bench/results.png`.
//! * `fuzz [--time SECONDS] [--runs N] [TARGET...]`: libFuzzer on the IPC
//!   receiver's decoding (see `fuzz.rs`); 60 s per target by default.
//!   `test` runs every target for 20 s after the host tests.
//! * `python-test`: the Python package (`crates/mediamem-python`): its
//!   wheel built into a venv under `target/python`, and its pytest suite
//!   (see `python.rs`). `test` runs it after the examples.
//! * `python-bench`: the Python call overhead of mediamem next to
//!   PyGObject's on the host's GStreamer (`python.rs`).
//! * `gst-launch <pipeline...>`: `gst-launch-1.0 -e` in the Debian trixie
//!   root filesystem with GStreamer 1.26 (see `gst.rs`), built under
//!   `target/gst-trixie` at first use; `test` builds it too and points
//!   the unixfd tests at it with `MEDIAMEM_GST_ROOTFS`, and installs the
//!   host's GStreamer dev packages for the `gstreamer` feature, whose
//!   bridge it lints and tests.
//! * `bench-unixfd [--runs N]`: receiving from GStreamer's `unixfdsink`,
//!   mediamem's client against `unixfdsrc` (see `unixfd_bench.rs`); writes
//!   its own section of `bench/results.md`.
//! * `lint`: the architecture rules (`arch.rs`: where `unsafe` may be,
//!   layers that read bottom-up), formatting (the fuzz crate's too),
//!   clippy and rustdoc, warnings denied.

mod arch;
mod bench;
mod fuzz;
mod gst;
mod host;
mod python;
mod unixfd_bench;
mod vm;

use std::process::{Command, ExitCode};

/// The preemption bound of `cargo xtask loom` when the environment sets
/// none: every loom test explores all schedules with up to this many
/// preemptions (about 3 s for all of them on the project's 2-core machine;
/// unbounded takes about a minute).
const LOOM_MAX_PREEMPTIONS: &str = "4";

fn cargo(args: &[&str]) -> bool {
    cargo_with(args, &[])
}

/// Run cargo with `args` and extra environment variables.
fn cargo_with(args: &[&str], envs: &[(&str, &str)]) -> bool {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let shown: Vec<String> = envs.iter().map(|(k, v)| format!("{k}=\"{v}\" ")).collect();
    eprintln!("xtask: {}cargo {}", shown.concat(), args.join(" "));
    match Command::new(cargo)
        .args(args)
        .envs(envs.iter().copied())
        .status()
    {
        Ok(status) => status.success(),
        Err(e) => {
            eprintln!("xtask: could not run cargo: {e}");
            false
        }
    }
}

fn root() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
}

/// The architecture rules of `arch.rs` on the library's sources.
fn arch_lint() -> bool {
    let problems = arch::check(&root().join("crates/mediamem/src"));
    for p in &problems {
        eprintln!("xtask lint: {p}");
    }
    if problems.is_empty() {
        eprintln!("xtask: architecture lint: unsafe only in sys/, mapping.rs and memory/; layers read bottom-up");
    }
    problems.is_empty()
}

fn lint() -> bool {
    let fuzz_manifest = root().join("fuzz/Cargo.toml");
    arch_lint()
        && cargo(&["fmt", "--all", "--", "--check"])
        && cargo(&[
            "fmt",
            "--manifest-path",
            &fuzz_manifest.to_string_lossy(),
            "--",
            "--check",
        ])
        && cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        // Broken intra-doc links and doc warnings fail too.
        && cargo_with(
            &["doc", "--workspace", "--no-deps", "--quiet"],
            &[("RUSTDOCFLAGS", "-D warnings")],
        )
}

/// The loom model checks: mediamem's unit tests named `loom`, built with
/// `--cfg loom` (added to any RUSTFLAGS already set) in their own target
/// directory, in release mode as loom advises.
fn loom() -> bool {
    let rustflags = match std::env::var("RUSTFLAGS") {
        Ok(flags) if !flags.trim().is_empty() => format!("{flags} --cfg loom"),
        _ => "--cfg loom".to_owned(),
    };
    let preemptions =
        std::env::var("LOOM_MAX_PREEMPTIONS").unwrap_or_else(|_| LOOM_MAX_PREEMPTIONS.into());
    let target_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .join("target/loom");
    cargo_with(
        &[
            "test",
            "-p",
            "mediamem",
            "--lib",
            "--release",
            "--target-dir",
            &target_dir.to_string_lossy(),
            "loom",
        ],
        &[
            ("RUSTFLAGS", &rustflags),
            ("LOOM_MAX_PREEMPTIONS", &preemptions),
        ],
    )
}

fn vm_test() -> bool {
    match vm::vm_test() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("vm-test: {e}");
            false
        }
    }
}

fn fuzz(targets: &[String], budget: &fuzz::Budget) -> bool {
    match fuzz::fuzz(root(), targets, budget) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("fuzz: {e}");
            false
        }
    }
}

/// `fuzz` arguments: `--time SECONDS`, `--runs N`, target names.
fn fuzz_args(args: &[String]) -> Option<(Vec<String>, fuzz::Budget)> {
    let mut budget = fuzz::Budget {
        seconds: 60,
        runs: None,
        fresh: false,
    };
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--time" => budget.seconds = it.next()?.parse().ok()?,
            "--runs" => budget.runs = Some(it.next()?.parse().ok()?),
            t if !t.starts_with('-') => targets.push(t.to_owned()),
            _ => return None,
        }
    }
    Some((targets, budget))
}

/// The library's examples, each run once (they check what they print
/// about, and exit non-zero on any error).
const EXAMPLES: &[&str] = &[
    "alloc_and_map",
    "pool",
    "import_dmabuf",
    "share_between_processes",
];

fn examples() -> bool {
    EXAMPLES
        .iter()
        .all(|e| cargo(&["run", "-q", "-p", "mediamem", "--example", e]))
}

fn test(host_only: bool) -> bool {
    let brief = fuzz::Budget {
        seconds: 20,
        runs: None,
        fresh: true,
    };
    let gst_root = match gst::rootfs() {
        Ok(root) => root,
        Err(e) => {
            eprintln!("gst: {e}");
            return false;
        }
    };
    let gst_root = gst_root.to_string_lossy().into_owned();
    if let Err(e) = gst::host_packages() {
        eprintln!("gst: {e}");
        return false;
    }
    lint()
        && cargo_with(
            &["test", "--workspace", "--no-fail-fast"],
            &[(gst::ENV, &gst_root)],
        )
        // The `gstreamer` feature (off by default): its bridge, linted and
        // tested against the host's GStreamer.
        && cargo(&[
            "clippy",
            "-p",
            "mediamem",
            "--features",
            "gstreamer",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        && cargo(&[
            "test",
            "-p",
            "mediamem",
            "--features",
            "gstreamer",
            "--test",
            "gst_bridge",
        ])
        // The `tokio` feature (off by default): async ends on tokio's runtime.
        && cargo(&[
            "test",
            "-p",
            "mediamem",
            "--features",
            "tokio",
            "--test",
            "ipc_tokio",
        ])
        && examples()
        && python_test()
        && loom()
        && fuzz(&[], &brief)
        && (host_only || vm_test())
}

fn python_test() -> bool {
    match python::test(root()) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("xtask python-test: {e}");
            false
        }
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask <test [--host-only] | loom | vm-test | python-test | python-bench | \
         bench [--report-only] | fuzz [--time SECONDS] [--runs N] [TARGET...] | \
         gst-launch PIPELINE... | bench-unixfd [--runs N] | lint>"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().cloned();
    let ok = match (task.as_deref(), args.get(1).map(String::as_str)) {
        (Some("test"), None) => test(false),
        (Some("test"), Some("--host-only")) => test(true),
        (Some("loom"), None) => loom(),
        (Some("vm-test"), None) => vm_test(),
        (Some("python-test"), None) => python_test(),
        (Some("python-bench"), None) => match python::bench(root()) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("xtask python-bench: {e}");
                false
            }
        },
        (Some("lint"), None) => lint(),
        (Some("bench-unixfd"), flag) => {
            let runs = match (flag, args.get(2)) {
                (None, _) => 5,
                (Some("--runs"), Some(n)) => match n.parse() {
                    Ok(n) if n > 0 => n,
                    _ => return usage(),
                },
                _ => return usage(),
            };
            match unixfd_bench::bench_unixfd(runs) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("bench-unixfd: {e}");
                    false
                }
            }
        }
        (Some("gst-launch"), Some(_)) => match gst::gst_launch(&args[1..]) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("gst: {e}");
                false
            }
        },
        (Some("fuzz"), _) => match fuzz_args(&args[1..]) {
            Some((targets, budget)) => fuzz(&targets, &budget),
            None => return usage(),
        },
        (Some("bench"), flag) if flag.is_none() || flag == Some("--report-only") => {
            match bench::bench(root(), flag.is_some()) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("bench: {e}");
                    false
                }
            }
        }
        _ => return usage(),
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("xtask: {} failed", task.unwrap_or_default());
        ExitCode::FAILURE
    }
}
