//! An operator may force a FAILED saga forward instead of compensating
//! (`FORCE_FORWARD`). Each force starts a new `epoch`: commands carry it,
//! replies echo it, and participants fence compensations of an earlier
//! epoch with it.

const UP: &str = r#"
ALTER TABLE saga_instances ADD COLUMN epoch INT NOT NULL DEFAULT 0
    CONSTRAINT saga_instances_epoch_range CHECK (epoch >= 0);
ALTER TABLE saga_instances DROP CONSTRAINT saga_instances_operator_request_check;
ALTER TABLE saga_instances ADD CONSTRAINT saga_instances_operator_request_check
    CHECK (operator_request IN ('CANCEL', 'RETRY', 'FORCE_FORWARD'));
ALTER TABLE saga_instances DROP CONSTRAINT saga_instances_due_iff_active;
ALTER TABLE saga_instances ADD CONSTRAINT saga_instances_due_iff_active CHECK (
    (state IN ('RUNNING', 'WAITING', 'COMPENSATING')
     OR (state = 'FAILED' AND operator_request IN ('RETRY', 'FORCE_FORWARD')))
    = (next_run_at IS NOT NULL));
"#;

const DOWN: &str = r#"
UPDATE saga_instances SET operator_request = NULL, operator_reason = NULL, next_run_at = NULL
    WHERE state = 'FAILED' AND operator_request = 'FORCE_FORWARD';
ALTER TABLE saga_instances DROP CONSTRAINT saga_instances_due_iff_active;
ALTER TABLE saga_instances ADD CONSTRAINT saga_instances_due_iff_active CHECK (
    (state IN ('RUNNING', 'WAITING', 'COMPENSATING')
     OR (state = 'FAILED' AND operator_request = 'RETRY'))
    = (next_run_at IS NOT NULL));
ALTER TABLE saga_instances DROP CONSTRAINT saga_instances_operator_request_check;
ALTER TABLE saga_instances ADD CONSTRAINT saga_instances_operator_request_check
    CHECK (operator_request IN ('CANCEL', 'RETRY'));
ALTER TABLE saga_instances DROP COLUMN epoch;
"#;

crate::sql_migration!(UP, DOWN);
