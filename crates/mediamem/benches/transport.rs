//! The frame transport (issue 12): what a frame costs with registered
//! buffers (wire version 2), with an fd each frame (version 1's way), and
//! copied through the socket.
//!
//! 1. criterion, in one binary: the round trip of a registered 1080p NV12
//!    frame (send ids, receive, map, drop, release back), the floor (a
//!    16-byte message and a 16-byte reply over the same kind of socket
//!    pair) and the fd path (the same frame's fd sent and mapped afresh).
//! 2. whole processes: 600 1080p NV12 frames to a consumer process (this
//!    binary again) that reads one byte per 4 KiB page; CPU time of both
//!    processes from `getrusage`, for registered buffers, an fd each frame
//!    and copy, `MEDIAMEM_BENCH_ROUNDS` interleaved rounds (default 5);
//!    medians with their ranges.
//!
//! ```sh
//! cargo bench -p mediamem --bench transport
//! ```

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Instant;

use criterion::Criterion;
use mediamem::ipc::{ReceivePolicy, Receiver, Sender};
use mediamem::pool::MemoryPool;
use mediamem::ShmAllocator;

const W: usize = 1920;
const H: usize = 1080;
const NV12: usize = W * H * 3 / 2;
const PAGE: usize = 4096;

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("transport_round_trip");
    let pool = MemoryPool::new(ShmAllocator::get(), NV12, None, 1, 1).unwrap();
    for (name, register) in [
        ("registered (v2)", true),
        ("fd each frame (v1 path)", false),
    ] {
        let (a, b) = UnixStream::pair().unwrap();
        let mut tx = Sender::new(a);
        tx.set_register_buffers(register);
        let mut rx = Receiver::new(b, ReceivePolicy::default());
        g.bench_function(name, |bench| {
            bench.iter(|| {
                let frame = pool.acquire().unwrap();
                tx.send_frame(vec![frame], b"").unwrap();
                let f = rx.recv().unwrap().unwrap();
                black_box(f.memories[0].map_readable().unwrap().as_ptr());
                drop(f);
                tx.wait_release().unwrap().unwrap();
            })
        });
    }
    let (x, y) = UnixStream::pair().unwrap();
    g.bench_function("floor: 16 B message + 16 B reply", |bench| {
        let (mut x, mut y) = (&x, &y);
        let mut buf = [0u8; 16];
        bench.iter(|| {
            x.write_all(&[1u8; 16]).unwrap();
            y.read_exact(&mut buf).unwrap();
            y.write_all(&buf).unwrap();
            x.read_exact(&mut buf).unwrap();
            black_box(buf[0]);
        })
    });
    g.finish();
}

/// CPU time of this process so far (user + system), in nanoseconds.
fn cpu_ns() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the `rusage` it points at; RUSAGE_SELF is
    // always valid.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0;
    assert!(ok, "getrusage");
    // SAFETY: zeroed, then filled by a successful getrusage.
    let usage = unsafe { usage.assume_init() };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// One byte per page.
fn touch(bytes: &[u8]) -> u8 {
    bytes.iter().step_by(PAGE).fold(0, |a, &b| a ^ b)
}

/// The consumer process: read frames until the end, touching one byte per
/// page; print its CPU time.
fn consumer(mode: &str, fd: i32) {
    // SAFETY: the parent passed this inherited socket for us to own.
    let sock = unsafe { UnixStream::from_raw_fd(fd) };
    let before = cpu_ns();
    let mut frames = 0u64;
    let mut x = 0u8;
    if mode == "copy" {
        let mut sock = sock;
        let mut buf = vec![0u8; NV12];
        while sock.read_exact(&mut buf).is_ok() {
            x ^= touch(&buf);
            frames += 1;
        }
    } else {
        let mut rx = Receiver::new(sock, ReceivePolicy::default());
        while let Some(f) = rx.recv().unwrap() {
            x ^= touch(&f.memories[0].map_readable().unwrap());
            frames += 1;
        }
        rx.flush().unwrap();
    }
    black_box(x);
    println!("frames {frames} cpu_ns {}", cpu_ns() - before);
}

