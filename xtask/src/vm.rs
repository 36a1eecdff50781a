//! `cargo xtask vm-test`: the project's device tests on a real Linux kernel
//! under QEMU.
//!
//! 1. Provision, cached under `target/vm/`:
//!    * QEMU, kmod and busybox from apt when missing;
//!    * virtme-ng from PyPI into a venv;
//!    * Debian trixie's kernel package, fetched with a private apt
//!      configuration naming the mirror this machine already uses (the
//!      system's apt configuration is not touched), unpacked and `depmod`ed.
//! 2. Build the test binaries and list, on the host, the tests each must run.
//! 3. Boot the kernel with virtme-ng (`-device bochs-display`), which shares
//!    the host's root filesystem read-only; as root, load `bochs`, `vgem`
//!    and `vivid`, run each test binary with `--include-ignored` and
//!    `mediamem probe`,
//!    writing logs and exit codes to a results folder shared read-write.
//! 4. Read the results back: every test that had to run must have run and
//!    passed; print the counts and the guest's probe table.
//!
//! A test that cannot run somewhere (the huge page tests without root)
//! prints a line `SKIPPED: <test>: <reason>` and returns, which libtest
//! counts as passed. In the guest every test runs as root and must really
//! run, so each such line is a failure here.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::host::{have, run};

/// The test binaries (integration test targets of `mediamem`) run in the
/// guest. `devices` holds the tests that need the guest's devices; the
/// others run there too, on a second kernel.
const GUEST_TESTS: &[&str] = &[
    "devices", "dmabuf", "fd", "phys", "provider", "shm", "sync", "unixfd", "v4l2",
];
/// Binaries of which the guest runs only the `#[ignore]`d tests (the rest
/// run on the host), with GStreamer's root filesystem named in
/// `MEDIAMEM_GST_ROOTFS`.
const GUEST_IGNORED_ONLY: &[&str] = &["unixfd"];

/// Memory sources the demo streams from in the guest.
const DEMO_SOURCES: &[&str] = &["udmabuf", "heap", "drm", "auto"];
/// Runs of one demo (registered buffers, an fd each frame, copy), each
/// ending with "every checksum verified".
const DEMO_RUNS: usize = 3;

/// vivid, the virtual V4L2 driver, for the `v4l2` tests and the camera
/// demo: two instances, a single-planar and a multi-planar capture device
/// (each with its output node and others); vmalloc buffers (the default
/// `allocators=0`), which export with EXPBUF and import dma-bufs.
const VIVID_OPTIONS: &str = "n_devs=2 multiplanar=1,2";

/// The guest's lines that pick the camera the demo streams from: the
/// single-planar vivid capture node as the guest's `mediamem probe` (run
/// just before, its output in `probe.log`) lists it, a line
/// `  /dev/videoN vivid "<card>" single-planar` (not a node number: the
/// order the kernel registers nodes in is not a contract). The node goes
/// to `$CAMERA` and to the results' `camera`.
fn camera_lines(r: &str) -> String {
    format!(
        "CAMERA=$(awk '$1 ~ /^\\/dev\\/video/ && $2 == \"vivid\" && $NF == \"single-planar\" \
         {{ print $1; exit }}' {r}/probe.log)\necho \"$CAMERA\" > {r}/camera\n"
    )
}

/// virtme-ng version the recipe was measured with.
const VIRTME_NG: &str = "virtme-ng==1.42";

/// A development aid: `MEDIAMEM_VM_ONLY=sync,v4l2` runs only the named
/// guest test binaries, and no demo or Python test; the run then says it
/// was partial. `cargo xtask test` never sets it.
const ONLY_ENV: &str = "MEDIAMEM_VM_ONLY";

/// The guest test binaries this run builds and runs.
fn guest_tests() -> Res<Vec<&'static str>> {
    let Ok(only) = std::env::var(ONLY_ENV) else {
        return Ok(GUEST_TESTS.to_vec());
    };
    let wanted: Vec<&str> = only
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(bad) = wanted.iter().find(|w| !GUEST_TESTS.contains(w)) {
        return Err(format!(
            "{ONLY_ENV} names {bad:?}, which is not one of {GUEST_TESTS:?}"
        ));
    }
    Ok(GUEST_TESTS
        .iter()
        .copied()
        .filter(|t| wanted.contains(t))
        .collect())
}

