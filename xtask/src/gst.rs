//! Real GStreamer for the unixfd tests: Debian trixie's GStreamer 1.26
//! (`unixfdsink` and `unixfdsrc` are in its `-plugins-bad`; the host's 1.22
//! has neither) in a root filesystem under `target/gst-trixie`, built once
//! with `debootstrap` and reused.
//!
//! * [`rootfs`] provisions it: `debootstrap` from apt when missing, then
//!   `debootstrap --variant=minbase` of trixie from the mirror this machine's
//!   apt already uses (the same choice as `vm-test`'s private apt
//!   configuration; the system's apt setup is untouched), with
//!   `gstreamer1.0-tools`, `-plugins-base`, `-plugins-good` and
//!   `-plugins-bad` (debootstrap's resolver leaves part of them
//!   unconfigured; `apt-get -f install` in the new system completes them,
//!   without recommendations). It is built in `target/gst-trixie.partial` and renamed
//!   when `gst-inspect-1.0 unixfdsink unixfdsrc` succeeds in it, so an
//!   interrupted run starts over instead of reusing half a tree. The
//!   downloaded packages are deleted afterwards (about 100 MB).
//! * [`launch`] runs `gst-launch-1.0` in it: `unshare --mount --fork`
//!   gives the command a mount namespace of its own, where `/proc` is
//!   mounted for it, so nothing stays mounted when it exits, whatever way
//!   it exits. Sockets are shared through the file system: a socket at
//!   `<rootfs>/tmp/x/sock` on the host is `/tmp/x/sock` in the chroot.
//!
//! `cargo xtask test` sets `MEDIAMEM_GST_ROOTFS` to the root filesystem for
//! the test run; `crates/mediamem/tests/unixfd.rs` reads it (and prints a
//! `SKIPPED:` line for each GStreamer test without it).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::{have, run};

type Res<T> = Result<T, String>;

/// The packages installed into the root filesystem (with their
/// dependencies, not their recommendations).
pub const PACKAGES: &[&str] = &[
    "gstreamer1.0-tools",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-bad",
    // GStreamer's own metas on buffers (a custom meta, a 1 MB meta) need a
    // program that registers and adds them: a short Python script in the
    // unixfd tests.
    "python3-gi",
    "gir1.2-gstreamer-1.0",
    "gir1.2-gst-plugins-base-1.0",
];

/// The environment variable through which tests find the root filesystem.
pub const ENV: &str = "MEDIAMEM_GST_ROOTFS";

/// Written last into a complete root filesystem: the package list it has.
const READY: &str = ".mediamem-gst-ready";

/// Mount points at or below `dir`, deepest first (from /proc/self/mounts;
/// octal escapes in paths are left as they are, which only makes such a
/// mount point not match).
fn mounts_below(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let text = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut found: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| *m == dir || m.starts_with(&format!("{dir}/")))
        .map(str::to_owned)
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.len()));
    found
}

