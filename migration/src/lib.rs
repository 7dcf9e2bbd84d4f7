//! The sagaflow schema. It is created and upgraded only here, by
//! `sagaflow migrate` (and by `sagaflow serve` on start).
//!
//! Migrations are written in SQL and never import `sagaflow-entity`: a
//! migration describes the schema as it was when it was written.

pub use sea_orm_migration::prelude::*;

/// A migration written as two SQL scripts: `$up` applies it, `$down`
/// reverts it. Defines the module's `Migration`, named after the module.
macro_rules! sql_migration {
    ($up:expr, $down:expr) => {
        #[derive(sea_orm_migration::prelude::DeriveMigrationName)]
        pub struct Migration;

        #[async_trait::async_trait]
        impl sea_orm_migration::prelude::MigrationTrait for Migration {
            async fn up(
                &self,
                manager: &sea_orm_migration::prelude::SchemaManager,
            ) -> Result<(), sea_orm_migration::prelude::DbErr> {
                sea_orm_migration::sea_orm::ConnectionTrait::execute_unprepared(
                    manager.get_connection(),
                    $up,
                )
                .await?;
                Ok(())
            }

            async fn down(
                &self,
                manager: &sea_orm_migration::prelude::SchemaManager,
            ) -> Result<(), sea_orm_migration::prelude::DbErr> {
                sea_orm_migration::sea_orm::ConnectionTrait::execute_unprepared(
                    manager.get_connection(),
                    $down,
                )
                .await?;
                Ok(())
            }
        }
    };
}
pub(crate) use sql_migration;

mod m20261125_000001_create_core_tables;
mod m20261125_000002_refunds_and_operator_requests;
mod m20261125_000003_operator_queries;
mod m20261125_000004_attempt_base;
mod m20261126_000005_force_forward;
mod m20261126_000006_resolve_and_retention;
mod m20261126_000007_lighter_saga_writes;
mod m20261126_000008_wake_ups_from_the_application;
mod m20261130_000009_order_moves_in_one_call;
mod m20261202_000010_outbox_quarantine;

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
            Box::new(m20261126_000006_resolve_and_retention::Migration),
            Box::new(m20261126_000007_lighter_saga_writes::Migration),
            Box::new(m20261126_000008_wake_ups_from_the_application::Migration),
            Box::new(m20261130_000009_order_moves_in_one_call::Migration),
            Box::new(m20261202_000010_outbox_quarantine::Migration),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_migration_is_named_after_its_file() {
        let names: Vec<String> = Migrator::migrations()
            .iter()
            .map(|m| m.name().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "m20261125_000001_create_core_tables",
                "m20261125_000002_refunds_and_operator_requests",
                "m20261125_000003_operator_queries",
                "m20261125_000004_attempt_base",
                "m20261126_000005_force_forward",
                "m20261126_000006_resolve_and_retention",
                "m20261126_000007_lighter_saga_writes",
                "m20261126_000008_wake_ups_from_the_application",
                "m20261130_000009_order_moves_in_one_call",
                "m20261202_000010_outbox_quarantine",
            ]
        );
    }
}
