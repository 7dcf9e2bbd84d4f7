//! Sagas that need a person, and a hot table that stays small.
//!
//! - An operator may mark a FAILED saga `RESOLVED` (`operator_request =
//!   'RESOLVE'`), asserting in `resolution` what became of its money:
//!   `NONE` (nothing stays moved), `APPLIED` (the movement stands and the
//!   saga's business outcome with it) or `SETTLED_OUTSIDE` (the movement
//!   stays in the ledger, settled outside sagaflow). `sagaflow verify`
//!   holds the ledger to that assertion.
//! - Finished sagas move, with their history, to `saga_instances_archive`
//!   and `saga_events_archive` once they are older than the retention age,
//!   so the claim's index and the hot heap hold only live work.
//! - The inbox is trimmed by age; `inbox_received_at` makes that and the
//!   queue-health "oldest inbox row" cheap.

const UP: &str = r#"
ALTER TABLE saga_instances DROP CONSTRAINT saga_instances_state_check;
ALTER TABLE saga_instances ADD CONSTRAINT saga_instances_state_check CHECK (state IN
    ('RUNNING', 'WAITING', 'COMPENSATING', 'COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED', 'RESOLVED'));
ALTER TABLE saga_instances ADD COLUMN resolution TEXT
    CONSTRAINT saga_instances_resolution_check CHECK (resolution IN ('NONE', 'APPLIED', 'SETTLED_OUTSIDE'));
ALTER TABLE saga_instances DROP CONSTRAINT saga_instances_operator_request_check;
ALTER TABLE saga_instances ADD CONSTRAINT saga_instances_operator_request_check
    CHECK (operator_request IN ('CANCEL', 'RETRY', 'FORCE_FORWARD', 'RESOLVE'));
-- The assertion is filed with the request and kept once applied; nothing
-- else carries one.
ALTER TABLE saga_instances ADD CONSTRAINT saga_instances_resolution_presence CHECK (
    (resolution IS NOT NULL) = (state = 'RESOLVED' OR operator_request = 'RESOLVE'));
ALTER TABLE saga_instances DROP CONSTRAINT saga_instances_due_iff_active;
ALTER TABLE saga_instances ADD CONSTRAINT saga_instances_due_iff_active CHECK (
    (state IN ('RUNNING', 'WAITING', 'COMPENSATING')
     OR (state = 'FAILED' AND operator_request IN ('RETRY', 'FORCE_FORWARD', 'RESOLVE')))
    = (next_run_at IS NOT NULL));
-- The needs-attention queue: FAILED sagas, oldest first.
CREATE INDEX saga_instances_failed ON saga_instances (updated_at, id) WHERE state = 'FAILED';
-- What the retention job scans: finished sagas by age.
CREATE INDEX saga_instances_finished ON saga_instances (updated_at)
    WHERE state IN ('COMPLETED', 'COMPENSATED', 'CANCELLED', 'RESOLVED');

-- Same columns in the same order (the job moves rows with SELECT *), no
-- constraints: what was valid when it left the hot table stays as it was.
CREATE TABLE saga_instances_archive (LIKE saga_instances INCLUDING DEFAULTS);
ALTER TABLE saga_instances_archive ADD COLUMN archived_at TIMESTAMPTZ NOT NULL DEFAULT now();
ALTER TABLE saga_instances_archive ADD PRIMARY KEY (id);
CREATE INDEX saga_instances_archive_order_no ON saga_instances_archive ((data->>'order_no'));
CREATE TABLE saga_events_archive (LIKE saga_events);
ALTER TABLE saga_events_archive ADD PRIMARY KEY (id);
CREATE INDEX saga_events_archive_saga ON saga_events_archive (saga_id, id);

CREATE INDEX inbox_received_at ON inbox (received_at);
"#;

const DOWN: &str = r#"
DROP INDEX inbox_received_at;
DROP TABLE saga_events_archive;
DROP TABLE saga_instances_archive;
DROP INDEX saga_instances_finished;
DROP INDEX saga_instances_failed;
UPDATE saga_instances SET state = 'FAILED' WHERE state = 'RESOLVED';
UPDATE saga_instances SET operator_request = NULL, operator_reason = NULL, next_run_at = NULL
    WHERE operator_request = 'RESOLVE';
ALTER TABLE saga_instances DROP CONSTRAINT saga_instances_due_iff_active;
ALTER TABLE saga_instances ADD CONSTRAINT saga_instances_due_iff_active CHECK (
    (state IN ('RUNNING', 'WAITING', 'COMPENSATING')
     OR (state = 'FAILED' AND operator_request IN ('RETRY', 'FORCE_FORWARD')))
    = (next_run_at IS NOT NULL));
ALTER TABLE saga_instances DROP CONSTRAINT saga_instances_resolution_presence;
ALTER TABLE saga_instances DROP CONSTRAINT saga_instances_operator_request_check;
ALTER TABLE saga_instances ADD CONSTRAINT saga_instances_operator_request_check
    CHECK (operator_request IN ('CANCEL', 'RETRY', 'FORCE_FORWARD'));
ALTER TABLE saga_instances DROP COLUMN resolution;
ALTER TABLE saga_instances DROP CONSTRAINT saga_instances_state_check;
ALTER TABLE saga_instances ADD CONSTRAINT saga_instances_state_check CHECK (state IN
    ('RUNNING', 'WAITING', 'COMPENSATING', 'COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED'));
"#;

crate::sql_migration!(UP, DOWN);
