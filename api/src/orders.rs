//! `/orders`: place an order (which starts its payment saga) and read it.

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use rust_decimal::Decimal;
use sagaflow_entity::wake::{Announcer, Channel};
use sagaflow_entity::{order, saga_instance, OrderStatus};
use sagaflow_workflows::money::format_amount;
use sagaflow_workflows::order_payment::OrderData;
use sagaflow_workflows::order_refund;
use sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait, Statement, TransactionTrait,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::accounts::positive_user_id;
use crate::body::{Fields, FromJsonObject, JsonBody, Reason};
use crate::error::{ApiError, ProblemJson};
use crate::params::{IdempotencyKeyDoc, Raw};
use crate::placer::{OrderRequest, Placed, Placer, SagaStart};
use crate::{utc, ApiTags};

/// The header carrying a client's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// Body of `POST /orders`.
#[derive(Debug, Clone, Object)]
pub struct CreateOrderRequest {
    /// The buyer: a user with a funds account (an integer > 0). An unknown
    /// user is refused with 422.
    #[oai(validator(minimum(value = "1")))]
    pub user_id: i64,
    /// The order's amount, as a decimal string with at most two decimal
    /// places, greater than 0 and at most "1000000000.00" (e.g. "19.99").
    /// JSON numbers are refused with 422 so that no amount is ever rounded.
    #[oai(validator(
        pattern = r"^0*(?:[1-9][0-9]{0,8}(?:\.[0-9]{1,2})?|1000000000(?:\.0{1,2})?)$|^0+\.(?:0[1-9]|[1-9][0-9]?)$"
    ))]
    pub amount: String,
}

/// A validated `POST /orders` body.
#[derive(Debug, Clone, Copy)]
pub struct NewOrder {
    /// The buyer, > 0.
    pub user_id: i64,
    /// The amount, > 0, two decimal places.
    pub amount: Decimal,
}

impl FromJsonObject for NewOrder {
    type Schema = CreateOrderRequest;

    fn from_object(fields: &mut Fields<'_>) -> Option<Self> {
        let user_id = positive_user_id(fields);
        let amount = fields.amount("amount");
        Some(Self {
            user_id: user_id?,
            amount: amount?,
        })
    }
}

