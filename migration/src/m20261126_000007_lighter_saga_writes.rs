//! Fewer writes per saga transition (issue 6's profile of `claim-1step`:
//! a third of Postgres's CPU went to index maintenance and a twelfth to
//! the history table's foreign-key check).
//!
//! - `saga_events.saga_id` loses its foreign key. Every history row is
//!   written by the engine in the transaction that changes (or creates) its
//!   saga, so the key only ever checked what the same statement had just
//!   written, at the price of a lookup and a row lock per history row.
//!   `sagaflow verify` checks instead that no history row lacks its saga.
//!   Retention deletes the history explicitly, as the cascade did.
//! - The expression index on `data->>'order_no'` leaves out payment
//!   sagas (and sagas whose input names no order): every transition of a saga changes `next_run_at`, so none is a
//!   HOT update and each one inserts an entry into every index whose
//!   predicate it meets. The saga list's `order_no` filter finds a payment
//!   saga through its order row (`orders.saga_id`, unique) and any other
//!   saga naming the order (refunds, an application's own sagas) through
//!   the partial index.

const UP: &str = r#"
ALTER TABLE saga_events DROP CONSTRAINT saga_events_saga_id_fkey;
DROP INDEX saga_instances_order_no;
CREATE INDEX saga_instances_order_no ON saga_instances ((data->>'order_no'))
    WHERE saga_type <> 'order_payment' AND (data->>'order_no') IS NOT NULL;
"#;

const DOWN: &str = r#"
DROP INDEX saga_instances_order_no;
CREATE INDEX saga_instances_order_no ON saga_instances ((data->>'order_no'));
DELETE FROM saga_events e WHERE NOT EXISTS (SELECT 1 FROM saga_instances s WHERE s.id = e.saga_id);
ALTER TABLE saga_events ADD CONSTRAINT saga_events_saga_id_fkey
    FOREIGN KEY (saga_id) REFERENCES saga_instances (id) ON DELETE CASCADE;
"#;

crate::sql_migration!(UP, DOWN);
