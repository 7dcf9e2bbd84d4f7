//! A connection that a loop keeps from one batch to the next.
//!
//! Why not take one from the pool per batch: sqlx checks a pooled
//! connection with a round trip every time it goes back to the pool, on a
//! task spawned for it. A claim loop, the relay and each consumer took a
//! connection once per batch, so every batch paid a round trip, a task and
//! a wake-up of the server and of the process that did no work; in the
//! scale-out layout, whose batches are half the size, twice as often per
//! order (bench/README, finding 39). A loop's [`Session`] opens a
//! connection of its own, with the pool's settings, on its first
//! transaction and keeps it for as long as its transactions end cleanly.
//!
//! The connection is not the pool's: a loop that never lets go of one
//! would otherwise starve the pool's other users whenever the pool is no
//! larger than the number of loops. A process so holds one connection per
//! claim loop, consumer and relay besides its pools.
//!
//! What does not end cleanly does not come back: a transaction dropped
//! without a commit or rollback (an error on the way, its future dropped
//! half-way), or whose commit or rollback fails, closes its connection.
//! The server rolls it back once it sees the connection gone (at once,
//! unless it is still running a statement of it), no lock or snapshot
//! outlives it, and the next transaction opens a fresh connection.
//! A kept connection that a server restart or a `pg_terminate_backend`
//! ended is found by the next `BEGIN`, and replaced on the spot.

use std::sync::atomic::{AtomicBool, Ordering};

use sea_orm::sqlx::{self, Connection as _, Executor as _, PgConnection, Postgres};
use sea_orm::{
    ConnAcquireErr, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, ExecResult, QueryResult,
    RuntimeErr, Statement,
};
use sea_query_binder::SqlxValues;
use tokio::sync::Mutex;
use tokio::time::{timeout, Instant};

/// A loop's own connection, opened when first needed.
#[derive(Debug)]
pub struct Session {
    db: DatabaseConnection,
    conn: Option<Kept>,
}

/// A connection between transactions, and when it was opened.
#[derive(Debug)]
struct Kept {
    conn: PgConnection,
    opened: Instant,
}

impl Session {
    /// A session with the settings of `db`'s pool; it opens no connection
    /// until it begins a transaction.
    ///
    /// # Panics
    /// If `db` is not a PostgreSQL pool (sagaflow runs on nothing else).
    pub fn new(db: &DatabaseConnection) -> Self {
        // Fails here rather than at the first transaction.
        let _ = db.get_postgres_connection_pool();
        Session {
            db: db.clone(),
            conn: None,
        }
    }

    /// The pool whose settings the session uses, for statements that run
    /// on their own.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Begins a transaction on the session's connection, opening one if
    /// the session has none. A kept connection that cannot begin (the
    /// server restarted, or ended it) is replaced once, at once: nothing
    /// has happened on it yet, so a loop does not fail a pass for it.
    ///
    /// The pool's settings bound what the pool would bound: beginning on
    /// a kept connection, and opening one, each give up after its
    /// acquire timeout (a server gone without a reset would otherwise hold
    /// the loop for as long as TCP retries, and a consumer that long away
    /// from its poll leaves its group); a connection older than its
    /// maximum lifetime is closed and replaced, as the pool recycles its
    /// own.
    pub async fn begin(&mut self) -> Result<Tx<'_>, DbErr> {
        let options = self.db.get_postgres_connection_pool().options();
        let (limit, lifetime) = (options.get_acquire_timeout(), options.get_max_lifetime());
        let kept = match self.conn.take() {
            Some(kept) if lifetime.is_some_and(|l| kept.opened.elapsed() >= l) => {
                // A goodbye, so that the server does not log a lost client.
                let _ = timeout(limit, kept.conn.close()).await;
                None
            }
            Some(mut kept) => match timeout(limit, kept.conn.execute("BEGIN")).await {
                Ok(Ok(_)) => Some(kept),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "a kept connection could not begin; opening another");
                    None
                }
                Err(_) => {
                    tracing::debug!(
                        ?limit,
                        "a kept connection did not begin in time; opening another"
                    );
                    None
                }
            },
            None => None,
        };
        let kept = match kept {
            Some(kept) => kept,
            None => timeout(limit, self.open())
                .await
                .map_err(|_| DbErr::ConnectionAcquire(ConnAcquireErr::Timeout))??,
        };
        Ok(Tx {
            kept: Mutex::new(kept),
            failed: AtomicBool::new(false),
            home: &mut self.conn,
        })
    }

    /// A new connection with the pool's settings, in a transaction.
    async fn open(&self) -> Result<Kept, DbErr> {
        let options = self.db.get_postgres_connection_pool().connect_options();
        let mut conn = PgConnection::connect_with(&options)
            .await
            .map_err(|e| DbErr::Conn(RuntimeErr::SqlxError(e)))?;
        conn.execute("BEGIN").await.map_err(exec_err)?;
        Ok(Kept {
            conn,
            opened: Instant::now(),
        })
    }
}

