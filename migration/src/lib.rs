//! The sagaflow schema. It is created and upgraded only here, by
//! `sagaflow migrate` (and by `sagaflow serve` on start).
//!
//! Migrations are written in SQL and never import `sagaflow-entity`: a
//! migration describes the schema as it was when it was written.

pub use sea_orm_migration::prelude::*;

mod m20261125_000001_create_core_tables;
mod m20261125_000002_refunds_and_operator_requests;
mod m20261125_000003_operator_queries;
mod m20261125_000004_attempt_base;
mod m20261126_000005_force_forward;

/// Runs sagaflow's migrations in order.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_create_core_tables::Migration),
            Box::new(m20261125_000002_refunds_and_operator_requests::Migration),
            Box::new(m20261125_000003_operator_queries::Migration),
            Box::new(m20261125_000004_attempt_base::Migration),
            Box::new(m20261126_000005_force_forward::Migration),
        ]
    }
}
