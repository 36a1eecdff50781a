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

#[test]
fn demo_streams_and_verifies_frames() {
    let (ok, out) = mediamem(&[
        "demo", "--frames", "40", "--width", "64", "--height", "48", "--quiet",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("40 frames of 64x48 NV12"), "{out}");
    assert!(out.contains("zero-copy (fd passing):  40 frames"), "{out}");
    assert!(out.contains("copy through the socket: 40 frames"), "{out}");
    assert!(out.contains("every checksum verified"), "{out}");
    assert!(out.contains("zero-copy speed-up:"), "{out}");
}

#[test]
fn demo_refuses_nonsense_and_missing_devices() {
    let (ok, _) = mediamem(&["demo", "--frames", "0"]);
    assert!(!ok);
    if !std::path::Path::new("/dev/udmabuf").exists() {
        let (ok, _) = mediamem(&["demo", "--allocator", "udmabuf", "--frames", "2"]);
        assert!(!ok, "no udmabuf here: a clear failure");
    }
}
