//! The funds participant: consumes `funds.commands`, applies each debit,
//! refund, credit or credit void exactly once, and replies on
//! `saga.replies` through the outbox.
//!
//! Exactly once, three ways: the inbox row (consumer, message id) is
//! inserted in the transaction of the effect; the ledger is unique on
//! (saga id, kind), so no saga moves the same kind of money twice whatever
//! the message ids; and taking money is one conditional `UPDATE … WHERE
//! balance >= amount`, so concurrent debits of one account queue on its row
//! lock instead of failing or overdrawing. A compensation that finds
//! nothing to undo leaves its inbox row as a fence against the late
//! arrival of the command it compensates.
//!
//! An operator's force forward starts a new epoch of the saga (commands
//! carry it): a command of a later epoch than the one the inbox answered is
//! decided anew, a compensation of an earlier epoch than an applied forward
//! command is refused, and a reversed entry is never taken again.

use std::collections::HashSet;

use rdkafka::producer::FutureProducer;
use rust_decimal::Decimal;
use sagaflow_workflows::messages::{
    CommandEnvelope, CommandKind, ReplyEnvelope, ReplyOutcome, Topics,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::consumer::{self, Handled, Incoming};
use crate::kafka::KafkaConfig;
use crate::sql::{exec, inbox_insert_many, one, traceparent};
use crate::{WorkerConfig, WorkerError};

/// Inbox name of the funds participant.
pub const CONSUMER: &str = "funds";
/// Consumer group (after the configured prefix).
pub const GROUP: &str = "sagaflow-funds";
/// Most commands applied in one transaction. Commands of one account come
/// in order on one partition, so a hot account's debits queue on its row
/// one transaction (and one commit) per batch rather than per command.
const BATCH: usize = 64;

/// What the inbox keeps of a command: its answer, and the epoch and
/// highest attempt answered, so a redelivery of that attempt is recognised
/// and a command of a later epoch is decided anew.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Stored {
    #[serde(default)]
    epoch: u32,
    attempt: u32,
    outcome: ReplyOutcome,
}

/// Applies one `funds.commands` message in its own transaction: a batch
/// of one.
pub async fn handle(
    db: &DatabaseConnection,
    topics: &Topics,
    payload: &[u8],
) -> Result<Handled, WorkerError> {
    let one = Incoming {
        payload: payload.to_vec(),
        span: tracing::Span::current(),
    };
    let mut handled = handle_batch(db, topics, vec![one]).await?;
    handled.pop().ok_or_else(|| WorkerError::Corrupt {
        saga_id: Uuid::nil(),
        reason: "a batch of one command was answered with nothing".to_owned(),
    })
}

/// Applies a batch of `funds.commands` messages in one transaction, in
/// order (a later command sees what an earlier one wrote). The batch's
/// inbox rows are inserted first, in one statement.
pub async fn handle_batch(
    db: &DatabaseConnection,
    topics: &Topics,
    batch: Vec<Incoming>,
) -> Result<Vec<Handled>, WorkerError> {
    let parsed: Vec<_> = batch
        .into_iter()
        .map(|m| (parse(&m.payload), m.span))
        .collect();
    let ids = parsed
        .iter()
        .filter_map(|(p, _)| p.as_ref().ok().map(|c| c.message_id))
        .collect();
    let tx = db.begin().await?;
    let mut fresh = inbox_insert_many(&tx, CONSUMER, ids).await?;
    let mut handled = Vec::with_capacity(parsed.len());
    for (cmd, span) in parsed {
        handled.push(match cmd {
            Err(dead) => dead,
            Ok(cmd) => {
                // Only the first of a batch's copies of a message counts as
                // new; a later copy finds the first's answer.
                let first = fresh.remove(&cmd.message_id);
                apply_traced(&tx, topics, cmd, first, &fresh)
                    .instrument(span)
                    .await?
            }
        });
    }
    tx.commit().await?;
    Ok(handled)
}

/// The command in `payload`, or the dead letter it makes.
fn parse(payload: &[u8]) -> Result<CommandEnvelope, Handled> {
    serde_json::from_slice(payload)
        .map_err(|e| Handled::DeadLetter(format!("not a funds command: {e}")))
}

async fn apply_traced<C: ConnectionTrait>(
    tx: &C,
    topics: &Topics,
    cmd: CommandEnvelope,
    first: bool,
    pending: &HashSet<Uuid>,
) -> Result<Handled, WorkerError> {
    let span = tracing::info_span!("funds_command", saga_id = %cmd.saga_id, command = cmd.kind.as_str(),
        step = cmd.step, attempt = cmd.attempt, user_id = cmd.user_id);
    apply(tx, topics, cmd, first, pending)
        .instrument(span)
        .await
}

