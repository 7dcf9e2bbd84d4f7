//! The wire format of every Kafka message sagaflow writes or reads.
//!
//! Payloads are JSON; money is a decimal string. Every message carries its
//! own `message_id` (the consumers' inbox key) and the saga, step and
//! attempt it belongs to. Message ids are derived, not random, so that a
//! retried command or a re-sent reply carries an id the other side can
//! recognise.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::machine::{Effect, Outcome};

/// Namespace of sagaflow's derived (v5) message ids.
const NAMESPACE: Uuid = Uuid::from_u128(0x5a6a_f10e_0000_4000_8000_0000_0000_0001);

/// Logical topic names; the deployment's prefix goes in front of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Commands to the funds participant, keyed by account.
    pub funds_commands: String,
    /// Participants' replies, keyed by saga id.
    pub saga_replies: String,
    /// Order lifecycle events for downstream services, keyed by order number.
    pub orders_events: String,
    /// Messages no consumer could parse, with the reason in headers.
    pub dead_letter: String,
}

impl Topics {
    /// The topic names under `prefix` (empty for none).
    pub fn with_prefix(prefix: &str) -> Self {
        Topics {
            funds_commands: format!("{prefix}funds.commands"),
            saga_replies: format!("{prefix}saga.replies"),
            orders_events: format!("{prefix}orders.events"),
            dead_letter: format!("{prefix}sagaflow.dlq"),
        }
    }

    /// All four, for topic creation.
    pub fn all(&self) -> [&str; 4] {
        [
            &self.funds_commands,
            &self.saga_replies,
            &self.orders_events,
            &self.dead_letter,
        ]
    }
}

/// The commands a saga step can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandKind {
    /// Take the amount from the buyer's account.
    #[serde(rename = "funds.debit")]
    FundsDebit,
    /// Give back what this saga's debit took, if it took anything.
    #[serde(rename = "funds.refund")]
    FundsRefund,
    /// Give the amount of a PAID order back to the buyer (after-sale
    /// refund): one REFUND ledger entry per saga.
    #[serde(rename = "funds.credit")]
    FundsCredit,
    /// Undo this saga's credit if it happened, and fence it if it did not,
    /// so a late credit cannot land after the saga gave up.
    #[serde(rename = "funds.credit_void")]
    FundsCreditVoid,
}

impl CommandKind {
    /// Name carried in the message's `type` field and header.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::FundsDebit => "funds.debit",
            CommandKind::FundsRefund => "funds.refund",
            CommandKind::FundsCredit => "funds.credit",
            CommandKind::FundsCreditVoid => "funds.credit_void",
        }
    }
}

/// A command to a participant (`funds.commands`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandEnvelope {
    /// Same for every attempt of the same step and direction, so the
    /// participant's inbox recognises a retry.
    pub message_id: Uuid,
    /// Which command.
    #[serde(rename = "type")]
    pub kind: CommandKind,
    /// The saga that sent it.
    pub saga_id: Uuid,
    /// The saga's epoch (see [`crate::Instance::epoch`]): 0 until an
    /// operator forces the saga forward out of FAILED. A participant
    /// refuses a compensation of an earlier epoch than a forward command it
    /// already applied, and applies anew a command of a later epoch than
    /// the one its inbox answered. Absent on the wire means 0.
    #[serde(default)]
    pub epoch: u32,
    /// The saga's step.
    pub step: u32,
    /// The attempt; echoed in the reply so stale replies can be told apart.
    pub attempt: u32,
    /// Whether the command undoes the step.
    pub compensation: bool,
    /// The account concerned (also the Kafka key, so that one account's
    /// commands stay in order).
    pub user_id: i64,
    /// The amount, a positive decimal with at most two places.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// A message as the outbox stores it and the relay publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxMessage {
    /// The outbox row's own id: unique per row, so a message written twice
    /// in the same form is stored (and published) once.
    pub message_id: Uuid,
    /// Full topic name.
    pub topic: String,
    /// Kafka key.
    pub key: String,
    /// The message's JSON.
    pub payload: serde_json::Value,
    /// Kafka headers, a JSON object of strings.
    pub headers: serde_json::Value,
}

