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
//!
//! A batch of commands is one transaction of a handful of statements,
//! however many commands it holds: the inbox rows, then for each run of
//! commands of distinct sagas what the ledger and the inbox say about them
//! (one query), the money they move (one statement per round of distinct
//! accounts, so that one account's commands still apply in order) and
//! their answers with their replies (one statement). What a command comes
//! to is decided by [`decide`], which does no I/O.

use std::collections::HashSet;

use rdkafka::producer::FutureProducer;
use rust_decimal::Decimal;
use sagaflow_entity::column;
use sagaflow_workflows::messages::{
    CommandEnvelope, CommandKind, ReplyEnvelope, ReplyOutcome, Topics,
};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::consumer::{self, Handled, Incoming};
use crate::kafka::KafkaConfig;
use crate::session::Session;
use crate::sql::{all, exec, inbox_insert_many, one, traceparent};
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Stored {
    #[serde(default)]
    epoch: u32,
    attempt: u32,
    outcome: ReplyOutcome,
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

/// Applies one `funds.commands` message in its own transaction: a batch
/// of one.
pub async fn handle(
    session: &mut Session,
    topics: &Topics,
    payload: &[u8],
) -> Result<Handled, WorkerError> {
    let one = Incoming {
        payload: payload.to_vec(),
        span: tracing::Span::current(),
    };
    let mut handled = handle_batch(session, topics, vec![one]).await?;
    handled.pop().ok_or_else(|| WorkerError::Corrupt {
        saga_id: Uuid::nil(),
        reason: "a batch of one command was answered with nothing".to_owned(),
    })
}

/// A parsed command, where it stands in its batch, and its trace.
struct Command {
    index: usize,
    cmd: CommandEnvelope,
    span: tracing::Span,
}

/// Applies a batch of `funds.commands` messages in one transaction, in
/// order: a command sees what every earlier one of its saga wrote. The
/// batch's inbox rows are inserted first, in one statement; the commands
/// then go in runs of distinct sagas ([`apply_run`]).
pub async fn handle_batch(
    session: &mut Session,
    topics: &Topics,
    batch: Vec<Incoming>,
) -> Result<Vec<Handled>, WorkerError> {
    let mut handled: Vec<Option<Handled>> = vec![None; batch.len()];
    let mut commands = Vec::with_capacity(batch.len());
    for (index, m) in batch.into_iter().enumerate() {
        match parse(&m.payload) {
            Ok(cmd) => commands.push(Command {
                index,
                cmd,
                span: m.span,
            }),
            Err(dead) => handled[index] = Some(dead),
        }
    }
    let tx = session.begin().await?;
    let mut fresh = inbox_insert_many(
        &tx,
        CONSUMER,
        commands.iter().map(|c| c.cmd.message_id).collect(),
    )
    .await?;
    let mut run: Vec<Command> = Vec::new();
    for command in commands {
        // A second command of a saga waits for the first one's writes.
        if run.iter().any(|c| c.cmd.saga_id == command.cmd.saga_id) {
            apply_run(
                &tx,
                topics,
                std::mem::take(&mut run),
                &mut fresh,
                &mut handled,
            )
            .await?;
        }
        run.push(command);
    }
    apply_run(&tx, topics, run, &mut fresh, &mut handled).await?;
    // Checked before the commit: an unanswered command's inbox row would
    // otherwise commit with no answer, and read as answered ever after.
    let handled = handled
        .into_iter()
        .map(|h| {
            h.ok_or_else(|| WorkerError::Corrupt {
                saga_id: Uuid::nil(),
                reason: "a funds command was left unanswered".to_owned(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    tx.commit().await?;
    Ok(handled)
}

/// The command in `payload`, or the dead letter it makes.
fn parse(payload: &[u8]) -> Result<CommandEnvelope, Handled> {
    serde_json::from_slice(payload)
        .map_err(|e| Handled::DeadLetter(format!("not a funds command: {e}")))
}

/// Applies a run of commands of distinct sagas. `fresh` holds the batch's
/// messages whose inbox rows were new and that no run has taken yet: only
/// the first of a batch's copies of a message counts as new, and the rows
/// of messages still to come say nothing yet, so the fences must not read
/// them as processed (a debit and its refund in one batch would otherwise
/// fence each other off).
async fn apply_run<C: ConnectionTrait>(
    tx: &C,
    topics: &Topics,
    run: Vec<Command>,
    fresh: &mut HashSet<Uuid>,
    handled: &mut [Option<Handled>],
) -> Result<(), WorkerError> {
    if run.is_empty() {
        return Ok(());
    }
    let firsts: Vec<bool> = run
        .iter()
        .map(|c| fresh.remove(&c.cmd.message_id))
        .collect();
    let mut replies = Replies::default();
    let mut to_decide = Vec::with_capacity(run.len());
    for (command, first) in run.into_iter().zip(firsts) {
        if !first {
            match stored(tx, command.cmd.message_id).await? {
                // An operator forced the saga forward since: decide anew.
                Some(s) if command.cmd.epoch > s.epoch => {}
                // A later attempt (the saga retried after a timeout) gets
                // the stored answer again under its own attempt number.
                Some(s) if command.cmd.epoch == s.epoch && command.cmd.attempt > s.attempt => {
                    replies.push(&command, s.outcome)?;
                    handled[command.index] = Some(Handled::Applied);
                    continue;
                }
                // A redelivery of an attempt already answered changes
                // nothing.
                _ => {
                    handled[command.index] = Some(Handled::Duplicate);
                    continue;
                }
            }
        }
        to_decide.push(command);
    }
    let facts = read_facts(tx, &to_decide, fresh).await?;
    let mut moves = Vec::new();
    for (command, facts) in to_decide.into_iter().zip(facts) {
        match decide(&command.cmd, &facts) {
            Decision::Answer(outcome) => {
                replies.push(&command, outcome)?;
                handled[command.index] = Some(Handled::Applied);
            }
            Decision::Move(posting) => moves.push((command, posting)),
        }
    }
    let postings: Vec<Posting> = moves.iter().map(|(_, p)| p.clone()).collect();
    let posted = post_all(tx, &postings).await?;
    for ((command, posting), posted) in moves.into_iter().zip(posted) {
        let outcome = posting.answer(command.cmd.saga_id, posted)?;
        replies.push(&command, outcome)?;
        handled[command.index] = Some(Handled::Applied);
    }
    replies.write(tx, topics).await
}

/// What the inbox answered for `message_id`, if it saw it; the row is
/// locked, so concurrent deliveries of one command queue on it.
async fn stored<C: ConnectionTrait>(
    tx: &C,
    message_id: Uuid,
) -> Result<Option<Stored>, WorkerError> {
    let Some(row) = one(
        tx,
        "SELECT result FROM inbox WHERE consumer = $1 AND message_id = $2 FOR UPDATE",
        [CONSUMER.into(), message_id.into()],
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(Stored::from_result(
        row.try_get("", "result").ok().flatten(),
    )))
}

/// Which way a posting moves money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Out of the account, only if the balance covers it.
    Take,
    /// Into the account.
    Give,
}

/// What a command kind does: the ledger entry it makes, the entry it is
/// the opposite of, which way it moves money, and whether it undoes a
/// forward command (a compensation) or is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kind {
    entry: &'static str,
    opposite: &'static str,
    dir: Direction,
    undo: bool,
}

impl Kind {
    fn of(kind: CommandKind) -> Self {
        let (entry, opposite, dir, undo) = match kind {
            CommandKind::FundsDebit => ("DEBIT", "REFUND", Direction::Take, false),
            CommandKind::FundsRefund => ("REFUND", "DEBIT", Direction::Give, true),
            CommandKind::FundsCredit => ("REFUND", "REFUND_VOID", Direction::Give, false),
            CommandKind::FundsCreditVoid => ("REFUND_VOID", "REFUND", Direction::Take, true),
        };
        Kind {
            entry,
            opposite,
            dir,
            undo,
        }
    }

    /// The message id of the command on the other side of `cmd`'s step:
    /// its compensation, or (for a compensation) its forward command.
    fn opposite_message(self, cmd: &CommandEnvelope) -> Uuid {
        CommandEnvelope::message_id_for(cmd.saga_id, cmd.step, !self.undo)
    }
}

/// What the ledger and the inbox say about a command's saga, read just
/// before the command is decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Facts {
    /// The saga already has this command's kind of entry.
    done: bool,
    /// The saga's entry of the opposite kind, as (account, amount): for a
    /// forward command its reversal, for a compensation the entry it
    /// reverses.
    opposite_entry: Option<(i64, Decimal)>,
    /// The inbox's answer to the opposite command, if it was processed
    /// (not merely recorded by a batch that has yet to come to it).
    opposite_answer: Option<Stored>,
}

/// Money to move for a command.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Posting {
    saga_id: Uuid,
    user_id: i64,
    amount: Decimal,
    kind: Kind,
}

/// What a command comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    /// This answer, moving nothing.
    Answer(ReplyOutcome),
    /// Move this money; the answer depends on whether it moved.
    Move(Posting),
}

fn rejected(reason: String) -> Decision {
    Decision::Answer(ReplyOutcome::Rejected { reason })
}

/// Decides `cmd` from `facts`: the participant's rules, free of I/O.
fn decide(cmd: &CommandEnvelope, facts: &Facts) -> Decision {
    let kind = Kind::of(cmd.kind);
    if kind.undo {
        // Fence: an operator forced the saga forward and its forward
        // command of that later epoch was applied; this compensation was
        // sent before the force and must not undo what the saga now
        // relies on.
        if let Some(forward) = facts.opposite_answer.as_ref() {
            if forward.epoch > cmd.epoch {
                return rejected(format!(
                    "superseded: the saga was forced forward (epoch {})",
                    forward.epoch
                ));
            }
        }
        if facts.done {
            return Decision::Answer(ReplyOutcome::Ok);
        }
        // With no entry to reverse there is nothing to give back, and this
        // command's inbox row now fences a late forward command.
        return match facts.opposite_entry {
            None => Decision::Answer(ReplyOutcome::Ok),
            Some((user_id, amount)) => Decision::Move(Posting {
                saga_id: cmd.saga_id,
                user_id,
                amount,
                kind,
            }),
        };
    }
    if cmd.amount <= Decimal::ZERO {
        return rejected(format!("amount {} is not positive", cmd.amount));
    }
    // Undone money stays undone: the ledger holds one entry per saga and
    // kind, so not even a forced forward can move it again.
    if facts.opposite_entry.is_some() {
        return rejected(format!("the saga's {} was already reversed", kind.entry));
    }
    // Fence: once this step's compensation of this epoch (or a later one)
    // was processed, a late forward command (one its own compensation
    // overtook) must not move money.
    if facts
        .opposite_answer
        .as_ref()
        .is_some_and(|undo| undo.epoch >= cmd.epoch)
    {
        return rejected("the saga was already compensated".to_owned());
    }
    if facts.done {
        return Decision::Answer(ReplyOutcome::Ok);
    }
    Decision::Move(Posting {
        saga_id: cmd.saga_id,
        user_id: cmd.user_id,
        amount: cmd.amount,
        kind,
    })
}

/// What became of a posting: whether the money moved, and the account's
/// balance when it did not (`None`: no such account).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Posted {
    moved: bool,
    balance: Option<Decimal>,
}

