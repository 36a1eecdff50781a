//! GStreamer's unixfd protocol (`mediamem::unixfd`) against real
//! `unixfdsink` / `unixfdsrc` elements (GStreamer 1.26 in the Debian trixie
//! root filesystem that `cargo xtask test` builds and names in
//! `MEDIAMEM_GST_ROOTFS`), and against hostile fake peers written with raw
//! sockets.
//!
//! Without `MEDIAMEM_GST_ROOTFS` (a plain `cargo test`) each GStreamer test
//! prints `SKIPPED: <test>: <reason>` and returns; the hostile-peer tests
//! always run.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mediamem::unixfd::{
    monotonic_now, Buffer, BufferInfo, Client, Event, MemoryType, Meta, OutBuffer, Server, CAPS,
    EOS, NEW_BUFFER, RELEASE_BUFFER,
};
use mediamem::{Error, Memory, ShmAllocator};

const FRAME: usize = 640 * 480 * 3 / 2;
const NV12: &str = "video/x-raw,format=NV12,width=640,height=480,framerate=30/1";

// ---------------------------------------------------------------------------
// The GStreamer side: a root filesystem, a work folder in it, gst-launch-1.0.

/// The root filesystem, or `None` after printing why the test is skipped.
fn rootfs(test: &str) -> Option<PathBuf> {
    match std::env::var_os("MEDIAMEM_GST_ROOTFS") {
        Some(r) if Path::new(&r).join("usr/bin/gst-launch-1.0").exists() => Some(r.into()),
        Some(r) => panic!(
            "MEDIAMEM_GST_ROOTFS={} has no usr/bin/gst-launch-1.0",
            Path::new(&r).display()
        ),
        None => {
            println!(
                "SKIPPED: {test}: MEDIAMEM_GST_ROOTFS is not set (cargo xtask test builds \
                 GStreamer 1.26 under target/gst-trixie and sets it)"
            );
            None
        }
    }
}

/// A folder under the root filesystem's /tmp, seen as `/tmp/<name>` by
/// the pipeline; removed on drop.
struct Work {
    host: PathBuf,
    guest: String,
}

impl Work {
    fn new(root: &Path) -> Work {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "mediamem-unixfd-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let host = root.join("tmp").join(&name);
        let _ = std::fs::remove_dir_all(&host);
        std::fs::create_dir_all(&host).unwrap();
        Work {
            host,
            guest: format!("/tmp/{name}"),
        }
    }

    /// The path of `file` on the host and in the pipeline.
    fn path(&self, file: &str) -> (PathBuf, String) {
        (self.host.join(file), format!("{}/{file}", self.guest))
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.host);
    }
}

/// A running `gst-launch-1.0 -e`, killed on drop. Its output goes to a log
/// in the work folder, printed when it fails.
struct Gst {
    child: Child,
    log: PathBuf,
    line: String,
}

fn gst(root: &Path, work: &Work, name: &str, pipeline: &str) -> Gst {
    let mut args = vec!["gst-launch-1.0", "-e"];
    args.extend(pipeline.split_whitespace());
    in_root(root, work, name, &args)
}

/// `program args...` in the root filesystem (see [`gst`]).
fn in_root(root: &Path, work: &Work, name: &str, program_and_args: &[&str]) -> Gst {
    let (log, _) = work.path(&format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--fork",
            "--kill-child",
            "sh",
            "-c",
            "mount -t proc proc \"$0/proc\" && exec chroot \"$0\" /usr/bin/env -i HOME=/root \
             PATH=/usr/bin:/bin \"$@\"",
        ])
        .arg(root)
        // MEDIAMEM_GST_DEBUG=<GST_DEBUG value>: GStreamer's log in the
        // pipeline's log file.
        .args(std::env::var("MEDIAMEM_GST_DEBUG").map(|d| format!("GST_DEBUG={d}")))
        .args(program_and_args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("unshare/chroot");
    Gst {
        child,
        log,
        line: program_and_args.join(" "),
    }
}

