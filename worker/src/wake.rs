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

/// Listens on `channels` (of [`SAGA_CHANNEL`], [`OUTBOX_CHANNEL`]) until
/// `shutdown`, reconnecting after errors; with no channel it opens no
/// connection at all.
///
/// Why a process should listen only when one of its roles waits on a
/// channel: Postgres signals every listening backend of the database on
/// every notification, whatever its channel, and each one reads the queue
/// in a transaction of its own. Six processes listening cost the database
/// about ten extra transactions per order (measured by the bench's
/// scale-out scenario); an API or participant process has nothing to wake.
pub fn listen(
    database_url: String,
    channels: &[&'static str],
    shutdown: CancellationToken,
) -> (Wakeups, tokio::task::JoinHandle<()>) {
    let (saga_tx, saga) = watch::channel(0u64);
    let (outbox_tx, outbox) = watch::channel(0u64);
    let channels = channels.to_vec();
    let handle = tokio::spawn(async move {
        if channels.is_empty() {
            // Keep the senders until shutdown, so that a waiting loop sees
            // its timeout rather than a closed channel.
            shutdown.cancelled().await;
            return;
        }
        while !shutdown.is_cancelled() {
            match listen_once(&database_url, &channels, &saga_tx, &outbox_tx, &shutdown).await {
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
    channels: &[&'static str],
    saga: &watch::Sender<u64>,
    outbox: &watch::Sender<u64>,
    shutdown: &CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen_all(channels.iter().copied()).await?;
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
