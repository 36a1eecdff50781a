//! `mediamem demo`: stream video frames from a producer process to a
//! consumer process three ways and compare what the transport costs:
//! zero-copy with registered buffers (pool buffers sent once, then ids:
//! wire version 2), zero-copy with an fd sent and mapped afresh for every
//! frame (version 1's way), and the bytes copied through the socket.
//!
//! Every frame carries its NV12 layout, a timestamp and, in its metadata,
//! its number, checksum and the `CLOCK_MONOTONIC` time just before it was
//! sent. The consumer (a child process, `mediamem demo-consumer`) does
//! `--touch`'s work on each frame: nothing, one byte per 4 KiB page, or
//! the whole checksum (the default: the producer then fills every byte,
//! and the consumer exits non-zero at the first mismatch). Reported per
//! run: frames/s, transport latency (send to the frame in the consumer's
//! hands; p50 and p99; frames wait behind the consumer's work, so with
//! `checksum` it includes that queueing), CPU time per frame of each
//! process (`getrusage`), and frame bytes copied per frame. Time runs from
//! the first frame to the consumer's exit.
//!
//! `--source v4l2:/dev/videoN` streams a camera's frames instead: its
//! buffers exported as dma-bufs (`mediamem::v4l2`), sent zero-copy with
//! the frame's layout and timestamp, the checksum of each frame's bytes in
//! the metadata, recomputed by the consumer through its own mapping.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mediamem::drm::{fourcc, DrmDumbAllocator};
use mediamem::heap::DmaHeapAllocator;
use mediamem::ipc::{FrameInfo, ReceivePolicy, Receiver, Sender, Timestamps};
use mediamem::layout::FrameLayout;
use mediamem::pool::MemoryPool;
use mediamem::v4l2::{v4l2_fourcc, Device, Frame, Stream};
use mediamem::{drm_dumb_memory_export_dmabuf, Error, ShmAllocator, UdmabufAllocator, V4l2Problem};

/// Where the frames come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// The dma-buf provider chain (`mediamem::provider::DmaBufProvider`:
    /// CMA heap, system heap, udmabuf, DRM dumb, then sealed memfd; the
    /// order from `MEDIAMEM_DMABUF_PROVIDERS` when set): dma-buf memory
    /// wherever the machine has some.
    Auto,
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
    #[arg(long, value_enum, default_value_t = Source::Auto)]
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
    /// The consumer's work on each frame: nothing, one byte per 4 KiB
    /// page, or the whole checksum (every frame verified).
    #[arg(long, value_enum, default_value_t = Touch::Checksum)]
    pub touch: Touch,
    /// Stream camera frames instead: `v4l2:/dev/videoN` (a V4L2 capture
    /// device, its buffers exported as dma-bufs and sent zero-copy; NV12,
    /// else YUYV, at --width x --height or the nearest size the device
    /// offers). --allocator is then unused.
    #[arg(long)]
    pub source: Option<String>,
}

/// What the consumer does with each frame's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Touch {
    /// Nothing: the transport alone.
    None,
    /// Read one byte per 4 KiB page.
    Read,
    /// Verify the whole frame's checksum (the producer fills it all).
    Checksum,
}

impl Touch {
    fn name(self) -> &'static str {
        match self {
            Touch::None => "none",
            Touch::Read => "read",
            Touch::Checksum => "checksum",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Touch::None, Touch::Read, Touch::Checksum]
            .into_iter()
            .find(|t| t.name() == s)
    }
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
        Source::Auto => {
            let chain = auto_chain()?;
            MemoryPool::from_fn(args.pool, args.pool, move || chain.alloc(size, None))
        }
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

/// The demo's provider chain: dma-buf memory first, sealed memfd last.
fn auto_chain() -> mediamem::Result<mediamem::provider::DmaBufProvider> {
    Ok(mediamem::provider::DmaBufProvider::new()?.allow_non_dmabuf(true))
}

