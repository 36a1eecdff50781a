//! Developer tasks: `cargo xtask <task>`.
//!
//! * `test`: the project's full check, as CI runs it: formatting, clippy
//!   with warnings denied, then every test of the workspace (unit,
//!   conformance, integration, doc tests), then each fuzz target briefly.
//! * `test --host-only`: the same without the QEMU guest.
//! * `vm-test`: the device tests on a real kernel under QEMU (see `vm.rs`).
//! * `bench [--report-only]`: the benchmarks against GStreamer and the
//!   syscall floor; writes `bench/results.md` and `bench/results.png`.
//! * `fuzz [--time SECONDS] [--runs N] [TARGET...]`: libFuzzer on the IPC
//!   receiver's decoding (see `fuzz.rs`); 60 s per target by default.
//!   `test` runs every target for 20 s after the host tests.
//! * `lint`: formatting and clippy only (the fuzz crate's formatting too).

mod bench;
mod fuzz;
mod vm;

use std::process::{Command, ExitCode};

fn cargo(args: &[&str]) -> bool {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    match Command::new(cargo).args(args).status() {
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

fn lint() -> bool {
    let fuzz_manifest = root().join("fuzz/Cargo.toml");
    cargo(&["fmt", "--all", "--", "--check"])
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

fn test(host_only: bool) -> bool {
    let brief = fuzz::Budget {
        seconds: 20,
        runs: None,
        fresh: true,
    };
    lint()
        && cargo(&["test", "--workspace", "--no-fail-fast"])
        && fuzz(&[], &brief)
        && (host_only || vm_test())
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask <test [--host-only] | vm-test | bench [--report-only] | \
         fuzz [--time SECONDS] [--runs N] [TARGET...] | lint>"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().cloned();
    let ok = match (task.as_deref(), args.get(1).map(String::as_str)) {
        (Some("test"), None) => test(false),
        (Some("test"), Some("--host-only")) => test(true),
        (Some("vm-test"), None) => vm_test(),
        (Some("lint"), None) => lint(),
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
