//! The outbox messages Kafka refused for good and the relay set aside
//! (`outbox_dead`), so that the messages behind them were published: list
//! them, and put one, or a topic's, back in the outbox once what made
//! Kafka refuse them is fixed. Operator calls; `sagaflow outbox
//! list|requeue` does the same from a shell.

use poem::Request;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sagaflow_entity::outbox_dead::{self, Requeue};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::body::{Fields, FromJsonObject, JsonBody};
use crate::error::{ApiError, ProblemJson};
use crate::params::IntParam;
use crate::sagas::Operator;
use crate::ApiTags;

/// Most set-aside messages one listing shows, oldest first; `total` says
/// how many there are.
pub const MAX_LISTED: u64 = 500;

/// An outbox message the relay set aside. Its payload is not shown: it
/// may be the very size Kafka refused.
#[derive(Debug, Clone, Object)]
pub struct SetAsideMessage {
    /// The id the message had in the outbox; requeue it by this id.
    pub id: i64,
    /// The message's id, which consumers dedupe by.
    pub message_id: Uuid,
    /// Full topic name, prefix included.
    pub topic: String,
    /// The message key (a saga id, or an account for the funds topics).
    pub key: String,
    /// The payload's size as Postgres writes its JSON out, in bytes: a few
    /// percent more than the compact JSON the relay sent.
    pub payload_bytes: i64,
    /// When the message was written to the outbox.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When the relay set it aside.
    pub failed_at: chrono::DateTime<chrono::Utc>,
    /// Kafka's (or librdkafka's) answer, e.g. `MessageSizeTooLarge`.
    pub error: String,
}

impl From<outbox_dead::Summary> for SetAsideMessage {
    fn from(s: outbox_dead::Summary) -> Self {
        Self {
            id: s.id,
            message_id: s.message_id,
            topic: s.topic,
            key: s.key,
            payload_bytes: s.payload_bytes,
            created_at: s.created_at.into(),
            failed_at: s.failed_at.into(),
            error: s.error,
        }
    }
}

/// The set-aside messages.
#[derive(Debug, Clone, Object)]
pub struct SetAsideList {
    /// Up to 500, oldest first.
    pub items: Vec<SetAsideMessage>,
    /// How many are set aside in all.
    pub total: i64,
}

/// What a requeue moved.
#[derive(Debug, Clone, Object)]
pub struct Requeued {
    /// The ids put back at the end of the outbox.
    pub requeued: Vec<i64>,
}

/// Body of `POST /outbox/set-aside/requeue`.
#[derive(Debug, Clone, Object)]
pub struct RequeueTopicRequest {
    /// The full topic name (prefix included, as the listing shows it):
    /// every message set aside for it is requeued.
    #[oai(validator(pattern = r"^[a-zA-Z0-9._-]{1,249}$"))]
    pub topic: String,
}

/// A validated [`RequeueTopicRequest`].
#[derive(Debug, Clone)]
pub struct RequeueTopic {
    /// A valid Kafka topic name.
    pub topic: String,
}

impl FromJsonObject for RequeueTopic {
    type Schema = RequeueTopicRequest;

    fn from_object(fields: &mut Fields<'_>) -> Option<Self> {
        let topic = fields.text("topic", 249)?;
        if !topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            fields.refuse(
                "topic",
                "must be a Kafka topic name: letters, digits, `.`, `_` and `-`",
            );
            return None;
        }
        Some(Self { topic })
    }
}

/// Responses of `GET /outbox/set-aside`.
#[derive(Debug, ApiResponse)]
pub enum ListResponse {
    /// The set-aside messages (none: `items` is empty).
    #[oai(status = 200)]
    Ok(Json<SetAsideList>),
    /// No or a wrong `Authorization: Bearer` token.
    #[oai(status = 401)]
    Unauthorized(ProblemJson),
    /// The server failed; the body carries a correlation id.
    #[oai(status = 500)]
    Internal(ProblemJson),
}

/// Responses of `POST /outbox/set-aside/{id}/requeue`.
#[derive(Debug, ApiResponse)]
pub enum RequeueResponse {
    /// The message is back in the outbox; the relay publishes it next.
    #[oai(status = 200)]
    Ok(Json<Requeued>),
    /// No or a wrong `Authorization: Bearer` token.
    #[oai(status = 401)]
    Unauthorized(ProblemJson),
    /// No message with this id is set aside (never was, or already
    /// requeued).
    #[oai(status = 404)]
    NotFound(ProblemJson),
    /// The id is not a positive integer.
    #[oai(status = 422)]
    Unprocessable(ProblemJson),
    /// The server failed; the body carries a correlation id.
    #[oai(status = 500)]
    Internal(ProblemJson),
}

