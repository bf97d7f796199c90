//! Batched datagram I/O for the UDP engine: `recvmmsg` into reusable buffers, `sendmmsg` of a
//! round's messages, and the `epoll` registration.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, OwnedFd, RawFd},
};

use socket2::{SockAddr, SockAddrStorage};

/// Buffers for reading several datagrams in one `recvmmsg`.
pub(super) struct Batch {
    room: usize,
    buffers: Vec<Vec<u8>>,
    /// Where the kernel writes each datagram's sender.
    addrs: Vec<SockAddrStorage>,
    /// The senders of the last [`Self::receive`].
    senders: Vec<Option<SocketAddr>>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovecs` and `headers` point into the batch's own heap buffers,
// which move with it; they are only used by the thread owning the batch.
unsafe impl Send for Batch {}

impl Batch {
    /// Room for `count` datagrams of up to `room` bytes.
    pub(super) fn new(count: usize, room: usize) -> Self {
        // SAFETY (the two `zeroed`): all-zero is a valid iovec and mmsghdr (plain C structures,
        // null pointers).
        let mut batch = Self {
            room,
            buffers: vec![vec![0; room]; count],
            addrs: (0..count).map(|_| SockAddrStorage::zeroed()).collect(),
            senders: vec![None; count],
            iovecs: (0..count).map(|_| unsafe { std::mem::zeroed() }).collect(),
            headers: (0..count).map(|_| unsafe { std::mem::zeroed() }).collect(),
        };
        for (iovec, buffer) in batch.iovecs.iter_mut().zip(&mut batch.buffers) {
            *iovec = libc::iovec {
                iov_base: buffer.as_mut_ptr().cast(),
                iov_len: room,
            };
        }
        batch
    }

    /// Reads the datagrams waiting on `socket` (at least one, else `WouldBlock`).
    pub(super) fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        for ((mmsg, addr), iovec) in self
            .headers
            .iter_mut()
            .zip(&mut self.addrs)
            .zip(&mut self.iovecs)
        {
            let header = &mut mmsg.msg_hdr;
            header.msg_namelen = addr.size_of();
            header.msg_name = std::ptr::from_mut(addr).cast();
            header.msg_iov = iovec;
            header.msg_iovlen = 1;
            header.msg_flags = 0;
            mmsg.msg_len = 0;
        }
        // SAFETY: every header points at this batch's own name buffer and iovec, which point at
        // its buffers of `room` bytes; all outlive the call.
        let received = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                libc::c_uint::try_from(self.headers.len()).unwrap_or(0),
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let received = usize::try_from(cvt(received)?).unwrap_or(0);
        for ((sender, addr), mmsg) in self
            .senders
            .iter_mut()
            .zip(&mut self.addrs)
            .zip(&self.headers)
            .take(received)
        {
            let storage = std::mem::replace(addr, SockAddrStorage::zeroed());
            // SAFETY: the kernel wrote the sender's address, `msg_namelen` bytes of the family
            // it names, into this storage.
            *sender = unsafe { SockAddr::new(storage, mmsg.msg_hdr.msg_namelen) }.as_socket();
        }
        Ok(received)
    }

    /// Datagram `index` of the last [`Self::receive`]; `None` for one that was cut (longer
    /// than the room).
    pub(super) fn datagram(&self, index: usize) -> Option<&[u8]> {
        let header = &self.headers[index];
        if header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let len = usize::try_from(header.msg_len).ok()?.min(self.room);
        Some(&self.buffers[index][..len])
    }

    /// The sender of datagram `index`; `None` for an unknown address family.
    pub(super) fn sender(&self, index: usize) -> Option<SocketAddr> {
        self.senders[index]
    }
}

/// Answers waiting to be sent, with their clients.
#[derive(Default)]
pub(super) struct Replies {
    messages: Vec<(Vec<u8>, SocketAddr)>,
}

impl Replies {
    pub(super) fn push(&mut self, message: Vec<u8>, client: SocketAddr) {
        self.messages.push((message, client));
    }

    /// Sends every answer waiting on `socket`; one the kernel refuses is dropped (logged), as
    /// a failed `sendto` would be.
    pub(super) fn flush(&mut self, socket: &UdpSocket) {
        if self.messages.is_empty() {
            return;
        }
        let messages: Vec<(&[u8], Option<SocketAddr>)> = self
            .messages
            .iter()
            .map(|(message, client)| (message.as_slice(), Some(*client)))
            .collect();
        for ((_, client), error) in self.messages.iter().zip(send_all(socket, &messages)) {
            if let Some(e) = error {
                tracing::debug!("UDP listener: cannot answer {client}: {e}");
            }
        }
        self.messages.clear();
    }
}

/// Sends `messages` (to their address, or on a connected socket to its peer) in as few
/// `sendmmsg` calls as the kernel allows; the error of each message that was not sent.
pub(super) fn send_all(
    socket: &UdpSocket,
    messages: &[(&[u8], Option<SocketAddr>)],
) -> Vec<Option<io::Error>> {
    let addrs: Vec<Option<SockAddr>> = messages
        .iter()
        .map(|(_, to)| to.map(SockAddr::from))
        .collect();
    let mut iovecs: Vec<libc::iovec> = messages
        .iter()
        .map(|(message, _)| libc::iovec {
            iov_base: message.as_ptr().cast_mut().cast(),
            iov_len: message.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = addrs
        .iter()
        .zip(iovecs.iter_mut())
        .map(|(addr, iovec)| {
            // SAFETY: all-zero is a valid msghdr (null pointers, no control data).
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            if let Some(addr) = addr {
                // Only read by the kernel.
                header.msg_name = addr.as_ptr().cast_mut().cast();
                header.msg_namelen = addr.len();
            }
            header.msg_iov = iovec;
            header.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: header,
                msg_len: 0,
            }
        })
        .collect();
    let mut errors: Vec<Option<io::Error>> = (0..messages.len()).map(|_| None).collect();
    let mut sent = 0;
    while sent < headers.len() {
        let left = libc::c_uint::try_from(headers.len() - sent).unwrap_or(libc::c_uint::MAX);
        // SAFETY: each header points at its own address and iovec, which point at the messages;
        // all outlive the call.
        let result = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers[sent..].as_mut_ptr(),
                left,
                libc::MSG_DONTWAIT,
            )
        };
        match cvt(result) {
            Ok(count) if count > 0 => sent += usize::try_from(count).unwrap_or(1),
            Ok(_) => sent += 1,
            Err(e) => {
                // The first message left failed; the next call starts after it.
                errors[sent] = Some(e);
                sent += 1;
            }
        }
    }
    errors
}

pub(super) fn epoll_add(
    epoll: &OwnedFd,
    fd: RawFd,
    token: u64,
    events: libc::c_int,
) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: events as u32,
        u64: token,
    };
    // SAFETY: both descriptors are open; `event` is a valid epoll_event.
    cvt(unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &raw mut event) })
        .map(drop)
}

pub(super) fn cvt(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}
