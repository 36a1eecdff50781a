//! Allocate, map, share and copy: system memory and shared memory.
//!
//! `cargo run -p mediamem --example alloc_and_map`

use mediamem::{AllocationParams, Allocator, MemoryFlags, Result, ShmAllocator};

fn main() -> Result<()> {
    // 1 MiB of system memory, 64-byte aligned, 32 zeroed padding bytes.
    let params = AllocationParams::new(MemoryFlags::ZERO_PADDED, 63, 0, 32);
    let mut frame = Allocator::system().alloc(1 << 20, Some(&params))?;
    frame.map_mut()?.fill(0x80);
    let (size, offset, maxsize) = frame.sizes();
    println!("system memory: size {size}, offset {offset}, maxsize {maxsize}");

    // A zero-copy, read-only view, and a writable copy of it.
    let line = frame.share(..1920)?;
    let copy = line.copy()?;
    copy.map_writable()?[0] = 1;
    println!(
        "share of {} bytes reads {:#x}; its copy reads {}",
        line.size(),
        line.map_readable()?[0],
        copy.map_readable()?[0]
    );

    // Shared memory: a sealed memfd another process can map.
    let shm = ShmAllocator::get().alloc(4096, None)?;
    shm.map_writable()?.fill(7);
    println!(
        "shm memory: fd {:?}, {} bytes, fd-backed: {}",
        shm.fd(),
        shm.maxsize(),
        mediamem::is_fd_memory(&shm)
    );
    Ok(())
}