impl Posting {
    /// The answer to the command this posting was for.
    fn answer(&self, saga_id: Uuid, posted: Posted) -> Result<ReplyOutcome, WorkerError> {
        if posted.moved {
            return Ok(ReplyOutcome::Ok);
        }
        let what = match (self.kind.undo, self.kind.dir) {
            (false, _) => "insufficient funds",
            (true, Direction::Give) => {
                return Err(WorkerError::Corrupt {
                    saga_id,
                    reason: format!(
                        "account {} of a {} entry is gone",
                        self.user_id, self.kind.opposite
                    ),
                })
            }
            // The credited money was spent meanwhile: the compensation
            // retries and, if it never can, the saga waits for an operator.
            (true, Direction::Take) => "the refunded amount is no longer there",
        };
        let reason = match posted.balance {
            Some(balance) => format!("{what}: balance {balance}, amount {}", self.amount),
            None => format!("no funds account for user {}", self.user_id),
        };
        Ok(ReplyOutcome::Rejected { reason })
    }
}

/// What decides each command of a run, in one round trip: whether its
/// saga has its kind of entry, its saga's opposite entry, and the inbox's
/// answer to its opposite command, as `{"result": …}` when the inbox has
/// a row (`$1`–`$4` one array per column, in command order; `$5` the
/// inbox's consumer). Every lookup is a scalar subquery on a unique key:
/// Postgres runs those as one index probe per command, where joins or
/// `EXISTS` let it hash the whole ledger or inbox for a handful of commands
/// whenever its statistics make the table look small (as they do in a
/// database's first minute, before autovacuum first analyzes it).
const FACTS_SQL: &str = "\
SELECT (SELECT true FROM ledger_entries l WHERE l.saga_id = c.saga_id AND l.kind = c.kind) IS NOT NULL AS done, \
       (SELECT user_id FROM ledger_entries o WHERE o.saga_id = c.saga_id AND o.kind = c.opposite) AS opposite_user, \
       (SELECT amount FROM ledger_entries o WHERE o.saga_id = c.saga_id AND o.kind = c.opposite) AS opposite_amount, \
       (SELECT jsonb_build_object('result', result) FROM inbox i \
         WHERE i.consumer = $5 AND i.message_id = c.message_id) AS opposite_answer \
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[]) WITH ORDINALITY AS c(saga_id, kind, opposite, message_id, n) \
ORDER BY c.n";

