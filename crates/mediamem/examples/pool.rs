//! A bounded pool: buffers come back when their block's last handle goes.
//!
//! `cargo run -p mediamem --example pool`

use mediamem::pool::MemoryPool;
use mediamem::{Error, Result, ShmAllocator};

fn main() -> Result<()> {
    let pool = MemoryPool::new(ShmAllocator::get(), 1 << 20, None, 1, 2)?;
    let mut a = pool.acquire()?;
    a.map_mut()?.fill(1); // the only handle: no lock word taken
    let b = pool.acquire()?;
    match pool.acquire() {
        Err(Error::PoolExhausted { max }) => println!("all {max} buffers are out"),
        other => println!("unexpected: {other:?}"),
    }
    // A share keeps the block out of the pool after its handle is gone...
    let view = a.share(..16)?;
    drop(a);
    println!("after dropping the handle: {} free", pool.free_count());
    // ...until the share goes too.
    drop(view);
    println!("after dropping the share: {} free", pool.free_count());
    let again = pool.acquire()?;
    println!(
        "acquired again: {} bytes, first byte {}",
        again.size(),
        again.map_readable()?[0]
    );
    drop((b, again));
    println!("outstanding: {}", pool.outstanding());
    Ok(())
}
