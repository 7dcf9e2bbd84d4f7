//! `/accounts`: create a funds account, deposit into it, read it.

use chrono::{DateTime, Utc};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use rust_decimal::Decimal;
use sagaflow_entity::{account, ledger_entry, LedgerKind};
use sagaflow_workflows::money::format_amount;
use sea_orm::{
    AccessMode, ColumnTrait, DatabaseConnection, DbBackend, EntityTrait, FromQueryResult,
    IsolationLevel, QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
};
use uuid::Uuid;

use crate::body::{Fields, FromJsonObject, JsonBody};
use crate::error::{ApiError, ProblemJson};
use crate::params::IntParam;
use crate::{utc, ApiTags};

/// Largest balance a `numeric(18,2)` column holds.
const MAX_BALANCE: &str = "9999999999999999.99";
/// How many ledger entries `GET /accounts/{user_id}` shows.
pub const RECENT_ENTRIES: u64 = 20;

/// Body of `POST /accounts`.
#[derive(Debug, Clone, Object)]
pub struct CreateAccountRequest {
    /// The user who owns the account: an integer from 1 to
    /// 9223372036854775807. One account per user.
    #[oai(validator(minimum(value = "1")))]
    pub user_id: i64,
}

/// A validated `POST /accounts` body.
#[derive(Debug, Clone, Copy)]
pub struct NewAccount {
    /// The owner, > 0.
    pub user_id: i64,
}

impl FromJsonObject for NewAccount {
    type Schema = CreateAccountRequest;

    fn from_object(fields: &mut Fields<'_>) -> Option<Self> {
        let user_id = positive_user_id(fields)?;
        Some(Self { user_id })
    }
}

/// Reads `user_id` and checks it is > 0.
pub(crate) fn positive_user_id(fields: &mut Fields<'_>) -> Option<i64> {
    let user_id = fields.int64("user_id")?;
    if user_id <= 0 {
        fields.refuse("user_id", "must be greater than 0");
        return None;
    }
    Some(user_id)
}

/// Body of `POST /accounts/{user_id}/deposits`.
#[derive(Debug, Clone, Object)]
pub struct DepositRequest {
    /// The amount paid in, as a decimal string with at most two decimal
    /// places, greater than 0 and at most "1000000000.00" (e.g. "100.00").
    /// JSON numbers are refused with 422 so that no amount is ever rounded.
    #[oai(validator(
        pattern = r"^0*(?:[1-9][0-9]{0,8}(?:\.[0-9]{1,2})?|1000000000(?:\.0{1,2})?)$|^0+\.(?:0[1-9]|[1-9][0-9]?)$"
    ))]
    pub amount: String,
}

/// A validated deposit body.
#[derive(Debug, Clone, Copy)]
pub struct NewDeposit {
    /// The amount, > 0, two decimal places.
    pub amount: Decimal,
}

impl FromJsonObject for NewDeposit {
    type Schema = DepositRequest;

    fn from_object(fields: &mut Fields<'_>) -> Option<Self> {
        Some(Self {
            amount: fields.amount("amount")?,
        })
    }
}

/// A newly created account.
#[derive(Debug, Clone, Object)]
pub struct AccountCreated {
    /// The owner's user id.
    pub user_id: i64,
    /// The balance: always "0.00" for a new account.
    pub balance: String,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
}

/// The deposit just recorded.
#[derive(Debug, Clone, Object)]
pub struct DepositEntry {
    /// The ledger entry's id.
    pub id: i64,
    /// The amount paid in, with two decimal places.
    pub amount: String,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
}

/// The result of a deposit.
#[derive(Debug, Clone, Object)]
pub struct DepositMade {
    /// The account's owner.
    pub user_id: i64,
    /// The balance right after this deposit, with two decimal places.
    pub balance: String,
    /// The ledger entry written for the deposit.
    pub deposit: DepositEntry,
}

/// What a ledger entry did to the balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EntryKind {
    /// Money paid in through a deposit.
    Deposit,
    /// Money taken to pay an order.
    Debit,
    /// Money given back: an order's payment was undone, or a PAID order
    /// was refunded.
    Refund,
    /// A refund's credit taken back because the refund was abandoned.
    RefundVoid,
}

impl From<LedgerKind> for EntryKind {
    fn from(kind: LedgerKind) -> Self {
        match kind {
            LedgerKind::Deposit => Self::Deposit,
            LedgerKind::Debit => Self::Debit,
            LedgerKind::Refund => Self::Refund,
            LedgerKind::RefundVoid => Self::RefundVoid,
        }
    }
}