async fn read_facts<C: ConnectionTrait>(
    tx: &C,
    commands: &[Command],
    pending: &HashSet<Uuid>,
) -> Result<Vec<Facts>, WorkerError> {
    if commands.is_empty() {
        return Ok(Vec::new());
    }
    let kinds: Vec<Kind> = commands.iter().map(|c| Kind::of(c.cmd.kind)).collect();
    let opposite_ids: Vec<Uuid> = commands
        .iter()
        .zip(&kinds)
        .map(|(c, k)| k.opposite_message(&c.cmd))
        .collect();
    let rows = all(
        tx,
        FACTS_SQL,
        [
            column(commands, |c| c.cmd.saga_id),
            column(&kinds, |k| k.entry.to_owned()),
            column(&kinds, |k| k.opposite.to_owned()),
            opposite_ids.clone().into(),
            CONSUMER.into(),
        ],
    )
    .await?;
    if rows.len() != commands.len() {
        return Err(WorkerError::Corrupt {
            saga_id: commands[0].cmd.saga_id,
            reason: format!(
                "the participant's fence query answered {} of {} commands",
                rows.len(),
                commands.len()
            ),
        });
    }
    rows.iter()
        .zip(opposite_ids)
        .map(|(r, opposite_id)| {
            let user: Option<i64> = r.try_get("", "opposite_user")?;
            let amount: Option<Decimal> = r.try_get("", "opposite_amount")?;
            let answer: Option<serde_json::Value> = r.try_get("", "opposite_answer")?;
            Ok(Facts {
                done: r.try_get("", "done")?,
                opposite_entry: user.zip(amount),
                opposite_answer: answer
                    .filter(|_| !pending.contains(&opposite_id))
                    .map(|mut a| Stored::from_result(Some(a["result"].take()))),
            })
        })
        .collect()
}

