//! What the operator surface needs: a FAILED saga with a retry pending is
//! due (so a worker picks the retry up), and indexes for the saga list's
//! filters and the per-minute outcome counts.

const UP: &str = r#"
ALTER TABLE saga_instances DROP CONSTRAINT saga_instances_due_iff_active;
ALTER TABLE saga_instances ADD CONSTRAINT saga_instances_due_iff_active CHECK (
    (state IN ('RUNNING', 'WAITING', 'COMPENSATING')
     OR (state = 'FAILED' AND operator_request = 'RETRY'))
    = (next_run_at IS NOT NULL));
-- Due means next_run_at is set (the CHECK above ties it to the states that
-- can be due), so the claim's index only needs that predicate.
DROP INDEX saga_instances_due;
CREATE INDEX saga_instances_due ON saga_instances (next_run_at) WHERE next_run_at IS NOT NULL;

CREATE INDEX saga_instances_state_created ON saga_instances (state, created_at DESC, id DESC);
CREATE INDEX saga_instances_order_no ON saga_instances ((data->>'order_no'));
CREATE INDEX saga_events_outcomes ON saga_events (created_at)
    WHERE kind IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED');
"#;

const DOWN: &str = r#"
DROP INDEX saga_events_outcomes;
DROP INDEX saga_instances_order_no;
DROP INDEX saga_instances_state_created;
DROP INDEX saga_instances_due;
CREATE INDEX saga_instances_due ON saga_instances (next_run_at)
    WHERE state IN ('RUNNING', 'WAITING', 'COMPENSATING');
UPDATE saga_instances SET operator_request = NULL, operator_reason = NULL, next_run_at = NULL
    WHERE state = 'FAILED';
ALTER TABLE saga_instances DROP CONSTRAINT saga_instances_due_iff_active;
ALTER TABLE saga_instances ADD CONSTRAINT saga_instances_due_iff_active
    CHECK ((state IN ('RUNNING', 'WAITING', 'COMPENSATING')) = (next_run_at IS NOT NULL));
"#;

crate::sql_migration!(UP, DOWN);
