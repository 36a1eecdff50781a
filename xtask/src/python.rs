//! `cargo xtask python-test` (and part of `cargo xtask test`): the Python
//! package `crates/mediamem-python`.
//!
//! 1. A venv under `target/python/venv`, made with the host's `python3`
//!    (or `$MEDIAMEM_PYTHON`; CPython >= 3.11, the wheel's abi3 floor) and
//!    given maturin, pytest and numpy from PyPI when they are missing.
//! 2. `maturin build --release` of the wheel into `target/python/wheels`,
//!    installed into the venv (`pip install --force-reinstall`).
//! 3. pytest on `crates/mediamem-python/tests`: every test must pass; device
//!    tests skip on the host (no DRM, udmabuf or dma-heap) with the reason
//!    and run in the QEMU guest (`vm.rs` runs the same suite there with
//!    `MEDIAMEM_REQUIRE_DEVICES=1`, which turns those skips into failures).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

type Res<T> = Result<T, String>;

/// What the venv gets from PyPI.
const PIP_PACKAGES: &[&str] = &["maturin>=1.5,<2", "pytest>=7", "numpy>=1.24"];

fn run(cmd: &mut Command, what: &str) -> Res<()> {
    eprintln!("xtask python: {what}");
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{what}: {s}")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// The venv of the Python tests.
pub fn venv(root: &Path) -> PathBuf {
    root.join("target/python/venv")
}

fn venv_python(root: &Path) -> PathBuf {
    venv(root).join("bin/python")
}

/// `pip install`, quiet, with the venv's interpreter; the caller adds
/// what to install.
fn pip_install(root: &Path) -> Command {
    let mut pip = Command::new(venv_python(root));
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    pip
}

/// The interpreter the venv is made with: `$MEDIAMEM_PYTHON`, else the
/// first of `python3` on the PATH (on this project's machines pyenv's
/// CPython 3.11.7) and Debian's `/usr/bin/python3` (3.11.2, with
/// python3-venv) that is CPython >= 3.11 and can make a venv with pip.
fn base_python() -> Res<String> {
    let candidates = match std::env::var("MEDIAMEM_PYTHON") {
        Ok(p) => vec![p],
        Err(_) => vec!["python3".to_owned(), "/usr/bin/python3".to_owned()],
    };
    for python in &candidates {
        let ok = Command::new(python)
            .args([
                "-c",
                "import sys, venv, ensurepip; sys.exit(0 if sys.version_info >= (3, 11) else 1)",
            ])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(python.clone());
        }
    }
    Err(format!(
        "none of {} is CPython >= 3.11 with venv and ensurepip (set MEDIAMEM_PYTHON to one, \
         or apt-get install python3-venv)",
        candidates.join(", ")
    ))
}

