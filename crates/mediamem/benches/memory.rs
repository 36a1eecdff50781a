//! Core memory operations on system memory.
//!
//! `cargo bench -p mediamem --bench memory`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mediamem::{Allocator, MapFlags, Memory};

fn alloc_free(c: &mut Criterion) {
    let sys = Allocator::system();
    let mut g = c.benchmark_group("sysmem_alloc_map_free");
    for size in [64usize, 4096, 1 << 20] {
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            b.iter(|| {
                let m = sys.alloc(size, None).unwrap();
                black_box(m.map_writable().unwrap().as_ptr());
            })
        });
    }
    g.finish();
}

fn map_unmap(c: &mut Criterion) {
    let m = Memory::with_size(4096).unwrap();
    c.bench_function("map_readable_unmap", |b| {
        b.iter(|| black_box(m.map_readable().unwrap().as_ptr()))
    });
    c.bench_function("map_writable_unmap", |b| {
        b.iter(|| black_box(m.map_writable().unwrap().as_ptr()))
    });
    c.bench_function("map_raw_read_unmap", |b| {
        b.iter(|| black_box(m.map_raw(MapFlags::READ).unwrap().as_ptr()))
    });
}

fn share_copy(c: &mut Criterion) {
    let m = Memory::with_size(4096).unwrap();
    c.bench_function("share_drop", |b| {
        b.iter(|| black_box(m.share(100..200).unwrap()))
    });
    c.bench_function("copy_4KiB", |b| b.iter(|| black_box(m.copy().unwrap())));
}

criterion_group!(benches, alloc_free, map_unmap, share_copy);
criterion_main!(benches);