/// Moves the money of a round of postings to distinct accounts and writes
/// a ledger row for each that moved, in one statement (`$1`–`$5` one
/// array per column). Taking is conditional: concurrent takes from one
/// account queue on its row lock and can never overdraw it. Returns, in
/// posting order, whether each moved and, if it did not, the account's
/// balance as the statement found it. `user_id = ANY($1)` makes the
/// accounts primary-key lookups: joined only to the arrays, the planner
/// scanned the whole table.
const POST_SQL: &str = "\
WITH v AS ( \
    SELECT * FROM unnest($1::bigint[], $2::numeric[], $3::uuid[], $4::text[], $5::bool[]) \
        WITH ORDINALITY AS v(user_id, amount, saga_id, kind, take, n)), \
moved AS ( \
    UPDATE accounts a \
       SET balance = CASE WHEN v.take THEN a.balance - v.amount ELSE a.balance + v.amount END, \
           updated_at = now() \
      FROM v \
     WHERE a.user_id = ANY($1) AND a.user_id = v.user_id AND (NOT v.take OR a.balance >= v.amount) \
    RETURNING v.n, a.balance), \
entry AS ( \
    INSERT INTO ledger_entries (user_id, saga_id, kind, amount, balance_after) \
    SELECT v.user_id, v.saga_id, v.kind, v.amount, moved.balance FROM moved JOIN v USING (n) ORDER BY n) \
SELECT moved.n IS NOT NULL AS moved, \
       (SELECT balance FROM accounts a WHERE a.user_id = v.user_id) AS balance \
FROM v LEFT JOIN moved USING (n) \
ORDER BY v.n";