/// How long the guest may run before it is stopped.
const GUEST_TIMEOUT: Duration = Duration::from_secs(20 * 60);

type Res<T> = Result<T, String>;

fn output(cmd: &mut Command, what: &str) -> Res<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!("{what} failed ({})", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn workspace_root() -> PathBuf {
    // xtask/ is one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// QEMU, depmod and busybox (for virtme-ng's initramfs) from apt.
fn provision_packages() -> Res<()> {
    let missing: Vec<&str> = [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("depmod", "kmod"),
        ("busybox", "busybox-static"),
    ]
    .iter()
    .filter(|(bin, _)| !have(bin))
    .map(|(_, pkg)| *pkg)
    .collect();
    crate::host::install("vm-test", &missing)
}

/// virtme-ng in a venv under `target/vm/venv`; returns its `bin` folder.
fn provision_virtme(vm: &Path) -> Res<PathBuf> {
    let venv = vm.join("venv");
    let bin = venv.join("bin");
    if bin.join("vng").exists() {
        return Ok(bin);
    }
    eprintln!("vm-test: installing {VIRTME_NG} into {}", venv.display());
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    )?;
    run(
        Command::new(bin.join("pip")).args(["install", "-q", VIRTME_NG]),
        "pip install virtme-ng",
    )?;
    Ok(bin)
}

/// The Debian mirror this machine's apt uses.
pub(crate) fn debian_mirror() -> Res<String> {
    let mut text = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    text.push('\n');
    text.push_str(&fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    for line in text.lines() {
        let line = line.trim();
        let uri = if let Some(rest) = line.strip_prefix("URIs:") {
            rest.split_whitespace().next()
        } else if let Some(rest) = line.strip_prefix("deb ") {
            rest.split_whitespace().find(|w| w.contains("://"))
        } else {
            None
        };
        if let Some(uri) = uri.filter(|u| !u.contains("security")) {
            return Ok(uri.to_owned());
        }
    }
    Err("no Debian mirror found in /etc/apt/sources.list(.d)".into())
}

/// Debian trixie's kernel, unpacked under `target/vm/kernel/root`; returns
/// the vmlinuz path.
fn provision_kernel(vm: &Path) -> Res<PathBuf> {
    let dir = vm.join("kernel");
    let root = dir.join("root");
    let find_vmlinuz = || -> Option<PathBuf> {
        fs::read_dir(root.join("boot"))
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
    };
    if let Some(vmlinuz) = find_vmlinuz() {
        return Ok(vmlinuz);
    }
    let mirror = debian_mirror()?;
    eprintln!("vm-test: fetching Debian trixie's kernel from {mirror}");
    for sub in ["etc", "lists/partial", "cache/archives/partial", "deb"] {
        fs::create_dir_all(dir.join(sub)).map_err(|e| format!("mkdir: {e}"))?;
    }
    let sources = dir.join("etc/sources.list");
    fs::write(&sources, format!("deb {mirror} trixie main\n"))
        .map_err(|e| format!("write sources.list: {e}"))?;
    let apt_opts = |cmd: &mut Command| {
        cmd.arg("-q")
            .arg("-o")
            .arg(format!("Dir::Etc::sourcelist={}", sources.display()))
            .arg("-o")
            .arg("Dir::Etc::sourceparts=-")
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", dir.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", dir.join("cache").display()))
            .arg("-o")
            .arg("APT::Sandbox::User=root");
    };
    let mut update = Command::new("apt-get");
    apt_opts(&mut update);
    run(
        update.arg("update"),
        "apt-get update (trixie, private lists)",
    )?;
    let mut depends = Command::new("apt-cache");
    apt_opts(&mut depends);
    let deps = output(
        depends.args(["depends", "linux-image-amd64"]),
        "apt-cache depends",
    )?;
    let package = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| {
            p.starts_with("linux-image-") && p.as_bytes().get(12).is_some_and(u8::is_ascii_digit)
        })
        .ok_or("linux-image-amd64 in trixie names no kernel package")?
        .to_owned();
    let mut download = Command::new("apt-get");
    apt_opts(&mut download);
    run(
        download
            .current_dir(dir.join("deb"))
            .args(["download", &package]),
        "apt-get download",
    )?;
    let deb = fs::read_dir(dir.join("deb"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("the kernel .deb did not arrive")?;
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        "dpkg-deb -x",
    )?;
    // Modules live in usr/lib/modules (merged /usr) or lib/modules.
    let base = if root.join("usr/lib/modules").exists() {
        root.join("usr")
    } else {
        root.clone()
    };
    let version = fs::read_dir(base.join("lib/modules"))
        .map_err(|e| format!("no modules in the kernel package: {e}"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or("no module folder in the kernel package")?;
    run(
        Command::new("depmod").arg("-b").arg(&base).arg(&version),
        "depmod",
    )?;
    let _ = fs::remove_file(&deb);
    find_vmlinuz().ok_or_else(|| "no vmlinuz in the kernel package".into())
}

/// Build the tests; return (name, executable) of the guest test binaries and
/// the `mediamem` CLI binary.
fn build(root: &Path, tests: &[&str]) -> Res<(Vec<(String, PathBuf)>, PathBuf)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = output(
        Command::new(&cargo)
            .current_dir(root)
            .args([
                "test",
                "-p",
                "mediamem",
                "--no-run",
                "--message-format=json",
            ])
            .args(tests.iter().flat_map(|t| ["--test", *t])),
        "cargo test --no-run",
    )?;
    let mut bins = Vec::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str())
        else {
            continue;
        };
        if tests.contains(&name) {
            bins.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    bins.sort();
    if bins.len() != tests.len() {
        return Err(format!("expected test binaries {tests:?}, built {bins:?}"));
    }
    run(
        Command::new(&cargo)
            .current_dir(root)
            .args(["build", "-q", "-p", "mediamem-cli"]),
        "cargo build -p mediamem-cli",
    )?;
    let cli = root.join("target/debug/mediamem");
    Ok((bins, cli))
}

/// The tests a binary must run in the guest (`--list --include-ignored`,
/// or `--ignored` for the binaries of [`GUEST_IGNORED_ONLY`]).
fn list_tests(bin: &Path, which: &str) -> Res<Vec<String>> {
    let out = output(
        Command::new(bin).args(["--list", which, "--format", "terse"]),
        "listing tests",
    )?;
    Ok(out
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}

/// libtest's flag for the tests of binary `name` that the guest runs.
fn which_tests(name: &str) -> &'static str {
    if GUEST_IGNORED_ONLY.contains(&name) {
        "--ignored"
    } else {
        "--include-ignored"
    }
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// Outcome of one test binary in the guest.
struct Outcome {
    name: String,
    expected: usize,
    /// Tests libtest counted as passed, skipped ones included.
    passed: usize,
    failed: usize,
    /// `(test, reason)` of every `SKIPPED:` line in the log.
    skipped: Vec<(String, String)>,
    rc: Option<i32>,
    log: String,
}

impl Outcome {
    /// Tests that passed and really ran.
    fn ran_and_passed(&self) -> usize {
        self.passed.saturating_sub(self.skipped.len())
    }
}

/// The `(test, reason)` of every skip reported in `log`. A test reports a
/// skip with one line `SKIPPED: <test>: <reason>`; libtest may have
/// written `test <name> ... ` in front of it on the same line.
fn skipped_tests(log: &str) -> Vec<(String, String)> {
    const MARK: &str = "SKIPPED: ";
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find(MARK)? + MARK.len()..];
            let (test, reason) = rest.split_once(": ").unwrap_or((rest, ""));
            Some((test.trim().to_owned(), reason.trim().to_owned()))
        })
        .collect()
}

