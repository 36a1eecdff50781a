//! Frames from a pool of shared memory sent to another process zero-copy:
//! the fds travel, the bytes do not, and each buffer comes back to the
//! pool when the receiver drops it.
//!
//! `cargo run -p mediamem --example share_between_processes`
//!
//! The example starts itself again as the receiving process; the two talk
//! over a Unix socket in the temporary directory.

use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::time::Duration;

use mediamem::ipc::{ReceivePolicy, Receiver, Sender};
use mediamem::pool::MemoryPool;
use mediamem::{Result, ShmAllocator};

const FRAMES: u8 = 30;
const SIZE: usize = 1 << 20;

fn receive(path: &str) -> Result<()> {
    let sock = UnixStream::connect(path).expect("the sender listens");
    let mut rx = Receiver::new(sock, ReceivePolicy::default());
    rx.set_timeout(Some(Duration::from_secs(10)))?;
    let mut frames = 0;
    while let Some(frame) = rx.recv()? {
        let bytes = frame.memories[0].map_readable()?;
        assert!(
            bytes.iter().all(|&b| b == frame.meta[0]),
            "frame {} intact",
            frame.id
        );
        frames += 1;
        // Dropping the frame sends its release back.
    }
    println!(
        "receiver (pid {}): {frames} frames, every byte checked",
        std::process::id()
    );
    Ok(())
}

/// Send every frame and wait for every release; the pool's outstanding
/// count at the end.
fn send(sock: UnixStream) -> Result<usize> {
    let mut tx = Sender::new(sock);
    tx.set_timeout(Some(Duration::from_secs(10)))?;
    let pool = MemoryPool::new(ShmAllocator::get(), SIZE, None, 2, 2)?;
    for i in 0..FRAMES {
        // A free buffer, or wait for the receiver to release one: the
        // release is read here, and the buffer is back in the pool.
        let mut frame = loop {
            match pool.acquire() {
                Ok(frame) => break frame,
                Err(mediamem::Error::PoolExhausted { .. }) => {
                    tx.wait_release()?;
                }
                Err(e) => return Err(e),
            }
        };
        frame.map_mut()?.fill(i);
        tx.send_frame(vec![frame], &[i])?;
    }
    tx.send_eos()?;
    while tx.in_flight() > 0 {
        if tx.wait_release()?.is_none() {
            break;
        }
    }
    Ok(pool.outstanding())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, role, path] = args.as_slice() {
        if role == "receive" {
            return receive(path);
        }
    }
    let path = std::env::temp_dir().join(format!("mediamem-example-{}.sock", std::process::id()));
    let listener = UnixListener::bind(&path).expect("a socket in the temporary directory");
    let mut child = Command::new(std::env::current_exe().expect("this program"))
        .args(["receive", path.to_str().expect("a UTF-8 path")])
        .spawn()
        .expect("the receiver starts");
    let (sock, _) = listener.accept().expect("the receiver connects");
    let _ = std::fs::remove_file(&path);
    let sent = send(sock);
    // Whatever happened, the receiver is waited for.
    let status = child.wait().expect("the receiver ends");
    let outstanding = sent?;
    if !status.success() {
        eprintln!("the receiver failed: {status}");
        std::process::exit(1);
    }
    println!(
        "sender (pid {}): {FRAMES} frames of {SIZE} bytes sent as fds; pool outstanding {outstanding}; receiver {status}",
        std::process::id(),
    );
    Ok(())
}
