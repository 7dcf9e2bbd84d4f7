//! `start`: a new saga's first transition, as the transaction that creates
//! the saga writes it, must be the one a worker claiming it would make.

use chrono::{TimeZone, Utc};
use sagaflow_entity::SagaState;
use sagaflow_workflows::machine::{Clock, Effect, Event, Instance, RecordKind};
use sagaflow_workflows::messages::CommandKind;
use sagaflow_workflows::policy::Jitter;
use sagaflow_workflows::{order_payment, start, transition, Action, RetryPolicy, SagaDefinition};

fn at() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap()
}

#[test]
fn an_order_payment_starts_waiting_for_its_debit() {
    let def = order_payment::definition();
    let t = start(def, at()).expect("the first step is a remote command");
    let deadline = at() + chrono::Duration::from_std(def.steps[0].timeout).unwrap();
    assert_eq!(t.next.state, SagaState::Waiting);
    assert_eq!((t.next.step, t.next.attempt), (0, 1));
    assert_eq!(t.next.deadline, Some(deadline));
    assert_eq!(t.next.next_run_at, Some(deadline));
    assert_eq!(
        t.effects,
        vec![Effect::SendCommand {
            step: 0,
            attempt: 1,
            compensation: false,
            command: CommandKind::FundsDebit,
        }]
    );
    assert_eq!(
        t.history.iter().map(|r| r.kind).collect::<Vec<_>>(),
        vec![RecordKind::CommandSent]
    );
}

#[test]
fn start_is_what_a_worker_claiming_the_new_saga_would_do() {
    let def = order_payment::definition();
    // Any jitter a worker draws: the first attempt has no backoff to jitter.
    for ppm in [0, 500_000, Jitter::SCALE] {
        let clock = Clock {
            now: at(),
            jitter: Jitter::from_ppm(ppm),
        };
        let claimed = transition(def, &Instance::new(at()), &Event::Due, clock);
        assert_eq!(start(def, at()), Some(claimed));
    }
}

fn one_step(action: Action, max_attempts: u32) -> SagaDefinition {
    let mut def = order_payment::definition().clone();
    def.steps[0].action = action;
    def.steps[0].retry = RetryPolicy {
        max_attempts,
        ..def.steps[0].retry
    };
    def
}

#[test]
fn a_saga_whose_first_step_is_local_is_left_to_the_engine() {
    let def = one_step(Action::Local("noop"), 3);
    assert_eq!(start(&def, at()), None);
}

#[test]
fn a_saga_that_would_not_wait_for_a_command_is_left_to_the_engine() {
    // No attempt allowed: the first round compensates and runs a hook.
    let def = one_step(Action::Remote(CommandKind::FundsDebit), 0);
    assert_eq!(start(&def, at()), None);
    // No steps at all: the first round completes (and runs its hook).
    let mut empty = order_payment::definition().clone();
    empty.steps.clear();
    assert_eq!(start(&empty, at()), None);
}
