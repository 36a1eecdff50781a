//! The async IPC ends on tokio's runtime (`--features tokio`).
#![cfg(feature = "tokio")]

use std::os::unix::net::UnixStream;

use mediamem::ipc::aio::{AsyncReceiver, AsyncSender};
use mediamem::ipc::{FrameInfo, ReceivePolicy, Receiver, Sender};
use mediamem::pool::MemoryPool;
use mediamem::{Error, Result, ShmAllocator};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap()
}

/// A producer and a consumer task: 200 frames from a pool of 2, the
/// producer awaiting releases when the pool is empty; every frame arrives
/// in order and comes back. The consumer runs as a task of the same
/// runtime, or on a runtime of its own on another thread.
fn stream(other_thread: bool) -> Result<()> {
    let (a, b) = UnixStream::pair().unwrap();
    let consume = move || async move {
        let mut rx = AsyncReceiver::new(Receiver::new(b, ReceivePolicy::default()))?;
        let mut n = 0u32;
        while let Some(f) = rx.recv().await? {
            assert_eq!(f.meta, n.to_le_bytes());
            assert_eq!(f.memories[0].map_readable()?[0], n as u8);
            n += 1;
        }
        Ok::<u32, Error>(n)
    };
    let (remote, local) = if other_thread {
        let t = std::thread::spawn(move || runtime().block_on(consume()));
        (Some(t), None)
    } else {
        (None, Some(consume))
    };
    runtime().block_on(async {
        let mut tx = AsyncSender::new(Sender::new(a))?;
        let consumer = local.map(|c| tokio::spawn(c()));
        let pool = MemoryPool::new(ShmAllocator::get(), 4096, None, 2, 2)?;
        let producer = async move {
            for n in 0..200u32 {
                let mut frame = loop {
                    match pool.acquire() {
                        Ok(f) => break f,
                        Err(Error::PoolExhausted { .. }) => {
                            tx.wait_release().await?.expect("the consumer releases");
                        }
                        Err(e) => return Err(e),
                    }
                };
                frame.map_mut()?[0] = n as u8;
                let meta = n.to_le_bytes();
                let info = FrameInfo {
                    meta: &meta,
                    ..FrameInfo::default()
                };
                tx.send_frame_with(vec![frame], info).await?;
            }
            tx.get_mut().send_eos()?;
            while tx.get_ref().in_flight() > 0 {
                if tx.wait_release().await?.is_none() {
                    break;
                }
            }
            assert_eq!(tx.get_ref().in_flight(), 0);
            Ok::<(), Error>(())
        };
        producer.await?;
        let got = match (consumer, remote) {
            (Some(task), _) => task.await.expect("the consumer task")?,
            (None, Some(thread)) => thread.join().expect("the consumer thread")?,
            _ => unreachable!(),
        };
        assert_eq!(got, 200);
        Ok(())
    })
}

#[test]
fn frames_stream_between_tasks_on_one_thread() -> Result<()> {
    stream(false)
}

#[test]
fn frames_stream_between_runtimes_on_two_threads() -> Result<()> {
    stream(true)
}

#[test]
fn a_closed_peer_ends_both_waits() -> Result<()> {
    runtime().block_on(async {
        let (a, b) = UnixStream::pair().unwrap();
        let mut tx = AsyncSender::new(Sender::new(a))?;
        drop(b);
        assert_eq!(tx.wait_release().await?, None);
        assert!(tx.get_ref().peer_closed());
        let (a, b) = UnixStream::pair().unwrap();
        let mut rx = AsyncReceiver::new(Receiver::new(b, ReceivePolicy::default()))?;
        drop(a);
        assert!(rx.recv().await?.is_none());
        Ok(())
    })
}
