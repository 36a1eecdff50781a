//! `mediamem demo`: stream video frames from a producer process to a
//! consumer process, zero-copy (fds of pool memory, released back), then
//! the same frames copied through the socket, and compare.
//!
//! The producer (this process) fills every frame with a pattern that
//! depends on the frame number and computes a checksum while filling. The
//! consumer (a child process, `mediamem demo-consumer`) recomputes the
//! checksum of every frame it gets and exits non-zero at the first
//! mismatch. Time runs from the first frame to the consumer's exit.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mediamem::drm::{fourcc, DrmDumbAllocator};
use mediamem::heap::DmaHeapAllocator;
use mediamem::ipc::{ReceivePolicy, Receiver, Sender};
use mediamem::pool::MemoryPool;
use mediamem::{drm_dumb_memory_export_dmabuf, Error, ShmAllocator, UdmabufAllocator};

/// Where the frames come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// Sealed memfd shared memory.
    Shm,
    /// udmabuf dma-bufs (/dev/udmabuf).
    Udmabuf,
    /// The system dma-heap (/dev/dma_heap/system).
    Heap,
    /// DRM dumb buffers (first card with dumb buffers), exported as dma-bufs.
    Drm,
}

/// Settings of one run.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Frame width in pixels.
    #[arg(long, default_value_t = 1920)]
    pub width: u32,
    /// Frame height in pixels.
    #[arg(long, default_value_t = 1080)]
    pub height: u32,
    /// Number of frames.
    #[arg(long, default_value_t = 600)]
    pub frames: u64,
    /// Where frame memory comes from.
    #[arg(long, value_enum, default_value_t = Source::Shm)]
    pub allocator: Source,
    /// Frames in the pool (in flight at most).
    #[arg(long, default_value_t = 4)]
    pub pool: usize,
    /// Skip the copy run.
    #[arg(long)]
    pub zero_copy_only: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The largest frame the demo sends (the copy-mode consumer refuses
/// larger ones).
pub const MAX_FRAME_BYTES: usize = 1 << 30;

/// The most frames in the pool.
pub const MAX_POOL: usize = 256;

/// The most frames in one run.
pub const MAX_FRAMES: u64 = u32::MAX as u64;

/// NV12: a full-resolution Y plane and a half-height interleaved UV plane.
/// `None` when the size does not fit in `usize`.
pub fn nv12_size(width: u32, height: u32) -> Option<usize> {
    let (w, h) = (usize::try_from(width).ok()?, usize::try_from(height).ok()?);
    let y = w.checked_mul(h)?;
    let uv = w.div_ceil(2).checked_mul(2)?.checked_mul(h.div_ceil(2))?;
    y.checked_add(uv)
}

/// Check the settings of a run and return the frame size.
pub fn check_args(args: &DemoArgs) -> Result<usize, String> {
    if args.width == 0 || args.height == 0 || args.frames == 0 || args.pool == 0 {
        return Err("width, height, frames and pool must be positive".into());
    }
    if args.frames > MAX_FRAMES {
        return Err(format!(
            "--frames {} is more than the {MAX_FRAMES} frames a run may have",
            args.frames
        ));
    }
    if args.pool > MAX_POOL {
        return Err(format!(
            "--pool {} is more than the {MAX_POOL} frames a pool may have",
            args.pool
        ));
    }
    match nv12_size(args.width, args.height) {
        Some(size) if size <= MAX_FRAME_BYTES => Ok(size),
        size => Err(format!(
            "a {}x{} NV12 frame is {} bytes, more than the {MAX_FRAME_BYTES} the demo allows",
            args.width,
            args.height,
            size.map_or_else(|| "more than 2^64".into(), |s| s.to_string())
        )),
    }
}

/// Fill `buf` with frame `n`'s pattern and return its checksum.
pub fn fill(buf: &mut [u8], n: u64) -> u64 {
    let mut sum = 0u64;
    let mut words = buf.chunks_exact_mut(8);
    for (i, w) in (&mut words).enumerate() {
        let v = (n << 40) ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        w.copy_from_slice(&v.to_le_bytes());
        sum = sum.rotate_left(5) ^ v;
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b = (n as u8).wrapping_add(i as u8);
    }
    checksum_tail(sum, buf)
}

/// The checksum of a frame.
pub fn checksum(buf: &[u8]) -> u64 {
    let mut sum = 0u64;
    let words = buf.chunks_exact(8);
    for w in words {
        sum = sum.rotate_left(5) ^ u64::from_le_bytes(w.try_into().expect("8 bytes"));
    }
    checksum_tail(sum, buf)
}

fn checksum_tail(mut sum: u64, buf: &[u8]) -> u64 {
    for &b in &buf[buf.len() / 8 * 8..] {
        sum = sum.rotate_left(5) ^ u64::from(b);
    }
    sum ^ buf.len() as u64
}

fn pool_for(args: &DemoArgs, size: usize) -> mediamem::Result<MemoryPool> {
    match args.allocator {
        Source::Shm => MemoryPool::new(ShmAllocator::get(), size, None, args.pool, args.pool),
        Source::Udmabuf => {
            MemoryPool::new(UdmabufAllocator::get()?, size, None, args.pool, args.pool)
        }
        Source::Heap => MemoryPool::new(
            DmaHeapAllocator::get("system")?,
            size,
            None,
            args.pool,
            args.pool,
        ),
        Source::Drm => {
            let card = mediamem::drm::list_devices()
                .into_iter()
                .find(|d| d.dumb)
                .map(|d| d.path)
                .ok_or_else(|| Error::NotAvailable {
                    what: "DRM dumb buffers".into(),
                    reason: "no DRM card with dumb buffers".into(),
                })?;
            let dumb = DrmDumbAllocator::new_with_device_path(card)?;
            let (w, h) = (args.width, args.height);
            MemoryPool::from_fn(args.pool, args.pool, move || {
                let (m, _pitch) = dumb.alloc(fourcc(*b"NV12"), w, h)?;
                let exported = drm_dumb_memory_export_dmabuf(&m)?;
                exported.resize(..size)?;
                Ok(exported)
            })
        }
    }
}

/// A progress bar on stderr.
struct Progress {
    total: u64,
    shown: u64,
    quiet: bool,
    label: &'static str,
}

impl Progress {
    /// Drawn only on a terminal, unless `--quiet`.
    fn new(args: &DemoArgs, label: &'static str) -> Self {
        Progress {
            total: args.frames,
            shown: 0,
            quiet: args.quiet || !std::io::stderr().is_terminal(),
            label,
        }
    }

    fn update(&mut self, done: u64, bytes: usize, started: Instant) {
        if self.quiet || (done != self.total && done < self.shown + self.total / 50 + 1) {
            return;
        }
        self.shown = done;
        let width = 30u64;
        let filled = (u128::from(done.min(self.total)) * u128::from(width)
            / u128::from(self.total.max(1))) as usize;
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let mut err = std::io::stderr().lock();
        let drawn = write!(
            err,
            "\r{:<10} [{}{}] {done}/{} frames  {:.2} GB/s ",
            self.label,
            "#".repeat(filled),
            " ".repeat(width as usize - filled),
            self.total,
            done as f64 * bytes as f64 / secs / 1e9
        )
        .and_then(|()| {
            if done == self.total {
                writeln!(err)
            } else {
                Ok(())
            }
        })
        .and_then(|()| err.flush());
        if drawn.is_err() {
            // Nowhere to draw it: stop drawing, the run goes on.
            self.quiet = true;
        }
    }
}

/// Start the consumer on one end of a socket pair.
fn spawn_consumer(mode: &str, theirs: &UnixStream) -> std::io::Result<std::process::Child> {
    rustix::io::fcntl_setfd(theirs, rustix::io::FdFlags::empty())?;
    Command::new(std::env::current_exe()?)
        .args([
            "demo-consumer",
            "--fd",
            &theirs.as_raw_fd().to_string(),
            "--mode",
            mode,
        ])
        .stdout(Stdio::piped())
        .spawn()
}

/// What one run measured.
struct RunResult {
    frames: u64,
    elapsed: Duration,
}

fn finish(child: std::process::Child, frames: u64, started: Instant) -> Result<RunResult, String> {
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("the consumer failed: {text}"));
    }
    let verified: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if verified != frames {
        return Err(format!(
            "the consumer verified {verified} of {frames} frames"
        ));
    }
    Ok(RunResult { frames, elapsed })
}