/// The memory a run uses, as the report names it: for `auto`, the
/// provider that serves now.
fn source_name(source: Source) -> String {
    match source {
        Source::Auto => match auto_chain().and_then(|c| c.alloc_report(4096, None)) {
            Ok(got) => format!("auto ({})", got.provider),
            Err(_) => "auto (no provider)".to_owned(),
        },
        other => format!("{other:?}"),
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
fn spawn_consumer(
    mode: &str,
    touch: Touch,
    theirs: &UnixStream,
) -> std::io::Result<std::process::Child> {
    rustix::io::fcntl_setfd(theirs, rustix::io::FdFlags::empty())?;
    Command::new(std::env::current_exe()?)
        .args([
            "demo-consumer",
            "--fd",
            &theirs.as_raw_fd().to_string(),
            "--mode",
            &format!("{mode}/{}", touch.name()),
        ])
        .stdout(Stdio::piped())
        .spawn()
}

/// CPU time (user + system) this process used so far, in nanoseconds
/// (`getrusage(RUSAGE_SELF)`).
pub fn cpu_ns() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is
    // given, which points at one; RUSAGE_SELF is always valid.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0;
    if !ok {
        return 0;
    }
    // SAFETY: zero-initialised, then filled by a successful getrusage.
    let usage = unsafe { usage.assume_init() };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in both processes, so
/// a time stamped by the producer can be subtracted in the consumer.
pub fn monotonic_ns() -> u64 {
    let mut ts = std::mem::MaybeUninit::<libc::timespec>::zeroed();
    // SAFETY: clock_gettime writes a whole `timespec` into the pointer it
    // is given; CLOCK_MONOTONIC always exists on Linux.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, ts.as_mut_ptr()) } == 0;
    if !ok {
        return 0;
    }
    // SAFETY: filled by a successful clock_gettime.
    let ts = unsafe { ts.assume_init() };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The `q` quantile (0..=1) of sorted `values`.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// What one run measured.
struct RunResult {
    frames: u64,
    elapsed: Duration,
    /// Frames whose checksum the consumer verified.
    checked: u64,
    /// Transport latency quantiles (ns): from just before the send to
    /// the frame in the consumer's hands.
    p50_ns: u64,
    p99_ns: u64,
    producer_cpu_ns: u64,
    consumer_cpu_ns: u64,
    /// Frame bytes copied by the transport, per frame.
    copied_per_frame: usize,
}

/// `key value` pairs of the consumer's report.
fn field(text: &str, key: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == key {
            return words.next()?.parse().ok();
        }
    }
    None
}

fn finish(
    child: std::process::Child,
    frames: u64,
    started: Instant,
    cpu_before: u64,
    copied_per_frame: usize,
) -> Result<RunResult, String> {
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    let producer_cpu_ns = cpu_ns().saturating_sub(cpu_before);
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("the consumer failed: {text}"));
    }
    let verified = field(&text, "verified").unwrap_or(0);
    if verified != frames {
        return Err(format!(
            "the consumer verified {verified} of {frames} frames"
        ));
    }
    Ok(RunResult {
        frames,
        elapsed,
        checked: field(&text, "checked").unwrap_or(0),
        p50_ns: field(&text, "p50_ns").unwrap_or(0),
        p99_ns: field(&text, "p99_ns").unwrap_or(0),
        producer_cpu_ns,
        consumer_cpu_ns: field(&text, "cpu_ns").unwrap_or(0),
        copied_per_frame,
    })
}

/// How the zero-copy producer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// Pool buffers registered once, then ids (wire version 2's way).
    Registered,
    /// Every frame's fd sent again and mapped afresh (version 1's way).
    FdEachFrame,
}

/// Write frame `n` into `buf`: the whole pattern when the consumer
/// verifies checksums (returns it), else only the frame number.
fn produce(buf: &mut [u8], n: u64, touch: Touch) -> u64 {
    if touch == Touch::Checksum {
        return fill(buf, n);
    }
    let head = buf.len().min(8);
    buf[..head].copy_from_slice(&n.to_le_bytes()[..head]);
    0
}