/// Responses of `POST /outbox/set-aside/requeue`.
#[derive(Debug, ApiResponse)]
pub enum RequeueTopicResponse {
    /// The topic's messages are back in the outbox, in their old order.
    #[oai(status = 200)]
    Ok(Json<Requeued>),
    /// The body is not a JSON object.
    #[oai(status = 400)]
    BadRequest(ProblemJson),
    /// No or a wrong `Authorization: Bearer` token.
    #[oai(status = 401)]
    Unauthorized(ProblemJson),
    /// No message for this topic is set aside.
    #[oai(status = 404)]
    NotFound(ProblemJson),
    /// The body is larger than the server's limit.
    #[oai(status = 413)]
    PayloadTooLarge(ProblemJson),
    /// The body is not `application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(ProblemJson),
    /// `topic` is missing or not a topic name; `errors` says why.
    #[oai(status = 422)]
    Unprocessable(ProblemJson),
    /// The server failed; the body carries a correlation id.
    #[oai(status = 500)]
    Internal(ProblemJson),
}

/// The `/outbox/set-aside` operations.
#[derive(Debug, Clone)]
pub struct OutboxApi {
    db: DatabaseConnection,
    operator: Operator,
}

impl OutboxApi {
    /// Reads and requeues in `db`; callers need the operator token
    /// `operator` checks.
    pub fn new(db: DatabaseConnection, operator: Operator) -> Self {
        Self { db, operator }
    }
}

impl OutboxApi {
    /// Requeues `which`; a 404 naming `what` when it matched nothing.
    async fn requeue_some(&self, which: Requeue, what: &str) -> Result<Json<Requeued>, ApiError> {
        let requeued = outbox_dead::requeue(&self.db, which).await?;
        if requeued.is_empty() {
            return Err(ApiError::NotFound(format!(
                "no outbox {what} is set aside (see GET /outbox/set-aside)"
            )));
        }
        Ok(Json(Requeued { requeued }))
    }
}

#[OpenApi(tag = "ApiTags::Outbox")]
impl OutboxApi {
    /// List set-aside outbox messages
    ///
    /// Operator call (`Authorization: Bearer <SAGAFLOW_ADMIN_TOKEN>`). The
    /// messages Kafka refused for what they are (too large, an invalid
    /// record), which the relay moved out of the outbox so that the
    /// messages behind them were published. Their sagas wait for replies
    /// that cannot come until each is requeued (or the saga times out and
    /// compensates). Oldest first, at most 500.
    #[oai(
        path = "/outbox/set-aside",
        method = "get",
        operation_id = "listSetAsideMessages"
    )]
    async fn list(&self, req: &Request) -> poem::Result<ListResponse> {
        self.operator.authorize(req)?;
        let rows = outbox_dead::list(&self.db, Some(MAX_LISTED))
            .await
            .map_err(ApiError::from)?;
        let total = outbox_dead::count(&self.db).await.map_err(ApiError::from)?;
        Ok(ListResponse::Ok(Json(SetAsideList {
            items: rows.into_iter().map(SetAsideMessage::from).collect(),
            total: i64::try_from(total).unwrap_or(i64::MAX),
        })))
    }

    /// Requeue a set-aside outbox message
    ///
    /// Operator call (`Authorization: Bearer <SAGAFLOW_ADMIN_TOKEN>`). Puts
    /// the message back at the end of the outbox, once what made Kafka
    /// refuse it is fixed (the topic's `max.message.bytes` raised, say),
    /// and wakes the relays. If Kafka refuses it again, the relay sets it
    /// aside again. Its consumers dedupe by message id, so a message that
    /// was published after all is not applied twice.
    #[oai(
        path = "/outbox/set-aside/:id/requeue",
        method = "post",
        operation_id = "requeueSetAsideMessage"
    )]
    async fn requeue(
        &self,
        req: &Request,
        /// The message's id in the outbox (`id` of the listing).
        id: Path<IntParam>,
    ) -> poem::Result<RequeueResponse> {
        self.operator.authorize(req)?;
        let id = id.0.parse("id")?;
        let requeued = self
            .requeue_some(Requeue::Ids(vec![id]), &format!("message {id}"))
            .await?;
        Ok(RequeueResponse::Ok(requeued))
    }

    /// Requeue every set-aside message of a topic
    ///
    /// Operator call (`Authorization: Bearer <SAGAFLOW_ADMIN_TOKEN>`). For
    /// when one cause refused many messages (the topic's
    /// `max.message.bytes`, now raised): every message set aside for
    /// `topic` goes back to the end of the outbox, in its old order, and
    /// the relays are woken. Same as `sagaflow outbox requeue --topic`.
    #[oai(
        path = "/outbox/set-aside/requeue",
        method = "post",
        operation_id = "requeueSetAsideTopic"
    )]
    async fn requeue_topic(
        &self,
        req: &Request,
        body: JsonBody<RequeueTopic>,
    ) -> poem::Result<RequeueTopicResponse> {
        self.operator.authorize(req)?;
        let topic = body.0.topic;
        let requeued = self
            .requeue_some(
                Requeue::Topic(topic.clone()),
                &format!("message for topic {topic}"),
            )
            .await?;
        Ok(RequeueTopicResponse::Ok(requeued))
    }
}
