//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a subset

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

/// An unlinked temporary file holding `content` (GStreamer's mkstemp +
/// unlink), opened read-write.
pub fn temp_file(content: &[u8]) -> File {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "mediamem-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f.write_all(content).unwrap();
    f
}

/// Number of open fds of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Number of mappings of this process.
pub fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// Run `cycle` `n` times and check that fds and mappings did not grow by
/// more than a margin that parallel tests may account for (a leak of one
/// per cycle blows through it).
pub fn assert_no_leaks(n: usize, mut cycle: impl FnMut(usize)) {
    let (fds0, maps0) = (open_fds(), mappings());
    for i in 0..n {
        cycle(i);
    }
    let (fds1, maps1) = (open_fds(), mappings());
    assert!(fds1 <= fds0 + 32, "fds leaked: {fds0} -> {fds1}");
    assert!(maps1 <= maps0 + 64, "mappings leaked: {maps0} -> {maps1}");
}