fn run_zero_copy(args: &DemoArgs, size: usize, transport: Transport) -> Result<RunResult, String> {
    let pool = pool_for(args, size).map_err(|e| format!("{:?} allocator: {e}", args.allocator))?;
    let layout = FrameLayout::packed(fourcc(*b"NV12"), args.width, args.height)
        .map_err(|e| e.to_string())?;
    let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let child = spawn_consumer("zero-copy", args.touch, &theirs).map_err(|e| e.to_string())?;
    drop(theirs);
    let cpu_before = cpu_ns();
    let started = Instant::now();
    let produced = (|| -> mediamem::Result<()> {
        let mut tx = Sender::new(ours);
        tx.set_register_buffers(transport == Transport::Registered);
        let label = match transport {
            Transport::Registered => "zero-copy",
            Transport::FdEachFrame => "fd/frame",
        };
        let mut progress = Progress::new(args, label);
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
            let sum = produce(&mut frame.map_mut()?, n, args.touch);
            let mut meta = [0u8; 24];
            meta[..8].copy_from_slice(&n.to_le_bytes());
            meta[8..16].copy_from_slice(&sum.to_le_bytes());
            meta[16..].copy_from_slice(&monotonic_ns().to_le_bytes());
            let info = FrameInfo {
                timestamps: Timestamps {
                    pts: Some(n * 1_000_000_000 / 30),
                    ..Timestamps::default()
                },
                layout: Some(&layout),
                meta: &meta,
            };
            tx.send_frame_with(vec![frame], info)?;
            tx.poll_releases()?;
            progress.update(n + 1, size, started);
        }
        tx.send_eos()?;
        while tx.in_flight() > 0 && tx.wait_release()?.is_some() {}
        Ok(())
    })();
    let result = finish(child, args.frames, started, cpu_before, 0);
    produced.map_err(|e| e.to_string())?;
    result
}