fn parse_outcome(name: &str, expected: usize, results: &Path) -> Outcome {
    let log = fs::read_to_string(results.join(format!("{name}.log"))).unwrap_or_default();
    let rc = fs::read_to_string(results.join(format!("{name}.rc")))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let (mut passed, mut failed) = (0, 0);
    for line in log.lines().filter(|l| l.starts_with("test result:")) {
        let num = |key: &str| -> usize {
            line.split(';')
                .find(|part| part.trim_end().ends_with(key))
                .and_then(|part| part.split_whitespace().rev().nth(1))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        passed += num("passed");
        failed += num("failed");
    }
    Outcome {
        name: name.to_owned(),
        expected,
        passed,
        failed,
        skipped: skipped_tests(&log),
        rc,
        log,
    }
}

/// What the guest's `mediamem probe` table must show: udmabuf, the system
/// heap and a bochs dumb-buffer card, each available. The table has a line
/// per kind (name, `ok`, caps, copies to) and its detail on indented lines
/// below.
fn probe_problems(probe: &str) -> Vec<String> {
    // (row line, its detail lines joined)
    let mut rows: Vec<(String, String)> = Vec::new();
    for line in probe.lines() {
        if line.starts_with(' ') {
            if let Some((_, detail)) = rows.last_mut() {
                detail.push_str(line.trim());
                detail.push(' ');
            }
        } else {
            rows.push((line.to_owned(), String::new()));
        }
    }
    let available =
        |l: &str, name_words: usize| l.split_whitespace().nth(name_words) == Some("yes");
    let checks: [(&str, &str, usize); 3] = [
        ("udmabuf", "udmabuf ", 1),
        ("the system heap", "dmaheap:system ", 1),
        ("a bochs-drm dumb-buffer card", "DRMDumbMemory ", 2),
    ];
    let mut problems: Vec<String> = checks
        .iter()
        .filter(|(_, prefix, words)| {
            !rows.iter().any(|(l, detail)| {
                l.starts_with(prefix)
                    && available(l, *words)
                    && (!prefix.starts_with("DRM") || detail.contains("bochs-drm"))
            })
        })
        .map(|(what, _, _)| format!("the guest's probe does not show {what} as available"))
        .collect();
    // Explicit sync: the guest's kernel (6.12) exports and imports
    // sync_files on udmabuf and heap buffers.
    for kind in ["udmabuf", "dmaheap:system"] {
        let works = probe.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.first() == Some(&kind) && w.ends_with(&["export", "yes", "import", "yes"])
        });
        if !works {
            problems.push(format!(
                "the guest's probe does not show sync_file export and import working on {kind}"
            ));
        }
    }
    problems
}

