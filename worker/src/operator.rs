//! Operators' requests on sagas. A request is a row update that the next
//! worker to claim the saga applies before anything else (see
//! `executor::advance`); nothing here touches the saga's state itself, so
//! the API can file requests without depending on the worker.

use sagaflow_entity::saga_instance::{OperatorRequest, FILE_REQUEST_SQL};
use sagaflow_entity::StateValues;
use sea_orm::ConnectionTrait;

use crate::sql::one;
use crate::WorkerError;

/// Files `request` on the active saga `saga_id` and makes it due now.
/// Returns `false`, changing nothing, if the saga is finished, unknown, or
/// already has a request pending.
pub async fn file_request<C: ConnectionTrait>(
    db: &C,
    saga_id: uuid::Uuid,
    request: OperatorRequest,
    reason: &str,
) -> Result<bool, WorkerError> {
    Ok(one(
        db,
        FILE_REQUEST_SQL,
        [saga_id.into(), request.as_str().into(), reason.into()],
    )
    .await?
    .is_some())
}