/// Applies `postings` in rounds: each round holds at most one posting per
/// account, and an account's postings go in successive rounds in their
/// order, so one statement per round moves them as posting them one by one
/// would.
async fn post_all<C: ConnectionTrait>(
    tx: &C,
    postings: &[Posting],
) -> Result<Vec<Posted>, WorkerError> {
    let rounds = crate::sql::rounds_by(postings, |p| p.user_id);
    let mut posted = vec![
        Posted {
            moved: false,
            balance: None,
        };
        postings.len()
    ];
    for round in 0..rounds.iter().max().map_or(0, |r| r + 1) {
        let members: Vec<&Posting> = postings
            .iter()
            .zip(&rounds)
            .filter_map(|(p, &r)| (r == round).then_some(p))
            .collect();
        let rows = all(
            tx,
            POST_SQL,
            [
                column(&members, |p| p.user_id),
                column(&members, |p| p.amount),
                column(&members, |p| p.saga_id),
                column(&members, |p| p.kind.entry.to_owned()),
                column(&members, |p| p.kind.dir == Direction::Take),
            ],
        )
        .await?;
        if rows.len() != members.len() {
            return Err(WorkerError::Corrupt {
                saga_id: Uuid::nil(),
                reason: format!(
                    "the participant's posting answered {} of {} postings",
                    rows.len(),
                    members.len()
                ),
            });
        }
        let indexes = rounds.iter().enumerate().filter(|(_, &r)| r == round);
        for ((i, _), r) in indexes.zip(&rows) {
            posted[i] = Posted {
                moved: r.try_get("", "moved")?,
                balance: r.try_get("", "balance")?,
            };
        }
    }
    Ok(posted)
}

/// The answers of a run: each kept in its command's inbox row, and sent as
/// a reply through the outbox, all in one statement.
#[derive(Debug, Default)]
struct Replies {
    command_ids: Vec<Uuid>,
    stored: Vec<serde_json::Value>,
    message_ids: Vec<Uuid>,
    keys: Vec<String>,
    payloads: Vec<serde_json::Value>,
    headers: Vec<serde_json::Value>,
}

/// `$1`/`$2` the commands' ids and stored answers, `$3` the inbox's
/// consumer, `$4`–`$7` the replies' ids, keys, payloads and headers, `$8`
/// their topic; replies go to the outbox in order. The answers reach
/// their inbox rows (inserted by this transaction) through `ON CONFLICT`,
/// which finds each by its primary key whatever the planner thinks of the
/// table: an `UPDATE … FROM unnest(…)` was planned as a scan of every row
/// of the consumer while the table was young.
const REPLIES_SQL: &str = "\
WITH answered AS ( \
    INSERT INTO inbox (consumer, message_id, result) \
    SELECT $3, message_id, result FROM unnest($1::uuid[], $2::jsonb[]) AS r(message_id, result) \
    ON CONFLICT (consumer, message_id) DO UPDATE SET result = EXCLUDED.result) \
INSERT INTO outbox (message_id, topic, key, payload, headers) \
SELECT message_id, $8, key, payload, headers \
FROM unnest($4::uuid[], $5::text[], $6::jsonb[], $7::jsonb[]) \
     WITH ORDINALITY AS r(message_id, key, payload, headers, n) \
ORDER BY n \
ON CONFLICT (message_id) DO NOTHING";

