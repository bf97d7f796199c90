//! The threads serving the UDP listener, one [`UdpEngine`] each.

use std::{io, net::UdpSocket, sync::Arc};

use tokio::runtime::Handle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::UdpEngine;
use crate::dns::proxy::Proxy;

/// Serves `udp` on `threads` threads (at least one) named `nettrust-udp` until `cancel` fires;
/// shutdown (`tracker`) waits for each to finish its queries in flight. An error when no thread
/// can start: a daemon that cannot serve UDP must not run behind a deny-by-default firewall.
pub fn start(
    udp: &UdpSocket,
    threads: usize,
    proxy: &Arc<Proxy>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> io::Result<()> {
    let in_flight = Arc::default();
    let mut engines = Vec::with_capacity(threads.max(1));
    for _ in 0..threads.max(1) {
        engines.push(UdpEngine::new(
            udp.try_clone()?,
            proxy.clone(),
            Handle::current(),
            tracker.clone(),
            Arc::clone(&in_flight),
        )?);
    }
    let count = engines.len();
    for (started, engine) in engines.into_iter().enumerate() {
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let cancel = cancel.clone();
        let spawned = std::thread::Builder::new()
            .name("nettrust-udp".into())
            .spawn(move || {
                engine.run(&cancel);
                let _ = done.send(());
            });
        if let Err(e) = spawned {
            if started == 0 {
                return Err(e);
            }
            // The threads already started serve the listener.
            tracing::error!("only {started} of {count} UDP threads started: {e}");
            break;
        }
        // Shutdown waits for the thread to finish the queries in flight.
        tracker.spawn(async move {
            let _ = finished.await;
        });
    }
    Ok(())
}
