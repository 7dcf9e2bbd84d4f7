//! Operators' requests on sagas. A request is a row update that the next
//! worker to claim the saga applies before anything else (see
//! `executor::advance`); filing one touches no state of the saga itself,
//! which is why the API can file requests without depending on the worker
//! (both call [`saga_instance::file_request`]).

use sagaflow_entity::saga_instance::{self, Filed, OperatorRequest};
use sea_orm::ConnectionTrait;

use crate::WorkerError;

/// Files `request` on saga `saga_id` as `actor`; see
/// [`saga_instance::file_request`].
pub async fn file_request<C: ConnectionTrait>(
    db: &C,
    saga_id: uuid::Uuid,
    request: OperatorRequest,
    reason: &str,
    actor: &str,
) -> Result<Filed, WorkerError> {
    Ok(saga_instance::file_request(db, saga_id, request, reason, actor).await?)
}
