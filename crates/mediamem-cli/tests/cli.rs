//! Run the built `mediamem` binary as a user would.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mediamem::ipc::Sender;
use mediamem::ShmAllocator;

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

/// Run mediamem with `stdout`, killed after a minute (a hang is a failure,
/// not a stuck test): (exit code, stdout, stderr).
fn run(args: &[&str], stdout: Stdio) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mediamem"))
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mediamem");
    wait(&mut child, args)
}

fn wait(child: &mut Child, what: &[&str]) -> (Option<i32>, String, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mediamem {what:?} did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = std::mem::replace(child, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A clean failure: exit status 1 (not a panic's 101, not a signal), a
/// message on stderr.
fn assert_clean_failure(r: &(Option<i32>, String, String), says: &str) {
    let (code, _, err) = r;
    assert_eq!(*code, Some(1), "exit status; stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.starts_with("mediamem: "), "{err}");
    assert!(err.contains(says), "expected {says:?} in {err}");
}

fn dev_full() -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full"),
    )
}

#[test]
fn a_full_stdout_is_an_error_not_a_panic() {
    // `println!` panicked on ENOSPC.
    for args in [&["probe"][..], &["probe", "--json"]] {
        let r = run(args, dev_full());
        assert_clean_failure(&r, "No space left on device");
    }
    let (code, _, err) = run(&["--help"], dev_full());
    assert_ne!(code, Some(0), "help not written: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let r = run(
        &["demo", "--frames", "2", "--width", "16", "--height", "16"],
        dev_full(),
    );
    assert_clean_failure(&r, "cannot write the output");
}

#[test]
fn absurd_demo_settings_are_clear_errors() {
    // The NV12 size wrapped (in release builds; a panic in debug ones),
    // a huge pool aborted in Vec::with_capacity, huge frame counts ran on.
    let r = run(
        &["demo", "--width", "4294967295", "--height", "4294967295"],
        Stdio::piped(),
    );
    assert_clean_failure(&r, "NV12 frame");
    let r = run(
        &["demo", "--width", "65536", "--height", "65536"],
        Stdio::piped(),
    );
    assert_clean_failure(&r, "NV12 frame");
    for pool in ["1099511627776", "18446744073709551615"] {
        let r = run(&["demo", "--pool", pool], Stdio::piped());
        assert_clean_failure(&r, "--pool");
    }
    let r = run(
        &["demo", "--frames", "18446744073709551615"],
        Stdio::piped(),
    );
    assert_clean_failure(&r, "--frames");
}

#[test]
fn demo_consumer_refuses_bad_fds() {
    // `--fd=-1` panicked in OwnedFd::from_raw_fd.
    let r = run(
        &["demo-consumer", "--fd=-1", "--mode", "zero-copy"],
        Stdio::piped(),
    );
    assert_clean_failure(&r, "--fd -1");
    // Not open, a standard stream, not a socket.
    let r = run(
        &["demo-consumer", "--fd", "987654", "--mode", "zero-copy"],
        Stdio::piped(),
    );
    assert_clean_failure(&r, "not an open file descriptor");
    let r = run(
        &["demo-consumer", "--fd", "1", "--mode", "copy"],
        Stdio::piped(),
    );
    assert_clean_failure(&r, "standard stream");
}

/// Start a consumer on an inherited socket; the other end.
fn consumer() -> (Child, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty()).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_mediamem"))
        .args([
            "demo-consumer",
            "--fd",
            &theirs.as_raw_fd().to_string(),
            "--mode",
            "zero-copy",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mediamem");
    drop(theirs);
    (child, ours)
}

#[test]
fn demo_consumer_validates_every_frame() {
    // A frame without memories: `memories[0]` panicked.
    let (mut child, ours) = consumer();
    let mut tx = Sender::new(ours);
    tx.send_frame(Vec::<mediamem::Memory>::new(), &[0u8; 24])
        .unwrap();
    let r = wait(&mut child, &["demo-consumer"]);
    assert_clean_failure(&r, "0 memories, expected 1");

    // Metadata too short: `meta[..8]` panicked.
    let (mut child, ours) = consumer();
    let mut tx = Sender::new(ours);
    let mem = ShmAllocator::get().alloc(64, None).unwrap();
    tx.send_frame(vec![mem], b"abc").unwrap();
    let r = wait(&mut child, &["demo-consumer"]);
    assert_clean_failure(&r, "3 bytes of metadata, expected 24");
}
