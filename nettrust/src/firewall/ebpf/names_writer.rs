//! Off the DNS path: the names shown by `nettrust list` are written into the `NAMES` map (the
//! default scope's hosts) and `GRANT_NAMES` (the policies' grants) by a background thread every
//! 5 to 50 milliseconds while answers come, many per system call (`BPF_MAP_UPDATE_BATCH`), so an
//! answer's reply waits only for its authorizations. Best effort, like the names themselves: a
//! name appears up to [`SLOW_PERIOD`] after its address is authorized, and names are dropped
//! (never authorizations) when the queue is full.

use std::{
    os::fd::RawFd,
    sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError},
    thread::JoinHandle,
    time::Duration,
};

use aya::Pod;
use nettrust_common::{GrantKey, HostName};

use super::{
    syscalls,
    types::{GrantNameMap, NameMap},
};

/// Names waiting to be written at most; more are dropped.
const QUEUE: usize = 8_192;
/// Names per system call at most.
const BATCH: usize = 512;

/// Names travel by value: no allocation per answer.
enum Msg {
    Put([u8; 16], HostName),
    PutGrant(GrantKey, HostName),
    /// Acknowledged once everything queued before it is written.
    Flush(SyncSender<()>),
}

/// The writer: a queue and the thread draining it. The thread owns its own handle on the map
/// and ends when the writer is dropped.
pub(super) struct NameWriter {
    tx: SyncSender<Msg>,
    _thread: JoinHandle<()>,
}

impl NameWriter {
    /// Starts the thread writing into `names` and `grant_names` (which it keeps open).
    pub(super) fn start(names: NameMap, grant_names: GrantNameMap) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("nettrust-names".into())
            .spawn(move || drain(&names, &grant_names, &rx))?;
        Ok(Self {
            tx,
            _thread: thread,
        })
    }

    /// Queues `name` for `key` (the NAMES key of an address); never blocks.
    pub(super) fn put(&self, key: [u8; 16], name: HostName) {
        self.queue(Msg::Put(key, name));
    }

    /// Queues `name` for the policy grant `key`; never blocks.
    pub(super) fn put_grant(&self, key: GrantKey, name: HostName) {
        self.queue(Msg::PutGrant(key, name));
    }

    fn queue(&self, msg: Msg) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(msg) {
            tracing::debug!("name queue full, a name is not recorded");
        }
    }

    /// Returns once every name queued so far is in the map.
    pub(super) fn flush(&self) {
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv();
        }
    }
}

/// How often the thread collects queued names while answers keep coming fast: at least
/// [`BUSY`] names per pass. Then it does not block on the queue, so queuing a name does not have
/// to wake it (a wake per answer would cost more than the write it saves). After a pass that
/// found nothing it blocks until the next name: an idle daemon does not wake up at all, and the
/// first answer after a pause wakes it once.
const PERIOD: Duration = Duration::from_millis(5);
/// How often while answers come slowly (fewer than [`BUSY`] names in a pass): each pass costs
/// a thread wake-up and a system call whatever it writes, so a trickle of answers is collected
/// ten times less often (at 1,000 answers/s that is 20 wake-ups a second instead of 200).
const SLOW_PERIOD: Duration = Duration::from_millis(50);
/// Names per pass from which the short [`PERIOD`] is used: at [`SLOW_PERIOD`] that many names
/// arrive at 5,120 answers/s, far below the queue's [`QUEUE`]; from there up to ten times that
/// rate short and long pauses alternate (about 36 wake-ups a second), above it all are short.
const BUSY: usize = BATCH / 2;

/// The pause after a pass that collected `received` names (`None`: none, block instead).
fn pause(received: usize) -> Option<Duration> {
    match received {
        0 => None,
        n if n < BUSY => Some(SLOW_PERIOD),
        _ => Some(PERIOD),
    }
}

/// Names queued for one map, written many per system call.
struct Batch<K> {
    fd: RawFd,
    keys: Vec<K>,
    values: Vec<HostName>,
}

impl<K: Pod> Batch<K> {
    fn new(fd: RawFd) -> Self {
        Self {
            fd,
            keys: Vec::with_capacity(BATCH),
            values: Vec::with_capacity(BATCH),
        }
    }

    /// Adds a name, writing the batch once it is full.
    fn push(&mut self, key: K, value: HostName) {
        self.keys.push(key);
        self.values.push(value);
        if self.keys.len() == BATCH {
            self.write();
        }
    }

    /// Writes what is queued: many per `BPF_MAP_UPDATE_BATCH`, one by one on kernels without
    /// batch support for the map type; a full map drops the rest (those hosts are listed
    /// unnamed).
    fn write(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        if let Err((done, e)) = syscalls::update_batch(self.fd, &self.keys, &self.values) {
            if e.raw_os_error() == Some(libc::E2BIG) {
                tracing::debug!(
                    "name map full, {} names not recorded",
                    self.keys.len() - done
                );
            } else {
                tracing::debug!(
                    "batched name update stopped after {done}: {e}; writing one by one"
                );
                for (key, value) in self.keys.iter().zip(&self.values).skip(done) {
                    if let Err(e) = syscalls::update(self.fd, key, value, syscalls::BPF_ANY) {
                        tracing::debug!("cannot record a name: {e}");
                    }
                }
            }
        }
        self.keys.clear();
        self.values.clear();
    }
}

fn drain(names: &NameMap, grant_names: &GrantNameMap, rx: &Receiver<Msg>) {
    let mut hosts = Batch::new(syscalls::fd_of(names));
    let mut grants = Batch::new(syscalls::fd_of(grant_names));
    let mut acks = Vec::new();
    let mut idle = false;
    loop {
        // After an empty pass, sleep until something is queued.
        let mut next = if idle {
            match rx.recv() {
                Ok(msg) => Some(msg),
                Err(_) => return,
            }
        } else {
            None
        };
        let mut received = 0usize;
        let closed = loop {
            let msg = match next.take().map_or_else(|| rx.try_recv(), Ok) {
                Ok(msg) => msg,
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            };
            received += 1;
            match msg {
                Msg::Put(key, value) => hosts.push(key, value),
                Msg::PutGrant(key, value) => grants.push(key, value),
                Msg::Flush(ack) => acks.push(ack),
            }
        };
        hosts.write();
        grants.write();
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        if closed {
            return;
        }
        match pause(received) {
            None => idle = true,
            Some(pause) => {
                idle = false;
                std::thread::sleep(pause);
            }
        }
    }
}