/// One whole-process run of `frames` frames; the CPU time of producer and
/// consumer, in ns per frame.
fn whole_run(mode: &str, frames: u64) -> (f64, f64, f64) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty()).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .env("MEDIAMEM_BENCH_CONSUMER", mode)
        .env("MEDIAMEM_BENCH_FD", theirs.as_raw_fd().to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    drop(theirs);
    let before = cpu_ns();
    let started = Instant::now();
    if mode == "copy" {
        let mut sock = ours;
        let mut buf = vec![0u8; NV12];
        for n in 0..frames {
            buf[..8].copy_from_slice(&n.to_le_bytes());
            sock.write_all(&buf).unwrap();
        }
        drop(sock);
    } else {
        let pool = MemoryPool::new(ShmAllocator::get(), NV12, None, 4, 4).unwrap();
        let mut tx = Sender::new(ours);
        tx.set_register_buffers(mode == "registered");
        for n in 0..frames {
            let mut frame = loop {
                match pool.acquire() {
                    Ok(f) => break f,
                    Err(_) => {
                        tx.wait_release().unwrap().unwrap();
                    }
                }
            };
            frame.map_mut().unwrap()[..8].copy_from_slice(&n.to_le_bytes());
            tx.send_frame(vec![frame], b"").unwrap();
            tx.poll_releases().unwrap();
        }
        tx.send_eos().unwrap();
        while tx.in_flight() > 0 && tx.wait_release().unwrap().is_some() {}
    }
    let out = child.wait_with_output().unwrap();
    let wall = started.elapsed().as_nanos() as f64 / frames as f64;
    let producer = (cpu_ns() - before) as f64 / frames as f64;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| -> u64 {
        let mut w = text.split_whitespace();
        while let Some(k) = w.next() {
            if k == key {
                return w.next().unwrap().parse().unwrap();
            }
        }
        panic!("no {key} in {text}")
    };
    assert_eq!(field("frames"), frames, "{text}");
    let consumer = field("cpu_ns") as f64 / frames as f64;
    (producer, consumer, wall)
}

fn median_range(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn whole_process() {
    let rounds: usize = std::env::var("MEDIAMEM_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let frames = 600;
    let modes = ["registered", "fd", "copy"];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let mut parts: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); 3];
    for _ in 0..rounds {
        for (i, mode) in modes.iter().enumerate() {
            let (p, c, w) = whole_run(mode, frames);
            cpu[i].push(p + c);
            parts[i].push((p, c, w));
        }
    }
    println!(
        "\nwhole process: {frames} frames of {W}x{H} NV12, consumer reads one byte per page, {rounds} interleaved rounds"
    );
    println!("| transport | CPU per frame, both processes (median [min..max]) | producer | consumer | wall per frame |");
    println!("|---|---|---|---|---|");
    let mut medians = [0.0; 3];
    for (i, mode) in modes.iter().enumerate() {
        let (m, lo, hi) = median_range(&mut cpu[i]);
        medians[i] = m;
        let mut p: Vec<f64> = parts[i].iter().map(|x| x.0).collect();
        let mut c: Vec<f64> = parts[i].iter().map(|x| x.1).collect();
        let mut w: Vec<f64> = parts[i].iter().map(|x| x.2).collect();
        println!(
            "| {mode} | {:.1} µs [{:.1}..{:.1}] | {:.1} µs | {:.1} µs | {:.1} µs |",
            m / 1e3,
            lo / 1e3,
            hi / 1e3,
            median_range(&mut p).0 / 1e3,
            median_range(&mut c).0 / 1e3,
            median_range(&mut w).0 / 1e3
        );
    }
    // Ratios per round (each round's runs are neighbours in time).
    let mut vs_fd: Vec<f64> = (0..rounds)
        .map(|r| cpu_of(&parts, 1, r) / cpu_of(&parts, 0, r))
        .collect();
    let mut vs_copy: Vec<f64> = (0..rounds)
        .map(|r| cpu_of(&parts, 2, r) / cpu_of(&parts, 0, r))
        .collect();
    let (f, flo, fhi) = median_range(&mut vs_fd);
    let (c, clo, chi) = median_range(&mut vs_copy);
    println!(
        "registered vs fd each frame: {f:.1}x less CPU [{flo:.1}..{fhi:.1}] (goal >= 5x: {})",
        if f >= 5.0 { "met" } else { "not met" }
    );
    println!(
        "registered vs copy: {c:.1}x less CPU [{clo:.1}..{chi:.1}] (goal >= 15x: {})",
        if c >= 15.0 { "met" } else { "not met" }
    );
}

fn cpu_of(parts: &[Vec<(f64, f64, f64)>], mode: usize, round: usize) -> f64 {
    let (p, c, _) = parts[mode][round];
    p + c
}

fn main() {
    if let Ok(mode) = std::env::var("MEDIAMEM_BENCH_CONSUMER") {
        let fd = std::env::var("MEDIAMEM_BENCH_FD").unwrap().parse().unwrap();
        consumer(&mode, fd);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    round_trip(&mut c);
    c.final_summary();
    if std::env::args().any(|a| a == "--bench")
        && std::env::var_os("MEDIAMEM_BENCH_SKIP_WHOLE").is_none()
    {
        whole_process();
    }
}