/// Unmount whatever an interrupted debootstrap left mounted below `dir`.
fn unmount_below(dir: &Path) {
    for m in mounts_below(dir) {
        eprintln!("gst: unmounting {m} left by an earlier run");
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
}

/// The root filesystem, provisioned when missing (see the module docs).
pub fn rootfs() -> Res<PathBuf> {
    let target = crate::root().join("target");
    let root = target.join("gst-trixie");
    let wanted = format!("{}\n", PACKAGES.join("\n"));
    if let Ok(have) = fs::read_to_string(root.join(READY)) {
        if have == wanted {
            return Ok(root);
        }
        // Built for an older package list: add what is missing.
        eprintln!(
            "gst: installing {} in {}",
            PACKAGES.join(" "),
            root.display()
        );
        let mut args = vec![
            "DEBIAN_FRONTEND=noninteractive",
            "apt-get",
            "-q",
            "-y",
            "install",
            "--no-install-recommends",
        ];
        args.extend_from_slice(PACKAGES);
        run(
            &mut chroot(&root, "env", &args),
            "apt-get install in the root filesystem",
        )?;
        fs::write(root.join(READY), &wanted).map_err(|e| e.to_string())?;
        return Ok(root);
    }
    if !have("debootstrap") {
        crate::host::install("gst", &["debootstrap"])?;
    }
    let partial = target.join("gst-trixie.partial");
    for dir in [&partial, &root] {
        unmount_below(dir);
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(|e| format!("rm -r {}: {e}", dir.display()))?;
        }
    }
    fs::create_dir_all(&target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
    let mirror = crate::vm::debian_mirror()?;
    eprintln!(
        "gst: debootstrap of Debian trixie with {} from {mirror} into {} (a few minutes, once)",
        PACKAGES.join(" "),
        partial.display()
    );
    let result = run(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg("trixie")
            .arg(&partial)
            .arg(&mirror),
        "debootstrap",
    );
    // debootstrap mounts /proc and /sys in the target while it works.
    unmount_below(&partial);
    // Its dependency resolver does not follow alternatives and virtual
    // packages (trixie's plugins-bad then fails to configure), so it
    // "fails" with everything downloaded; apt in the new system finishes.
    if let Err(e) = result {
        eprintln!("gst: {e}; apt-get -f install in the root filesystem completes it");
    }
    run(
        &mut chroot(
            &partial,
            "env",
            &[
                "DEBIAN_FRONTEND=noninteractive",
                "apt-get",
                "-q",
                "-y",
                "-f",
                "install",
                "--no-install-recommends",
            ],
        ),
        "apt-get -f install in the root filesystem",
    )?;
    // Build GStreamer's plugin registry once (it is cached under /root)
    // and check that the elements are there.
    run(
        &mut chroot(&partial, "gst-inspect-1.0", &["unixfdsink", "unixfdsrc"]),
        "gst-inspect-1.0 unixfdsink unixfdsrc in the root filesystem",
    )?;
    let archives = partial.join("var/cache/apt/archives");
    if let Ok(entries) = fs::read_dir(&archives) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "deb") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    fs::write(partial.join(READY), &wanted).map_err(|e| e.to_string())?;
    fs::rename(&partial, &root).map_err(|e| format!("rename the root filesystem: {e}"))?;
    eprintln!("gst: root filesystem ready in {}", root.display());
    Ok(root)
}

/// `program args...` in the root filesystem `root`, in a mount namespace of
/// its own with `/proc` mounted, a clean environment, `HOME=/root`.
pub fn chroot(root: &Path, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--fork", "sh", "-c"])
        .arg(
            "mount -t proc proc \"$0/proc\" && exec chroot \"$0\" /usr/bin/env -i HOME=/root \
             PATH=/usr/bin:/bin:/usr/sbin:/sbin \"$@\"",
        )
        .arg(root)
        .arg(program)
        .args(args);
    cmd
}

/// `gst-launch-1.0 -e <pipeline>` in the root filesystem.
pub fn launch(root: &Path, pipeline: &[&str]) -> Command {
    let mut args = vec!["-e"];
    args.extend_from_slice(pipeline);
    chroot(root, "gst-launch-1.0", &args)
}

/// The host's packages for the `gstreamer` feature (gstreamer-rs links
/// libgstreamer and libgstallocators; its test runs `appsrc ! videoconvert
/// ! appsink`).
const HOST_PACKAGES: &[&str] = &[
    "libgstreamer1.0-dev",
    "libgstreamer-plugins-base1.0-dev",
    "gstreamer1.0-plugins-base",
    "pkg-config",
];

/// Install [`HOST_PACKAGES`] with apt when some are missing.
pub fn host_packages() -> Res<()> {
    crate::host::install_missing("gst", HOST_PACKAGES)
}

/// `cargo xtask gst-launch <pipeline...>`: provision, print the line, run.
pub fn gst_launch(pipeline: &[String]) -> Res<()> {
    let root = rootfs()?;
    let args: Vec<&str> = pipeline.iter().map(String::as_str).collect();
    eprintln!(
        "gst: in {}: gst-launch-1.0 -e {}",
        root.display(),
        args.join(" ")
    );
    run(&mut launch(&root, &args), "gst-launch-1.0")
}
