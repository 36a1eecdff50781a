//! Async ends on tokio (feature `tokio`): [`AsyncReceiver::recv`],
//! [`AsyncSender::send_frame_with`] and [`AsyncSender::wait_release`]
//! wait for the socket with tokio's reactor (`AsyncFd`) instead of
//! `poll`, on top of the non-blocking calls of [`Receiver`] and [`Sender`].
//!
//! What still waits synchronously, bounded by the end's timeout: the rest
//! of a message that started arriving (or went out in part: only large
//! metadata can), as with the blocking calls. Set a timeout on the end
//! ([`Receiver::set_timeout`], [`Sender::set_timeout`]) before wrapping it
//! when peers are not trusted. Both types must be made inside a tokio
//! runtime with I/O enabled.
//!
//! ```
//! use std::os::unix::net::UnixStream;
//! use mediamem::ipc::aio::{AsyncReceiver, AsyncSender};
//! use mediamem::ipc::{FrameInfo, ReceivePolicy, Receiver, Sender};
//! use mediamem::ShmAllocator;
//!
//! let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
//! rt.block_on(async {
//!     let (a, b) = UnixStream::pair().unwrap();
//!     let mut tx = AsyncSender::new(Sender::new(a))?;
//!     let mut rx = AsyncReceiver::new(Receiver::new(b, ReceivePolicy::default()))?;
//!     let id = tx.send_frame_with(vec![ShmAllocator::get().alloc(64, None)?], FrameInfo::default()).await?;
//!     let frame = rx.recv().await?.expect("a frame");
//!     drop(frame);
//!     assert_eq!(tx.wait_release().await?, Some(id));
//!     Ok::<(), mediamem::Error>(())
//! })?;
//! # Ok::<(), mediamem::Error>(())
//! ```

use std::task::Poll;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::{Frame, FrameInfo, Received, Receiver, Sender, TrySend};
use crate::error::{Error, Result};
use crate::memory::Memory;

/// Register `end` with tokio's reactor. tokio marks the safe constructor
/// deprecated because a `T` could change or close the fd it reports while
/// registered; a [`Receiver`] or [`Sender`] owns its socket for its whole
/// life and always reports that one fd, so it is sound here (and keeps
/// `unsafe` out of this module).
#[allow(deprecated)]
fn register<T: std::os::fd::AsRawFd>(end: T, interest: Interest) -> Result<AsyncFd<T>> {
    AsyncFd::with_interest(end, interest).map_err(reactor_error)
}

fn reactor_error(e: std::io::Error) -> Error {
    Error::Os {
        op: "tokio AsyncFd",
        source: e,
    }
}

/// A [`Receiver`] whose [`recv`](AsyncReceiver::recv) awaits.
#[derive(Debug)]
pub struct AsyncReceiver {
    inner: AsyncFd<Receiver>,
}

impl AsyncReceiver {
    /// Wrap `rx` (inside a tokio runtime with I/O enabled).
    ///
    /// # Errors
    /// [`Error::Os`] when the reactor refuses the socket (no runtime).
    pub fn new(rx: Receiver) -> Result<Self> {
        Ok(AsyncReceiver {
            inner: register(rx, Interest::READABLE)?,
        })
    }

    /// The next frame; `Ok(None)` at the end of the stream.
    ///
    /// # Errors
    /// As [`Receiver::recv`].
    pub async fn recv(&mut self) -> Result<Option<Frame>> {
        loop {
            let mut ready = self.inner.readable_mut().await.map_err(reactor_error)?;
            match ready.get_inner_mut().try_recv()? {
                Received::Frame(f) => return Ok(Some(f)),
                Received::End => return Ok(None),
                Received::Empty => ready.clear_ready(),
            }
        }
    }

    /// The receiver.
    pub fn get_ref(&self) -> &Receiver {
        self.inner.get_ref()
    }

    /// The receiver, mutably (its timeout, `flush`).
    pub fn get_mut(&mut self) -> &mut Receiver {
        self.inner.get_mut()
    }

    /// The receiver back, out of the reactor.
    pub fn into_inner(self) -> Receiver {
        self.inner.into_inner()
    }
}

/// A [`Sender`] whose sends and release waits await.
#[derive(Debug)]
pub struct AsyncSender {
    inner: AsyncFd<Sender>,
}

impl AsyncSender {
    /// Wrap `tx` (inside a tokio runtime with I/O enabled).
    ///
    /// # Errors
    /// [`Error::Os`] when the reactor refuses the socket (no runtime).
    pub fn new(tx: Sender) -> Result<Self> {
        Ok(AsyncSender {
            inner: register(tx, Interest::READABLE | Interest::WRITABLE)?,
        })
    }

    /// Send a frame, awaiting room in the socket.
    ///
    /// # Errors
    /// As [`Sender::send_frame_with`].
    pub async fn send_frame_with<T: AsRef<Memory> + Send + 'static>(
        &mut self,
        memories: Vec<T>,
        info: FrameInfo<'_>,
    ) -> Result<u64> {
        let mut memories = memories;
        loop {
            let mut ready = self.inner.writable_mut().await.map_err(reactor_error)?;
            match ready.get_inner_mut().try_send_frame(memories, info)? {
                TrySend::Sent(id) => return Ok(id),
                TrySend::WouldBlock(back) => {
                    memories = back;
                    ready.clear_ready();
                }
            }
        }
    }

    /// The next release, or the frame whose release fence signaled (its
    /// memories dropped then), as [`Sender::wait_release`]; `Ok(None)`
    /// when the peer closed and no release fence is pending. Awaits the
    /// socket and the pending release fences together.
    ///
    /// # Errors
    /// As [`Sender::wait_release`] (without its timeout).
    pub async fn wait_release(&mut self) -> Result<Option<u64>> {
        loop {
            let tx = self.inner.get_mut();
            if let Some(id) = tx.try_release_or_reclaim()? {
                return Ok(Some(id));
            }
            let fences = tx.fence_fds()?;
            let socket = !tx.reads_paused();
            if !socket && fences.is_empty() {
                // The peer closed and nothing is pending.
                return Ok(None);
            }
            let fences = fences
                .into_iter()
                .map(|fd| register(fd, Interest::READABLE))
                .collect::<Result<Vec<_>>>()?;
            std::future::poll_fn(|cx| {
                if socket {
                    match self.inner.poll_read_ready_mut(cx) {
                        Poll::Ready(Ok(mut ready)) => {
                            // Cleared before reading: what arrives from
                            // now on wakes the next wait.
                            ready.clear_ready();
                            return Poll::Ready(Ok(()));
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(reactor_error(e))),
                        Poll::Pending => {}
                    }
                }
                for fence in &fences {
                    if let Poll::Ready(r) = fence.poll_read_ready(cx) {
                        return Poll::Ready(r.map(drop).map_err(reactor_error));
                    }
                }
                Poll::Pending
            })
            .await?;
        }
    }

    /// The sender.
    pub fn get_ref(&self) -> &Sender {
        self.inner.get_ref()
    }

    /// The sender, mutably (its settings, `poll_releases`, `send_eos`).
    pub fn get_mut(&mut self) -> &mut Sender {
        self.inner.get_mut()
    }

    /// The sender back, out of the reactor.
    pub fn into_inner(self) -> Sender {
        self.inner.into_inner()
    }
}