/// One change to an account's balance.
#[derive(Debug, Clone, Object)]
pub struct LedgerEntryView {
    /// The entry's id; later entries have larger ids.
    pub id: i64,
    /// Deposit, debit or refund.
    pub kind: EntryKind,
    /// The amount moved (always positive), with two decimal places.
    pub amount: String,
    /// The balance right after this entry, with two decimal places.
    pub balance_after: String,
    /// The saga that debited or refunded; absent for deposits.
    #[oai(nullable)]
    pub saga_id: Option<Uuid>,
    /// When the entry was recorded.
    pub created_at: DateTime<Utc>,
}

/// An account with its latest ledger entries.
#[derive(Debug, Clone, Object)]
pub struct AccountView {
    /// The owner's user id.
    pub user_id: i64,
    /// The current balance, with two decimal places.
    pub balance: String,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
    /// When the balance last changed.
    pub updated_at: DateTime<Utc>,
    /// The 20 most recent ledger entries, newest first.
    pub recent_entries: Vec<LedgerEntryView>,
}

/// Responses of `POST /accounts`.
#[derive(Debug, ApiResponse)]
pub enum CreateAccountResponse {
    /// The account was created with a zero balance.
    #[oai(status = 201)]
    Created(Json<AccountCreated>),
    /// The body is not a JSON object (malformed, empty, ...).
    #[oai(status = 400)]
    BadRequest(ProblemJson),
    /// The user already has an account.
    #[oai(status = 409)]
    Conflict(ProblemJson),
    /// The body is larger than the server's limit.
    #[oai(status = 413)]
    PayloadTooLarge(ProblemJson),
    /// The body is not `application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(ProblemJson),
    /// A field is missing, of the wrong type or invalid; `errors` names it.
    #[oai(status = 422)]
    Unprocessable(ProblemJson),
    /// The server failed; the body carries a correlation id.
    #[oai(status = 500)]
    Internal(ProblemJson),
}

/// Responses of `POST /accounts/{user_id}/deposits`.
#[derive(Debug, ApiResponse)]
pub enum DepositResponse {
    /// The deposit was recorded and the balance raised.
    #[oai(status = 201)]
    Created(Json<DepositMade>),
    /// The body is not a JSON object (malformed, empty, ...).
    #[oai(status = 400)]
    BadRequest(ProblemJson),
    /// There is no account for this user.
    #[oai(status = 404)]
    NotFound(ProblemJson),
    /// The body is larger than the server's limit.
    #[oai(status = 413)]
    PayloadTooLarge(ProblemJson),
    /// The body is not `application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(ProblemJson),
    /// The amount is invalid, or the balance would exceed
    /// 9999999999999999.99; `errors` names the field.
    #[oai(status = 422)]
    Unprocessable(ProblemJson),
    /// The server failed; the body carries a correlation id.
    #[oai(status = 500)]
    Internal(ProblemJson),
}

/// Responses of `GET /accounts/{user_id}`.
#[derive(Debug, ApiResponse)]
pub enum GetAccountResponse {
    /// The account and its most recent ledger entries.
    #[oai(status = 200)]
    Ok(Json<AccountView>),
    /// There is no account for this user.
    #[oai(status = 404)]
    NotFound(ProblemJson),
    /// `user_id` is not an integer.
    #[oai(status = 422)]
    Unprocessable(ProblemJson),
    /// The server failed; the body carries a correlation id.
    #[oai(status = 500)]
    Internal(ProblemJson),
}

/// The `/accounts` operations.
#[derive(Debug, Clone)]
pub struct AccountsApi {
    db: DatabaseConnection,
}

impl AccountsApi {
    /// Operations on `db`.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

fn no_account(user_id: i64) -> ProblemJson {
    ApiError::NotFound(format!("there is no account for user {user_id}")).into()
}

#[OpenApi(tag = "ApiTags::Accounts")]
impl AccountsApi {
    /// Create a funds account
    ///
    /// Opens an account with a zero balance for `user_id`. A user has at most
    /// one account: creating it again answers 409 and changes nothing.
    #[oai(path = "/accounts", method = "post", operation_id = "createAccount")]
    async fn create_account(
        &self,
        body: JsonBody<NewAccount>,
    ) -> poem::Result<CreateAccountResponse> {
        let user_id = body.0.user_id;
        let stmt = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO accounts (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING RETURNING *",
            [user_id.into()],
        );
        let created = account::Entity::find()
            .from_raw_sql(stmt)
            .one(&self.db)
            .await
            .map_err(ApiError::from)?;
        Ok(match created {
            Some(a) => CreateAccountResponse::Created(Json(AccountCreated {
                user_id: a.user_id,
                balance: format_amount(a.balance),
                created_at: utc(a.created_at),
            })),
            None => CreateAccountResponse::Conflict(
                ApiError::Conflict(format!("user {user_id} already has an account")).into(),
            ),
        })
    }

