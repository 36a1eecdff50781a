//! Run the built `mediamem` binary as a user would.

use std::process::Command;

fn mediamem(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mediamem"))
        .args(args)
        .output()
        .expect("run mediamem");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn probe_prints_a_table() {
    let (ok, out) = mediamem(&["probe"]);
    assert!(ok);
    assert!(
        out.lines()
            .any(|l| l.starts_with("SystemMemory") && l.contains("yes")),
        "{out}"
    );
}

#[test]
fn probe_json_is_valid() {
    let (ok, out) = mediamem(&["probe", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["mem_type"] == "SystemMemory"));
}

#[test]
fn unknown_subcommand_fails() {
    let (ok, _) = mediamem(&["no-such-command"]);
    assert!(!ok);
}
