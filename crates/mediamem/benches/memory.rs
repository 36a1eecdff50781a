//! mediamem's own criterion suite, with the raw-syscall floors (shm
//! allocation, IPC round trips): `cargo bench -p mediamem --bench memory`.
//!
//! The comparison with GStreamer is `benches/compare.rs` (GStreamer's C API
//! through a C harness, in interleaved rounds), which `cargo xtask bench`
//! runs.

use std::hint::black_box;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use criterion::{criterion_group, criterion_main, Criterion};
use mediamem::ipc::{ReceivePolicy, Receiver, Sender};
use mediamem::pool::MemoryPool;
use mediamem::{Allocator, MapFlags, Memory, ShmAllocator};
use rustix::fs::MemfdFlags;
use rustix::mm::{MapFlags as MmapFlags, ProtFlags};

const SIZES: &[(usize, &str)] = &[
    (64, "64B"),
    (4096, "4KiB"),
    (65536, "64KiB"),
    (1 << 20, "1MiB"),
    (8 << 20, "8MiB"),
];

/// memfd_create + ftruncate + mmap + munmap + close: what any fd allocation
/// must do at least.
fn floor_memfd(size: usize) {
    let fd = rustix::fs::memfd_create("floor", MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, size as u64).unwrap();
    // SAFETY: a fresh shared mapping of our own memfd, unmapped right away.
    unsafe {
        let p = rustix::mm::mmap(
            std::ptr::null_mut(),
            size,
            ProtFlags::READ | ProtFlags::WRITE,
            MmapFlags::SHARED,
            &fd,
            0,
        )
        .unwrap();
        black_box(p);
        rustix::mm::munmap(p, size).unwrap();
    }
    drop(fd);
}

fn alloc_map_free(c: &mut Criterion) {
    let sys = Allocator::system();
    let shm = ShmAllocator::get();
    for &(size, name) in SIZES {
        let mut g = c.benchmark_group(format!("alloc_map_free_{name}"));
        g.bench_function("mediamem sysmem", |b| {
            b.iter(|| {
                black_box(
                    sys.alloc(size, None)
                        .unwrap()
                        .map_writable()
                        .unwrap()
                        .as_ptr(),
                )
            })
        });
        g.bench_function("mediamem shm", |b| {
            b.iter(|| {
                black_box(
                    shm.alloc(size, None)
                        .unwrap()
                        .map_writable()
                        .unwrap()
                        .as_ptr(),
                )
            })
        });
        g.bench_function("syscall floor (memfd)", |b| b.iter(|| floor_memfd(size)));
        g.finish();
    }
}

fn map_unmap(c: &mut Criterion) {
    let mut g = c.benchmark_group("map_unmap");
    let m = Memory::with_size(4096).unwrap();
    g.bench_function("mediamem sysmem map_readable", |b| {
        b.iter(|| black_box(m.map_readable().unwrap().as_ptr()))
    });
    let mut owned = Memory::with_size(4096).unwrap();
    g.bench_function("mediamem sysmem map_mut", |b| {
        b.iter(|| black_box(owned.map_mut().unwrap().as_mut_ptr()))
    });
    // What any implementation of GStreamer's lock word pays on a shared
    // handle: one compare-and-swap to lock, one to unlock.
    let word = std::sync::atomic::AtomicU64::new(0);
    g.bench_function("lock-word floor (2 CAS)", |b| {
        use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
        b.iter(|| {
            let v = word.load(Relaxed);
            let _ = black_box(word.compare_exchange_weak(v, v + 0x101, Acquire, Relaxed));
            let v = word.load(Relaxed);
            let _ = black_box(word.compare_exchange_weak(v, v - 0x101, Release, Relaxed));
        })
    });
    g.bench_function("mediamem sysmem map_raw", |b| {
        b.iter(|| black_box(m.map_raw(MapFlags::READ).unwrap().as_ptr()))
    });
    let shm = ShmAllocator::get().alloc(4096, None).unwrap();
    g.bench_function("mediamem shm map_readable", |b| {
        b.iter(|| black_box(shm.map_readable().unwrap().as_ptr()))
    });
    g.finish();
}