    /// Deposit money into an account
    ///
    /// Raises the balance by `amount` and records a DEPOSIT ledger entry, in
    /// one transaction. Refused with 422 if the balance would exceed
    /// 9999999999999999.99.
    #[oai(
        path = "/accounts/:user_id/deposits",
        method = "post",
        operation_id = "deposit"
    )]
    async fn deposit(
        &self,
        /// The user whose account receives the money.
        user_id: Path<IntParam>,
        body: JsonBody<NewDeposit>,
    ) -> poem::Result<DepositResponse> {
        let user_id = user_id.0.parse("user_id")?;
        if user_id <= 0 {
            return Ok(DepositResponse::NotFound(no_account(user_id)));
        }
        let amount = body.0.amount;
        let txn = self.db.begin().await.map_err(ApiError::from)?;
        #[derive(FromQueryResult)]
        struct Balance {
            balance: Decimal,
        }
        let updated = Balance::find_by_statement(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "UPDATE accounts SET balance = balance + $1, updated_at = now() \
                 WHERE user_id = $2 AND balance + $1 <= {MAX_BALANCE} RETURNING balance"
            ),
            [amount.into(), user_id.into()],
        ))
        .one(&txn)
        .await
        .map_err(ApiError::from)?;
        let Some(Balance { balance }) = updated else {
            txn.rollback().await.map_err(ApiError::from)?;
            let exists = account::Entity::find_by_id(user_id)
                .one(&self.db)
                .await
                .map_err(ApiError::from)?
                .is_some();
            return Ok(if exists {
                DepositResponse::Unprocessable(
                    ApiError::field(
                        "amount",
                        format!("would raise the balance above the maximum of {MAX_BALANCE}"),
                    )
                    .into(),
                )
            } else {
                DepositResponse::NotFound(no_account(user_id))
            });
        };
        let entry = ledger_entry::Entity::find()
            .from_raw_sql(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO ledger_entries (user_id, saga_id, kind, amount, balance_after) \
                 VALUES ($1, NULL, 'DEPOSIT', $2, $3) RETURNING *",
                [user_id.into(), amount.into(), balance.into()],
            ))
            .one(&txn)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::Internal("INSERT … RETURNING returned no row".to_owned()))?;
        txn.commit().await.map_err(ApiError::from)?;
        Ok(DepositResponse::Created(Json(DepositMade {
            user_id,
            balance: format_amount(balance),
            deposit: DepositEntry {
                id: entry.id,
                amount: format_amount(entry.amount),
                created_at: utc(entry.created_at),
            },
        })))
    }

    /// Read an account
    ///
    /// The balance and the 20 most recent ledger entries (deposits, debits,
    /// refunds), newest first, read from one consistent snapshot.
    #[oai(
        path = "/accounts/:user_id",
        method = "get",
        operation_id = "getAccount"
    )]
    async fn get_account(
        &self,
        /// The user whose account to read.
        user_id: Path<IntParam>,
    ) -> poem::Result<GetAccountResponse> {
        let user_id = user_id.0.parse("user_id")?;
        if user_id <= 0 {
            return Ok(GetAccountResponse::NotFound(no_account(user_id)));
        }
        let txn = self
            .db
            .begin_with_config(
                Some(IsolationLevel::RepeatableRead),
                Some(AccessMode::ReadOnly),
            )
            .await
            .map_err(ApiError::from)?;
        let Some(a) = account::Entity::find_by_id(user_id)
            .one(&txn)
            .await
            .map_err(ApiError::from)?
        else {
            return Ok(GetAccountResponse::NotFound(no_account(user_id)));
        };
        let entries = ledger_entry::Entity::find()
            .filter(ledger_entry::Column::UserId.eq(user_id))
            .order_by_desc(ledger_entry::Column::Id)
            .limit(RECENT_ENTRIES)
            .all(&txn)
            .await
            .map_err(ApiError::from)?;
        txn.commit().await.map_err(ApiError::from)?;
        Ok(GetAccountResponse::Ok(Json(AccountView {
            user_id: a.user_id,
            balance: format_amount(a.balance),
            created_at: utc(a.created_at),
            updated_at: utc(a.updated_at),
            recent_entries: entries
                .into_iter()
                .map(|e| LedgerEntryView {
                    id: e.id,
                    kind: e.kind.into(),
                    amount: format_amount(e.amount),
                    balance_after: format_amount(e.balance_after),
                    saga_id: e.saga_id,
                    created_at: utc(e.created_at),
                })
                .collect(),
        })))
    }
}
