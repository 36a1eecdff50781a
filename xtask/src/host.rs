//! What every xtask command needs from the host: running a command,
//! finding a program, and Debian packages from apt (the one way xtask
//! installs what it needs).

use std::process::Command;

/// Run `cmd` to completion; an error names `what` and the exit status.
pub fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// Whether `program` is on the PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether Debian package `pkg` is installed.
pub fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// `apt-get update` then `apt-get install` of `packages` (non-interactive,
/// with their recommends, as QEMU needs), saying on stderr who asked
/// (`who: installing ...`). Nothing happens when `packages` is empty.
pub fn install(who: &str, packages: &[&str]) -> Result<(), String> {
    if packages.is_empty() {
        return Ok(());
    }
    eprintln!("{who}: installing {} with apt", packages.join(" "));
    run(
        Command::new("apt-get").args(["-q", "update"]),
        "apt-get update",
    )?;
    run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-q", "-y", "install"])
            .args(packages),
        &format!("apt-get install {}", packages.join(" ")),
    )
}

/// [`install`] of the `packages` that are not installed yet.
pub fn install_missing(who: &str, packages: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    install(who, &missing)
}