impl Replies {
    fn push(&mut self, command: &Command, outcome: ReplyOutcome) -> Result<(), WorkerError> {
        let cmd = &command.cmd;
        tracing::debug!(parent: &command.span, saga_id = %cmd.saga_id, command = cmd.kind.as_str(),
            step = cmd.step, attempt = cmd.attempt, user_id = cmd.user_id, ?outcome, "funds command answered");
        let encode = |e: serde_json::Error| WorkerError::Corrupt {
            saga_id: cmd.saga_id,
            reason: format!("encode reply: {e}"),
        };
        self.stored.push(
            serde_json::to_value(Stored {
                epoch: cmd.epoch,
                attempt: cmd.attempt,
                outcome: outcome.clone(),
            })
            .map_err(encode)?,
        );
        self.command_ids.push(cmd.message_id);
        let reply = ReplyEnvelope::answering(cmd, outcome);
        self.headers.push(serde_json::json!({
            "message_id": reply.message_id.to_string(),
            "saga_id": reply.saga_id.to_string(),
            "type": "funds.reply",
            "step": reply.step.to_string(),
            "attempt": reply.attempt.to_string(),
            "traceparent": traceparent(reply.saga_id),
        }));
        self.message_ids.push(reply.message_id);
        self.keys.push(reply.saga_id.to_string());
        self.payloads
            .push(serde_json::to_value(&reply).map_err(encode)?);
        Ok(())
    }