fn run_copy(args: &DemoArgs, size: usize) -> Result<RunResult, String> {
    let (mut ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let child = spawn_consumer("copy", args.touch, &theirs).map_err(|e| e.to_string())?;
    drop(theirs);
    let mut buf = vec![0u8; size];
    let cpu_before = cpu_ns();
    let started = Instant::now();
    let produced = (|| -> std::io::Result<()> {
        let mut progress = Progress::new(args, "copy");
        for n in 0..args.frames {
            let sum = produce(&mut buf, n, args.touch);
            let mut head = [0u8; 32];
            head[..8].copy_from_slice(&n.to_le_bytes());
            head[8..16].copy_from_slice(&sum.to_le_bytes());
            head[16..24].copy_from_slice(&(size as u64).to_le_bytes());
            head[24..].copy_from_slice(&monotonic_ns().to_le_bytes());
            ours.write_all(&head)?;
            ours.write_all(&buf)?;
            progress.update(n + 1, size, started);
        }
        ours.shutdown(std::net::Shutdown::Write)
    })();
    let result = finish(child, args.frames, started, cpu_before, size);
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

/// The report of one run: a headline and the transport's figures.
fn report_run(out: &mut dyn Write, label: &str, r: &RunResult, size: usize) -> std::io::Result<()> {
    let (fps, gbs) = rate(r, size);
    let verified = if r.checked == r.frames {
        "every checksum verified".to_owned()
    } else {
        format!("{} of {} checksums verified (--touch)", r.checked, r.frames)
    };
    let per = |ns: u64| ns as f64 / 1e3 / r.frames.max(1) as f64;
    writeln!(
        out,
        "{label} {} frames in {:.2} s: {fps:.0} frames/s, {gbs:.2} GB/s, {verified}",
        r.frames,
        r.elapsed.as_secs_f64()
    )?;
    writeln!(
        out,
        "    transport latency p50 {:.1} µs, p99 {:.1} µs; CPU per frame: producer {:.1} µs, consumer {:.1} µs; frame bytes copied per frame: {}",
        r.p50_ns as f64 / 1e3,
        r.p99_ns as f64 / 1e3,
        per(r.producer_cpu_ns),
        per(r.consumer_cpu_ns),
        r.copied_per_frame
    )
}

/// The V4L2 device a `--source` names.
fn camera_path(source: &str) -> Result<&str, String> {
    match source.strip_prefix("v4l2:") {
        Some(path) if !path.is_empty() => Ok(path),
        _ => Err(format!("--source {source:?}: expected v4l2:/dev/videoN")),
    }
}

/// The camera's next frame: a buffer back from the consumer first when
/// every one is out.
fn next_camera_frame(stream: &mut Stream, tx: &mut Sender) -> mediamem::Result<Frame> {
    loop {
        match stream.next_frame(Duration::from_secs(5)) {
            Err(Error::V4l2 {
                problem: V4l2Problem::AllBuffersHeld { .. },
                ..
            }) => {
                if tx.wait_release()?.is_none() {
                    return Err(Error::Protocol("the consumer went away".into()));
                }
            }
            other => return other,
        }
    }
}

/// Camera frames to the consumer, zero-copy: each V4L2 buffer is a
/// dma-buf memory (EXPBUF), registered with the consumer on first send;
/// the metadata carries the checksum of the frame's bytes, which the
/// consumer recomputes through its own mapping. A buffer goes back to the
/// driver when the consumer has released the frame.
fn run_camera(args: &DemoArgs, path: &str, out: &mut dyn Write) -> Result<(), String> {
    let dev = Device::open(path).map_err(|e| e.to_string())?;
    let format = [*b"NV12", *b"YUYV"]
        .iter()
        .find_map(|c| {
            dev.set_format(v4l2_fourcc(*c), args.width, args.height)
                .ok()
                .filter(|f| f.planes.len() == 1)
        })
        .ok_or_else(|| format!("{path} captures neither NV12 nor YUYV in one memory"))?;
    let buffers = args.pool.clamp(2, mediamem::v4l2::MAX_BUFFERS as usize) as u32;
    let mut stream = dev.stream_export(buffers).map_err(|e| e.to_string())?;
    writeln!(
        out,
        "mediamem demo: {} frames from {path} ({}, {}), {} {}x{} ({:.1} MB each), {} V4L2 buffers exported as dma-bufs, consumer: --touch {}",
        args.frames,
        dev.capability().card,
        dev.capability().driver,
        mediamem::drm::fourcc_name(format.fourcc),
        format.width,
        format.height,
        f64::from(format.planes[0].size_image) / 1e6,
        stream.buffer_count(),
        args.touch.name()
    )
    .and_then(|()| out.flush())
    .map_err(output_error)?;
    let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let child = spawn_consumer("zero-copy", args.touch, &theirs).map_err(|e| e.to_string())?;
    drop(theirs);
    let cpu_before = cpu_ns();
    let started = Instant::now();
    let mut sequences = (None, 0u32);
    let produced = (|| -> mediamem::Result<()> {
        let mut tx = Sender::new(ours);
        let mut progress = Progress::new(args, "camera");
        stream.start()?;
        for n in 0..args.frames {
            let frame = next_camera_frame(&mut stream, &mut tx)?;
            sequences = (sequences.0.or(Some(frame.sequence())), frame.sequence());
            let sum = if args.touch == Touch::Checksum {
                checksum(&frame.memories()[0].map_readable()?)
            } else {
                0
            };
            let mut meta = [0u8; 24];
            meta[..8].copy_from_slice(&n.to_le_bytes());
            meta[8..16].copy_from_slice(&sum.to_le_bytes());
            meta[16..].copy_from_slice(&monotonic_ns().to_le_bytes());
            let layout = frame.layout().clone();
            let pts = u64::try_from(frame.timestamp().as_nanos()).ok();
            let info = FrameInfo {
                timestamps: Timestamps {
                    pts,
                    ..Timestamps::default()
                },
                layout: Some(&layout),
                meta: &meta,
            };
            tx.send_frame_with(frame.into_memories(), info)?;
            tx.poll_releases()?;
            progress.update(n + 1, format.planes[0].size_image as usize, started);
        }
        tx.send_eos()?;
        while tx.in_flight() > 0 && tx.wait_release()?.is_some() {}
        Ok(())
    })();
    let result = finish(child, args.frames, started, cpu_before, 0);
    produced.map_err(|e| e.to_string())?;
    let r = result?;
    report_run(
        out,
        "camera zero-copy (dma-buf export):",
        &r,
        format.planes[0].size_image as usize,
    )
    .and_then(|()| {
        writeln!(
            out,
            "    V4L2 sequence numbers {}..={}; every buffer back in the driver: {}",
            sequences.0.unwrap_or(0),
            sequences.1,
            stream.queued_count() == stream.buffer_count()
        )
    })
    .and_then(|()| out.flush())
    .map_err(output_error)
}

/// The main job; the report goes to `out`.
pub fn demo(args: &DemoArgs, out: &mut dyn Write) -> Result<(), String> {
    let size = check_args(args)?;
    if let Some(source) = &args.source {
        return run_camera(args, camera_path(source)?, out);
    }
    writeln!(
        out,
        "mediamem demo: {} frames of {}x{} NV12 ({:.1} MB each), {} memory, pool of {}, consumer: --touch {}",
        args.frames,
        args.width,
        args.height,
        size as f64 / 1e6,
        source_name(args.allocator),
        args.pool,
        args.touch.name()
    )
    .and_then(|()| out.flush())
    .map_err(output_error)?;
    let zc = run_zero_copy(args, size, Transport::Registered)?;
    report_run(out, "zero-copy (fd passing): ", &zc, size)
        .and_then(|()| out.flush())
        .map_err(output_error)?;
    if args.zero_copy_only {
        return Ok(());
    }
    let fd = run_zero_copy(args, size, Transport::FdEachFrame)?;
    report_run(out, "zero-copy, fd each frame:", &fd, size)
        .and_then(|()| out.flush())
        .map_err(output_error)?;
    let cp = run_copy(args, size)?;
    report_run(out, "copy through the socket:", &cp, size)
        .and_then(|()| {
            let cpu = |r: &RunResult| (r.producer_cpu_ns + r.consumer_cpu_ns) as f64;
            writeln!(
                out,
                "zero-copy speed-up: {:.2}x frames/s; transport latency p50 {:.1}x lower, CPU of both processes {:.1}x lower than copy ({:.1}x lower than an fd each frame)",
                rate(&zc, size).0 / rate(&cp, size).0,
                cp.p50_ns as f64 / zc.p50_ns.max(1) as f64,
                cpu(&cp) / cpu(&zc).max(1.0),
                cpu(&fd) / cpu(&zc).max(1.0),
            )
        })
        .and_then(|()| out.flush())
        .map_err(output_error)?;
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

/// The frame number, checksum and send time in a frame's metadata.
fn frame_meta(meta: &[u8], expected: u64) -> Result<(u64, u64, u64), String> {
    let field = |at: usize| {
        meta.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    match (field(0), field(8), field(16)) {
        (Some(n), Some(sum), Some(sent)) if meta.len() == 24 => Ok((n, sum, sent)),
        _ => Err(format!(
            "frame {expected}: {} bytes of metadata, expected 24",
            meta.len()
        )),
    }
}

/// Read one byte per 4 KiB page of `buf`.
fn read_pages(buf: &[u8]) -> u8 {
    buf.iter()
        .step_by(4096)
        .fold(0u8, |a, &b| a ^ std::hint::black_box(b))
}

/// The consumer's tally.
#[derive(Default)]
struct Tally {
    verified: u64,
    checked: u64,
    latencies: Vec<u64>,
}

impl Tally {
    /// Check frame `n` of `bytes` (`None`: not touched) against `sum`.
    fn frame(
        &mut self,
        n: u64,
        sum: u64,
        bytes: Option<&[u8]>,
        touch: Touch,
    ) -> Result<(), String> {
        if n != self.verified {
            return Err(format!("frame {n}: expected frame {}", self.verified));
        }
        match (touch, bytes) {
            (Touch::Checksum, Some(b)) => {
                if checksum(b) != sum {
                    return Err(format!("frame {n}: checksum mismatch"));
                }
                self.checked += 1;
            }
            (Touch::Read, Some(b)) => {
                std::hint::black_box(read_pages(b));
            }
            _ => {}
        }
        self.verified += 1;
        Ok(())
    }
}

/// The consumer side: take every frame, do `--touch`'s work on it, time
/// its transport; print `verified N checked C p50_ns X p99_ns Y cpu_ns Z`
/// to `out`. `mode` is `zero-copy` or `copy`, optionally followed by
/// `/none`, `/read` or `/checksum` (the default).
pub fn consumer(fd: i32, mode: &str, out: &mut dyn Write) -> Result<(), String> {
    let (mode, touch) = match mode.split_once('/') {
        Some((m, t)) => (
            m,
            Touch::parse(t).ok_or_else(|| format!("unknown touch {t}"))?,
        ),
        None => (mode, Touch::Checksum),
    };
    if mode != "zero-copy" && mode != "copy" {
        return Err(format!("unknown mode {mode}"));
    }
    let sock = inherited_socket(fd)?;
    let cpu_before = cpu_ns();
    let mut tally = Tally::default();
    match mode {
        "zero-copy" => {
            let mut rx = Receiver::new(sock, ReceivePolicy::default());
            while let Some(frame) = rx.recv().map_err(|e| e.to_string())? {
                let arrived = monotonic_ns();
                let (n, sum, sent) = frame_meta(&frame.meta, tally.verified)?;
                tally.latencies.push(arrived.saturating_sub(sent));
                let [memory] = frame.memories.as_slice() else {
                    return Err(format!(
                        "frame {n}: {} memories, expected 1",
                        frame.memories.len()
                    ));
                };
                if touch == Touch::None {
                    tally.frame(n, sum, None, touch)?;
                } else {
                    let map = memory.map_readable().map_err(|e| e.to_string())?;
                    tally.frame(n, sum, Some(&map), touch)?;
                }
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
            let mut head = [0u8; 32];
            loop {
                match sock.read_exact(&mut head) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e.to_string()),
                }
                let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8"));
                let (n, sum, len, sent) = (word(0), word(8), word(16) as usize, word(24));
                if len > MAX_FRAME_BYTES {
                    return Err(format!("frame of {len} bytes"));
                }
                buf.resize(len, 0);
                sock.read_exact(&mut buf).map_err(|e| e.to_string())?;
                tally.latencies.push(monotonic_ns().saturating_sub(sent));
                tally.frame(n, sum, Some(&buf), touch)?;
            }
        }
        other => return Err(format!("unknown mode {other}")),
    }
    let cpu = cpu_ns().saturating_sub(cpu_before);
    tally.latencies.sort_unstable();
    writeln!(
        out,
        "verified {} checked {} p50_ns {} p99_ns {} cpu_ns {cpu}",
        tally.verified,
        tally.checked,
        quantile(&tally.latencies, 0.5),
        quantile(&tally.latencies, 0.99)
    )
    .and_then(|()| out.flush())
    .map_err(output_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_clocks() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 51);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&[], 0.5), 0);
        let (a, b) = (monotonic_ns(), monotonic_ns());
        assert!(a > 0 && b >= a);
        let before = cpu_ns();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(cpu_ns() > before, "{x}: spinning costs CPU time");
    }

    #[test]
    fn touch_modes_check_what_they_touch() {
        let mut buf = vec![0u8; 3 * 4096];
        let sum = fill(&mut buf, 0);
        let mut t = Tally::default();
        t.frame(0, sum, Some(&buf), Touch::Checksum).unwrap();
        assert!(
            t.frame(1, sum ^ 1, Some(&buf), Touch::Checksum).is_err(),
            "wrong sum"
        );
        t.frame(1, 0, None, Touch::None).unwrap();
        t.frame(2, 0, Some(&buf), Touch::Read).unwrap();
        assert!(t.frame(9, 0, None, Touch::None).is_err(), "out of order");
        assert_eq!((t.verified, t.checked), (3, 1));
        assert_eq!(Touch::parse("read"), Some(Touch::Read));
        assert_eq!(Touch::parse("all"), None);
    }

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
    fn camera_sources_are_parsed() {
        assert_eq!(camera_path("v4l2:/dev/video0"), Ok("/dev/video0"));
        assert!(camera_path("v4l2:").is_err());
        assert!(camera_path("/dev/video0").is_err());
        assert!(camera_path("usb:1").is_err());
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
        let mut meta = [0u8; 24];
        meta[..8].copy_from_slice(&7u64.to_le_bytes());
        meta[8..16].copy_from_slice(&9u64.to_le_bytes());
        meta[16..].copy_from_slice(&11u64.to_le_bytes());
        assert_eq!(frame_meta(&meta, 7), Ok((7, 9, 11)));
        for len in [0, 3, 8, 16, 23, 25] {
            assert!(frame_meta(&vec![0; len], 0).is_err(), "{len}");
        }
    }
}
