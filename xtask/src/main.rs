//! Developer tasks: `cargo xtask <task>`.
//!
//! * `test`: the project's full check, as CI runs it: formatting, clippy
//!   with warnings denied, then every test of the workspace (unit,
//!   conformance, integration, doc tests).
//! * `test --host-only`: the same without the QEMU guest.
//! * `vm-test`: the device tests on a real kernel under QEMU (see `vm.rs`).
//! * `bench [--report-only]`: the benchmarks against GStreamer and the
//!   syscall floor; writes `bench/results.md` and `bench/results.png`.
//! * `lint`: the architecture rules (`arch.rs`: where `unsafe` may be,
//!   layers that read bottom-up), formatting and clippy.

mod arch;
mod bench;
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

/// The architecture rules of `arch.rs` on the library's sources.
fn arch_lint() -> bool {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .join("crates/mediamem/src");
    let problems = arch::check(&src);
    for p in &problems {
        eprintln!("xtask lint: {p}");
    }
    if problems.is_empty() {
        eprintln!("xtask: architecture lint: unsafe only in sys/, mapping.rs and memory/; layers read bottom-up");
    }
    problems.is_empty()
}

fn lint() -> bool {
    arch_lint()
        && cargo(&["fmt", "--all", "--", "--check"])
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

fn test(host_only: bool) -> bool {
    lint() && cargo(&["test", "--workspace", "--no-fail-fast"]) && (host_only || vm_test())
}

fn usage() -> ExitCode {
    eprintln!("usage: cargo xtask <test [--host-only] | vm-test | bench [--report-only] | lint>");
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
        (Some("bench"), flag) if flag.is_none() || flag == Some("--report-only") => {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("xtask lives in the workspace");
            match bench::bench(root, flag.is_some()) {
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