/// A transaction of a [`Session`]; statements run on it through
/// [`ConnectionTrait`], as on any sea-orm connection. Dropped without
/// [`Tx::commit`] or [`Tx::rollback`], it rolls back by closing its
/// connection.
#[derive(Debug)]
pub struct Tx<'s> {
    /// The connection, in a mutex only because [`ConnectionTrait`] runs
    /// statements through `&self`; a transaction's statements never
    /// overlap.
    kept: Mutex<Kept>,
    /// A statement failed: Postgres has aborted the transaction.
    failed: AtomicBool,
    /// Where the connection goes back once the transaction ended cleanly.
    home: &'s mut Option<Kept>,
}

impl Tx<'_> {
    /// Commits; the session keeps the connection for its next transaction.
    ///
    /// # Errors
    /// Besides the server's: if a statement of the transaction failed, it
    /// rolls back and says so. Postgres answers `COMMIT` in an aborted
    /// transaction by rolling back without an error, and a caller that
    /// went on after a failed statement would otherwise take its work for
    /// committed (and, say, store a Kafka offset for it).
    pub async fn commit(self) -> Result<(), DbErr> {
        if self.failed.load(Ordering::Acquire) {
            self.end("ROLLBACK").await?;
            return Err(DbErr::Custom(
                "a statement of the transaction failed; it was rolled back, not committed"
                    .to_owned(),
            ));
        }
        self.end("COMMIT").await
    }

    /// Rolls back and waits for the server to have done so (its locks are
    /// free when this returns); the session keeps the connection.
    pub async fn rollback(self) -> Result<(), DbErr> {
        self.end("ROLLBACK").await
    }

    async fn end(self, sql: &str) -> Result<(), DbErr> {
        let Tx { kept, home, .. } = self;
        let mut kept = kept.into_inner();
        // Dropped on an error, the connection closes.
        kept.conn.execute(sql).await.map_err(exec_err)?;
        *home = Some(kept);
        Ok(())
    }

    /// `result`, noting a failure.
    fn noted<T>(&self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        if result.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        result
    }
}

fn query(stmt: &Statement) -> sqlx::query::Query<'_, Postgres, SqlxValues> {
    let values = stmt.values.clone().unwrap_or(sea_orm::Values(Vec::new()));
    sqlx::query_with(&stmt.sql, SqlxValues(values))
}

/// As sea-orm reports them, so that callers that look into a `DbErr` (a
/// unique violation, a serialization failure) see the same thing here.
fn exec_err(e: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(e))
}

fn query_err(e: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(e))
}

#[async_trait::async_trait]
impl ConnectionTrait for Tx<'_> {
    fn get_database_backend(&self) -> DbBackend {
        DbBackend::Postgres
    }

    async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        let mut kept = self.kept.lock().await;
        let result = self.noted(query(&stmt).execute(&mut kept.conn).await);
        result.map(Into::into).map_err(exec_err)
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        let mut kept = self.kept.lock().await;
        let result = self.noted(kept.conn.execute(sql).await);
        result.map(Into::into).map_err(exec_err)
    }

    async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        let mut kept = self.kept.lock().await;
        let result = self.noted(query(&stmt).fetch_optional(&mut kept.conn).await);
        result.map(|row| row.map(Into::into)).map_err(query_err)
    }

    async fn query_all(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let mut kept = self.kept.lock().await;
        let result = self.noted(query(&stmt).fetch_all(&mut kept.conn).await);
        result
            .map(|rows| rows.into_iter().map(Into::into).collect())
            .map_err(query_err)
    }
}
