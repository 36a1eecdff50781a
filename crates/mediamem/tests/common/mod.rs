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

/// Report that `test` skipped, as one line `SKIPPED: <test>: <reason>` on
/// the process's stderr, past libtest's output capture, so the skip shows in
/// `cargo test` output and in logs, and `cargo xtask vm-test` can fail on
/// it where the test must run. The caller then returns.
pub fn skip(test: &str, reason: &str) {
    use std::io::Write as _;
    let line = format!("SKIPPED: {test}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Records every log record at WARN or above, process-wide, with the
/// thread that logged it.
struct WarnRecorder(std::sync::Mutex<Vec<(std::thread::ThreadId, String)>>);

impl log::Log for WarnRecorder {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        if r.level() <= log::Level::Warn {
            let text = format!("{}: {}", r.level(), r.args());
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((std::thread::current().id(), text));
        }
    }
    fn flush(&self) {}
}

static RECORDER: WarnRecorder = WarnRecorder(std::sync::Mutex::new(Vec::new()));

/// Start recording warnings (idempotent) and return all recorded so far,
/// from every thread.
pub fn warnings() -> Vec<String> {
    recorded().into_iter().map(|(_, text)| text).collect()
}

fn recorded() -> Vec<(std::thread::ThreadId, String)> {
    let _ = log::set_logger(&RECORDER);
    log::set_max_level(log::LevelFilter::Trace);
    RECORDER.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The warnings logged by the calling thread. libtest runs each test on a
/// thread of its own and thread ids are never reused, so these are the
/// calling test's (the library logs on the thread that maps), whatever
/// other tests log at the same time.
pub fn my_warnings() -> Vec<String> {
    let me = std::thread::current().id();
    recorded()
        .into_iter()
        .filter(|(thread, _)| *thread == me)
        .map(|(_, text)| text)
        .collect()
}

/// The calling thread's warnings that mention fd `n` (the fd memory
/// backend says "on fd N" in its sync warnings). Another test's fd with the
/// same number cannot be mistaken for it: only this thread's count.
pub fn warnings_about_fd(n: i32) -> Vec<String> {
    let tag = format!("on fd {n} ");
    my_warnings()
        .into_iter()
        .filter(|w| w.contains(&tag))
        .collect()
}

/// Custom allocators for the registry tests.
mod vec_allocator {
    use std::ptr::NonNull;
    use std::sync::Mutex;

    use mediamem::{
        AllocationParams, Allocator, AllocatorFlags, AllocatorImpl, MapFlags, MemoryBackend,
        MemoryParts, Result,
    };

    /// A heap-backed test allocator with configurable flags and a plain alloc.
    #[derive(Debug)]
    struct VecAllocator {
        name: &'static str,
        flags: AllocatorFlags,
    }

    #[derive(Debug)]
    pub struct VecBlock(pub Mutex<Vec<u8>>, pub NonNull<u8>);
    // SAFETY: the Vec is never resized after construction; NonNull points into it.
    unsafe impl Send for VecBlock {}
    // SAFETY: see Send.
    unsafe impl Sync for VecBlock {}
    // SAFETY: the pointer covers the Vec's initialised bytes for the block's life.
    unsafe impl MemoryBackend for VecBlock {
        fn map(&self, maxsize: usize, _flags: MapFlags) -> Result<NonNull<u8>> {
            assert!(maxsize <= self.0.lock().unwrap().len());
            Ok(self.1)
        }
    }

    impl AllocatorImpl for VecAllocator {
        fn mem_type(&self) -> &str {
            self.name
        }
        fn flags(&self) -> AllocatorFlags {
            self.flags
        }
        fn alloc(&self, size: usize, _params: &AllocationParams) -> Result<MemoryParts> {
            let mut v = vec![0u8; size.max(1)];
            let p = NonNull::new(v.as_mut_ptr()).unwrap();
            Ok(MemoryParts::new(Box::new(VecBlock(Mutex::new(v), p)), size))
        }
    }

    pub fn vec_alloc(name: &'static str, flags: AllocatorFlags) -> Allocator {
        Allocator::new(VecAllocator { name, flags })
    }
}
#[allow(unused_imports)] // each test binary uses a subset
pub use vec_allocator::{vec_alloc, VecBlock};

/// A copy of the running test binary, mode 0755, in a new directory of
/// mode 0755 under /tmp; removed on drop.
pub struct ExeCopy {
    dir: std::path::PathBuf,
    exe: std::path::PathBuf,
}

impl ExeCopy {
    pub fn new(name: &str) -> ExeCopy {
        use std::os::unix::fs::PermissionsExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::path::PathBuf::from(format!(
            "/tmp/mediamem-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir(&dir).unwrap();
        let copy = ExeCopy {
            exe: dir.join(format!("{name}-test")),
            dir,
        };
        // Explicit modes: the umask may have taken bits away.
        let rx = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(&copy.dir, rx.clone()).unwrap();
        std::fs::copy(std::env::current_exe().unwrap(), &copy.exe).unwrap();
        std::fs::set_permissions(&copy.exe, rx).unwrap();
        copy
    }

    pub fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.current_dir(&self.dir);
        cmd
    }

    /// Run the copy (set up by `configure`) to completion. An exec that
    /// fails with `ETXTBSY` is tried again: a child forked by another test
    /// thread while the copy was being written holds a write fd to it until
    /// its own exec closes it (a known race of copying an executable in a
    /// threaded process).
    pub fn output(&self, configure: impl Fn(&mut std::process::Command)) -> std::process::Output {
        for _ in 0..200 {
            let mut cmd = self.command();
            configure(&mut cmd);
            match cmd.output() {
                Err(e) if e.raw_os_error() == Some(26) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                other => return other.unwrap(),
            }
        }
        panic!("{}: still ETXTBSY after 2 s", self.exe.display())
    }
}

/// Run test `test` of this binary again as `nobody` (uid and gid 65534),
/// from a copy nobody can execute, with `child_env` set so the test knows
/// it is the child; the child must pass. Its output, for the caller to
/// look at.
pub fn run_test_as_nobody(copy_name: &str, test: &str, child_env: &str) -> String {
    use std::os::unix::process::CommandExt;
    let copy = ExeCopy::new(copy_name);
    let out = copy.output(|cmd| {
        cmd.args(["--exact", test, "--nocapture"])
            .env(child_env, "1")
            .uid(65534)
            .gid(65534);
    });
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("1 passed"), "the child ran the test:\n{text}");
    text
}

impl Drop for ExeCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A message header of mediamem's IPC wire format.
pub fn ipc_header(kind: u16, payload_len: u32, n_fds: u32) -> Vec<u8> {
    use mediamem::ipc::{MAGIC, VERSION};
    let mut h = Vec::new();
    h.extend_from_slice(&MAGIC.to_le_bytes());
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&kind.to_le_bytes());
    h.extend_from_slice(&payload_len.to_le_bytes());
    h.extend_from_slice(&n_fds.to_le_bytes());
    h
}

/// Send `bytes` with `fds` in one sendmsg.
pub fn send_raw(
    sock: &std::os::unix::net::UnixStream,
    bytes: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) {
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(fds)));
    }
    let n = rustix::net::sendmsg(
        sock,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        rustix::net::SendFlags::empty(),
    )
    .unwrap();
    assert_eq!(n, bytes.len());
}

/// A memfd of `len` bytes sealed against shrinking, as a peer's memory.
pub fn sealed_memfd_named(name: &str, len: usize) -> std::os::fd::OwnedFd {
    let fd = rustix::fs::memfd_create(
        name,
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    rustix::fs::ftruncate(&fd, len as u64).unwrap();
    rustix::fs::fcntl_add_seals(&fd, rustix::fs::SealFlags::SHRINK).unwrap();
    fd
}
