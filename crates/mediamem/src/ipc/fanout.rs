//! [`FanOut`]: one producer, several receivers (as GStreamer's unixfdsink
//! serves many clients).
//!
//! Each receiver has its own connection and [`Sender`], which holds a
//! handle (a clone) of every memory of every frame it sent until that
//! receiver releases the frame. A frame's blocks therefore come back (to a
//! [`MemoryPool`](crate::pool::MemoryPool)) only when every receiver that
//! got it has released it. Buffers are registered per connection.
//!
//! The policy for receivers:
//!
//! * **slow receivers**: a receiver holding `max_in_flight` frames (the
//!   bound given to [`FanOut::new`]) gets no more frames until it releases
//!   some; frames sent meanwhile skip it ([`FanOutReport::skipped`]). So a
//!   receiver that never releases holds at most `max_in_flight` frames'
//!   blocks, and the others go on. A receiver whose socket has no room for
//!   a frame is skipped the same way (nothing is written to it, never a
//!   part of a message).
//! * **disconnects**: a receiver that closed its end, or whose connection
//!   failed (a write error, a malformed release), is removed
//!   ([`FanOutReport::disconnected`]); everything it held is released at
//!   once (its sender is dropped with the memories it held).

use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::{FrameInfo, Sender, TrySend};
use crate::error::Result;
use crate::memory::Memory;

/// The timeout [`FanOut::add`] gives each receiver's sender.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(1);

/// A receiver of a [`FanOut`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// What [`FanOut::send_frame`] did, receiver by receiver.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FanOutReport {
    /// Receivers that got the frame.
    pub sent: Vec<ClientId>,
    /// Receivers skipped: at their `max_in_flight` bound, or no room in
    /// their socket.
    pub skipped: Vec<ClientId>,
    /// Receivers removed before or while sending (closed or failed); what
    /// they held is released.
    pub disconnected: Vec<ClientId>,
}

struct Client {
    id: ClientId,
    sender: Sender,
    skipped: u64,
}

/// Sends every frame to every receiver that can take it (see the module
/// docs for the policy).
///
/// ```
/// use std::os::unix::net::UnixStream;
/// use mediamem::ipc::{FanOut, FrameInfo, ReceivePolicy, Receiver};
/// use mediamem::{pool::MemoryPool, ShmAllocator};
///
/// let pool = MemoryPool::new(ShmAllocator::get(), 4096, None, 1, 1)?;
/// let mut fan = FanOut::new(4);
/// let mut receivers = Vec::new();
/// for _ in 0..2 {
///     let (a, b) = UnixStream::pair().unwrap();
///     fan.add(a);
///     receivers.push(Receiver::new(b, ReceivePolicy::default()));
/// }
/// let frame = pool.acquire()?;
/// let report = fan.send_frame(&[frame.memory().clone()], FrameInfo::default())?;
/// assert_eq!(report.sent.len(), 2);
/// drop(frame);
/// let first = receivers[0].recv()?.unwrap();
/// let second = receivers[1].recv()?.unwrap();
/// drop(first);
/// fan.poll_releases()?;
/// assert!(pool.acquire().is_err(), "the second receiver still holds it");
/// drop(second);
/// fan.poll_releases()?;
/// assert!(pool.acquire().is_ok(), "released by both");
/// # Ok::<(), mediamem::Error>(())
/// ```
pub struct FanOut {
    clients: Vec<Client>,
    next: u64,
    max_in_flight: usize,
}

