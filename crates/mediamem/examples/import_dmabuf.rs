//! Allocate a dma-buf where the machine has a provider (the system heap,
//! udmabuf), hand its fd around, and import it as dma-buf memory: the
//! import and the original share one borrow rule, and every map is
//! bracketed by `DMA_BUF_IOCTL_SYNC`.
//!
//! `cargo run -p mediamem --example import_dmabuf`

use mediamem::heap::DmaHeapAllocator;
use mediamem::{
    dmabuf_memory_get_fd, is_dmabuf_memory, Allocator, DmaBufAllocator, Memory, Result,
    UdmabufAllocator,
};

/// A way to get a dma-buf allocator.
type Provider = Box<dyn Fn() -> Result<Allocator>>;

/// A dma-buf from the first provider that works here, or why none did.
fn dmabuf_from_this_machine() -> std::result::Result<Memory, String> {
    let mut why = Vec::new();
    let providers: [(&str, Provider); 2] = [
        (
            "system heap",
            Box::new(|| DmaHeapAllocator::get("system").map(Into::into)),
        ),
        (
            "udmabuf",
            Box::new(|| UdmabufAllocator::get().map(Into::into)),
        ),
    ];
    for (name, get) in providers {
        match get().and_then(|a| a.alloc(1 << 16, None)) {
            Ok(mem) => return Ok(mem),
            Err(e) => why.push(format!("{name}: {e}")),
        }
    }
    Err(why.join("\n  "))
}

fn main() -> Result<()> {
    let original = match dmabuf_from_this_machine() {
        Ok(mem) => mem,
        Err(why) => {
            println!("no dma-buf provider on this machine:\n  {why}");
            println!("(run it in the QEMU guest of `cargo xtask vm-test`, or on a machine with /dev/dma_heap/system)");
            return Ok(());
        }
    };
    original.map_writable()?.fill(0x42);
    // The fd another process or a device would hand us.
    let fd = original.try_clone_fd()?;
    let imported = DmaBufAllocator::new().alloc(fd, original.maxsize())?;
    println!(
        "imported dma-buf: fd {:?}, is_dmabuf_memory {}, first byte {:#x}",
        dmabuf_memory_get_fd(&imported),
        is_dmabuf_memory(&imported),
        imported.map_readable()?[0]
    );
    {
        let _reading = imported.map_readable()?;
        // The same pages: the original cannot be written under the slice.
        println!(
            "write while the import is read: {:?}",
            original.map_writable().err()
        );
    }
    Ok(())
}