impl Gst {
    /// Wait for a successful exit, up to `limit`.
    fn finish(&mut self, limit: Duration) {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                assert!(status.success(), "{} failed ({status}):\n{log}", self.line);
                return;
            }
            if Instant::now() >= end {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("{} still runs after {limit:?}:\n{log}", self.line);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gst {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Connect to a sink's socket once it exists.
fn connect(path: &Path) -> Client {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        match UnixStream::connect(path) {
            Ok(s) => {
                let mut c = Client::new(s, Default::default());
                c.set_timeout(Some(Duration::from_secs(30)));
                return c;
            }
            Err(e) if Instant::now() < end => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("no unixfdsink at {}: {e}", path.display()),
        }
    }
}

/// The first event, past the "NULL" caps a sink sends to a client that
/// connects before it has caps.
fn first_caps(client: &mut Client) -> Option<Event> {
    loop {
        match client.recv().unwrap() {
            Some(Event::Caps(c)) if c == "NULL" => continue,
            other => return other,
        }
    }
}

fn bytes_of(b: &Buffer) -> Vec<u8> {
    let mut v = Vec::new();
    for m in &b.memories {
        v.extend_from_slice(&m.map_readable().unwrap());
    }
    v
}

fn shm_frame(fill: impl Fn(usize) -> u8, len: usize) -> Memory {
    let mut m = ShmAllocator::get().alloc(len, None).unwrap();
    for (i, b) in m.map_mut().unwrap().iter_mut().enumerate() {
        *b = fill(i);
    }
    m
}

// ---------------------------------------------------------------------------
// GStreamer → mediamem.

#[test]
fn videotestsrc_to_client_equals_filesink() {
    let Some(root) = rootfs("videotestsrc_to_client_equals_filesink") else {
        return;
    };
    let work = Work::new(&root);
    let (ref_host, ref_guest) = work.path("ref.nv12");
    gst(
        &root,
        &work,
        "filesink",
        &format!("videotestsrc num-buffers=300 ! {NV12} ! filesink location={ref_guest}"),
    )
    .finish(Duration::from_secs(120));
    let reference = std::fs::read(&ref_host).unwrap();
    assert_eq!(reference.len(), 300 * FRAME);

    let (sock_host, sock_guest) = work.path("sock");
    let mut sink = gst(
        &root,
        &work,
        "sink",
        &format!(
            "videotestsrc num-buffers=300 ! {NV12} ! unixfdsink socket-path={sock_guest} \
             wait-for-connection=true sync=false"
        ),
    );
    let mut client = connect(&sock_host);
    match first_caps(&mut client) {
        Some(Event::Caps(c)) => {
            assert!(c.starts_with("video/x-raw"), "{c}");
            assert!(
                c.contains("NV12") && c.contains("640") && c.contains("480"),
                "{c}"
            );
        }
        other => panic!("the sink's first command is not CAPS: {other:?}"),
    }
    let mut frames = 0;
    let mut last_pts = 0;
    loop {
        match client.recv().unwrap() {
            Some(Event::Buffer(b)) => {
                assert_eq!(b.memory_type, MemoryType::Default);
                assert!(!b.memories.is_empty());
                assert!(b.memories.iter().all(mediamem::is_fd_memory));
                let pts = b.info.pts.expect("videotestsrc timestamps its frames");
                assert!(pts >= last_pts, "pts went back: {pts} < {last_pts}");
                last_pts = pts;
                // 1/30 s, rounded either way.
                let d = b.info.duration.expect("a duration");
                assert!((33_333_333..=33_333_334).contains(&d), "{d}");
                let bytes = bytes_of(&b);
                assert_eq!(bytes.len(), FRAME, "frame {frames}");
                assert!(
                    bytes == reference[frames * FRAME..(frames + 1) * FRAME],
                    "frame {frames} differs from filesink's"
                );
                frames += 1;
                // Dropping `b` writes RELEASE_BUFFER at once.
                drop(b);
                assert_eq!(client.pending_releases(), 0);
            }
            Some(Event::Eos) => break,
            Some(Event::Caps(c)) => panic!("caps again: {c}"),
            None => panic!("the sink closed before EOS, after {frames} frames"),
        }
    }
    assert_eq!(frames, 300);
    sink.finish(Duration::from_secs(60));
}

/// GStreamer's test_unixfd_videotestsrc: one sink, a client that
/// reconnects, and a second client at the same time.
#[test]
fn two_clients_and_a_reconnecting_one() {
    let Some(root) = rootfs("two_clients_and_a_reconnecting_one") else {
        return;
    };
    let work = Work::new(&root);
    let (sock_host, sock_guest) = work.path("sock");
    let mut sink = gst(
        &root,
        &work,
        "sink",
        &format!(
            "videotestsrc is-live=true num-buffers=120 ! video/x-raw,format=GRAY8,width=64,height=48,framerate=60/1 \
             ! unixfdsink socket-path={sock_guest} wait-for-connection=true"
        ),
    );
    let expect_caps = |c: &mut Client| match first_caps(c) {
        Some(Event::Caps(caps)) => assert!(caps.contains("GRAY8"), "{caps}"),
        other => panic!("first command not CAPS: {other:?}"),
    };
    let next_buffer = |c: &mut Client| loop {
        match c.recv().unwrap() {
            Some(Event::Buffer(b)) => return b,
            Some(Event::Caps(_)) => continue,
            other => panic!("expected a buffer: {other:?}"),
        }
    };
    // Client 1 prerolls, leaves (holding a buffer), and comes back.
    let mut first = connect(&sock_host);
    expect_caps(&mut first);
    let kept = next_buffer(&mut first);
    assert_eq!(bytes_of(&kept).len(), 64 * 48);
    drop(first);
    drop(kept); // its release has nowhere to go: dropped quietly
    let mut first = connect(&sock_host);
    expect_caps(&mut first);
    let mut second = connect(&sock_host);
    expect_caps(&mut second);
    let (mut n1, mut n2) = (0, 0);
    for (client, n) in [(&mut first, &mut n1), (&mut second, &mut n2)] {
        loop {
            match client.recv().unwrap() {
                Some(Event::Buffer(b)) => {
                    assert_eq!(bytes_of(&b).len(), 64 * 48);
                    *n += 1;
                }
                Some(Event::Eos) => break,
                Some(Event::Caps(_)) => {}
                None => panic!("closed before EOS"),
            }
        }
    }
    assert!(n1 > 0 && n2 > 0, "both clients got buffers: {n1}, {n2}");
    sink.finish(Duration::from_secs(60));
    // On teardown the sink removes its socket.
    assert!(!sock_host.exists());
}

/// `socket-type=abstract`: no socket file, both directions (the chroot
/// shares the host's network namespace, where abstract names live).
#[test]
fn abstract_sockets_both_ways() {
    let Some(root) = rootfs("abstract_sockets_both_ways") else {
        return;
    };
    let work = Work::new(&root);
    let name = format!("mediamem-unixfd-{}", std::process::id());
    let mut sink = gst(
        &root,
        &work,
        "sink",
        &format!(
            "videotestsrc num-buffers=10 ! video/x-raw,format=GRAY8,width=16,height=16 \
             ! unixfdsink socket-type=abstract socket-path={name}-sink \
             wait-for-connection=true sync=false"
        ),
    );
    let end = Instant::now() + Duration::from_secs(30);
    let mut client = loop {
        match Client::connect_abstract(format!("{name}-sink").as_bytes()) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < end, "{e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    client.set_timeout(Some(Duration::from_secs(30)));
    let mut frames = 0;
    while let Some(e) = client.recv().unwrap() {
        match e {
            Event::Buffer(b) => {
                assert_eq!(bytes_of(&b).len(), 256);
                frames += 1;
            }
            Event::Eos => break,
            Event::Caps(_) => {}
        }
    }
    assert_eq!(frames, 10);
    sink.finish(Duration::from_secs(30));

    let mut server = Server::bind_abstract(format!("{name}-src").as_bytes()).unwrap();
    server.set_caps("application/x-mediamem-test").unwrap();
    let (out_host, out_guest) = work.path("out");
    let mut src = gst(
        &root,
        &work,
        "src",
        &format!(
            "unixfdsrc socket-type=abstract socket-path={name}-src ! filesink \
             location={out_guest} sync=false"
        ),
    );
    assert!(server.wait_for_clients(1, Duration::from_secs(30)).unwrap());
    for f in 0..10 {
        server
            .send_buffer(OutBuffer {
                memories: vec![shm_frame(pattern(f), 1000)],
                ..Default::default()
            })
            .unwrap();
    }
    server.send_eos().unwrap();
    src.finish(Duration::from_secs(30));
    let out = std::fs::read(out_host).unwrap();
    let expect: Vec<u8> = (0..10).flat_map(|f| (0..1000).map(pattern(f))).collect();
    assert!(out == expect, "unixfdsrc wrote what was sent");
}

#[test]
fn dmabuf_type_with_a_memfd_is_fd_memory() {
    // Type 1 says "wrap as dma-buf"; the fd is checked, not trusted: a
    // sealed memfd is mapped as fd memory (no DMA_BUF_IOCTL_SYNC on it).
    let (mut peer, mut client) = hostile_pair();
    let mut mem = ShmAllocator::get().alloc(4096, None).unwrap();
    mem.map_mut().unwrap().fill(4);
    let payload = new_buffer_payload(3, 1, &[(4096, 0)], 0);
    let mut msg = header(NEW_BUFFER, payload.len());
    msg.extend_from_slice(&payload);
    send_with_fds(&peer, &msg, &[mem.try_clone_fd().unwrap()]);
    let Some(Event::Buffer(b)) = client.recv().unwrap() else {
        panic!("a buffer")
    };
    assert_eq!(b.memory_type, MemoryType::DmaBuf);
    assert!(mediamem::is_fd_memory(&b.memories[0]));
    assert!(!mediamem::is_dmabuf_memory(&b.memories[0]));
    assert_eq!(bytes_of(&b), vec![4; 4096]);
    drop(b);
    assert_eq!(read_release(&mut peer), 3);
}

/// A GStreamer program that puts metas on its buffers (gst-launch-1.0
/// cannot): appsrc ! unixfdsink, four shm buffers "Hello world!" one
/// second apart, each with a custom meta and a GstReferenceTimestampMeta
/// (timestamp 42); the third one's reference caps hold a 100 kB string,
/// the fourth one's a 1 MB string.
const METAS_PY: &str = r#"
import sys, gi
gi.require_version("Gst", "1.0")
gi.require_version("GstAllocators", "1.0")
from gi.repository import Gst, GstAllocators
Gst.init(None)
GstAllocators.ShmAllocator.init_once()
Gst.Meta.register_custom_simple("mediamem-test-meta")
p = Gst.parse_launch("appsrc name=a caps=application/x-mediamem-test format=time "
                     "! unixfdsink socket-path=%s wait-for-connection=true sync=false" % sys.argv[1])
a = p.get_by_name("a")
p.set_state(Gst.State.PLAYING)
shm = Gst.Allocator.find("shm")
big = [Gst.Caps.from_string("timestamp/x-mediamem, data=(string)" + "B" * n)
       for n in (100000, 1000000)]
for i in range(4):
    buf = Gst.Buffer.new()
    buf.append_memory(Gst.Allocator.alloc(shm, 12, None))
    buf.fill(0, b"Hello world!")
    buf.pts = i * Gst.SECOND
    buf.add_custom_meta("mediamem-test-meta")
    ref = big[i - 2] if i >= 2 else Gst.Caps.from_string("timestamp/x-mediamem")
    buf.add_reference_timestamp_meta(ref, 42, Gst.CLOCK_TIME_NONE)
    if a.emit("push-buffer", buf) != Gst.FlowReturn.OK:
        sys.exit(1)
a.emit("end-of-stream")
msg = p.get_bus().timed_pop_filtered(30 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
p.set_state(Gst.State.NULL)
sys.exit(0 if msg is not None and msg.type == Gst.MessageType.EOS else 1)
"#;

/// GStreamer's test_unixfd_videotestsrc (custom meta), test_unixfd_segment
/// (PTS one second apart), test_unixfd_copy ("Hello world!") and
/// test_unixfd_big_payload (big metas), received by mediamem's client.
///
/// Trixie's unixfdsink (1.26.2) writes a command with one non-blocking
/// `sendmsg` and does not finish a short write (fixed in 1.26.7): a
/// payload larger than its socket buffer (about 200 kB) is cut, and the
/// stream goes on with the next command's bytes. A 100 kB meta arrives
/// whole; the 1 MB one arrives whole from a fixed GStreamer, and from
/// 1.26.2 must give a typed error (the end of file inside the payload
/// when the sink closes), not a hang or a garbage buffer.
#[test]
fn gstreamer_custom_meta_timestamps_and_big_metas() {
    let Some(root) = rootfs("gstreamer_custom_meta_timestamps_and_big_metas") else {
        return;
    };
    let work = Work::new(&root);
    let (script_host, script_guest) = work.path("metas.py");
    std::fs::write(&script_host, METAS_PY).unwrap();
    let (sock_host, sock_guest) = work.path("sock");
    let mut app = in_root(
        &root,
        &work,
        "metas",
        &["python3", &script_guest, &sock_guest],
    );
    let mut client = connect(&sock_host);
    match first_caps(&mut client) {
        Some(Event::Caps(c)) => assert_eq!(c, "application/x-mediamem-test"),
        other => panic!("{other:?}\n{}", app.log()),
    }
    let check = |b: &Buffer, big: usize| {
        assert_eq!(bytes_of(b), b"Hello world!");
        let custom = b
            .metas
            .iter()
            .find(|m| m.name() == "mediamem-test-meta")
            .expect("the custom meta");
        assert!(custom.payload().starts_with(b"mediamem-test-meta"));
        assert_eq!(custom.payload().last(), Some(&0));
        let ts = b
            .metas
            .iter()
            .find(|m| m.name() == "GstReferenceTimestampMeta")
            .expect("the reference timestamp meta");
        let p = ts.payload();
        assert_eq!(&p[..8], &42u64.to_le_bytes(), "timestamp 42");
        assert_eq!(&p[8..16], &u64::MAX.to_le_bytes(), "no duration");
        assert!(p[16..].starts_with(b"timestamp/x-mediamem"));
        if big > 0 {
            let run = "B".repeat(big);
            assert!(
                p.windows(run.len()).any(|w| w == run.as_bytes()),
                "the {big}-byte meta arrived whole"
            );
        }
        b.info.pts.expect("a pts")
    };
    let mut pts = Vec::new();
    for big in [0, 0, 100_000] {
        match client.recv().unwrap() {
            Some(Event::Buffer(b)) => pts.push(check(&b, big)),
            other => panic!("{other:?}\n{}", app.log()),
        }
    }
    // CLOCK_MONOTONIC on the wire: one second apart, as pushed.
    assert_eq!(pts[1] - pts[0], 1_000_000_000);
    assert_eq!(pts[2] - pts[1], 1_000_000_000);
    match client.recv() {
        Ok(Some(Event::Buffer(b))) => {
            check(&b, 1_000_000);
            assert!(matches!(client.recv().unwrap(), Some(Event::Eos)));
        }
        Err(Error::Protocol(why)) => {
            eprintln!("1 MB meta from this GStreamer: {why}");
            assert!(why.contains("payload"), "{why}");
        }
        other => panic!("neither the 1 MB meta nor a typed error: {other:?}"),
    }
    app.finish(Duration::from_secs(30));
}

// ---------------------------------------------------------------------------
// mediamem → GStreamer.

fn pattern(frame: usize) -> impl Fn(usize) -> u8 {
    move |i| (i.wrapping_mul(7) ^ frame.wrapping_mul(31)) as u8
}

/// 300 frames made by `frame` from a mediamem server to
/// `unixfdsrc ! filesink`; the file must equal what was sent.
fn server_to_unixfdsrc(root: &Path, frame: impl Fn(usize) -> Memory) {
    let root = root.to_path_buf();
    let work = Work::new(&root);
    let (sock_host, sock_guest) = work.path("sock");
    let (out_host, out_guest) = work.path("out.nv12");
    let mut server = Server::bind(&sock_host).unwrap();
    server.set_caps(NV12).unwrap();
    let mut src = gst(
        &root,
        &work,
        "src",
        &format!("unixfdsrc socket-path={sock_guest} ! filesink location={out_guest} sync=false"),
    );
    assert!(server.wait_for_clients(1, Duration::from_secs(30)).unwrap());
    let start = monotonic_now();
    for f in 0..300 {
        let mem = frame(f);
        let info = BufferInfo {
            pts: Some(start + f as u64 * 33_333_333),
            duration: Some(33_333_333),
            offset: f as u64,
            offset_end: f as u64 + 1,
            ..Default::default()
        };
        server
            .send_buffer(OutBuffer {
                memories: vec![mem],
                info,
                metas: vec![],
            })
            .unwrap();
        assert_eq!(server.clients(), 1, "the client was dropped at frame {f}");
        // Bounded in flight: the client's releases come back.
        let end = Instant::now() + Duration::from_secs(30);
        while server.held_buffers() > 8 {
            assert!(Instant::now() < end, "no releases from unixfdsrc");
            server.process(Some(Duration::from_millis(100))).unwrap();
        }
    }
    server.send_eos().unwrap();
    src.finish(Duration::from_secs(60));
    server.process(Some(Duration::from_millis(100))).unwrap();
    let _ = server.wait_released(Duration::from_secs(5)).unwrap();
    assert_eq!(
        server.held_buffers(),
        0,
        "holds freed: released or disconnected"
    );
    let out = std::fs::read(&out_host).unwrap();
    assert_eq!(out.len(), 300 * FRAME);
    for f in 0..300 {
        let expect = pattern(f);
        assert!(
            out[f * FRAME..(f + 1) * FRAME]
                .iter()
                .enumerate()
                .all(|(i, &b)| b == expect(i)),
            "frame {f} differs"
        );
    }
}

#[test]
fn server_to_unixfdsrc_equals_what_was_sent() {
    let Some(root) = rootfs("server_to_unixfdsrc_equals_what_was_sent") else {
        return;
    };
    server_to_unixfdsrc(&root, |f| shm_frame(pattern(f), FRAME));
}

/// A dma-buf frame from `alloc`, filled with frame `f`'s pattern.
fn dmabuf_frame(alloc: &mediamem::Allocator, f: usize) -> Memory {
    let mut m = alloc.alloc(FRAME, None).unwrap();
    assert!(mediamem::is_dmabuf_memory(&m));
    let fill = pattern(f);
    for (i, b) in m.map_mut().unwrap().iter_mut().enumerate() {
        *b = fill(i);
    }
    m
}

#[test]
#[ignore = "device test: runs in the QEMU guest (cargo xtask vm-test)"]
fn guest_udmabuf_frames_as_dmabuf_to_unixfdsrc() {
    let root = rootfs("guest_udmabuf_frames_as_dmabuf_to_unixfdsrc")
        .expect("the guest has the root filesystem");
    let udmabuf: mediamem::Allocator = mediamem::UdmabufAllocator::get().unwrap().into();
    server_to_unixfdsrc(&root, |f| dmabuf_frame(&udmabuf, f));
}

#[test]
#[ignore = "device test: runs in the QEMU guest (cargo xtask vm-test)"]
fn guest_heap_frames_as_dmabuf_to_unixfdsrc() {
    let root = rootfs("guest_heap_frames_as_dmabuf_to_unixfdsrc")
        .expect("the guest has the root filesystem");
    let heap: mediamem::Allocator = mediamem::heap::DmaHeapAllocator::get("system")
        .unwrap()
        .into();
    server_to_unixfdsrc(&root, |f| dmabuf_frame(&heap, f));
}

#[test]
fn server_two_clients_and_a_disconnect() {
    let Some(root) = rootfs("server_two_clients_and_a_disconnect") else {
        return;
    };
    let work = Work::new(&root);
    let (sock_host, sock_guest) = work.path("sock");
    let mut server = Server::bind(&sock_host).unwrap();
    server.set_caps("application/x-mediamem-test").unwrap();
    let mut files = Vec::new();
    let mut srcs = Vec::new();
    for n in 0..2 {
        let (host, guest) = work.path(&format!("out{n}"));
        files.push(host);
        srcs.push(gst(
            &root,
            &work,
            &format!("src{n}"),
            // Without the last sample a sink keeps, every buffer comes back.
            &format!(
                "unixfdsrc socket-path={sock_guest} ! filesink location={guest} sync=false \
                 enable-last-sample=false"
            ),
        ));
    }
    assert!(server.wait_for_clients(2, Duration::from_secs(30)).unwrap());
    // A third client connects, takes buffers, never releases, and goes.
    let rogue = UnixStream::connect(&sock_host).unwrap();
    assert!(server.wait_for_clients(3, Duration::from_secs(10)).unwrap());
    for f in 0..20 {
        let mem = shm_frame(pattern(f), 4096);
        server
            .send_buffer(OutBuffer {
                memories: vec![mem],
                ..Default::default()
            })
            .unwrap();
    }
    assert_eq!(server.clients(), 3);
    assert_eq!(
        server.held_buffers(),
        20,
        "the rogue client holds every buffer"
    );
    drop(rogue);
    // Its connection is gone: every hold it had is dropped.
    let end = Instant::now() + Duration::from_secs(10);
    while server.clients() > 2 {
        assert!(Instant::now() < end);
        server.process(Some(Duration::from_millis(100))).unwrap();
    }
    // The GStreamer clients release as their filesinks write (a running
    // pipeline may keep its last few buffers): with the rogue's holds gone,
    // buffers leave the server.
    let end = Instant::now() + Duration::from_secs(30);
    while server.held_buffers() > 5 {
        assert!(
            Instant::now() < end,
            "{} buffers held; {}",
            server.held_buffers(),
            srcs.iter().map(Gst::log).collect::<Vec<_>>().join("\n")
        );
        server.process(Some(Duration::from_millis(100))).unwrap();
    }
    server.send_eos().unwrap();
    for s in &mut srcs {
        s.finish(Duration::from_secs(60));
    }
    // Both clients are gone (after their last releases): nothing is held.
    assert!(server.wait_released(Duration::from_secs(10)).unwrap());
    let end = Instant::now() + Duration::from_secs(10);
    while server.clients() > 0 {
        assert!(Instant::now() < end);
        server.process(Some(Duration::from_millis(100))).unwrap();
    }
    for file in &files {
        let out = std::fs::read(file).unwrap();
        assert_eq!(out.len(), 20 * 4096);
        for f in 0..20 {
            let expect = pattern(f);
            assert!(out[f * 4096..(f + 1) * 4096]
                .iter()
                .enumerate()
                .all(|(i, &b)| b == expect(i)));
        }
    }
}

// ---------------------------------------------------------------------------
// Both ends: mediamem server → unixfdsrc ! queue ! unixfdsink → mediamem
// client, for GStreamer's own cases.

fn timestamp_meta(info: Option<&str>) -> Meta {
    let mut payload = Vec::new();
    payload.extend_from_slice(&42u64.to_le_bytes());
    payload.extend_from_slice(&7u64.to_le_bytes());
    payload.extend_from_slice(b"timestamp/x-mediamem\0");
    if let Some(info) = info {
        payload.extend_from_slice(info.as_bytes());
        payload.push(0);
    }
    Meta::new("GstReferenceTimestampMeta", 0, &payload).unwrap()
}

#[test]
fn relay_metas_caps_change_zero_memories_and_eos() {
    let Some(root) = rootfs("relay_metas_caps_change_zero_memories_and_eos") else {
        return;
    };
    let work = Work::new(&root);
    let (in_host, in_guest) = work.path("in");
    let (out_host, out_guest) = work.path("out");
    let mut server = Server::bind(&in_host).unwrap();
    // Trixie's unixfdsrc (1.26.2) reads a payload with one recv: the 1 MB
    // meta must be queued whole before it reads (see set_send_buffer_size).
    server.set_send_buffer_size(4 << 20).unwrap();
    server
        .set_caps("application/x-mediamem-test,part=(int)1")
        .unwrap();
    // No queue: with no client on `out` yet, unixfdsink waits for one
    // (wait-for-connection) and unixfdsrc stops reading, so everything
    // below is queued in the socket before the relay reads on.
    let mut relay = gst(
        &root,
        &work,
        "relay",
        &format!(
            "unixfdsrc socket-path={in_guest} ! unixfdsink socket-path={out_guest} \
             sync=false wait-for-connection=true enable-last-sample=false"
        ),
    );
    assert!(server.wait_for_clients(1, Duration::from_secs(30)).unwrap());

    let big = "B".repeat(1_000_000);
    assert!(
        timestamp_meta(Some(&format!("info, data=(string){big}")))
            .as_bytes()
            .len()
            > 1_000_000
    );
    let big_info = format!("info, data=(string){big}");
    let sent: Vec<(Vec<Memory>, Vec<Meta>)> = vec![
        (
            vec![shm_frame(|i| i as u8, 1000)],
            vec![timestamp_meta(Some("info, field=(int)42"))],
        ),
        (vec![], vec![]),
        (
            vec![shm_frame(|_| 9, 100)],
            vec![timestamp_meta(Some(&big_info))],
        ),
        (
            vec![
                shm_frame(|_| 1, 300),
                shm_frame(|_| 2, 5000).share(1000..3000).unwrap(),
            ],
            vec![],
        ),
    ];
    for (memories, metas) in sent.iter().cloned() {
        server
            .send_buffer(OutBuffer {
                memories,
                info: BufferInfo {
                    pts: Some(monotonic_now()),
                    ..Default::default()
                },
                metas,
            })
            .unwrap();
    }
    server
        .set_caps("application/x-mediamem-test,part=(int)2")
        .unwrap();
    server
        .send_buffer(OutBuffer {
            memories: vec![shm_frame(|_| 5, 64)],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(server.clients(), 1, "the relay took everything");
    let mut client = connect(&out_host);

    let mut events = Vec::new();
    let mut n_buffers = 0;
    while n_buffers < 5 {
        server.process(Some(Duration::ZERO)).unwrap();
        match client.recv().unwrap() {
            Some(Event::Eos) => panic!("EOS before it was sent"),
            Some(e) => {
                n_buffers += usize::from(matches!(e, Event::Buffer(_)));
                events.push(e);
            }
            None => panic!("relay closed:\n{}", relay.log()),
        }
    }
    // A client that connects before the sink has caps gets "NULL"
    // (gst_caps_to_string of none) first.
    let caps: Vec<&String> = events
        .iter()
        .filter_map(|e| {
            if let Event::Caps(c) = e {
                Some(c)
            } else {
                None
            }
        })
        .filter(|c| c.as_str() != "NULL")
        .collect();
    assert_eq!(caps.len(), 2, "{caps:?}");
    assert!(
        caps[0].contains("part=(int)1") && caps[1].contains("part=(int)2"),
        "{caps:?}"
    );
    assert!(matches!(events[0], Event::Caps(_)), "caps come first");
    let buffers: Vec<&Buffer> = events
        .iter()
        .filter_map(|e| {
            if let Event::Buffer(b) = e {
                Some(b)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(buffers.len(), 5);
    // The caps change sits between the 4th and the 5th buffer.
    let second_caps = events
        .iter()
        .position(|e| matches!(e, Event::Caps(c) if c.contains("part=(int)2")))
        .unwrap();
    assert!(matches!(&events[second_caps + 1], Event::Buffer(b) if bytes_of(b) == vec![5; 64]));

    assert_eq!(
        bytes_of(buffers[0]),
        (0..1000).map(|i| i as u8).collect::<Vec<_>>()
    );
    // unixfdsrc deserializes each meta it can; a gst-launch-1.0 process
    // registers no GstReferenceTimestampMeta (nor any custom meta), so the
    // relay skips it by its size and passes the buffer on without it. Its
    // bytes arriving intact, and the next buffers too, shows the meta was
    // framed right; the metas' own round trip is checked between mediamem's
    // ends (server_to_client_in_process).
    assert!(buffers[0]
        .metas
        .iter()
        .all(|m| m.name() != "GstReferenceTimestampMeta"));

    assert!(buffers[1].memories.is_empty(), "zero-memory buffer");

    assert_eq!(bytes_of(buffers[2]), vec![9; 100]);
    // After the 1 MB meta (read by trixie's unixfdsrc in one recv),
    // the stream is still in sync: buffers 3 and 4 arrive intact.

    assert_eq!(buffers[3].memories.len(), 2);
    assert_eq!(bytes_of(buffers[3]), [vec![1; 300], vec![2; 2000]].concat());

    // Releases travel back through the relay to the server (unixfdsink
    // unrefs, unixfdsrc's memories die, it releases to us).
    drop(events);
    client.flush().unwrap();
    assert!(
        server.wait_released(Duration::from_secs(30)).unwrap(),
        "{} buffers still held",
        server.held_buffers()
    );
    server.send_eos().unwrap();
    assert!(matches!(client.recv().unwrap(), Some(Event::Eos)));
    relay.finish(Duration::from_secs(30));
}

// ---------------------------------------------------------------------------
// Hostile sinks: a raw socket plays `unixfdsink` to the client.

fn header(kind: u32, len: usize) -> Vec<u8> {
    let mut h = kind.to_ne_bytes().to_vec();
    h.extend_from_slice(&(len as u32).to_ne_bytes());
    h
}

fn new_buffer_payload(id: u64, kind: u8, regions: &[(u64, u64)], n_meta: u16) -> Vec<u8> {
    let mut p = Vec::new();
    for v in [id, u64::MAX, u64::MAX, u64::MAX, 0, 0] {
        p.extend_from_slice(&v.to_ne_bytes());
    }
    p.extend_from_slice(&0u32.to_ne_bytes());
    p.push(kind);
    p.push(regions.len() as u8);
    p.extend_from_slice(&n_meta.to_ne_bytes());
    for (size, offset) in regions {
        p.extend_from_slice(&size.to_ne_bytes());
        p.extend_from_slice(&offset.to_ne_bytes());
    }
    p
}

/// Send `bytes` with `fds` in one sendmsg.
fn send_with_fds(sock: &UnixStream, bytes: &[u8], fds: &[OwnedFd]) {
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&borrowed)));
    let n = rustix::net::sendmsg(
        sock,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        rustix::net::SendFlags::NOSIGNAL,
    )
    .unwrap();
    assert_eq!(n, bytes.len());
}

/// One end of a socket pair to send as an fd, and the other end, which
/// reads end of file once every copy of the first is closed.
fn tracer() -> (OwnedFd, UnixStream) {
    let (w, r) = UnixStream::pair().unwrap();
    (OwnedFd::from(w), r)
}

fn assert_closed(mut reader: UnixStream) {
    // Blocks only if a copy of the write end is still open: with a
    // timeout thread, a leak fails instead of hanging.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let _ = tx.send(reader.read(&mut b).map(|n| n == 0));
    });
    let eof = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("a received fd was leaked: the pipe is still open");
    assert!(eof.unwrap());
}

fn hostile_pair() -> (UnixStream, Client) {
    let (peer, ours) = UnixStream::pair().unwrap();
    let mut client = Client::new(ours, Default::default());
    client.set_timeout(Some(Duration::from_millis(300)));
    (peer, client)
}

fn assert_broken(client: &mut Client) {
    assert!(
        matches!(client.recv(), Err(Error::Protocol(_))),
        "out of sync afterwards"
    );
}

#[test]
fn hostile_eof_inside_payload() {
    let (mut peer, mut client) = hostile_pair();
    let mut msg = header(NEW_BUFFER, 56);
    msg.extend_from_slice(&[0; 10]);
    peer.write_all(&msg).unwrap();
    drop(peer);
    let start = Instant::now();
    let e = client.recv().unwrap_err();
    assert!(
        matches!(e, Error::Protocol(ref m) if m.contains("payload")),
        "{e}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "no loop at end of file"
    );
    assert_broken(&mut client);
}

#[test]
fn hostile_short_header() {
    let (mut peer, mut client) = hostile_pair();
    peer.write_all(&[2, 0, 0, 0, 1]).unwrap();
    // The peer stalls inside the header: a timeout, inside a message.
    assert!(matches!(
        client.recv(),
        Err(Error::TimedOut {
            inside_message: true
        })
    ));
    assert_broken(&mut client);

    let (mut peer, mut client) = hostile_pair();
    let (w, r) = tracer();
    send_with_fds(&peer, &[3, 0, 0], &[w]);
    peer.flush().unwrap();
    drop(peer);
    let e = client.recv().unwrap_err();
    assert!(
        matches!(e, Error::Protocol(ref m) if m.contains("header")),
        "{e}"
    );
    assert_closed(r);
}

#[test]
fn hostile_wrong_direction_and_unknown_types() {
    let (mut peer, mut client) = hostile_pair();
    // Unknown types are skipped, their fds closed; then the client goes on.
    let (w, r) = tracer();
    let mut unknown = header(77, 3);
    unknown.extend_from_slice(b"abc");
    send_with_fds(&peer, &unknown, &[w]);
    let mut caps = header(CAPS, 4);
    caps.extend_from_slice(b"a/b\0");
    peer.write_all(&caps).unwrap();
    assert!(matches!(client.recv().unwrap(), Some(Event::Caps(c)) if c == "a/b"));
    assert_eq!(client.caps(), Some("a/b"));
    assert_closed(r);
    // RELEASE_BUFFER goes the other way.
    let mut release = header(RELEASE_BUFFER, 8);
    release.extend_from_slice(&1u64.to_ne_bytes());
    peer.write_all(&release).unwrap();
    assert!(matches!(client.recv(), Err(Error::Protocol(m)) if m.contains("RELEASE")));
    assert_broken(&mut client);

    // CAPS without its NUL.
    let (mut peer, mut client) = hostile_pair();
    let mut caps = header(CAPS, 3);
    caps.extend_from_slice(b"a/b");
    peer.write_all(&caps).unwrap();
    assert!(matches!(client.recv(), Err(Error::Protocol(_))));
}

/// Read one release command off the fake sink's socket.
fn read_release(peer: &mut UnixStream) -> u64 {
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 16];
    peer.read_exact(&mut b).unwrap();
    assert_eq!(&b[..8], &header(RELEASE_BUFFER, 8)[..]);
    u64::from_ne_bytes(b[8..].try_into().unwrap())
}

#[test]
fn hostile_fd_count_and_type_are_refused_fds_closed_buffer_released() {
    // Two memories announced, one fd.
    let (mut peer, mut client) = hostile_pair();
    let (w, r) = tracer();
    let payload = new_buffer_payload(0xabc, 0, &[(10, 0), (10, 0)], 0);
    let mut msg = header(NEW_BUFFER, payload.len());
    msg.extend_from_slice(&payload);
    send_with_fds(&peer, &msg, &[w]);
    let e = client.recv().unwrap_err();
    assert!(
        matches!(e, Error::Protocol(ref m) if m.contains("fds")),
        "{e}"
    );
    assert_closed(r);
    assert_eq!(
        read_release(&mut peer),
        0xabc,
        "the sink gets its buffer back"
    );

    // Type 2.
    let (w, r) = tracer();
    let payload = new_buffer_payload(0xdef, 2, &[(10, 0)], 0);
    let mut msg = header(NEW_BUFFER, payload.len());
    msg.extend_from_slice(&payload);
    send_with_fds(&peer, &msg, &[w]);
    let e = client.recv().unwrap_err();
    assert!(
        matches!(e, Error::Protocol(ref m) if m.contains("type 2")),
        "{e}"
    );
    assert_closed(r);
    assert_eq!(read_release(&mut peer), 0xdef);

    // A pipe is no memory: refused by the admission, closed, released.
    let (w, r) = tracer();
    let payload = new_buffer_payload(0x123, 0, &[(10, 0)], 0);
    let mut msg = header(NEW_BUFFER, payload.len());
    msg.extend_from_slice(&payload);
    send_with_fds(&peer, &msg, &[w]);
    assert!(client.recv().is_err());
    assert_closed(r);
    assert_eq!(read_release(&mut peer), 0x123);

    // A region past the end of the memfd, and one that overflows.
    for (size, offset) in [(4096u64, 1u64 << 20), (u64::MAX, 2)] {
        let mem = ShmAllocator::get().alloc(4096, None).unwrap();
        let payload = new_buffer_payload(7, 0, &[(size, offset)], 0);
        let mut msg = header(NEW_BUFFER, payload.len());
        msg.extend_from_slice(&payload);
        send_with_fds(&peer, &msg, &[mem.try_clone_fd().unwrap()]);
        assert!(client.recv().is_err());
        assert_eq!(read_release(&mut peer), 7);
    }

    // A malformed meta (total size 0).
    let mem = ShmAllocator::get().alloc(4096, None).unwrap();
    let mut payload = new_buffer_payload(8, 0, &[(16, 0)], 1);
    payload.extend_from_slice(&[0; 8]);
    let mut msg = header(NEW_BUFFER, payload.len());
    msg.extend_from_slice(&payload);
    send_with_fds(&peer, &msg, &[mem.try_clone_fd().unwrap()]);
    assert!(matches!(client.recv(), Err(Error::Protocol(m)) if m.contains("meta")));
    assert_eq!(read_release(&mut peer), 8);

    // After all that, a good buffer still arrives (the stream stayed in
    // sync), with memfd memory and maxsize = offset + size.
    let mut mem = ShmAllocator::get().alloc(4096, None).unwrap();
    mem.map_mut().unwrap()[100..150].fill(0x5a);
    let meta = Meta::new("GstCustomMeta", 0, b"x, field=(int)42\0").unwrap();
    let mut payload = new_buffer_payload(9, 0, &[(50, 100)], 1);
    payload.extend_from_slice(meta.as_bytes());
    let mut msg = header(NEW_BUFFER, payload.len());
    msg.extend_from_slice(&payload);
    send_with_fds(&peer, &msg, &[mem.try_clone_fd().unwrap()]);
    let Some(Event::Buffer(b)) = client.recv().unwrap() else {
        panic!("a buffer")
    };
    assert_eq!(b.memories[0].sizes(), (50, 100, 150));
    assert!(b.memories[0].is_readonly());
    assert_eq!(bytes_of(&b), vec![0x5a; 50]);
    assert_eq!(b.metas, vec![meta]);
    assert_eq!(b.info.pts, None);
    let share = b.memories[0].share(10..20).unwrap();
    drop(b);
    assert!(peer
        .set_read_timeout(Some(Duration::from_millis(100)))
        .is_ok());
    let mut probe = [0u8; 1];
    assert!(peer.read(&mut probe).is_err(), "a share keeps the buffer");
    drop(share);
    assert_eq!(read_release(&mut peer), 9);
}

#[test]
fn hostile_oversized_payload_is_refused_without_reading_it() {
    let (mut peer, mut client) = hostile_pair();
    peer.write_all(&header(NEW_BUFFER, u32::MAX as usize))
        .unwrap();
    assert!(matches!(client.recv(), Err(Error::TooLarge { .. })));
    assert_broken(&mut client);
}

// ---------------------------------------------------------------------------
// Hostile clients: raw sockets play `unixfdsrc` to the server.

fn server_with_buffer(dir: &Path) -> (Server, UnixStream, u64) {
    let mut server = Server::bind(dir.join("sock")).unwrap();
    server.set_timeout(Duration::from_millis(500));
    assert!(
        matches!(
            server.send_buffer(OutBuffer::default()),
            Err(Error::Protocol(_))
        ),
        "no buffer before the caps"
    );
    server.set_caps("a/b").unwrap();
    let mut peer = UnixStream::connect(dir.join("sock")).unwrap();
    assert!(server.wait_for_clients(1, Duration::from_secs(5)).unwrap());
    let id = server
        .send_buffer(OutBuffer {
            memories: vec![shm_frame(|_| 1, 64)],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(server.held_buffers(), 1);
    // CAPS came first, then the buffer.
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut h = [0u8; 8];
    peer.read_exact(&mut h).unwrap();
    assert_eq!(&h[..], &header(CAPS, 4)[..]);
    let mut caps = [0u8; 4];
    peer.read_exact(&mut caps).unwrap();
    assert_eq!(&caps, b"a/b\0");
    (server, peer, id)
}

fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "mediamem-unixfd-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn wait_dropped(server: &mut Server) {
    let end = Instant::now() + Duration::from_secs(5);
    while server.clients() > 0 {
        assert!(Instant::now() < end, "the client was not dropped");
        server.process(Some(Duration::from_millis(50))).unwrap();
    }
    assert_eq!(server.held_buffers(), 0, "its holds went with it");
}

#[test]
fn server_drops_a_client_that_releases_an_unknown_id() {
    let dir = temp_dir();
    let (mut server, mut peer, id) = server_with_buffer(&dir);
    let mut release = header(RELEASE_BUFFER, 8);
    release.extend_from_slice(&(id + 1000).to_ne_bytes());
    peer.write_all(&release).unwrap();
    wait_dropped(&mut server);
    drop(server);
    assert!(!dir.join("sock").exists(), "the socket is removed on drop");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn server_drops_wrong_direction_short_and_silent_clients() {
    let dir = temp_dir();
    // A client that sends EOS (sink to client only).
    let (mut server, mut peer, _) = server_with_buffer(&dir);
    peer.write_all(&header(EOS, 0)).unwrap();
    wait_dropped(&mut server);
    drop(server);
    // A client that disconnects with the buffer held.
    let (mut server, peer, _) = server_with_buffer(&dir);
    drop(peer);
    wait_dropped(&mut server);
    drop(server);
    // A client that stops inside a release (its timeout is 500 ms).
    let (mut server, mut peer, _) = server_with_buffer(&dir);
    peer.write_all(&header(RELEASE_BUFFER, 8)[..6]).unwrap();
    wait_dropped(&mut server);
    drop(server);
    // A client that releases properly keeps its place.
    let (mut server, mut peer, id) = server_with_buffer(&dir);
    let mut release = header(RELEASE_BUFFER, 8);
    release.extend_from_slice(&id.to_ne_bytes());
    peer.write_all(&release).unwrap();
    assert!(server.wait_released(Duration::from_secs(5)).unwrap());
    assert_eq!(server.clients(), 1);
    drop(server);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn server_to_client_in_process() {
    // Both ends of mediamem, no GStreamer: timestamps, flags, metas and
    // several memories make the round trip.
    let dir = temp_dir();
    let mut server = Server::bind(dir.join("sock")).unwrap();
    server.set_caps("video/x-raw").unwrap();
    let mut client = Client::new(
        UnixStream::connect(dir.join("sock")).unwrap(),
        Default::default(),
    );
    client.set_timeout(Some(Duration::from_secs(5)));
    assert!(server.wait_for_clients(1, Duration::from_secs(5)).unwrap());
    let info = BufferInfo {
        pts: Some(5),
        dts: Some(4),
        duration: Some(3),
        offset: 2,
        offset_end: 1,
        flags: 0x40,
    };
    let system = mediamem::Allocator::system().alloc(10, None).unwrap();
    system.map_writable().unwrap().fill(3);
    server
        .send_buffer(OutBuffer {
            memories: vec![shm_frame(|_| 1, 10), system],
            info,
            metas: vec![Meta::new("M", 1, b"xyz").unwrap()],
        })
        .unwrap();
    assert!(matches!(client.recv().unwrap(), Some(Event::Caps(c)) if c == "video/x-raw"));
    let Some(Event::Buffer(b)) = client.recv().unwrap() else {
        panic!()
    };
    assert_eq!(b.info, info);
    assert_eq!(bytes_of(&b), [vec![1; 10], vec![3; 10]].concat());
    assert_eq!(b.metas[0].name(), "M");
    assert_eq!(b.metas[0].version(), 1);
    assert_eq!(b.metas[0].payload(), b"xyz");
    // Dropped on another thread: the release still goes, without the
    // client's help.
    std::thread::spawn(move || drop(b)).join().unwrap();
    assert!(server.wait_released(Duration::from_secs(5)).unwrap());
    server.send_eos().unwrap();
    assert!(matches!(client.recv().unwrap(), Some(Event::Eos)));
    drop(server);
    assert!(client.recv().unwrap().is_none());
    std::fs::remove_dir_all(dir).unwrap();
}
