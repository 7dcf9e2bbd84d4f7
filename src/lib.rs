//! The `sagaflow` binary's library half: configuration and the wiring of
//! the roles (API, claim workers, outbox relay, funds participant, reply
//! consumer) into one process. Integration tests start the same wiring.

pub mod app;
pub mod config;