    async fn write<C: ConnectionTrait>(self, tx: &C, topics: &Topics) -> Result<(), WorkerError> {
        if self.command_ids.is_empty() {
            return Ok(());
        }
        exec(
            tx,
            REPLIES_SQL,
            [
                self.command_ids.into(),
                self.stored.into(),
                CONSUMER.into(),
                self.message_ids.into(),
                self.keys.into(),
                self.payloads.into(),
                self.headers.into(),
                topics.saga_replies.clone().into(),
            ],
        )
        .await?;
        Ok(())
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
    let session = tokio::sync::Mutex::new(Session::new(&db));
    consumer::run(consumer, topic, dlq, producer, shutdown, BATCH, |batch| {
        let (session, topics, announcer) = (&session, &topics, &announcer);
        async move {
            let handled = handle_batch(&mut *session.lock().await, topics, batch).await?;
            crate::consumer::announce_outbox(announcer, &handled);
            Ok(handled)
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(kind: CommandKind, epoch: u32, amount: &str) -> CommandEnvelope {
        let saga_id = Uuid::from_u128(7);
        let compensation = matches!(
            kind,
            CommandKind::FundsRefund | CommandKind::FundsCreditVoid
        );
        CommandEnvelope {
            message_id: CommandEnvelope::message_id_for(saga_id, 0, compensation),
            kind,
            saga_id,
            epoch,
            step: 0,
            attempt: 1,
            compensation,
            user_id: 42,
            amount: amount.parse().unwrap(),
        }
    }

    fn answered(epoch: u32) -> Option<Stored> {
        Some(Stored {
            epoch,
            attempt: 1,
            outcome: ReplyOutcome::Ok,
        })
    }

    fn is_rejected(d: &Decision, containing: &str) -> bool {
        matches!(d, Decision::Answer(ReplyOutcome::Rejected { reason }) if reason.contains(containing))
    }

    #[test]
    fn a_fresh_debit_takes_the_amount_from_the_buyer() {
        let cmd = command(CommandKind::FundsDebit, 0, "12.50");
        let Decision::Move(p) = decide(&cmd, &Facts::default()) else {
            panic!("a fresh debit moved nothing");
        };
        assert_eq!((p.user_id, p.amount), (42, "12.50".parse().unwrap()));
        assert_eq!((p.kind.entry, p.kind.dir), ("DEBIT", Direction::Take));
    }

    #[test]
    fn a_debit_already_taken_is_answered_ok_without_moving_again() {
        let cmd = command(CommandKind::FundsDebit, 0, "1.00");
        let facts = Facts {
            done: true,
            ..Facts::default()
        };
        assert_eq!(decide(&cmd, &facts), Decision::Answer(ReplyOutcome::Ok));
    }

    #[test]
    fn a_debit_is_refused_once_reversed_or_compensated_in_its_epoch() {
        let cmd = command(CommandKind::FundsDebit, 1, "1.00");
        let reversed = Facts {
            opposite_entry: Some((42, Decimal::ONE)),
            ..Facts::default()
        };
        assert!(is_rejected(&decide(&cmd, &reversed), "already reversed"));
        for epoch in [1, 2] {
            let compensated = Facts {
                opposite_answer: answered(epoch),
                ..Facts::default()
            };
            assert!(is_rejected(
                &decide(&cmd, &compensated),
                "already compensated"
            ));
        }
        // A compensation of an earlier epoch does not fence a forced forward.
        let earlier = Facts {
            opposite_answer: answered(0),
            ..Facts::default()
        };
        assert!(matches!(decide(&cmd, &earlier), Decision::Move(_)));
    }

    #[test]
    fn a_debit_of_nothing_is_refused() {
        let cmd = command(CommandKind::FundsDebit, 0, "0.00");
        assert!(is_rejected(
            &decide(&cmd, &Facts::default()),
            "not positive"
        ));
    }

    #[test]
    fn a_refund_gives_back_what_the_debit_took_to_the_debited_account() {
        let cmd = command(CommandKind::FundsRefund, 0, "99.00");
        let facts = Facts {
            opposite_entry: Some((5, "3.25".parse().unwrap())),
            ..Facts::default()
        };
        let Decision::Move(p) = decide(&cmd, &facts) else {
            panic!("a refund of a debit moved nothing");
        };
        assert_eq!((p.user_id, p.amount), (5, "3.25".parse().unwrap()));
        assert_eq!((p.kind.entry, p.kind.dir), ("REFUND", Direction::Give));
    }

    #[test]
    fn a_refund_with_nothing_to_undo_or_already_done_moves_nothing() {
        let cmd = command(CommandKind::FundsRefund, 0, "1.00");
        assert_eq!(
            decide(&cmd, &Facts::default()),
            Decision::Answer(ReplyOutcome::Ok)
        );
        let done = Facts {
            done: true,
            opposite_entry: Some((42, Decimal::ONE)),
            ..Facts::default()
        };
        assert_eq!(decide(&cmd, &done), Decision::Answer(ReplyOutcome::Ok));
    }

    #[test]
    fn a_refund_sent_before_a_force_forward_is_superseded() {
        let cmd = command(CommandKind::FundsRefund, 0, "1.00");
        let forced = Facts {
            opposite_entry: Some((42, Decimal::ONE)),
            opposite_answer: answered(1),
            ..Facts::default()
        };
        assert!(is_rejected(&decide(&cmd, &forced), "superseded"));
        let same_epoch = Facts {
            opposite_answer: answered(0),
            ..forced
        };
        assert!(matches!(decide(&cmd, &same_epoch), Decision::Move(_)));
    }

    #[test]
    fn a_credit_void_takes_back_the_credit_only_if_the_balance_covers_it() {
        let cmd = command(CommandKind::FundsCreditVoid, 0, "1.00");
        let facts = Facts {
            opposite_entry: Some((42, Decimal::TEN)),
            ..Facts::default()
        };
        let Decision::Move(p) = decide(&cmd, &facts) else {
            panic!("a void of a credit moved nothing");
        };
        assert_eq!((p.kind.entry, p.kind.dir), ("REFUND_VOID", Direction::Take));
        let short = p
            .answer(
                cmd.saga_id,
                Posted {
                    moved: false,
                    balance: Some(Decimal::ONE),
                },
            )
            .unwrap();
        assert_eq!(
            short,
            ReplyOutcome::Rejected {
                reason: "the refunded amount is no longer there: balance 1, amount 10".to_owned()
            }
        );
    }

    #[test]
    fn an_unmoved_posting_answers_why() {
        let cmd = command(CommandKind::FundsDebit, 0, "5.00");
        let Decision::Move(p) = decide(&cmd, &Facts::default()) else {
            panic!("a fresh debit moved nothing");
        };
        let moved = Posted {
            moved: true,
            balance: None,
        };
        assert_eq!(p.answer(cmd.saga_id, moved).unwrap(), ReplyOutcome::Ok);
        let short = Posted {
            moved: false,
            balance: Some("4.99".parse().unwrap()),
        };
        assert_eq!(
            p.answer(cmd.saga_id, short).unwrap(),
            ReplyOutcome::Rejected {
                reason: "insufficient funds: balance 4.99, amount 5.00".to_owned()
            }
        );
        let missing = Posted {
            moved: false,
            balance: None,
        };
        assert_eq!(
            p.answer(cmd.saga_id, missing).unwrap(),
            ReplyOutcome::Rejected {
                reason: "no funds account for user 42".to_owned()
            }
        );
        // A refund whose account vanished is corruption, not a refusal.
        let refund = Posting {
            kind: Kind::of(CommandKind::FundsRefund),
            ..p
        };
        assert!(refund.answer(cmd.saga_id, missing).is_err());
    }
}
