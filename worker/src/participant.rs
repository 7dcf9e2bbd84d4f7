//! The funds participant: consumes `funds.commands`, applies each debit or
//! refund exactly once, and replies on `saga.replies` through the outbox.
//!
//! Exactly once, three ways: the inbox row (consumer, message id) is
//! inserted in the transaction of the effect; the ledger is unique on
//! (saga id, kind), so no saga debits or refunds twice whatever the message
//! ids; and the debit is one conditional `UPDATE … WHERE balance >= amount`,
//! so concurrent debits of one account queue on its row lock instead of
//! failing or overdrawing.

use rdkafka::producer::FutureProducer;
use rust_decimal::Decimal;
use sagaflow_workflows::messages::{
    CommandEnvelope, CommandKind, ReplyEnvelope, ReplyOutcome, Topics,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use tokio_util::sync::CancellationToken;

use crate::consumer::{self, Handled};
use crate::kafka::KafkaConfig;
use crate::sql::{exec, inbox_insert, one, outbox_insert, traceparent};
use crate::WorkerError;

/// Inbox name of the funds participant.
pub const CONSUMER: &str = "funds";
/// Consumer group (after the configured prefix).
pub const GROUP: &str = "sagaflow-funds";

/// What the inbox keeps of a command: its answer, and the highest attempt
/// answered, so a redelivery of that attempt is recognised.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Stored {
    attempt: u32,
    outcome: ReplyOutcome,
}

/// Applies one `funds.commands` message.
pub async fn handle(
    db: &DatabaseConnection,
    topics: &Topics,
    payload: &[u8],
) -> Result<Handled, WorkerError> {
    let cmd: CommandEnvelope = match serde_json::from_slice(payload) {
        Ok(c) => c,
        Err(e) => return Ok(Handled::DeadLetter(format!("not a funds command: {e}"))),
    };
    let tx = db.begin().await?;
    let inserted = inbox_insert(&tx, CONSUMER, cmd.message_id).await?;
    if !inserted {
        let handled = answer_again(&tx, topics, &cmd).await?;
        tx.commit().await?;
        return Ok(handled);
    }
    let outcome = match cmd.kind {
        CommandKind::FundsDebit => debit(&tx, &cmd).await?,
        CommandKind::FundsRefund => refund(&tx, &cmd).await?,
    };
    store_and_reply(&tx, topics, &cmd, outcome).await?;
    tx.commit().await?;
    Ok(Handled::Applied)
}

/// A command id seen before: a redelivery of an attempt already answered
/// changes nothing; a later attempt (the saga retried after a timeout) gets
/// the stored answer again under its own attempt number.
async fn answer_again<C: ConnectionTrait>(
    tx: &C,
    topics: &Topics,
    cmd: &CommandEnvelope,
) -> Result<Handled, WorkerError> {
    let row = one(
        tx,
        "SELECT result FROM inbox WHERE consumer = $1 AND message_id = $2 FOR UPDATE",
        [CONSUMER.into(), cmd.message_id.into()],
    )
    .await?;
    let stored: Option<Stored> = row
        .and_then(|r| {
            r.try_get::<Option<serde_json::Value>>("", "result")
                .ok()
                .flatten()
        })
        .and_then(|v| serde_json::from_value(v).ok());
    match stored {
        Some(s) if cmd.attempt > s.attempt => {
            store_and_reply(tx, topics, cmd, s.outcome).await?;
            Ok(Handled::Applied)
        }
        _ => Ok(Handled::Duplicate),
    }
}

async fn store_and_reply<C: ConnectionTrait>(
    tx: &C,
    topics: &Topics,
    cmd: &CommandEnvelope,
    outcome: ReplyOutcome,
) -> Result<(), WorkerError> {
    let stored = serde_json::to_value(Stored {
        attempt: cmd.attempt,
        outcome: outcome.clone(),
    })
    .unwrap_or_default();
    exec(
        tx,
        "UPDATE inbox SET result = $3 WHERE consumer = $1 AND message_id = $2",
        [CONSUMER.into(), cmd.message_id.into(), stored.into()],
    )
    .await?;
    let reply = ReplyEnvelope::answering(cmd, outcome);
    let headers = serde_json::json!({
        "message_id": reply.message_id.to_string(),
        "saga_id": reply.saga_id.to_string(),
        "type": "funds.reply",
        "step": reply.step.to_string(),
        "attempt": reply.attempt.to_string(),
        "traceparent": traceparent(reply.saga_id),
    });
    outbox_insert(
        tx,
        reply.message_id,
        &topics.saga_replies,
        &reply.saga_id.to_string(),
        serde_json::to_value(&reply).unwrap_or_default(),
        headers,
    )
    .await?;
    Ok(())
}

