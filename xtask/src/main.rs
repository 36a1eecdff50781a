//! Developer tasks: `cargo xtask <task>`.
//!
//! * `test`: the project's full check, as CI runs it: formatting, clippy
//!   with warnings denied, then every test of the workspace (unit,
//!   conformance, integration, doc tests).
//! * `lint`: formatting and clippy only.

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

fn lint() -> bool {
    cargo(&["fmt", "--all", "--", "--check"])
        && cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
}

fn test() -> bool {
    lint() && cargo(&["test", "--workspace", "--no-fail-fast"])
}

fn usage() -> ExitCode {
    eprintln!("usage: cargo xtask <test|lint>");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    let ok = match task.as_deref() {
        Some("test") => test(),
        Some("lint") => lint(),
        _ => return usage(),
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("xtask: {} failed", task.unwrap_or_default());
        ExitCode::FAILURE
    }
}