/// A W3C `traceparent` whose trace id is the saga id, so that every message
/// of one saga lands in one trace; `span` is the caller's random draw (this
/// crate draws none).
pub fn traceparent(saga_id: Uuid, span: u64) -> String {
    format!("00-{}-{:016x}-01", saga_id.simple(), span | 1)
}

impl CommandEnvelope {
    /// The command `effect` sends for saga `saga_id` in `epoch`, about
    /// `user_id`'s account and `amount`; `None` for an effect that sends
    /// none. The engine and the API (which sends a new saga's first
    /// command) both build commands here.
    pub fn for_effect(
        saga_id: Uuid,
        epoch: u32,
        effect: &Effect,
        (user_id, amount): (i64, Decimal),
    ) -> Option<Self> {
        let Effect::SendCommand {
            step,
            attempt,
            compensation,
            command,
        } = *effect
        else {
            return None;
        };
        Some(CommandEnvelope {
            message_id: Self::message_id_for(saga_id, step, compensation),
            kind: command,
            saga_id,
            epoch,
            step,
            attempt,
            compensation,
            user_id,
            amount,
        })
    }

    /// This command as its outbox row on `topics.funds_commands`, keyed by
    /// account, with `traceparent` among its headers. Both the engine and
    /// the API (which sends a new saga's first command in the transaction
    /// that places its order) write commands through this, so the two
    /// cannot drift apart.
    pub fn to_outbox(
        &self,
        topics: &Topics,
        traceparent: String,
    ) -> Result<OutboxMessage, serde_json::Error> {
        let payload = serde_json::to_value(self)?;
        let headers = serde_json::json!({
            "message_id": self.message_id.to_string(),
            "saga_id": self.saga_id.to_string(),
            "type": self.kind.as_str(),
            "epoch": self.epoch.to_string(),
            "step": self.step.to_string(),
            "attempt": self.attempt.to_string(),
            "traceparent": traceparent,
        });
        // A retry reuses the command's message id; the previous attempt's
        // row may still be unpublished, so give each attempt (of each
        // epoch) its own outbox id.
        let attempt = match self.epoch {
            0 => self.attempt.to_string(),
            epoch => format!("{epoch}/{}", self.attempt),
        };
        Ok(OutboxMessage {
            message_id: Uuid::new_v5(&self.message_id, attempt.as_bytes()),
            topic: topics.funds_commands.clone(),
            key: self.user_id.to_string(),
            payload,
            headers,
        })
    }

    /// The id every attempt of (`saga_id`, `step`, direction) carries.
    pub fn message_id_for(saga_id: Uuid, step: u32, compensation: bool) -> Uuid {
        let dir = if compensation {
            "compensate"
        } else {
            "forward"
        };
        Uuid::new_v5(
            &NAMESPACE,
            format!("command/{saga_id}/{step}/{dir}").as_bytes(),
        )
    }
}

/// A participant's answer (`saga.replies`).
// No deny_unknown_fields: serde does not support it together with flatten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyEnvelope {
    /// Derived from the command's id and attempt: a redelivered command
    /// yields the same reply id, a retried one a new id.
    pub message_id: Uuid,
    /// The command's `message_id`.
    pub correlation_id: Uuid,
    /// Always `funds.reply` for now; checked by the consumer.
    #[serde(rename = "type")]
    pub kind: ReplyKind,
    /// Echoed from the command.
    pub saga_id: Uuid,
    /// Echoed from the command; absent on the wire means 0.
    #[serde(default)]
    pub epoch: u32,
    /// Echoed from the command.
    pub step: u32,
    /// Echoed from the command.
    pub attempt: u32,
    /// Echoed from the command.
    pub compensation: bool,
    /// OK, REJECTED with a reason, or FAILED with a reason.
    #[serde(flatten)]
    pub outcome: ReplyOutcome,
}

/// The reply types sagaflow understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyKind {
    /// The funds participant's reply.
    #[serde(rename = "funds.reply")]
    FundsReply,
}