/// Applies `cmd`; `first` says whether its inbox row was new (inserted by
/// this transaction for this copy of the message). `pending` holds the
/// messages whose inbox rows this batch inserted but has not processed
/// yet: those rows say nothing yet, so the fences below must not read them
/// as processed (a debit and its refund in one batch would otherwise fence
/// each other off).
async fn apply<C: ConnectionTrait>(
    tx: &C,
    topics: &Topics,
    cmd: CommandEnvelope,
    first: bool,
    pending: &HashSet<Uuid>,
) -> Result<Handled, WorkerError> {
    if !first {
        match stored(tx, cmd.message_id, true).await? {
            // An operator forced the saga forward since: decide anew.
            Some(s) if cmd.epoch > s.epoch => {}
            // A later attempt (the saga retried after a timeout) gets the
            // stored answer again under its own attempt number.
            Some(s) if cmd.epoch == s.epoch && cmd.attempt > s.attempt => {
                store_and_reply(tx, topics, &cmd, s.outcome).await?;
                return Ok(Handled::Applied);
            }
            // A redelivery of an attempt already answered changes nothing.
            _ => return Ok(Handled::Duplicate),
        }
    }
    let outcome = match cmd.kind {
        CommandKind::FundsDebit => {
            forward(tx, &cmd, ("DEBIT", "REFUND"), Direction::Take, pending).await?
        }
        CommandKind::FundsRefund => {
            undo(tx, &cmd, "DEBIT", "REFUND", Direction::Give, pending).await?
        }
        CommandKind::FundsCredit => {
            forward(
                tx,
                &cmd,
                ("REFUND", "REFUND_VOID"),
                Direction::Give,
                pending,
            )
            .await?
        }
        CommandKind::FundsCreditVoid => {
            undo(tx, &cmd, "REFUND", "REFUND_VOID", Direction::Take, pending).await?
        }
    };
    store_and_reply(tx, topics, &cmd, outcome).await?;
    Ok(Handled::Applied)
}

/// What the inbox answered for `message_id`, if it saw it (`lock` takes
/// the row, so concurrent deliveries of one command queue on it).
async fn stored<C: ConnectionTrait>(
    tx: &C,
    message_id: uuid::Uuid,
    lock: bool,
) -> Result<Option<Stored>, WorkerError> {
    let sql = if lock {
        "SELECT result FROM inbox WHERE consumer = $1 AND message_id = $2 FOR UPDATE"
    } else {
        "SELECT result FROM inbox WHERE consumer = $1 AND message_id = $2"
    };
    let Some(row) = one(tx, sql, [CONSUMER.into(), message_id.into()]).await? else {
        return Ok(None);
    };
    Ok(Some(Stored::from_result(
        row.try_get("", "result").ok().flatten(),
    )))
}

impl Stored {
    /// An inbox row's `result`. The answer is written in the transaction
    /// that inserts the row, so an unreadable one can only come from an
    /// older release: it counts as answered in epoch 0 (which keeps it a
    /// fence) with nothing to replay.
    fn from_result(result: Option<serde_json::Value>) -> Self {
        result
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or(Stored {
                epoch: 0,
                attempt: u32::MAX,
                outcome: ReplyOutcome::Ok,
            })
    }
}