impl NewOrder {
    /// Hex SHA-256 of the request's canonical form: the same order asked
    /// twice ("19.9" and "19.90" alike) has the same fingerprint.
    pub fn fingerprint(&self) -> String {
        let canonical = format!(
            "user_id={};amount={}",
            self.user_id,
            format_amount(self.amount)
        );
        hex::encode(Sha256::digest(canonical.as_bytes()))
    }
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatusView {
    /// Placed; the payment saga is running.
    Pending,
    /// The buyer's account was debited.
    Paid,
    /// The payment was refused (e.g. insufficient funds) or undone; any
    /// debit was refunded.
    Failed,
    /// An operator cancelled the order; any debit was refunded.
    Cancelled,
    /// The order was paid, then refunded to the buyer.
    Refunded,
}

impl From<OrderStatus> for OrderStatusView {
    fn from(s: OrderStatus) -> Self {
        match s {
            OrderStatus::Pending => Self::Pending,
            OrderStatus::Paid => Self::Paid,
            OrderStatus::Failed => Self::Failed,
            OrderStatus::Cancelled => Self::Cancelled,
            OrderStatus::Refunded => Self::Refunded,
        }
    }
}

/// An order.
#[derive(Debug, Clone, Object)]
pub struct OrderView {
    /// The order number, e.g. `ORD-0190f3c2...`.
    pub order_no: String,
    /// The buyer.
    pub user_id: i64,
    /// The amount, with two decimal places.
    pub amount: String,
    /// Where the order stands.
    pub status: OrderStatusView,
    /// The payment saga driving this order.
    pub saga_id: Uuid,
    /// Why the order failed, when it did.
    #[oai(nullable)]
    pub failure_reason: Option<String>,
    /// The refund saga, once a refund was asked for (cleared again if that
    /// refund was abandoned).
    #[oai(nullable)]
    pub refund_saga_id: Option<Uuid>,
    /// When the order was placed.
    pub created_at: DateTime<Utc>,
    /// When its status last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<order::Model> for OrderView {
    fn from(o: order::Model) -> Self {
        Self {
            order_no: o.order_no,
            user_id: o.user_id,
            amount: format_amount(o.amount),
            status: o.status.into(),
            saga_id: o.saga_id,
            failure_reason: o.failure_reason,
            refund_saga_id: o.refund_saga_id,
            created_at: utc(o.created_at),
            updated_at: utc(o.updated_at),
        }
    }
}

/// Responses of `POST /orders`.
#[derive(Debug, ApiResponse)]
pub enum CreateOrderResponse {
    /// The order was placed (status PENDING) and its payment saga started.
    #[oai(status = 201)]
    Created(Json<OrderView>),
    /// A retry: this `Idempotency-Key` already placed this same order, which
    /// is returned as it stands now (its status may have moved on).
    #[oai(status = 200)]
    Existing(Json<OrderView>),
    /// The body is not a JSON object (malformed, empty, ...).
    #[oai(status = 400)]
    BadRequest(ProblemJson),
    /// This `Idempotency-Key` was already used for a different order.
    #[oai(status = 409)]
    Conflict(ProblemJson),
    /// The body is larger than the server's limit.
    #[oai(status = 413)]
    PayloadTooLarge(ProblemJson),
    /// The body is not `application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(ProblemJson),
    /// A field or the `Idempotency-Key` header is invalid, or the user has
    /// no account; `errors` names the field.
    #[oai(status = 422)]
    Unprocessable(ProblemJson),
    /// The server failed; the body carries a correlation id.
    #[oai(status = 500)]
    Internal(ProblemJson),
}

/// Responses of `POST /orders/{order_no}/refund`.
#[derive(Debug, ApiResponse)]
pub enum RefundOrderResponse {
    /// The refund saga started; the order (still PAID) carries its
    /// `refund_saga_id` and becomes REFUNDED when the money is back.
    #[oai(status = 202)]
    Accepted(Json<OrderView>),
    /// The body is not a JSON object (malformed, empty, ...).
    #[oai(status = 400)]
    BadRequest(ProblemJson),
    /// There is no order with this number.
    #[oai(status = 404)]
    NotFound(ProblemJson),
    /// The order is not PAID, or a refund of it already started.
    #[oai(status = 409)]
    Conflict(ProblemJson),
    /// The body is larger than the server's limit.
    #[oai(status = 413)]
    PayloadTooLarge(ProblemJson),
    /// The body is not `application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(ProblemJson),
    /// `reason` is missing or invalid; `errors` names it.
    #[oai(status = 422)]
    Unprocessable(ProblemJson),
    /// The server failed; the body carries a correlation id.
    #[oai(status = 500)]
    Internal(ProblemJson),
}

/// Responses of `GET /orders/{order_no}`.
#[derive(Debug, ApiResponse)]
pub enum GetOrderResponse {
    /// The order.
    #[oai(status = 200)]
    Ok(Json<OrderView>),
    /// There is no order with this number.
    #[oai(status = 404)]
    NotFound(ProblemJson),
    /// The server failed; the body carries a correlation id.
    #[oai(status = 500)]
    Internal(ProblemJson),
}

/// The `/orders` operations.
#[derive(Debug, Clone)]
pub struct OrdersApi {
    db: DatabaseConnection,
    announcer: Announcer,
    placer: Placer,
}

impl OrdersApi {
    /// Operations on `db`, announcing the sagas they start to `announcer`,
    /// inserting orders through `placement_db` with up to `lanes`
    /// statements at once, their sagas started as `start` says.
    pub fn new(
        db: DatabaseConnection,
        placement_db: DatabaseConnection,
        announcer: Announcer,
        start: SagaStart,
        lanes: usize,
    ) -> Self {
        Self {
            placer: Placer::new(placement_db, start, lanes),
            db,
            announcer,
        }
    }
}

/// Reads the raw `Idempotency-Key` header: absent, or 1-255 visible ASCII
/// characters sent once. (poem-openapi's `Header` silently drops values that
/// are not visible ASCII, so it is read from the request itself.)
fn idempotency_key(req: &Request) -> Result<Option<String>, ApiError> {
    let mut values = req.headers().get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let refuse = |reason: &str| Err(ApiError::field(IDEMPOTENCY_KEY, reason));
    if values.next().is_some() {
        return refuse("must be sent at most once");
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 255 {
        return refuse("must be 1 to 255 characters long");
    }
    if !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return refuse(
            "must contain only visible ASCII characters (no spaces or control characters)",
        );
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

#[OpenApi(tag = "ApiTags::Orders")]
impl OrdersApi {
    /// Place an order
    ///
    /// Creates the order (status PENDING) and starts its payment saga, in one
    /// transaction that also queues the saga's debit command: the saga
    /// debits the buyer's account and the order becomes PAID, or FAILED if
    /// the funds are insufficient.
    ///
    /// Send an `Idempotency-Key` to make retries safe: repeating the same
    /// request with the same key returns the original order with 200 and
    /// places nothing new; the same key with a different body is a 409.
    #[oai(path = "/orders", method = "post", operation_id = "createOrder")]
    async fn create_order(
        &self,
        req: &Request,
        /// A client-chosen key of 1-255 visible ASCII characters (e.g. a
        /// UUID) identifying this order attempt; retries must reuse it.
        #[oai(name = "Idempotency-Key")]
        _idempotency_key: Header<Option<Raw<IdempotencyKeyDoc>>>,
        body: JsonBody<NewOrder>,
    ) -> poem::Result<CreateOrderResponse> {
        let new = body.0;
        let key = idempotency_key(req)?;
        let fingerprint = key.as_ref().map(|_| new.fingerprint());
        let mut attempts = 0;
        let placed = loop {
            attempts += 1;
            let request = OrderRequest {
                new,
                key: key.clone(),
                fingerprint: fingerprint.clone(),
            };
            match self.placer.place(request).await {
                Ok(Some(placed)) => break placed,
                // The key's order vanished between the insert and the read,
                // or a generated id collided: try again with fresh ids.
                Ok(None) if attempts < 3 => continue,
                Ok(None) => {
                    return Err(ApiError::Internal(
                        "could not place the order after 3 attempts".into(),
                    )
                    .into())
                }
                Err(err) => return Err(err.into()),
            }
        };
        Ok(match placed {
            Placed::New(o) => {
                self.announcer.announce(self.placer.wakes());
                CreateOrderResponse::Created(Json(o.into()))
            }
            Placed::Existing(o) if o.request_fingerprint == fingerprint => {
                CreateOrderResponse::Existing(Json(o.into()))
            }
            Placed::Existing(o) => CreateOrderResponse::Conflict(
                ApiError::Conflict(format!(
                    "Idempotency-Key was already used for order {} with a different body; \
                     use a new key for a new order",
                    o.order_no
                ))
                .into(),
            ),
        })
    }

    /// Refund a paid order
    ///
    /// Starts the order's refund saga, which credits the amount back to the
    /// buyer's account (a REFUND ledger entry) through the funds
    /// participant; the order then becomes REFUNDED. Answers at once with
    /// 202: follow the order (or its `refund_saga_id`) to see it finish.
    /// An order that is not PAID, or whose refund already started, is a 409.
    #[oai(
        path = "/orders/:order_no/refund",
        method = "post",
        operation_id = "refundOrder"
    )]
    async fn refund_order(
        &self,
        /// The order number returned when the order was placed.
        order_no: Path<String>,
        body: JsonBody<Reason>,
    ) -> poem::Result<RefundOrderResponse> {
        known_order_no(&order_no.0)?;
        let txn = self.db.begin().await.map_err(ApiError::from)?;
        let o = refund(&txn, &order_no.0, &body.0.reason).await?;
        txn.commit().await.map_err(ApiError::from)?;
        self.announcer.announce(Channel::Saga);
        Ok(RefundOrderResponse::Accepted(Json(o.into())))
    }

    /// Read an order
    ///
    /// The order as it stands now; `status` moves from PENDING to PAID,
    /// FAILED or CANCELLED as its payment saga finishes, and from PAID to
    /// REFUNDED when a refund completes.
    #[oai(path = "/orders/:order_no", method = "get", operation_id = "getOrder")]
    async fn get_order(
        &self,
        /// The order number returned when the order was placed.
        order_no: Path<String>,
    ) -> poem::Result<GetOrderResponse> {
        known_order_no(&order_no.0)?;
        let found = order::Entity::find_by_id(order_no.0.clone())
            .one(&self.db)
            .await
            .map_err(ApiError::from)?;
        Ok(match found {
            Some(o) => GetOrderResponse::Ok(Json(o.into())),
            None => GetOrderResponse::NotFound(
                ApiError::NotFound(format!("there is no order {}", order_no.0)).into(),
            ),
        })
    }
}

/// Inserts a saga instance due now and its first history row in `txn`.
async fn start_saga(
    txn: &DatabaseTransaction,
    saga_id: Uuid,
    (saga_type, version): (&str, u32),
    data: &OrderData,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    let data = serde_json::to_value(data)
        .map_err(|e| ApiError::Internal(format!("serialising OrderData: {e}")))?;
    let version = i32::try_from(version)
        .map_err(|_| ApiError::Internal("definition version out of range".into()))?;
    saga_instance::insert_new(txn, saga_id, (saga_type, version), data, detail, "api").await?;
    Ok(())
}

/// Starts the refund saga of a PAID order in `txn`: the order row is locked
/// first, so two refund requests for one order are decided one after the
/// other and the second sees the first's saga.
async fn refund(
    txn: &DatabaseTransaction,
    order_no: &str,
    reason: &str,
) -> Result<order::Model, ApiError> {
    let pg = DbBackend::Postgres;
    let found = order::Entity::find()
        .from_raw_sql(Statement::from_sql_and_values(
            pg,
            "SELECT * FROM orders WHERE order_no = $1 FOR UPDATE",
            [order_no.into()],
        ))
        .one(txn)
        .await?;
    let Some(o) = found else {
        return Err(ApiError::NotFound(format!("there is no order {order_no}")));
    };
    if let Some(saga) = o.refund_saga_id {
        return Err(ApiError::Conflict(format!(
            "order {order_no} is already being refunded or was refunded (refund saga {saga})"
        )));
    }
    if o.status != OrderStatus::Paid {
        return Err(ApiError::Conflict(format!(
            "order {order_no} is {}; only a PAID order can be refunded",
            sagaflow_entity::StateValues::as_str(&o.status)
        )));
    }
    let saga_id = Uuid::now_v7();
    let data = OrderData {
        order_no: o.order_no.clone(),
        user_id: o.user_id,
        amount: o.amount,
        reason: Some(reason.to_owned()),
    };
    let detail = serde_json::json!({
        "order_no": o.order_no,
        "user_id": o.user_id,
        "amount": format_amount(o.amount),
        "reason": reason,
    });
    start_saga(
        txn,
        saga_id,
        (order_refund::SAGA_TYPE, order_refund::VERSION),
        &data,
        detail,
    )
    .await?;
    let updated = order::Entity::find()
        .from_raw_sql(Statement::from_sql_and_values(
            pg,
            "UPDATE orders SET refund_saga_id = $2, updated_at = now() WHERE order_no = $1 RETURNING *",
            [order_no.into(), saga_id.into()],
        ))
        .one(txn)
        .await?;
    updated.ok_or_else(|| ApiError::Internal(format!("order {order_no} vanished while locked")))
}

/// An order number no order can have: one with a NUL character, which
/// Postgres could not even compare. Refused as unknown before any query.
fn known_order_no(order_no: &str) -> Result<(), ApiError> {
    if order_no.contains('\0') {
        return Err(ApiError::NotFound(format!(
            "there is no order {order_no:?}"
        )));
    }
    Ok(())
}