pub fn vm_test() -> Res<()> {
    let root = workspace_root();
    let vm = root.join("target/vm");
    fs::create_dir_all(&vm).map_err(|e| format!("mkdir {}: {e}", vm.display()))?;

    provision_packages()?;
    let venv_bin = provision_virtme(&vm)?;
    let vmlinuz = provision_kernel(&vm)?;
    // GStreamer 1.26 for the unixfd tests of dma-buf frames (cached).
    let gst_root = crate::gst::rootfs()?;
    let tests = guest_tests()?;
    let partial = tests.len() != GUEST_TESTS.len();
    let (bins, cli) = build(&root, &tests)?;

    let mut expected = BTreeMap::new();
    for (name, bin) in &bins {
        expected.insert(name.clone(), list_tests(bin, which_tests(name))?.len());
    }

    let results = vm.join("results");
    let _ = fs::remove_dir_all(&results);
    fs::create_dir_all(&results).map_err(|e| e.to_string())?;
    let r = shell_quote(&results);
    let mut script =
        String::from("#!/bin/sh\n# Written by cargo xtask vm-test; runs as root in the guest.\n");
    script.push_str(&format!("{{ uname -r; modprobe bochs && modprobe vgem && modprobe vivid {VIVID_OPTIONS} && echo modules loaded; }} > {r}/setup.log 2>&1\n"));
    script.push_str(&format!("cd {}\n", shell_quote(&root)));
    for (name, bin) in &bins {
        let env = if GUEST_IGNORED_ONLY.contains(&name.as_str()) {
            // The unixfd tests' sockets and work folders live in the
            // GStreamer root's /tmp: a tmpfs in the guest (the host's
            // files are shared read-only, and a shared folder cannot hold
            // a listening socket).
            script.push_str(&format!(
                "mount -t tmpfs tmpfs {} > {r}/{name}-mount.log 2>&1\n",
                shell_quote(&gst_root.join("tmp"))
            ));
            format!("{}={} ", crate::gst::ENV, shell_quote(&gst_root))
        } else {
            String::new()
        };
        script.push_str(&format!(
            "{env}{} {} --test-threads=2 > {r}/{name}.log 2>&1; echo $? > {r}/{name}.rc\n",
            shell_quote(bin),
            which_tests(name)
        ));
    }
    script.push_str(&format!(
        "{} probe > {r}/probe.log 2>&1; echo $? > {r}/probe.rc\n",
        shell_quote(&cli)
    ));
    let demo_sources = if partial { &[][..] } else { DEMO_SOURCES };
    for source in demo_sources {
        script.push_str(&format!(
            "{} demo --allocator {source} --frames 60 --width 640 --height 480 --quiet \
             > {r}/demo-{source}.log 2>&1; echo $? > {r}/demo-{source}.rc\n",
            shell_quote(&cli)
        ));
    }
    if !partial {
        script.push_str(&camera_lines(&r));
        script.push_str(&format!(
            "{} demo --source \"v4l2:$CAMERA\" --frames 60 --width 640 --height 480 --quiet \
             > {r}/demo-v4l2.log 2>&1; echo $? > {r}/demo-v4l2.rc\n",
            shell_quote(&cli)
        ));
    }
    let python_line = if partial {
        None
    } else {
        crate::python::guest_line(&root, &r)
    };
    if let Some(line) = &python_line {
        script.push_str(line);
    }
    script.push_str(&format!("echo done > {r}/done\n"));
    let script_path = vm.join("guest.sh");
    fs::write(&script_path, script).map_err(|e| e.to_string())?;

    let kvm = std::env::var_os("MEDIAMEM_VM_KVM").is_some();
    eprintln!(
        "vm-test: booting {} under QEMU ({})",
        vmlinuz.display(),
        if kvm { "KVM" } else { "TCG" }
    );
    let path = format!(
        "{}:{}",
        venv_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let console = fs::File::create(results.join("console.log")).map_err(|e| e.to_string())?;
    let mut vng = Command::new(venv_bin.join("vng"));
    vng.env("PATH", path)
        .arg("--run")
        .arg(&vmlinuz)
        .args(["--verbose", "--memory", "2G", "--cpus", "2"])
        .args(if kvm { &[][..] } else { &["--disable-kvm"][..] })
        .arg("--rwdir")
        .arg(format!("{}={}", results.display(), results.display()))
        .args(["--qemu-opts=-device bochs-display", "--exec"])
        .arg(format!("sh {}", shell_quote(&script_path)))
        .stdin(Stdio::null())
        .stdout(console.try_clone().map_err(|e| e.to_string())?)
        .stderr(console);
    let started = Instant::now();
    let mut child = vng.spawn().map_err(|e| format!("cannot start vng: {e}"))?;
    // vng's own exit code is not the script's (it reports 255 when the
    // guest has no virtio-serial script channel): the results folder is
    // the source of truth.
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            break;
        }
        if started.elapsed() > GUEST_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the guest ran longer than {GUEST_TIMEOUT:?}; see {}",
                results.join("console.log").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("vm-test: guest finished in {:.1?}", started.elapsed());

    let setup = fs::read_to_string(results.join("setup.log")).unwrap_or_default();
    if !results.join("done").exists() {
        return Err(format!(
            "the guest did not finish its script; setup: {setup:?}; see {}",
            results.join("console.log").display()
        ));
    }
    println!(
        "vm-test: guest kernel {}",
        setup.lines().next().unwrap_or("?")
    );
    if !setup.contains("modules loaded") {
        return Err(format!(
            "loading bochs/vgem/vivid failed in the guest: {setup}"
        ));
    }
    println!("vm-test: mediamem probe in the guest:");
    let probe = fs::read_to_string(results.join("probe.log")).unwrap_or_default();
    for line in probe.lines() {
        println!("    {line}");
    }

    let mut problems = Vec::new();
    let (mut total_passed, mut total_failed) = (0, 0);
    for (name, &want) in &expected {
        let o = parse_outcome(name, want, &results);
        println!(
            "vm-test: {:<8} {} passed, {} skipped, {} failed, {} expected{}",
            o.name,
            o.ran_and_passed(),
            o.skipped.len(),
            o.failed,
            o.expected,
            if o.rc == Some(0) {
                ""
            } else {
                " (nonzero exit)"
            }
        );
        total_passed += o.ran_and_passed();
        total_failed += o.failed + o.skipped.len();
        // Every test here must run in the guest (as root): a skip fails.
        for (test, reason) in &o.skipped {
            problems.push(format!(
                "{}: {test} skipped in the guest, where it must run: {reason}",
                o.name
            ));
        }
        if o.rc != Some(0) || o.failed > 0 || o.passed != o.expected || !o.skipped.is_empty() {
            problems.push(format!(
                "{}: exit {:?}, {} ran and passed of {} that must run, {} skipped, {} failed\n{}",
                o.name,
                o.rc,
                o.ran_and_passed(),
                o.expected,
                o.skipped.len(),
                o.failed,
                o.log
            ));
        }
    }
    for source in demo_sources {
        let log =
            fs::read_to_string(results.join(format!("demo-{source}.log"))).unwrap_or_default();
        let rc = fs::read_to_string(results.join(format!("demo-{source}.rc"))).unwrap_or_default();
        let verified = log.matches("every checksum verified").count();
        println!(
            "vm-test: demo on {source} memory: exit {}, {verified} of {DEMO_RUNS} runs verified every frame",
            rc.trim()
        );
        // `auto` must find a dma-buf provider in the guest, not fall back
        // to memfd.
        let auto_ok = *source != "auto"
            || log.contains("auto (system-heap)")
            || log.contains("auto (cma-heap)");
        if rc.trim() != "0" || verified != DEMO_RUNS || !auto_ok {
            problems.push(format!(
                "mediamem demo --allocator {source} failed in the guest:\n{log}"
            ));
        }
    }
    if !partial {
        let log = fs::read_to_string(results.join("demo-v4l2.log")).unwrap_or_default();
        let rc = fs::read_to_string(results.join("demo-v4l2.rc")).unwrap_or_default();
        let camera = fs::read_to_string(results.join("camera")).unwrap_or_default();
        let camera = camera.trim();
        let verified = log.contains("every checksum verified");
        let back = log.contains("every buffer back in the driver: true");
        println!(
            "vm-test: camera demo (v4l2:{camera}, vivid single-planar): exit {}, every frame verified: {verified}, buffers back: {back}",
            rc.trim()
        );
        if camera.is_empty() {
            problems.push(
                "the guest's probe lists no single-planar vivid capture node for the camera demo"
                    .into(),
            );
        } else if rc.trim() != "0" || !verified || !back {
            problems.push(format!(
                "mediamem demo --source v4l2:{camera} failed in the guest:\n{log}"
            ));
        }
    }
    let probe_rc = fs::read_to_string(results.join("probe.rc")).unwrap_or_default();
    if probe_rc.trim() != "0" {
        problems.push(format!(
            "mediamem probe exited {:?} in the guest",
            probe_rc.trim()
        ));
    }
    for problem in probe_problems(&probe) {
        problems.push(problem);
    }
    if !(probe.contains(" vivid ") && probe.contains("EXPBUF export: yes; DMABUF import: yes")) {
        problems.push(
            "the guest's probe does not show a vivid capture device with EXPBUF export and DMABUF import".into(),
        );
    }
    if python_line.is_some() {
        match crate::python::guest_outcome(&results) {
            Ok((passed, _)) => {
                println!("vm-test: python   {passed} passed (pytest, devices required)");
                total_passed += passed;
            }
            Err(e) => {
                total_failed += 1;
                problems.push(e);
            }
        }
    }
    // Every test that had to run and did not pass counts as failed,
    // whether it failed or never ran (a crashed binary).
    let must_run: usize = expected.values().sum();
    let not_passed = must_run.saturating_sub(total_passed).max(total_failed);
    println!("vm-test: {total_passed} passed, {not_passed} failed");
    if partial {
        println!("vm-test: PARTIAL run ({ONLY_ENV}={tests:?}): no demo, no Python tests");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `mediamem probe` printed in the guest (abridged).
    const GOOD: &str = "\
allocator                     ok   caps                    copies to
----------------------------  ---  ----------------------  ------------
udmabuf                       yes  alloc,fd,dmabuf         udmabuf
    /dev/udmabuf; 1 MiB alloc and map checked
dmaheap:system                yes  alloc,fd,dmabuf         dmaheap
    /dev/dma_heap/system; 1 MiB alloc and map checked
DRMDumbMemory /dev/dri/card0  yes  -                       SystemMemory
    driver bochs-drm; dumb yes; PRIME export yes; XR24 64x64 pitch 256
DRMDumbMemory /dev/dri/card1  no   -                       -
    driver vgem; dumb no; PRIME export yes: dumb buffers on /dev/dri/card1

explicit sync (sync_file export / import) per dma-buf kind:
  udmabuf                          export yes import yes
  dmaheap:system                   export yes import yes
  DRM dumb /dev/dri/card0 (PRIME)  export yes import yes
";

    #[test]
    fn probe_check_accepts_a_good_guest() {
        assert!(
            probe_problems(GOOD).is_empty(),
            "{:?}",
            probe_problems(GOOD)
        );
    }

    #[test]
    fn probe_check_catches_explicit_sync_missing() {
        let old_kernel = GOOD.replace(
            "  udmabuf                          export yes import yes",
            "  udmabuf                          export no  import no",
        );
        assert_eq!(probe_problems(&old_kernel).len(), 1);
        assert!(probe_problems(&old_kernel)[0].contains("sync_file"));
    }

    #[test]
    fn probe_check_catches_missing_devices() {
        let no_udmabuf = GOOD.replace(
            "udmabuf                       yes",
            "udmabuf                       no ",
        );
        assert_eq!(probe_problems(&no_udmabuf).len(), 1);
        let vgem_only = GOOD.replace(
            "card0  yes  -                       SystemMemory",
            "card0  no   -                       -",
        );
        assert_eq!(probe_problems(&vgem_only).len(), 1);
        // bochs must be named in the card's own detail, not another's.
        let no_bochs = GOOD.replace("driver bochs-drm", "driver other");
        assert_eq!(probe_problems(&no_bochs).len(), 1);
        // Three devices and explicit sync on two kinds.
        assert_eq!(probe_problems("").len(), 5);
    }

    #[test]
    fn the_camera_is_the_single_planar_vivid_node_of_the_probe() {
        let dir = std::env::temp_dir().join(format!("xtask-camera-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |probe: &str| {
            std::fs::write(dir.join("probe.log"), probe).unwrap();
            let _ = std::fs::remove_file(dir.join("camera"));
            let status = Command::new("sh")
                .arg("-c")
                .arg(camera_lines(&shell_quote(&dir)))
                .status()
                .unwrap();
            assert!(status.success());
            std::fs::read_to_string(dir.join("camera")).unwrap()
        };
        // The multi-planar instance registered first, another driver's
        // node before both: the single-planar vivid node is picked.
        let probe = format!(
            "{GOOD}\nV4L2 capture devices:\n\
             \x20 /dev/video0 uvcvideo \"Some Camera: single-planar\" single-planar\n\
             \x20     formats: YUYV MJPG\n\
             \x20 /dev/video2 vivid \"vivid\" multi-planar\n\
             \x20     formats: NV12 YUYV NM12\n\
             \x20 /dev/video7 vivid \"vivid\" single-planar\n\
             \x20     formats: NV12 YUYV\n"
        );
        assert_eq!(run(&probe), "/dev/video7\n");
        assert_eq!(run(GOOD), "\n", "none: empty, which the run reports");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn outcome_counts_from_libtest_lines() {
        let dir = std::env::temp_dir().join(format!("xtask-outcome-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("t.log"),
            "test a ... ok\ntest result: FAILED. 3 passed; 1 failed; 2 ignored; 0 measured\n",
        )
        .unwrap();
        std::fs::write(dir.join("t.rc"), "101\n").unwrap();
        let o = parse_outcome("t", 6, &dir);
        assert_eq!((o.passed, o.failed, o.rc), (3, 1, Some(101)));
        assert!(o.skipped.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn skips_are_found_and_are_not_passes() {
        let dir = std::env::temp_dir().join(format!("xtask-skips-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // As libtest writes it with stderr and stdout in one file: a skip
        // line on its own, and one behind another test's name.
        std::fs::write(
            dir.join("phys.log"),
            "running 3 tests\n\
             test a ... SKIPPED: huge_pages: needs root to reserve huge pages: /proc\n\
             ok\n\
             SKIPPED: nobody: needs root to start a child as nobody\n\
             test huge_pages ... ok\n\
             test nobody ... ok\n\
             test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured\n",
        )
        .unwrap();
        std::fs::write(dir.join("phys.rc"), "0\n").unwrap();
        let o = parse_outcome("phys", 3, &dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            o.skipped,
            [
                (
                    "huge_pages".to_owned(),
                    "needs root to reserve huge pages: /proc".to_owned()
                ),
                (
                    "nobody".to_owned(),
                    "needs root to start a child as nobody".to_owned()
                ),
            ]
        );
        assert_eq!((o.passed, o.ran_and_passed(), o.rc), (3, 1, Some(0)));
        assert!(skipped_tests("test x ... ok\nno skips here\n").is_empty());
    }
}