fn run_zero_copy(args: &DemoArgs, size: usize) -> Result<RunResult, String> {
    let pool = pool_for(args, size).map_err(|e| format!("{:?} allocator: {e}", args.allocator))?;
    let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let child = spawn_consumer("zero-copy", &theirs).map_err(|e| e.to_string())?;
    drop(theirs);
    let started = Instant::now();
    let produced = (|| -> mediamem::Result<()> {
        let mut tx = Sender::new(ours);
        let mut progress = Progress::new(args, "zero-copy");
        for n in 0..args.frames {
            let mut frame = loop {
                match pool.acquire() {
                    Ok(f) => break f,
                    Err(Error::PoolExhausted { .. }) => {
                        if tx.wait_release()?.is_none() {
                            return Err(Error::Protocol("the consumer went away".into()));
                        }
                    }
                    Err(e) => return Err(e),
                }
            };
            let sum = fill(&mut frame.map_mut()?, n);
            let mut meta = [0u8; 16];
            meta[..8].copy_from_slice(&n.to_le_bytes());
            meta[8..].copy_from_slice(&sum.to_le_bytes());
            tx.send_frame(vec![frame], &meta)?;
            tx.poll_releases()?;
            progress.update(n + 1, size, started);
        }
        tx.send_eos()?;
        while tx.in_flight() > 0 && tx.wait_release()?.is_some() {}
        Ok(())
    })();
    let result = finish(child, args.frames, started);
    produced.map_err(|e| e.to_string())?;
    result
}