async fn debit<C: ConnectionTrait>(
    tx: &C,
    cmd: &CommandEnvelope,
) -> Result<ReplyOutcome, WorkerError> {
    if cmd.amount <= Decimal::ZERO {
        return Ok(ReplyOutcome::Rejected {
            reason: format!("amount {} is not positive", cmd.amount),
        });
    }
    // Fence: once this saga's refund was processed, a late debit (one that
    // was overtaken by its own compensation) must not take money.
    let refund_id = CommandEnvelope::message_id_for(cmd.saga_id, cmd.step, true);
    let fenced = one(
        tx,
        "SELECT 1 AS x FROM inbox WHERE consumer = $1 AND message_id = $2",
        [CONSUMER.into(), refund_id.into()],
    )
    .await?
    .is_some();
    if fenced {
        return Ok(ReplyOutcome::Rejected {
            reason: "the saga was already compensated".to_owned(),
        });
    }
    let already = one(
        tx,
        "SELECT 1 AS x FROM ledger_entries WHERE saga_id = $1 AND kind = 'DEBIT'",
        [cmd.saga_id.into()],
    )
    .await?
    .is_some();
    if already {
        return Ok(ReplyOutcome::Ok);
    }
    let debited = one(
        tx,
        "UPDATE accounts SET balance = balance - $2, updated_at = now() \
         WHERE user_id = $1 AND balance >= $2 RETURNING balance",
        [cmd.user_id.into(), cmd.amount.into()],
    )
    .await?;
    let Some(row) = debited else {
        let exists = one(
            tx,
            "SELECT balance FROM accounts WHERE user_id = $1",
            [cmd.user_id.into()],
        )
        .await?;
        let reason = match exists {
            Some(r) => {
                let balance: Decimal = r.try_get("", "balance")?;
                format!(
                    "insufficient funds: balance {balance}, amount {}",
                    cmd.amount
                )
            }
            None => format!("no funds account for user {}", cmd.user_id),
        };
        return Ok(ReplyOutcome::Rejected { reason });
    };
    let balance: Decimal = row.try_get("", "balance")?;
    exec(
        tx,
        "INSERT INTO ledger_entries (user_id, saga_id, kind, amount, balance_after) VALUES ($1, $2, 'DEBIT', $3, $4)",
        [cmd.user_id.into(), cmd.saga_id.into(), cmd.amount.into(), balance.into()],
    )
    .await?;
    Ok(ReplyOutcome::Ok)
}

async fn refund<C: ConnectionTrait>(
    tx: &C,
    cmd: &CommandEnvelope,
) -> Result<ReplyOutcome, WorkerError> {
    let refunded = one(
        tx,
        "SELECT 1 AS x FROM ledger_entries WHERE saga_id = $1 AND kind = 'REFUND'",
        [cmd.saga_id.into()],
    )
    .await?
    .is_some();
    if refunded {
        return Ok(ReplyOutcome::Ok);
    }
    let debit = one(
        tx,
        "SELECT user_id, amount FROM ledger_entries WHERE saga_id = $1 AND kind = 'DEBIT'",
        [cmd.saga_id.into()],
    )
    .await?;
    // No debit: nothing to give back. The inbox row of this refund now
    // fences any late debit of the same saga.
    let Some(debit) = debit else {
        return Ok(ReplyOutcome::Ok);
    };
    let user_id: i64 = debit.try_get("", "user_id")?;
    let amount: Decimal = debit.try_get("", "amount")?;
    let row = one(
        tx,
        "UPDATE accounts SET balance = balance + $2, updated_at = now() WHERE user_id = $1 RETURNING balance",
        [user_id.into(), amount.into()],
    )
    .await?
    .ok_or_else(|| WorkerError::Corrupt {
        saga_id: cmd.saga_id,
        reason: format!("debited account {user_id} is gone"),
    })?;
    let balance: Decimal = row.try_get("", "balance")?;
    exec(
        tx,
        "INSERT INTO ledger_entries (user_id, saga_id, kind, amount, balance_after) VALUES ($1, $2, 'REFUND', $3, $4)",
        [user_id.into(), cmd.saga_id.into(), amount.into(), balance.into()],
    )
    .await?;
    Ok(ReplyOutcome::Ok)
}

/// Consumes `funds.commands` until `shutdown`.
pub async fn run(
    db: DatabaseConnection,
    kafka: KafkaConfig,
    producer: FutureProducer,
    topics: Topics,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let consumer = kafka.consumer(GROUP)?;
    let topic = topics.funds_commands.clone();
    let dlq = topics.dead_letter.clone();
    consumer::run(consumer, topic, dlq, producer, shutdown, |payload| {
        let db = db.clone();
        let topics = topics.clone();
        async move { handle(&db, &topics, &payload).await }
    })
    .await
}