async fn store_and_reply<C: ConnectionTrait>(
    tx: &C,
    topics: &Topics,
    cmd: &CommandEnvelope,
    outcome: ReplyOutcome,
) -> Result<(), WorkerError> {
    let stored = serde_json::to_value(Stored {
        epoch: cmd.epoch,
        attempt: cmd.attempt,
        outcome: outcome.clone(),
    })
    .unwrap_or_default();
    let reply = ReplyEnvelope::answering(cmd, outcome);
    let headers = serde_json::json!({
        "message_id": reply.message_id.to_string(),
        "saga_id": reply.saga_id.to_string(),
        "type": "funds.reply",
        "step": reply.step.to_string(),
        "attempt": reply.attempt.to_string(),
        "traceparent": traceparent(reply.saga_id),
    });
    // The answer kept in the inbox and the reply in the outbox: one
    // statement.
    exec(
        tx,
        "WITH answered AS (UPDATE inbox SET result = $6 WHERE consumer = $7 AND message_id = $8) \
         INSERT INTO outbox (message_id, topic, key, payload, headers) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (message_id) DO NOTHING",
        [
            reply.message_id.into(),
            topics.saga_replies.clone().into(),
            reply.saga_id.to_string().into(),
            serde_json::to_value(&reply).unwrap_or_default().into(),
            headers.into(),
            stored.into(),
            CONSUMER.into(),
            cmd.message_id.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Which way a posting moves money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Out of the account, only if the balance covers it.
    Take,
    /// Into the account.
    Give,
}

/// An account update (`$1` user, `$2` amount) returning the new balance,
/// and the ledger row of saga `$3` and kind `$4` it moved, in one
/// statement.
macro_rules! with_ledger_entry {
    ($update:literal) => {
        concat!(
            "WITH moved AS (",
            $update,
            "), entry AS ( \
                INSERT INTO ledger_entries (user_id, saga_id, kind, amount, balance_after) \
                SELECT $1, $3, $4, $2, balance FROM moved) \
             SELECT balance FROM moved"
        )
    };
}

/// Moves `amount` for `user_id` and writes the ledger row; `None` if the
/// account is missing or (taking) the balance does not cover it.
async fn post<C: ConnectionTrait>(
    tx: &C,
    user_id: i64,
    saga_id: uuid::Uuid,
    kind: &str,
    amount: Decimal,
    dir: Direction,
) -> Result<Option<Decimal>, WorkerError> {
    // One statement moves the money and writes its ledger row (only if it
    // moved). Taking is conditional: concurrent takes from one account
    // queue on its row lock and can never overdraw it.
    let sql = match dir {
        Direction::Take => with_ledger_entry!(
            "UPDATE accounts SET balance = balance - $2, updated_at = now() \
             WHERE user_id = $1 AND balance >= $2 RETURNING balance"
        ),
        Direction::Give => with_ledger_entry!(
            "UPDATE accounts SET balance = balance + $2, updated_at = now() \
             WHERE user_id = $1 RETURNING balance"
        ),
    };
    let Some(row) = one(
        tx,
        sql,
        [user_id.into(), amount.into(), saga_id.into(), kind.into()],
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(row.try_get("", "balance")?))
}

async fn has_entry<C: ConnectionTrait>(
    tx: &C,
    saga_id: uuid::Uuid,
    kind: &str,
) -> Result<bool, WorkerError> {
    Ok(one(
        tx,
        "SELECT 1 AS x FROM ledger_entries WHERE saga_id = $1 AND kind = $2",
        [saga_id.into(), kind.into()],
    )
    .await?
    .is_some())
}

/// Why a take or give did not happen.
async fn refusal<C: ConnectionTrait>(
    tx: &C,
    user_id: i64,
    amount: Decimal,
    what: &str,
) -> Result<ReplyOutcome, WorkerError> {
    let row = one(
        tx,
        "SELECT balance FROM accounts WHERE user_id = $1",
        [user_id.into()],
    )
    .await?;
    let reason = match row {
        Some(r) => {
            let balance: Decimal = r.try_get("", "balance")?;
            format!("{what}: balance {balance}, amount {amount}")
        }
        None => format!("no funds account for user {user_id}"),
    };
    Ok(ReplyOutcome::Rejected { reason })
}

/// A forward command (debit, credit): moves the command's amount once per
/// saga, unless the step was compensated already.
async fn forward<C: ConnectionTrait>(
    tx: &C,
    cmd: &CommandEnvelope,
    (kind, undo_kind): (&str, &str),
    dir: Direction,
    pending: &HashSet<Uuid>,
) -> Result<ReplyOutcome, WorkerError> {
    if cmd.amount <= Decimal::ZERO {
        return Ok(ReplyOutcome::Rejected {
            reason: format!("amount {} is not positive", cmd.amount),
        });
    }
    // What decides the command, in one round trip: whether the step's money
    // was reversed, whether its compensation was processed (and in which
    // epoch), and whether it was moved already.
    let undo_id = CommandEnvelope::message_id_for(cmd.saga_id, cmd.step, true);
    let facts = one(
        tx,
        "SELECT EXISTS (SELECT 1 FROM ledger_entries WHERE saga_id = $1 AND kind = $2) AS undone, \
                EXISTS (SELECT 1 FROM ledger_entries WHERE saga_id = $1 AND kind = $3) AS done, \
                EXISTS (SELECT 1 FROM inbox WHERE consumer = $4 AND message_id = $5) AS undo_seen, \
                (SELECT result FROM inbox WHERE consumer = $4 AND message_id = $5) AS undo_result",
        [
            cmd.saga_id.into(),
            undo_kind.into(),
            kind.into(),
            CONSUMER.into(),
            undo_id.into(),
        ],
    )
    .await?
    .ok_or(WorkerError::Corrupt {
        saga_id: cmd.saga_id,
        reason: "the participant's fence query returned no row".to_owned(),
    })?;
    // Undone money stays undone: the ledger holds one entry per saga and
    // kind, so not even a forced forward can move it again.
    if facts.try_get::<bool>("", "undone")? {
        return Ok(ReplyOutcome::Rejected {
            reason: format!("the saga's {kind} was already reversed"),
        });
    }
    // Fence: once this step's compensation of this epoch (or a later one)
    // was processed, a late forward command (one its own compensation
    // overtook) must not move money.
    let undo_seen: bool = facts.try_get("", "undo_seen")? && !pending.contains(&undo_id);
    let undo =
        undo_seen.then(|| Stored::from_result(facts.try_get("", "undo_result").ok().flatten()));
    if undo.is_some_and(|u| u.epoch >= cmd.epoch) {
        return Ok(ReplyOutcome::Rejected {
            reason: "the saga was already compensated".to_owned(),
        });
    }
    if facts.try_get::<bool>("", "done")? {
        return Ok(ReplyOutcome::Ok);
    }
    match post(tx, cmd.user_id, cmd.saga_id, kind, cmd.amount, dir).await? {
        Some(_) => Ok(ReplyOutcome::Ok),
        None => refusal(tx, cmd.user_id, cmd.amount, "insufficient funds").await,
    }
}

/// A compensating command (refund of a debit, void of a credit): reverses
/// this saga's `original` entry if there is one. With none there is nothing
/// to give back, and this command's inbox row now fences a late forward
/// command of the same saga.
async fn undo<C: ConnectionTrait>(
    tx: &C,
    cmd: &CommandEnvelope,
    original: &str,
    kind: &str,
    dir: Direction,
    pending: &HashSet<Uuid>,
) -> Result<ReplyOutcome, WorkerError> {
    // Fence: an operator forced the saga forward and its forward command
    // of that later epoch was applied; this compensation was sent before
    // the force and must not undo what the saga now relies on.
    let forward_id = CommandEnvelope::message_id_for(cmd.saga_id, cmd.step, false);
    let forward = match pending.contains(&forward_id) {
        true => None,
        false => stored(tx, forward_id, false).await?,
    };
    if let Some(f) = forward {
        if f.epoch > cmd.epoch {
            return Ok(ReplyOutcome::Rejected {
                reason: format!(
                    "superseded: the saga was forced forward (epoch {})",
                    f.epoch
                ),
            });
        }
    }
    if has_entry(tx, cmd.saga_id, kind).await? {
        return Ok(ReplyOutcome::Ok);
    }
    let entry = one(
        tx,
        "SELECT user_id, amount FROM ledger_entries WHERE saga_id = $1 AND kind = $2",
        [cmd.saga_id.into(), original.into()],
    )
    .await?;
    let Some(entry) = entry else {
        return Ok(ReplyOutcome::Ok);
    };
    let user_id: i64 = entry.try_get("", "user_id")?;
    let amount: Decimal = entry.try_get("", "amount")?;
    match post(tx, user_id, cmd.saga_id, kind, amount, dir).await? {
        Some(_) => Ok(ReplyOutcome::Ok),
        None if dir == Direction::Give => Err(WorkerError::Corrupt {
            saga_id: cmd.saga_id,
            reason: format!("account {user_id} of a {original} entry is gone"),
        }),
        // The credited money was spent meanwhile: the compensation retries
        // and, if it never can, the saga waits for an operator.
        None => {
            refusal(
                tx,
                user_id,
                amount,
                "the refunded amount is no longer there",
            )
            .await
        }
    }
}

/// Consumes `funds.commands` until `shutdown`.
pub async fn run(
    db: DatabaseConnection,
    kafka: KafkaConfig,
    producer: FutureProducer,
    cfg: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let consumer = kafka.consumer(GROUP)?;
    let topic = cfg.topics.funds_commands.clone();
    let dlq = cfg.topics.dead_letter.clone();
    let topics = cfg.topics;
    let announcer = cfg.announcer;
    consumer::run(consumer, topic, dlq, producer, shutdown, BATCH, |batch| {
        let db = db.clone();
        let topics = topics.clone();
        let announcer = announcer.clone();
        async move {
            let handled = handle_batch(&db, &topics, batch).await?;
            crate::consumer::announce_outbox(&announcer, &handled);
            Ok(handled)
        }
    })
    .await
}
