//! Wake-ups from Postgres: `LISTEN` on the channels the migration's
//! triggers notify, so that a new saga or outbox row is handled at once
//! instead of at the next poll. Polling remains as the fallback (timers,
//! and any notification lost while the listener reconnects).

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Notified when a saga was inserted.
pub const SAGA_CHANNEL: &str = "sagaflow_saga";
/// Notified when an outbox row was inserted.
pub const OUTBOX_CHANNEL: &str = "sagaflow_outbox";

/// Counters bumped on each notification; a loop that remembers the last
/// value it saw never misses a wake-up that arrived while it was busy.
#[derive(Debug, Clone)]
pub struct Wakeups {
    /// Bumped on [`SAGA_CHANNEL`].
    pub saga: watch::Receiver<u64>,
    /// Bumped on [`OUTBOX_CHANNEL`].
    pub outbox: watch::Receiver<u64>,
}

/// Listens on both channels until `shutdown`, reconnecting after errors.
pub fn listen(
    database_url: String,
    shutdown: CancellationToken,
) -> (Wakeups, tokio::task::JoinHandle<()>) {
    let (saga_tx, saga) = watch::channel(0u64);
    let (outbox_tx, outbox) = watch::channel(0u64);
    let handle = tokio::spawn(async move {
        while !shutdown.is_cancelled() {
            match listen_once(&database_url, &saga_tx, &outbox_tx, &shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection lost; polling until it is back");
                    // Whatever was notified meanwhile is found by the loops' polls;
                    // wake them once so they look now.
                    saga_tx.send_modify(|n| *n += 1);
                    outbox_tx.send_modify(|n| *n += 1);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    });
    (Wakeups { saga, outbox }, handle)
}

async fn listen_once(
    url: &str,
    saga: &watch::Sender<u64>,
    outbox: &watch::Sender<u64>,
    shutdown: &CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen_all([SAGA_CHANNEL, OUTBOX_CHANNEL]).await?;
    loop {
        let n = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            n = listener.recv() => n?,
        };
        match n.channel() {
            SAGA_CHANNEL => saga.send_modify(|c| *c += 1),
            OUTBOX_CHANNEL => outbox.send_modify(|c| *c += 1),
            _ => {}
        }
    }
}

/// Waits until `rx` changes, `timeout` passes, or `shutdown` fires.
pub(crate) async fn wait(
    rx: &mut watch::Receiver<u64>,
    timeout: Duration,
    shutdown: &CancellationToken,
) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(timeout) => {}
        r = rx.changed() => {
            if r.is_err() {
                // The listener is gone (shutdown); fall back to the timeout.
                tokio::time::sleep(timeout).await;
            }
        }
    }
}
