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

/// Records the text of every log record at WARN or above, process-wide.
struct WarnRecorder(std::sync::Mutex<Vec<String>>);

impl log::Log for WarnRecorder {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        if r.level() <= log::Level::Warn {
            self.0
                .lock()
                .unwrap()
                .push(format!("{}: {}", r.level(), r.args()));
        }
    }
    fn flush(&self) {}
}

static RECORDER: WarnRecorder = WarnRecorder(std::sync::Mutex::new(Vec::new()));

/// Start recording warnings (idempotent) and return all recorded so far.
pub fn warnings() -> Vec<String> {
    let _ = log::set_logger(&RECORDER);
    log::set_max_level(log::LevelFilter::Trace);
    RECORDER.0.lock().unwrap().clone()
}

/// The recorded warnings that mention fd `n` (the fd memory backend says
/// "on fd N" in its sync warnings).
pub fn warnings_about_fd(n: i32) -> Vec<String> {
    let tag = format!("on fd {n} ");
    warnings()
        .into_iter()
        .filter(|w| w.contains(&tag))
        .collect()
}
