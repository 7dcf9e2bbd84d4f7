//! Wake-ups: `LISTEN` on the channels other processes' [`Announcer`]s
//! notify, so that a new saga or outbox row is handled at once instead of
//! at the next poll. Polling remains as the fallback (timers, and any
//! notification lost while the listener reconnects).

use std::str::FromStr;
use std::time::Duration;

pub use sagaflow_entity::wake::{Announcer, Channel, OUTBOX_CHANNEL, SAGA_CHANNEL};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Counters bumped on each wake-up, local or from another process; a loop
/// that remembers the last value it saw never misses a wake-up that
/// arrived while it was busy.
#[derive(Debug, Clone)]
pub struct Wakeups {
    /// Bumped on [`SAGA_CHANNEL`].
    pub saga: watch::Receiver<u64>,
    /// Bumped on [`OUTBOX_CHANNEL`].
    pub outbox: watch::Receiver<u64>,
}

impl Wakeups {
    /// The wake-ups `announcer` delivers.
    pub fn of(announcer: &Announcer) -> Self {
        Wakeups {
            saga: announcer.subscribe(Channel::Saga),
            outbox: announcer.subscribe(Channel::Outbox),
        }
    }
}

/// Listens on `channels` until `shutdown`, reconnecting after errors, and
/// delivers what other processes announce through `announcer`; with no
/// channel it opens no connection at all. The connection calls itself
/// `application_name` unless `database_url` (or `PGAPPNAME`) names one.
///
/// Why a process should listen only when one of its roles waits on a
/// channel: Postgres signals every listening backend of the database on
/// every notification, whatever its channel, and each one reads the queue
/// in a transaction of its own. Six processes listening cost the database
/// about ten extra transactions per order (measured by the bench's
/// scale-out scenario); an API or participant process has nothing to wake.
pub fn listen(
    database_url: String,
    application_name: String,
    channels: &[Channel],
    announcer: Announcer,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let channels = channels.to_vec();
    tokio::spawn(async move {
        if channels.is_empty() {
            // Like every role's task, this one ends with the process.
            shutdown.cancelled().await;
            return;
        }
        while !shutdown.is_cancelled() {
            match listen_once(
                &database_url,
                &application_name,
                &channels,
                &announcer,
                &shutdown,
            )
            .await
            {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection lost; polling until it is back");
                    // Whatever was notified meanwhile is found by the loops' polls;
                    // wake them once so they look now.
                    for c in &channels {
                        announcer.wake_local(*c);
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    })
}

async fn listen_once(
    url: &str,
    application_name: &str,
    channels: &[Channel],
    announcer: &Announcer,
    shutdown: &CancellationToken,
) -> Result<(), sqlx::Error> {
    let options = named(PgConnectOptions::from_str(url)?, application_name);
    // As `PgListener::connect` builds it: one connection that never idles out.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_with(options)
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.ignore_pool_close_event(true);
    listener
        .listen_all(channels.iter().map(|c| c.name()))
        .await?;
    loop {
        let n = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            n = listener.recv() => n?,
        };
        if let Some(c) = Channel::from_name(n.channel()) {
            announcer.wake_local(c);
        }
    }
}

/// `options` with `application_name` as the connection's name for
/// `pg_stat_activity`, unless they name one already (`DATABASE_URL`'s
/// `application_name`, or `PGAPPNAME`): every sagaflow connection names
/// itself this way.
pub fn named(options: PgConnectOptions, application_name: &str) -> PgConnectOptions {
    match options.get_application_name() {
        Some(_) => options,
        None => options.application_name(application_name),
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

/// Spaces a loop's passes: a pass that follows another by less than `gap`
/// waits out the rest of it, so that work arriving meanwhile joins the
/// pass; after a quiet spell the pass goes at once. Shared by the loops
/// of one role (clone it), so that they pace together.
#[derive(Debug, Clone)]
pub struct Pacer {
    gap: Duration,
    last: std::sync::Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

impl Pacer {
    /// A pacer with `gap` between passes (zero: no pacing).
    pub fn new(gap: Duration) -> Self {
        Pacer {
            gap,
            last: Default::default(),
        }
    }

    /// Waits until `gap` after the previous pass began (or `shutdown`),
    /// then marks this pass as begun.
    pub async fn pace(&self, shutdown: &CancellationToken) {
        if self.gap.is_zero() {
            return;
        }
        let start = {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let now = tokio::time::Instant::now();
            let start = match *last {
                Some(prev) if prev + self.gap > now => prev + self.gap,
                _ => now,
            };
            *last = Some(start);
            start
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep_until(start) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const GAP: Duration = Duration::from_millis(10);

    #[tokio::test(start_paused = true)]
    async fn a_pass_after_a_quiet_spell_starts_at_once() {
        let (pacer, stop) = (Pacer::new(GAP), CancellationToken::new());
        let t0 = Instant::now();
        pacer.pace(&stop).await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
        tokio::time::advance(Duration::from_millis(25)).await;
        let t1 = Instant::now();
        pacer.pace(&stop).await;
        assert_eq!(t1.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_soon_after_another_waits_out_the_rest_of_the_gap() {
        let (pacer, stop) = (Pacer::new(GAP), CancellationToken::new());
        let t0 = Instant::now();
        pacer.pace(&stop).await;
        tokio::time::advance(Duration::from_millis(4)).await;
        pacer.pace(&stop).await;
        assert_eq!(t0.elapsed(), GAP);
    }

    #[tokio::test(start_paused = true)]
    async fn loops_sharing_a_pacer_start_a_gap_apart() {
        let (pacer, stop) = (Pacer::new(GAP), CancellationToken::new());
        let t0 = Instant::now();
        let mut starts = futures::future::join_all((0..3).map(|_| {
            let (pacer, stop) = (pacer.clone(), stop.clone());
            async move {
                pacer.pace(&stop).await;
                t0.elapsed()
            }
        }))
        .await;
        starts.sort();
        assert_eq!(starts, vec![Duration::ZERO, GAP, GAP * 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_gap_never_waits_and_shutdown_ends_a_wait() {
        let (none, stop) = (Pacer::new(Duration::ZERO), CancellationToken::new());
        let t0 = Instant::now();
        for _ in 0..3 {
            none.pace(&stop).await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO);

        let pacer = Pacer::new(Duration::from_secs(60));
        pacer.pace(&stop).await;
        stop.cancel();
        pacer.pace(&stop).await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }
}
