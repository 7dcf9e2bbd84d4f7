//! The after-sale refund saga (order status REFUNDED, one refund saga per
//! order, REFUND_VOID ledger entries), operator requests on sagas, and a
//! saga's failure reason.

const UP: &str = r#"
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('PENDING', 'PAID', 'FAILED', 'CANCELLED', 'REFUNDED'));
-- At most one refund saga per order at a time: `POST /orders/{no}/refund`
-- sets it only while it is NULL and the order is PAID; an abandoned refund
-- clears it again.
ALTER TABLE orders ADD COLUMN refund_saga_id UUID UNIQUE;
ALTER TABLE orders ADD CONSTRAINT orders_refunded_has_refund_saga
    CHECK (status <> 'REFUNDED' OR refund_saga_id IS NOT NULL);

-- REFUND_VOID: a refund saga's credit taken back when the saga gave up.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind_check
    CHECK (kind IN ('DEPOSIT', 'DEBIT', 'REFUND', 'REFUND_VOID'));

-- Why a saga compensates (the failure or cancel that started it), kept
-- apart from last_error, which each failed attempt overwrites.
ALTER TABLE saga_instances ADD COLUMN failure_reason TEXT;

-- An operator's request, written by whoever asks and applied by the next
-- worker that claims the saga (before anything else happens to it).
ALTER TABLE saga_instances
    ADD COLUMN operator_request TEXT CHECK (operator_request IN ('CANCEL', 'RETRY')),
    ADD COLUMN operator_reason TEXT,
    ADD CONSTRAINT saga_instances_request_has_reason
        CHECK ((operator_request IS NULL) = (operator_reason IS NULL));
"#;

const DOWN: &str = r#"
ALTER TABLE saga_instances DROP CONSTRAINT saga_instances_request_has_reason,
    DROP COLUMN operator_reason, DROP COLUMN operator_request, DROP COLUMN failure_reason;
DELETE FROM ledger_entries WHERE kind = 'REFUND_VOID';
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind_check
    CHECK (kind IN ('DEPOSIT', 'DEBIT', 'REFUND'));
ALTER TABLE orders DROP CONSTRAINT orders_refunded_has_refund_saga;
ALTER TABLE orders DROP COLUMN refund_saga_id;
UPDATE orders SET status = 'PAID' WHERE status = 'REFUNDED';
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('PENDING', 'PAID', 'FAILED', 'CANCELLED'));
"#;

crate::sql_migration!(UP, DOWN);