/// The outcome as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReplyOutcome {
    /// Done (or already done).
    Ok,
    /// Refused for a business reason; not worth retrying.
    Rejected {
        /// Why.
        reason: String,
    },
    /// Could not be done now; worth retrying.
    Failed {
        /// Why.
        reason: String,
    },
}

impl From<ReplyOutcome> for Outcome {
    fn from(o: ReplyOutcome) -> Self {
        match o {
            ReplyOutcome::Ok => Outcome::Ok,
            ReplyOutcome::Rejected { reason } => Outcome::Rejected { reason },
            ReplyOutcome::Failed { reason } => Outcome::Failed { reason },
        }
    }
}

impl ReplyEnvelope {
    /// The reply id for attempt `attempt` of command `command_id` in
    /// `epoch`. Epoch 0 keeps the id it had before epochs existed.
    pub fn message_id_for(command_id: Uuid, epoch: u32, attempt: u32) -> Uuid {
        let name = if epoch == 0 {
            format!("reply/{command_id}/{attempt}")
        } else {
            format!("reply/{command_id}/{epoch}/{attempt}")
        };
        Uuid::new_v5(&NAMESPACE, name.as_bytes())
    }

    /// The reply to `command` with `outcome`.
    pub fn answering(command: &CommandEnvelope, outcome: ReplyOutcome) -> Self {
        ReplyEnvelope {
            message_id: Self::message_id_for(command.message_id, command.epoch, command.attempt),
            correlation_id: command.message_id,
            kind: ReplyKind::FundsReply,
            saga_id: command.saga_id,
            epoch: command.epoch,
            step: command.step,
            attempt: command.attempt,
            compensation: command.compensation,
            outcome,
        }
    }
}

/// Order lifecycle events for downstream services (`orders.events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum OrderEvent {
    /// The buyer's account was debited and the order is PAID.
    OrderPaid {
        /// Unique per saga and event type.
        message_id: Uuid,
        /// The order.
        order_no: String,
        /// The buyer.
        user_id: i64,
        /// The amount paid.
        #[serde(with = "rust_decimal::serde::str")]
        amount: Decimal,
        /// The saga that paid it.
        saga_id: Uuid,
    },
    /// The payment did not happen (refused or unconfirmed) and any debit
    /// was refunded; the order is FAILED.
    OrderFailed {
        /// Unique per saga and event type.
        message_id: Uuid,
        /// The order.
        order_no: String,
        /// The buyer.
        user_id: i64,
        /// The saga.
        saga_id: Uuid,
        /// Why.
        reason: String,
    },
    /// An operator cancelled the order and any debit was refunded.
    OrderCancelled {
        /// Unique per saga and event type.
        message_id: Uuid,
        /// The order.
        order_no: String,
        /// The buyer.
        user_id: i64,
        /// The saga.
        saga_id: Uuid,
        /// The operator's reason.
        reason: String,
    },
    /// A PAID order's amount was credited back to the buyer; the order is
    /// REFUNDED.
    OrderRefunded {
        /// Unique per saga and event type.
        message_id: Uuid,
        /// The order.
        order_no: String,
        /// The buyer.
        user_id: i64,
        /// The amount given back.
        #[serde(with = "rust_decimal::serde::str")]
        amount: Decimal,
        /// The refund saga.
        saga_id: Uuid,
        /// Why the refund was asked for.
        reason: String,
    },
    /// A refund could not be carried out and was undone; the order stays
    /// PAID and may be refunded again.
    OrderRefundFailed {
        /// Unique per saga and event type.
        message_id: Uuid,
        /// The order.
        order_no: String,
        /// The buyer.
        user_id: i64,
        /// The refund saga.
        saga_id: Uuid,
        /// What went wrong.
        reason: String,
    },
}

impl OrderEvent {
    /// The id of the event `kind` of saga `saga_id`.
    pub fn message_id_for(saga_id: Uuid, kind: &str) -> Uuid {
        Uuid::new_v5(
            &NAMESPACE,
            format!("order-event/{saga_id}/{kind}").as_bytes(),
        )
    }

