//! An operator's retry gives a step its policy's attempts again without
//! reusing attempt numbers (they are on the wire): `attempt_base` is the
//! attempt count at the last retry, and the policy counts from it.

const UP: &str = r#"
ALTER TABLE saga_instances ADD COLUMN attempt_base INT NOT NULL DEFAULT 0,
    ADD CONSTRAINT saga_instances_attempt_base_range
        CHECK (attempt_base >= 0 AND attempt_base <= attempt);
"#;

const DOWN: &str = r#"
ALTER TABLE saga_instances DROP CONSTRAINT saga_instances_attempt_base_range,
    DROP COLUMN attempt_base;
"#;

crate::sql_migration!(UP, DOWN);