impl std::fmt::Debug for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanOut")
            .field("clients", &self.clients.len())
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl FanOut {
    /// A fan-out with no receivers yet; each may hold at most
    /// `max_in_flight` frames (at least 1) before it is skipped.
    pub fn new(max_in_flight: usize) -> Self {
        FanOut {
            clients: Vec::new(),
            next: 1,
            max_in_flight: max_in_flight.max(1),
        }
    }

    /// Add a receiver on a connected socket. Its sender gets a timeout
    /// of [`DEFAULT_CLIENT_TIMEOUT`]: a frame that went out in part (only
    /// a large one can) is completed within it, or the receiver is removed.
    pub fn add(&mut self, sock: UnixStream) -> ClientId {
        let mut sender = Sender::new(sock);
        if let Err(e) = sender.set_timeout(Some(DEFAULT_CLIENT_TIMEOUT)) {
            log::debug!("fan-out: no timeout on a receiver's socket: {e}");
        }
        self.add_sender(sender)
    }

    /// Add a receiver through a sender already set up (timeout,
    /// registration settings).
    pub fn add_sender(&mut self, sender: Sender) -> ClientId {
        let id = ClientId(self.next);
        self.next += 1;
        self.clients.push(Client {
            id,
            sender,
            skipped: 0,
        });
        id
    }

    /// Remove a receiver: what it held is released at once. Whether it was
    /// there.
    pub fn remove(&mut self, id: ClientId) -> bool {
        let before = self.clients.len();
        self.clients.retain(|c| c.id != id);
        self.clients.len() != before
    }

    /// The receivers.
    pub fn clients(&self) -> Vec<ClientId> {
        self.clients.iter().map(|c| c.id).collect()
    }

    /// Receivers connected.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no receiver is connected.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Frames receiver `id` holds (`None`: no such receiver).
    pub fn in_flight(&self, id: ClientId) -> Option<usize> {
        self.client(id).map(|c| c.sender.in_flight())
    }

    /// Frames skipped for receiver `id` so far.
    pub fn skipped(&self, id: ClientId) -> Option<u64> {
        self.client(id).map(|c| c.skipped)
    }

    fn client(&self, id: ClientId) -> Option<&Client> {
        self.clients.iter().find(|c| c.id == id)
    }

    /// Handle every release already received from every receiver, without
    /// waiting; remove receivers that closed or failed (their ids are
    /// appended to `gone`). Returns how many frames were released.
    fn drain(&mut self, gone: &mut Vec<ClientId>) -> usize {
        let mut released = 0;
        self.clients.retain_mut(|c| match c.sender.poll_releases() {
            Ok(n) => {
                released += n;
                if c.sender.peer_closed() {
                    gone.push(c.id);
                    false
                } else {
                    true
                }
            }
            Err(e) => {
                log::debug!("fan-out: receiver {} removed: {e}", c.id.0);
                gone.push(c.id);
                false
            }
        });
        released
    }

    /// Handle the releases already received (never waits); receivers that
    /// closed or failed are removed, releasing what they held. Returns the
    /// frames released and the receivers removed.
    ///
    /// # Errors
    /// None yet: a receiver's errors remove it. The `Result` leaves room
    /// for errors of the fan-out itself.
    pub fn poll_releases(&mut self) -> Result<(usize, Vec<ClientId>)> {
        let mut gone = Vec::new();
        let n = self.drain(&mut gone);
        Ok((n, gone))
    }

    /// Send a frame of `memories` (each receiver's sender holds clones of
    /// them) to every receiver under its bound, without waiting for any:
    /// see the module docs for who is skipped and who removed.
    ///
    /// # Errors
    /// A layout that does not fit the memories
    /// ([`Error::InvalidLayout`](crate::Error::InvalidLayout)), and
    /// memories that cannot be sent at all
    /// ([`Error::WrongKind`](crate::Error::WrongKind)); a single
    /// receiver's errors remove it instead.
    pub fn send_frame(&mut self, memories: &[Memory], info: FrameInfo<'_>) -> Result<FanOutReport> {
        if let Some(layout) = info.layout {
            let sizes: Vec<usize> = memories.iter().map(Memory::size).collect();
            layout.check(&sizes)?;
        }
        if let Some(m) = memories.iter().find(|m| m.fd().is_none()) {
            return Err(crate::Error::WrongKind {
                expected: "fd-backed (export DRM dumb memory to a dma-buf first)",
                found: m.allocator().mem_type().to_owned(),
            });
        }
        let mut report = FanOutReport::default();
        self.drain(&mut report.disconnected);
        let max = self.max_in_flight;
        self.clients.retain_mut(|c| {
            if c.sender.in_flight() >= max {
                c.skipped += 1;
                report.skipped.push(c.id);
                return true;
            }
            match c.sender.try_send_frame(memories.to_vec(), info) {
                Ok(TrySend::Sent(_)) => {
                    report.sent.push(c.id);
                    true
                }
                Ok(TrySend::WouldBlock(_)) => {
                    c.skipped += 1;
                    report.skipped.push(c.id);
                    true
                }
                Err(e) => {
                    log::debug!("fan-out: receiver {} removed: {e}", c.id.0);
                    report.disconnected.push(c.id);
                    false
                }
            }
        });
        Ok(report)
    }
}