fn run_copy(args: &DemoArgs, size: usize) -> Result<RunResult, String> {
    let (mut ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let child = spawn_consumer("copy", &theirs).map_err(|e| e.to_string())?;
    drop(theirs);
    let mut buf = vec![0u8; size];
    let started = Instant::now();
    let produced = (|| -> std::io::Result<()> {
        let mut progress = Progress::new(args, "copy");
        for n in 0..args.frames {
            let sum = fill(&mut buf, n);
            let mut head = [0u8; 24];
            head[..8].copy_from_slice(&n.to_le_bytes());
            head[8..16].copy_from_slice(&sum.to_le_bytes());
            head[16..].copy_from_slice(&(size as u64).to_le_bytes());
            ours.write_all(&head)?;
            ours.write_all(&buf)?;
            progress.update(n + 1, size, started);
        }
        ours.shutdown(std::net::Shutdown::Write)
    })();
    let result = finish(child, args.frames, started);
    produced.map_err(|e| e.to_string())?;
    result
}

fn rate(r: &RunResult, size: usize) -> (f64, f64) {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    (
        r.frames as f64 / secs,
        r.frames as f64 * size as f64 / secs / 1e9,
    )
}

/// A write to the output failed.
fn output_error(e: std::io::Error) -> String {
    format!("cannot write the output: {e}")
}

/// The main job; the report goes to `out`.
pub fn demo(args: &DemoArgs, out: &mut dyn Write) -> Result<(), String> {
    let size = check_args(args)?;
    writeln!(
        out,
        "mediamem demo: {} frames of {}x{} NV12 ({:.1} MB each), {:?} memory, pool of {}",
        args.frames,
        args.width,
        args.height,
        size as f64 / 1e6,
        args.allocator,
        args.pool
    )
    .and_then(|()| out.flush())
    .map_err(output_error)?;
    let zc = run_zero_copy(args, size)?;
    let (fps, gbs) = rate(&zc, size);
    writeln!(
        out,
        "zero-copy (fd passing):  {} frames in {:.2} s: {fps:.0} frames/s, {gbs:.2} GB/s, every checksum verified",
        zc.frames,
        zc.elapsed.as_secs_f64()
    )
    .and_then(|()| out.flush())
    .map_err(output_error)?;
    if !args.zero_copy_only {
        let cp = run_copy(args, size)?;
        let (cfps, cgbs) = rate(&cp, size);
        writeln!(
            out,
            "copy through the socket: {} frames in {:.2} s: {cfps:.0} frames/s, {cgbs:.2} GB/s, every checksum verified",
            cp.frames,
            cp.elapsed.as_secs_f64()
        )
        .and_then(|()| writeln!(out, "zero-copy speed-up: {:.2}x", fps / cfps))
        .and_then(|()| out.flush())
        .map_err(output_error)?;
    }
    Ok(())
}

/// Take the consumer's socket: `fd` must be an open Unix stream socket
/// other than the standard streams, inherited from the producer.
fn inherited_socket(fd: i32) -> Result<UnixStream, String> {
    if fd < 0 {
        return Err(format!("--fd {fd}: not a file descriptor"));
    }
    if fd <= 2 {
        return Err(format!(
            "--fd {fd}: a standard stream, not the producer's socket"
        ));
    }
    // Look before taking ownership: an fd number that is not open, or
    // open as something else, must not be adopted (nor closed later).
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_err(|e| format!("--fd {fd}: not an open file descriptor ({e})"))?;
    if !target.to_string_lossy().starts_with("socket:") {
        return Err(format!("--fd {fd}: {} is not a socket", target.display()));
    }
    // SAFETY: `fd` is open (checked above) and was passed to this process
    // by the producer for it to own; nothing else in this process uses it.
    let sock = unsafe { UnixStream::from_raw_fd(fd) };
    let domain = rustix::net::sockopt::socket_domain(&sock);
    let kind = rustix::net::sockopt::socket_type(&sock);
    if domain != Ok(rustix::net::AddressFamily::UNIX) || kind != Ok(rustix::net::SocketType::STREAM)
    {
        return Err(format!("--fd {fd}: not a Unix stream socket"));
    }
    Ok(sock)
}

/// The frame number and checksum in a frame's metadata.
fn frame_meta(meta: &[u8], expected: u64) -> Result<(u64, u64), String> {
    let field = |at: usize| {
        meta.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    match (field(0), field(8)) {
        (Some(n), Some(sum)) if meta.len() == 16 => Ok((n, sum)),
        _ => Err(format!(
            "frame {expected}: {} bytes of metadata, expected 16",
            meta.len()
        )),
    }
}

/// The consumer side: verify every frame; print `verified N` to `out`.
pub fn consumer(fd: i32, mode: &str, out: &mut dyn Write) -> Result<(), String> {
    if mode != "zero-copy" && mode != "copy" {
        return Err(format!("unknown mode {mode}"));
    }
    let sock = inherited_socket(fd)?;
    let mut verified = 0u64;
    match mode {
        "zero-copy" => {
            let mut rx = Receiver::new(sock, ReceivePolicy::default());
            while let Some(frame) = rx.recv().map_err(|e| e.to_string())? {
                let (n, sum) = frame_meta(&frame.meta, verified)?;
                let [memory] = frame.memories.as_slice() else {
                    return Err(format!(
                        "frame {n}: {} memories, expected 1",
                        frame.memories.len()
                    ));
                };
                let map = memory.map_readable().map_err(|e| e.to_string())?;
                if n != verified || checksum(&map) != sum {
                    return Err(format!("frame {n}: checksum mismatch"));
                }
                verified += 1;
            }
            // Releases the socket could not take at once are queued: hand
            // them over before going (the producer waits for every one).
            // A producer that is already gone needs none.
            rx.set_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let _ = rx.flush();
        }
        "copy" => {
            let mut sock = sock;
            let mut buf = Vec::new();
            let mut head = [0u8; 24];
            loop {
                match sock.read_exact(&mut head) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e.to_string()),
                }
                let n = u64::from_le_bytes(head[..8].try_into().expect("8"));
                let sum = u64::from_le_bytes(head[8..16].try_into().expect("8"));
                let len = u64::from_le_bytes(head[16..].try_into().expect("8")) as usize;
                if len > 1 << 30 {
                    return Err(format!("frame of {len} bytes"));
                }
                buf.resize(len, 0);
                sock.read_exact(&mut buf).map_err(|e| e.to_string())?;
                if n != verified || checksum(&buf) != sum {
                    return Err(format!("frame {n}: checksum mismatch"));
                }
                verified += 1;
            }
        }
        other => return Err(format!("unknown mode {other}")),
    }
    writeln!(out, "verified {verified}")
        .and_then(|()| out.flush())
        .map_err(output_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_and_checksum_agree() {
        for len in [0usize, 1, 7, 8, 9, 4096, 3_110_400] {
            let mut buf = vec![0u8; len];
            let sum = fill(&mut buf, 42);
            assert_eq!(checksum(&buf), sum, "len {len}");
            if len > 16 {
                buf[len / 2] ^= 1;
                assert_ne!(checksum(&buf), sum, "a flipped bit changes the sum");
            }
        }
        let (mut a, mut b) = (vec![0u8; 64], vec![0u8; 64]);
        assert_ne!(fill(&mut a, 1), fill(&mut b, 2), "frames differ");
    }

    #[test]
    fn nv12_sizes() {
        assert_eq!(nv12_size(1920, 1080), Some(3_110_400));
        assert_eq!(nv12_size(3, 3), Some(9 + 4 * 2));
        // Wrapped silently in release builds.
        assert_eq!(nv12_size(u32::MAX, u32::MAX), None);
    }

    #[test]
    fn frame_metadata_is_checked() {
        let mut meta = [0u8; 16];
        meta[..8].copy_from_slice(&7u64.to_le_bytes());
        meta[8..].copy_from_slice(&9u64.to_le_bytes());
        assert_eq!(frame_meta(&meta, 7), Ok((7, 9)));
        for len in [0, 3, 8, 15, 17] {
            assert!(frame_meta(&vec![0; len], 0).is_err(), "{len}");
        }
    }
}