fn share_copy(c: &mut Criterion) {
    let m = Memory::with_size(1 << 20).unwrap();
    let mut g = c.benchmark_group("share_drop");
    g.bench_function("mediamem", |b| {
        b.iter(|| black_box(m.share(100..200).unwrap()))
    });
    g.finish();
    for (len, name) in [(4096usize, "4KiB"), (1 << 20, "1MiB")] {
        let mut g = c.benchmark_group(format!("copy_{name}"));
        g.bench_function("mediamem", |b| {
            b.iter(|| black_box(m.copy_range(..len).unwrap()))
        });
        g.finish();
    }
}

fn pool(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_acquire_release");
    let pool = MemoryPool::new(Allocator::system(), 4096, None, 4, 4).unwrap();
    g.bench_function("mediamem", |b| {
        b.iter(|| black_box(pool.acquire().unwrap()))
    });
    g.finish();
}

/// One fd out and an 8-byte release back, with the raw calls only.
/// The round trip floor; with `checks`, also what a receiver that trusts
/// nothing must do with the fd before reading it: check the seals and the
/// size, map it, unmap it.
fn floor_round_trip(tx: &UnixStream, rx: &UnixStream, fd: &OwnedFd, checks: bool) {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    let fds = [fd.as_fd()];
    control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
    let head = [0u8; 48];
    rustix::net::sendmsg(
        tx,
        &[IoSlice::new(&head)],
        &mut control,
        rustix::net::SendFlags::empty(),
    )
    .unwrap();
    let mut rspace = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut rcontrol = rustix::net::RecvAncillaryBuffer::new(&mut rspace);
    let mut buf = [0u8; 48];
    rustix::net::recvmsg(
        rx,
        &mut [IoSliceMut::new(&mut buf)],
        &mut rcontrol,
        rustix::net::RecvFlags::CMSG_CLOEXEC,
    )
    .unwrap();
    for m in rcontrol.drain() {
        if let rustix::net::RecvAncillaryMessage::ScmRights(r) = m {
            r.for_each(|fd| {
                if checks {
                    let seals = rustix::fs::fcntl_get_seals(&fd).unwrap();
                    let size = rustix::fs::fstat(&fd).unwrap().st_size as usize;
                    black_box((seals, size));
                    // SAFETY: a fresh read-only mapping of the received
                    // memfd (4096 bytes, sealed), unmapped right away.
                    unsafe {
                        let p = rustix::mm::mmap(
                            std::ptr::null_mut(),
                            4096,
                            ProtFlags::READ,
                            MmapFlags::SHARED,
                            &fd,
                            0,
                        )
                        .unwrap();
                        black_box(p);
                        rustix::mm::munmap(p, 4096).unwrap();
                    }
                }
                drop(fd)
            });
        }
    }
    rustix::io::write(rx, &[0u8; 24]).unwrap();
    let mut back = [0u8; 24];
    rustix::io::read(tx, &mut back).unwrap();
}

fn ipc(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipc_round_trip");
    let (a, b) = UnixStream::pair().unwrap();
    let mut tx = Sender::new(a);
    let mut rx = Receiver::new(b, ReceivePolicy::default());
    let frame = ShmAllocator::get().alloc(4096, None).unwrap();
    g.bench_function("mediamem", |bench| {
        bench.iter(|| {
            tx.send_frame(vec![frame.clone()], b"").unwrap();
            let f = rx.recv().unwrap().unwrap();
            black_box(f.memories[0].map_readable().unwrap().as_ptr());
            drop(f);
            tx.wait_release().unwrap().unwrap();
        })
    });
    let (x, y) = UnixStream::pair().unwrap();
    let memfd = rustix::fs::memfd_create("floor", MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&memfd, 4096).unwrap();
    g.bench_function("syscall floor (sendmsg+recvmsg+release)", |bench| {
        bench.iter(|| floor_round_trip(&x, &y, &memfd, false))
    });
    g.bench_function("syscall floor + seals, fstat, mmap, munmap", |bench| {
        bench.iter(|| floor_round_trip(&x, &y, &memfd, true))
    });
    g.finish();
}

criterion_group!(benches, alloc_map_free, map_unmap, share_copy, pool, ipc);
criterion_main!(benches);