fn venv_has(root: &Path, code: &str) -> bool {
    Command::new(venv_python(root))
        .args(["-c", code])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Make the venv and install the tools, unless they are there already.
fn provision(root: &Path) -> Res<()> {
    let venv = venv(root);
    if !venv_has(
        root,
        "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)",
    ) {
        let _ = fs::remove_dir_all(&venv);
        let python = base_python()?;
        run(
            Command::new(&python).args(["-m", "venv"]).arg(&venv),
            &format!("{python} -m venv {}", venv.display()),
        )?;
    }
    if !venv_has(root, "import pytest, numpy, maturin") || !venv.join("bin/maturin").exists() {
        run(
            pip_install(root).args(PIP_PACKAGES),
            &format!("pip install {}", PIP_PACKAGES.join(" ")),
        )?;
    }
    Ok(())
}

/// Build the wheel and install it into the venv.
pub fn build_wheel(root: &Path) -> Res<()> {
    provision(root)?;
    let wheels = root.join("target/python/wheels");
    let _ = fs::remove_dir_all(&wheels);
    run(
        Command::new(venv(root).join("bin/maturin"))
            .current_dir(root)
            .args([
                "build",
                "--release",
                "--quiet",
                "-m",
                "crates/mediamem-python/Cargo.toml",
                "-i",
            ])
            .arg(venv_python(root))
            .arg("--out")
            .arg(&wheels),
        "maturin build --release (crates/mediamem-python)",
    )?;
    let wheel = fs::read_dir(&wheels)
        .map_err(|e| format!("{}: {e}", wheels.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or("maturin built no wheel")?;
    run(
        pip_install(root)
            .args(["--force-reinstall", "--no-deps"])
            .arg(&wheel),
        &format!("pip install {}", wheel.display()),
    )
}

/// Build, install and run the pytest suite on the host.
pub fn test(root: &Path) -> Res<()> {
    build_wheel(root)?;
    run(
        Command::new(venv_python(root))
            .current_dir(root)
            .args(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"])
            .arg("crates/mediamem-python/tests"),
        "pytest crates/mediamem-python/tests",
    )
}

/// Debian's interpreter, which has PyGObject and the host's GStreamer.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// What `python-bench` needs from apt for the PyGObject side.
const GI_PACKAGES: &[&str] = &[
    "python3-gi",
    "python3-gst-1.0",
    "gir1.2-gst-plugins-base-1.0",
];

fn system_python_has_gi() -> bool {
    Command::new(SYSTEM_PYTHON)
        .args([
            "-c",
            "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstAllocators', '1.0'); \
             from gi.repository import Gst, GstAllocators",
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `cargo xtask python-bench`: the Python call overhead of mediamem next to
/// PyGObject's (GStreamer's) for the same calls, in interleaved rounds, in
/// one interpreter (Debian's /usr/bin/python3, with the abi3 wheel unpacked
/// onto its path); prints a markdown table (see bench/results.md).
pub fn bench(root: &Path) -> Res<()> {
    build_wheel(root)?;
    if !system_python_has_gi() {
        crate::host::install("python-bench", GI_PACKAGES)?;
    }
    let site = root.join("target/python/system-site");
    let _ = fs::remove_dir_all(&site);
    let wheel = fs::read_dir(root.join("target/python/wheels"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or("no wheel")?;
    run(
        Command::new(SYSTEM_PYTHON)
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&site),
        "unpack the wheel for /usr/bin/python3",
    )?;
    run(
        Command::new(SYSTEM_PYTHON)
            .current_dir(root)
            .arg("crates/mediamem-python/bench/run.py")
            .arg("--wheel-dir")
            .arg(&site),
        "crates/mediamem-python/bench/run.py",
    )
}

/// The guest script's line for the Python suite (the guest shares the
/// host's root filesystem, so the venv is there), or None when the venv
/// has no mediamem (run `cargo xtask python-test` first). `results` is the
/// shell-quoted results folder.
pub fn guest_line(root: &Path, results: &str) -> Option<String> {
    if !venv_has(root, "import mediamem, pytest, numpy") {
        eprintln!(
            "vm-test: no Python venv with mediamem; the Python suite does not run in the guest"
        );
        return None;
    }
    Some(format!(
        "cd '{root}' && MEDIAMEM_REQUIRE_DEVICES=1 PYTHONDONTWRITEBYTECODE=1 '{py}' -m pytest -q -rs \
         -p no:cacheprovider crates/mediamem-python/tests > {results}/python.log 2>&1; \
         echo $? > {results}/python.rc\n",
        root = root.display(),
        py = venv_python(root).display(),
    ))
}

/// Read the guest's Python results: `(passed, failed)` from pytest's last
/// line, or a problem.
pub fn guest_outcome(results: &Path) -> Res<(usize, usize)> {
    let log = fs::read_to_string(results.join("python.log")).unwrap_or_default();
    let rc = fs::read_to_string(results.join("python.rc")).unwrap_or_default();
    let (passed, failed) = pytest_counts(&log);
    if rc.trim() != "0" || failed > 0 || passed == 0 {
        return Err(format!(
            "the Python suite in the guest: exit {:?}, {passed} passed, {failed} failed\n{log}",
            rc.trim()
        ));
    }
    Ok((passed, failed))
}

/// Counts from pytest's summary line ("3 passed, 1 failed, 2 skipped in
/// 1.2s"). Skips are neither: with MEDIAMEM_REQUIRE_DEVICES a missing
/// device fails its test instead of skipping it, so what still skips in
/// the guest is not about devices (the PyGObject comparison, done on the
/// host).
fn pytest_counts(log: &str) -> (usize, usize) {
    let Some(summary) = log
        .lines()
        .rev()
        .find(|l| l.contains(" passed") || l.contains(" failed") || l.contains(" error"))
    else {
        return (0, 0);
    };
    let (mut passed, mut failed) = (0, 0);
    let words: Vec<&str> = summary
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    for pair in words.windows(2) {
        if let Ok(n) = pair[0].parse::<usize>() {
            match pair[1].trim_end_matches('s') {
                "passed" => passed += n,
                "failed" | "error" => failed += n,
                _ => {}
            }
        }
    }
    (passed, failed)
}

#[cfg(test)]
mod tests {
    use super::pytest_counts;

    #[test]
    fn pytest_summary_lines() {
        assert_eq!(pytest_counts("...\n12 passed in 0.51s\n"), (12, 0));
        assert_eq!(
            pytest_counts("x\n3 failed, 40 passed, 2 skipped in 9.1s\n"),
            (40, 3)
        );
        assert_eq!(pytest_counts("1 passed, 1 error in 1s"), (1, 1));
        assert_eq!(pytest_counts("2 failed, 1 passed, 3 errors in 1s"), (1, 5));
        assert_eq!(pytest_counts("ERROR: file not found"), (0, 0));
    }
}
