//! Host packages from Debian's apt, the one way every xtask command
//! installs what it needs.

use std::process::Command;

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// `apt-get update` then `apt-get install` of `packages` (non-interactive,
/// with their recommends, as QEMU needs), saying on stderr who asked (`who: installing ...`).
/// Nothing happens when `packages` is empty.
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