    /// This event's id.
    pub fn message_id(&self) -> Uuid {
        match self {
            OrderEvent::OrderPaid { message_id, .. }
            | OrderEvent::OrderFailed { message_id, .. }
            | OrderEvent::OrderCancelled { message_id, .. }
            | OrderEvent::OrderRefunded { message_id, .. }
            | OrderEvent::OrderRefundFailed { message_id, .. } => *message_id,
        }
    }

    /// The event's type name, as in its `type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            OrderEvent::OrderPaid { .. } => "OrderPaid",
            OrderEvent::OrderFailed { .. } => "OrderFailed",
            OrderEvent::OrderCancelled { .. } => "OrderCancelled",
            OrderEvent::OrderRefunded { .. } => "OrderRefunded",
            OrderEvent::OrderRefundFailed { .. } => "OrderRefundFailed",
        }
    }

    /// The order it is about (the Kafka key).
    pub fn order_no(&self) -> &str {
        match self {
            OrderEvent::OrderPaid { order_no, .. }
            | OrderEvent::OrderFailed { order_no, .. }
            | OrderEvent::OrderCancelled { order_no, .. }
            | OrderEvent::OrderRefunded { order_no, .. }
            | OrderEvent::OrderRefundFailed { order_no, .. } => order_no,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> CommandEnvelope {
        let saga_id = Uuid::from_u128(7);
        CommandEnvelope {
            message_id: CommandEnvelope::message_id_for(saga_id, 0, false),
            kind: CommandKind::FundsDebit,
            saga_id,
            epoch: 0,
            step: 0,
            attempt: 1,
            compensation: false,
            user_id: 42,
            amount: Decimal::new(1999, 2),
        }
    }

    #[test]
    fn command_wire_format_keeps_money_as_a_string() {
        let json = serde_json::to_value(command()).unwrap();
        assert_eq!(json["type"], "funds.debit");
        assert_eq!(json["amount"], "19.99");
        let back: CommandEnvelope = serde_json::from_value(json).unwrap();
        assert_eq!(back, command());
    }

    #[test]
    fn retries_share_the_command_id_but_not_the_reply_id() {
        let c = command();
        let mut retry = c.clone();
        retry.attempt = 2;
        assert_eq!(
            c.message_id,
            CommandEnvelope::message_id_for(c.saga_id, 0, false)
        );
        assert_ne!(
            c.message_id,
            CommandEnvelope::message_id_for(c.saga_id, 0, true)
        );
        let r1 = ReplyEnvelope::answering(&c, ReplyOutcome::Ok);
        let r2 = ReplyEnvelope::answering(&retry, ReplyOutcome::Ok);
        assert_ne!(r1.message_id, r2.message_id);
        assert_eq!(
            r1.message_id,
            ReplyEnvelope::answering(&c, ReplyOutcome::Ok).message_id
        );
        // Attempt 1 of a later epoch is another reply, or the saga's inbox
        // would drop it as a duplicate of the earlier epoch's.
        let mut forced = c.clone();
        forced.epoch = 1;
        let r3 = ReplyEnvelope::answering(&forced, ReplyOutcome::Ok);
        assert_ne!(r1.message_id, r3.message_id);
        assert_eq!(r3.epoch, 1);
    }

    #[test]
    fn a_command_without_an_epoch_is_of_epoch_0() {
        let mut json = serde_json::to_value(command()).unwrap();
        json.as_object_mut().unwrap().remove("epoch");
        assert_eq!(
            serde_json::from_value::<CommandEnvelope>(json).unwrap(),
            command()
        );
    }

    #[test]
    fn reply_outcome_is_flattened() {
        let r = ReplyEnvelope::answering(
            &command(),
            ReplyOutcome::Rejected {
                reason: "insufficient funds".into(),
            },
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["outcome"], "REJECTED");
        assert_eq!(json["reason"], "insufficient funds");
        assert_eq!(serde_json::from_value::<ReplyEnvelope>(json).unwrap(), r);
    }

    #[test]
    fn wrong_shapes_are_refused() {
        assert!(serde_json::from_str::<CommandEnvelope>(r#"{"hello":"world"}"#).is_err());
        let mut json = serde_json::to_value(command()).unwrap();
        json["type"] = "funds.teleport".into();
        assert!(serde_json::from_value::<CommandEnvelope>(json).is_err());
    }
}
