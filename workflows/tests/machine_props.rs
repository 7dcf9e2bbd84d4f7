//! Property tests of the transition function over random event sequences:
//! the machine's guarantees hold whatever order, duplication or staleness
//! the events arrive with.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use sagaflow_entity::{Resolution, SagaState, StateValues};
use sagaflow_workflows::machine::{Clock, Outcome};
use sagaflow_workflows::messages::CommandKind;
use sagaflow_workflows::policy::Jitter;
use sagaflow_workflows::{
    order_payment, transition, Action, Compensation, Effect, Event, Hooks, Instance, RecordKind,
    RetryPolicy, SagaDefinition, StepDef,
};

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(5),
    }
}

/// Three steps: remote with a compensation, local without, remote with a
/// local compensation; small attempt budgets so that they run out.
fn three_steps() -> SagaDefinition {
    SagaDefinition {
        name: "three",
        version: 1,
        steps: vec![
            StepDef {
                name: "reserve",
                action: Action::Remote(CommandKind::FundsDebit),
                compensation: Some(Compensation {
                    action: Action::Remote(CommandKind::FundsRefund),
                    retry: policy(3),
                    timeout: Duration::from_secs(10),
                }),
                retry: policy(2),
                timeout: Duration::from_secs(10),
            },
            StepDef {
                name: "note",
                action: Action::Local("note"),
                compensation: None,
                retry: policy(2),
                timeout: Duration::from_secs(10),
            },
            StepDef {
                name: "charge",
                action: Action::Remote(CommandKind::FundsDebit),
                compensation: Some(Compensation {
                    action: Action::Local("uncharge"),
                    retry: policy(2),
                    timeout: Duration::from_secs(10),
                }),
                retry: policy(3),
                timeout: Duration::from_secs(10),
            },
        ],
        hooks: Hooks {
            on_completed: Some("done"),
            on_compensated: Some("undone"),
            on_cancelled: Some("cancelled"),
            on_failed: None,
        },
    }
}

fn is_terminal(s: SagaState) -> bool {
    matches!(
        s,
        SagaState::Completed
            | SagaState::Compensated
            | SagaState::Cancelled
            | SagaState::Failed
            | SagaState::Resolved
    )
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

#[derive(Debug, Clone)]
enum Gen {
    Due,
    Reply {
        /// Whether the reply answers a command of the epoch before the
        /// saga's current one (a late reply across a force forward).
        earlier_epoch: bool,
        step: u32,
        attempt: u32,
        compensation: bool,
        outcome: u8,
    },
    Local {
        step: u32,
        attempt: u32,
        compensation: bool,
        outcome: u8,
    },
    /// A reply exactly for what the saga waits for.
    Matching {
        outcome: u8,
    },
    Cancel,
    Retry,
    ForceForward,
    Resolve(u8),
}

fn gen_event() -> impl Strategy<Value = (Gen, u64, u32)> {
    let ev = prop_oneof![
        4 => Just(Gen::Due),
        2 => (any::<bool>(), 0u32..4, 0u32..5, any::<bool>(), 0u8..3).prop_map(|(earlier_epoch, step, attempt, compensation, outcome)| Gen::Reply { earlier_epoch, step, attempt, compensation, outcome }),
        1 => (0u32..4, 0u32..5, any::<bool>(), 0u8..3).prop_map(|(step, attempt, compensation, outcome)| Gen::Local { step, attempt, compensation, outcome }),
        4 => (0u8..3).prop_map(|outcome| Gen::Matching { outcome }),
        1 => Just(Gen::Cancel),
        1 => Just(Gen::Retry),
        1 => Just(Gen::ForceForward),
        1 => (0u8..3).prop_map(Gen::Resolve),
    ];
    (ev, 0u64..20_000, 0u32..=Jitter::SCALE)
}

fn outcome(n: u8) -> Outcome {
    match n {
        0 => Outcome::Ok,
        1 => Outcome::Rejected {
            reason: "no".into(),
        },
        _ => Outcome::Failed {
            reason: "flaky".into(),
        },
    }
}

/// The event that answers exactly what `i` waits for, as the runtime would
/// deliver it: a reply for a remote command, a local outcome for a local
/// action that was just handed out.
fn matching(def: &SagaDefinition, i: &Instance, o: Outcome) -> Event {
    let compensation = i.state == SagaState::Compensating;
    let step = def.step(i.step);
    let local = match (compensation, step) {
        (false, Some(s)) => matches!(s.action, Action::Local(_)),
        (true, Some(s)) => matches!(s.compensation.map(|c| c.action), Some(Action::Local(_))),
        _ => false,
    };
    if local {
        Event::Local {
            step: i.step,
            attempt: i.attempt,
            compensation,
            outcome: o,
        }
    } else {
        Event::Reply {
            epoch: i.epoch,
            step: i.step,
            attempt: i.attempt,
            compensation,
            outcome: o,
        }
    }
}

fn to_event(def: &SagaDefinition, i: &Instance, g: &Gen) -> Event {
    match g {
        Gen::Due => Event::Due,
        Gen::Reply {
            earlier_epoch,
            step,
            attempt,
            compensation,
            outcome: o,
        } => Event::Reply {
            epoch: if *earlier_epoch {
                i.epoch.saturating_sub(1)
            } else {
                i.epoch
            },
            step: *step,
            attempt: *attempt,
            compensation: *compensation,
            outcome: outcome(*o),
        },
        Gen::Local {
            step,
            attempt,
            compensation,
            outcome: o,
        } => Event::Local {
            step: *step,
            attempt: *attempt,
            compensation: *compensation,
            outcome: outcome(*o),
        },
        Gen::Matching { outcome: o } => matching(def, i, outcome(*o)),
        Gen::Cancel => Event::Cancel {
            reason: "operator".into(),
        },
        Gen::Retry => Event::Retry {
            reason: "operator".into(),
        },
        Gen::ForceForward => Event::ForceForward {
            reason: "operator".into(),
        },
        Gen::Resolve(n) => Event::Resolve {
            reason: "operator".into(),
            resolution: Resolution::ALL[usize::from(*n) % Resolution::ALL.len()],
        },
    }
}

/// What the run did so far, to check the ordering properties.
#[derive(Default, Debug)]
struct Log {
    /// Steps whose forward action was handed out at least once.
    started: Vec<u32>,
    /// Steps whose compensation was handed out, in order of first hand-out.
    compensation_started: Vec<u32>,
    /// Steps whose compensation succeeded, in order.
    compensated: Vec<u32>,
    /// Every (epoch, step, compensation, attempt) sent as a command or
    /// handed out as a local action.
    sent: std::collections::HashSet<(u32, u32, bool, u32)>,
}

struct Run<'a> {
    def: &'a SagaDefinition,
    cur: Instance,
    now: DateTime<Utc>,
    log: Log,
    /// An operator took the saga out of FAILED, so compensation may start
    /// again from a higher step.
    operator_restarted: bool,
}

impl Run<'_> {
    fn apply(&mut self, event: Event, jitter: u32) -> Result<(), TestCaseError> {
        let before = self.cur.clone();
        let t = transition(
            self.def,
            &before,
            &event,
            Clock {
                now: self.now,
                jitter: Jitter::from_ppm(jitter),
            },
        );

        // An attempt number is never reused for the same epoch, step and
        // direction (it is on the wire: participants and the reply inbox
        // tell attempts apart by it), operator retries included.
        for e in &t.effects {
            let key = match e {
                Effect::SendCommand {
                    step,
                    attempt,
                    compensation,
                    ..
                }
                | Effect::RunLocal {
                    step,
                    attempt,
                    compensation,
                    ..
                } => (t.next.epoch, *step, *compensation, *attempt),
                Effect::RunHook { .. } => continue,
            };
            prop_assert!(
                self.log.sent.insert(key),
                "attempt {:?} handed out twice",
                key
            );
        }
        // Stale or mismatched replies change nothing.
        if t.history.iter().any(|r| r.kind == RecordKind::ReplyIgnored) {
            prop_assert_eq!(&t.next, &before);
            prop_assert!(t.effects.is_empty());
        }
        // Terminal states are left only by an operator's retry of FAILED.
        if is_terminal(before.state) && before.state != SagaState::Failed {
            prop_assert_eq!(
                &t.next,
                &before,
                "left terminal {:?} on {:?}",
                before.state,
                event
            );
        }
        if before.state == SagaState::Failed && t.next.state != SagaState::Failed {
            let by_operator = matches!(
                event,
                Event::Retry { .. } | Event::ForceForward { .. } | Event::Resolve { .. }
            );
            prop_assert!(by_operator, "FAILED left without an operator's request");
            self.operator_restarted = true;
        }
        // Only an operator's resolve of a FAILED saga makes it RESOLVED,
        // and with the hook of the outcome asserted.
        if t.next.state == SagaState::Resolved && before.state != SagaState::Resolved {
            prop_assert_eq!(before.state, SagaState::Failed);
            let Event::Resolve { resolution, .. } = event else {
                return Err(TestCaseError::fail(format!("RESOLVED on {event:?}")));
            };
            let hook = match resolution {
                Resolution::Applied => self.def.hooks.on_completed,
                _ => self.def.hooks.on_compensated,
            };
            prop_assert_eq!(
                &t.effects,
                &hook
                    .map(|action| Effect::RunHook {
                        action,
                        state: SagaState::Resolved
                    })
                    .into_iter()
                    .collect::<Vec<_>>()
            );
            prop_assert!(t.next.next_run_at.is_none() && t.next.deadline.is_none());
        }
        // The epoch moves only when an operator forces a FAILED saga
        // forward, and by one; forward it goes, at the step that failed.
        if t.next.epoch != before.epoch {
            let forced = matches!(event, Event::ForceForward { .. });
            prop_assert!(forced, "epoch moved on {:?}", event);
            prop_assert_eq!(before.state, SagaState::Failed);
            prop_assert_eq!(t.next.epoch, before.epoch + 1);
            prop_assert_eq!(t.next.state, SagaState::Running);
            prop_assert_eq!(t.next.step, before.step);
            // The steps are run forward again: each may be undone again.
            self.log.compensated.clear();
            self.log.compensation_started.clear();
        }
        for e in &t.effects {
            match e {
                Effect::SendCommand {
                    step,
                    compensation: false,
                    ..
                }
                | Effect::RunLocal {
                    step,
                    compensation: false,
                    ..
                } => self.log.started.push(*step),
                Effect::SendCommand {
                    step,
                    compensation: true,
                    ..
                }
                | Effect::RunLocal {
                    step,
                    compensation: true,
                    ..
                } => {
                    // Only a step that was started can be compensated.
                    prop_assert!(
                        self.log.started.contains(step),
                        "compensating step {} that never started",
                        step
                    );
                    if !self.log.compensation_started.contains(step) {
                        self.log.compensation_started.push(*step);
                    }
                }
                Effect::RunHook { .. } => {}
            }
        }
        let comp_ok = matches!(
            &event,
            Event::Reply {
                compensation: true,
                outcome: Outcome::Ok,
                ..
            } | Event::Local {
                compensation: true,
                outcome: Outcome::Ok,
                ..
            }
        ) && t
            .history
            .iter()
            .any(|r| r.kind == RecordKind::ReplyReceived);
        if comp_ok {
            prop_assert!(
                !self.log.compensated.contains(&before.step),
                "step {} compensated twice",
                before.step
            );
            self.log.compensated.push(before.step);
        }

        // Structural invariants of every state.
        let n = &t.next;
        prop_assert_eq!(
            n.next_run_at.is_some(),
            n.state.is_active(),
            "due time vs state {:?}",
            n.state
        );
        if n.state == SagaState::Waiting {
            prop_assert!(n.deadline.is_some());
        }
        let forward = self.def.step(n.step).map(|s| s.retry.max_attempts);
        let backward = self
            .def
            .step(n.step)
            .and_then(|s| s.compensation)
            .map(|c| c.retry.max_attempts);
        let budget = match n.state {
            SagaState::Running | SagaState::Waiting => forward,
            SagaState::Compensating | SagaState::Failed => backward,
            // A finished saga keeps the counter of whichever direction ran last.
            _ => forward.max(backward),
        };
        if let Some(max) = budget {
            prop_assert!(
                n.attempt - n.attempt_base <= max,
                "attempt {} (base {}) over budget {} in {:?}",
                n.attempt,
                n.attempt_base,
                max,
                n.state
            );
        }
        self.cur = t.next;
        Ok(())
    }

    /// Delivers well-behaved events (due steps run, commands answered OK)
    /// and returns whether the saga reached a terminal state.
    fn settle(&mut self) -> Result<bool, TestCaseError> {
        for _ in 0..200 {
            if is_terminal(self.cur.state) {
                return Ok(true);
            }
            let waiting = self.cur.state == SagaState::Waiting || self.cur.deadline.is_some();
            let local_pending = !waiting && self.cur.attempt > 0 && {
                let e = matching(self.def, &self.cur, Outcome::Ok);
                matches!(e, Event::Local { .. })
            };
            let event = if waiting || local_pending {
                matching(self.def, &self.cur, Outcome::Ok)
            } else {
                if let Some(t) = self.cur.next_run_at {
                    self.now = self.now.max(t);
                }
                Event::Due
            };
            self.apply(event, Jitter::SCALE / 2)?;
        }
        Ok(is_terminal(self.cur.state))
    }
}

fn check(def: &SagaDefinition, events: &[(Gen, u64, u32)]) -> Result<(), TestCaseError> {
    let mut run = Run {
        def,
        cur: Instance::new(t0()),
        now: t0(),
        log: Log::default(),
        operator_restarted: false,
    };
    for (g, advance_ms, jitter) in events {
        run.now += chrono::Duration::milliseconds(i64::try_from(*advance_ms).unwrap());
        let e = to_event(def, &run.cur, g);
        run.apply(e, *jitter)?;
    }
    prop_assert!(run.settle()?, "not terminal after settling: {:?}", run.cur);
    // Compensations ran in reverse step order (restarted from the top only
    // after an operator's retry of a FAILED saga).
    if !run.operator_restarted {
        prop_assert!(
            run.log.compensated.windows(2).all(|w| w[0] > w[1]),
            "compensation order {:?}",
            run.log.compensated
        );
        prop_assert!(
            run.log.compensation_started.windows(2).all(|w| w[0] > w[1]),
            "compensation start order {:?}",
            run.log.compensation_started
        );
    }
    if run.cur.state == SagaState::Completed {
        prop_assert!(run.log.compensated.is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn three_step_saga_keeps_its_guarantees(events in prop::collection::vec(gen_event(), 0..40)) {
        check(&three_steps(), &events)?;
    }

    #[test]
    fn order_payment_keeps_its_guarantees(events in prop::collection::vec(gen_event(), 0..30)) {
        check(order_payment::definition(), &events)?;
    }

    #[test]
    fn order_refund_keeps_its_guarantees(events in prop::collection::vec(gen_event(), 0..30)) {
        check(sagaflow_workflows::order_refund::definition(), &events)?;
    }
}

#[test]
fn happy_path_sends_one_command_then_completes() {
    let def = order_payment::definition();
    let clock = Clock {
        now: t0(),
        jitter: Jitter::NONE,
    };
    let start = transition(def, &Instance::new(t0()), &Event::Due, clock);
    assert_eq!(start.next.state, SagaState::Waiting);
    assert!(matches!(
        start.effects[..],
        [Effect::SendCommand {
            step: 0,
            attempt: 1,
            compensation: false,
            ..
        }]
    ));
    let done = transition(
        def,
        &start.next,
        &Event::Reply {
            epoch: 0,
            step: 0,
            attempt: 1,
            compensation: false,
            outcome: Outcome::Ok,
        },
        clock,
    );
    assert_eq!(done.next.state, SagaState::Completed);
    assert_eq!(done.next.next_run_at, None);
    assert!(matches!(
        done.effects[..],
        [Effect::RunHook {
            action: order_payment::HOOK_MARK_PAID,
            ..
        }]
    ));
}

#[test]
fn rejection_compensates_without_refunding_the_rejected_step() {
    let def = order_payment::definition();
    let clock = Clock {
        now: t0(),
        jitter: Jitter::NONE,
    };
    let start = transition(def, &Instance::new(t0()), &Event::Due, clock);
    let rejected = transition(
        def,
        &start.next,
        &Event::Reply {
            epoch: 0,
            step: 0,
            attempt: 1,
            compensation: false,
            outcome: Outcome::Rejected {
                reason: "insufficient funds".into(),
            },
        },
        clock,
    );
    assert_eq!(rejected.next.state, SagaState::Compensated);
    assert_eq!(
        rejected.next.last_error.as_deref(),
        Some("insufficient funds")
    );
    assert!(matches!(
        rejected.effects[..],
        [Effect::RunHook {
            action: order_payment::HOOK_MARK_FAILED,
            ..
        }]
    ));
}

#[test]
fn timeouts_retry_then_refund_the_uncertain_debit() {
    let def = order_payment::definition();
    let mut now = t0();
    let mut i = Instance::new(now);
    let max = def.steps[0].retry.max_attempts;
    for attempt in 1..=max {
        let sent = transition(
            def,
            &i,
            &Event::Due,
            Clock {
                now,
                jitter: Jitter::FULL,
            },
        );
        assert!(
            matches!(sent.effects[..], [Effect::SendCommand { attempt: a, compensation: false, .. }] if a == attempt)
        );
        now = sent.next.deadline.unwrap();
        let timed_out = transition(
            def,
            &sent.next,
            &Event::Due,
            Clock {
                now,
                jitter: Jitter::FULL,
            },
        );
        i = timed_out.next;
        now = i.next_run_at.unwrap();
    }
    // Attempts exhausted: the debit may have happened, so it is refunded.
    assert_eq!(i.state, SagaState::Compensating);
    let refund = transition(
        def,
        &i,
        &Event::Due,
        Clock {
            now,
            jitter: Jitter::FULL,
        },
    );
    assert!(matches!(
        refund.effects[..],
        [Effect::SendCommand {
            compensation: true,
            command: CommandKind::FundsRefund,
            ..
        }]
    ));
    // A late OK for the first debit attempt is stale and changes nothing.
    let late = transition(
        def,
        &refund.next,
        &Event::Reply {
            epoch: 0,
            step: 0,
            attempt: 1,
            compensation: false,
            outcome: Outcome::Ok,
        },
        Clock {
            now,
            jitter: Jitter::FULL,
        },
    );
    assert!(late.is_noop(&refund.next));
}

/// Drives `i` with `event` at `now`.
fn step(def: &SagaDefinition, i: &Instance, event: Event, now: DateTime<Utc>) -> Instance {
    transition(
        def,
        i,
        &event,
        Clock {
            now,
            jitter: Jitter::NONE,
        },
    )
    .next
}

#[test]
fn a_failed_saga_forced_forward_runs_its_step_again_in_a_new_epoch() {
    let def = order_payment::definition();
    let now = t0();
    let failed = Instance {
        state: SagaState::Failed,
        step: 0,
        attempt: 10,
        attempt_base: 0,
        cancel_requested: true,
        epoch: 0,
        next_run_at: None,
        deadline: None,
        last_error: Some("compensation timed out".into()),
        failure: Some("cancelled: stuck".into()),
    };
    let forced = transition(
        def,
        &failed,
        &Event::ForceForward {
            reason: "the debit did land".into(),
        },
        Clock {
            now,
            jitter: Jitter::NONE,
        },
    );
    assert_eq!(forced.history[0].kind, RecordKind::ForcedForward);
    let i = forced.next;
    assert_eq!((i.state, i.step, i.epoch), (SagaState::Running, 0, 1));
    assert_eq!((i.attempt, i.next_run_at), (0, Some(now)));
    assert!(!i.cancel_requested && i.failure.is_none());

    let sent = transition(
        def,
        &i,
        &Event::Due,
        Clock {
            now,
            jitter: Jitter::NONE,
        },
    );
    assert!(matches!(
        sent.effects[..],
        [Effect::SendCommand {
            step: 0,
            attempt: 1,
            compensation: false,
            command: CommandKind::FundsDebit,
        }]
    ));
    // The answer to attempt 1 of the epoch before is not this one's.
    let stale = Event::Reply {
        epoch: 0,
        step: 0,
        attempt: 1,
        compensation: false,
        outcome: Outcome::Ok,
    };
    assert_eq!(step(def, &sent.next, stale, now), sent.next);
    let done = step(
        def,
        &sent.next,
        Event::Reply {
            epoch: 1,
            step: 0,
            attempt: 1,
            compensation: false,
            outcome: Outcome::Ok,
        },
        now,
    );
    assert_eq!(done.state, SagaState::Completed);
}

#[test]
fn only_a_failed_saga_can_be_forced_forward() {
    let def = order_payment::definition();
    let waiting = step(def, &Instance::new(t0()), Event::Due, t0());
    let forced = transition(
        def,
        &waiting,
        &Event::ForceForward {
            reason: "no".into(),
        },
        Clock {
            now: t0(),
            jitter: Jitter::NONE,
        },
    );
    assert_eq!(forced.next, waiting);
    assert_eq!(forced.history[0].kind, RecordKind::EventIgnored);
}

#[test]
fn an_earlier_attempts_answer_counts_but_not_its_transient_failure() {
    let def = order_payment::definition();
    let mut now = t0();
    let sent = step(def, &Instance::new(now), Event::Due, now);
    // Attempt 1 times out; attempt 2 goes out.
    now = sent.deadline.unwrap();
    let retry = step(def, &sent, Event::Due, now);
    now = retry.next_run_at.unwrap();
    let second = step(def, &retry, Event::Due, now);
    assert_eq!((second.state, second.attempt), (SagaState::Waiting, 2));
    let late = |outcome| Event::Reply {
        epoch: 0,
        step: 0,
        attempt: 1,
        compensation: false,
        outcome,
    };
    // A late transient failure of attempt 1 says nothing about attempt 2.
    let flaky = Outcome::Failed {
        reason: "busy".into(),
    };
    assert_eq!(step(def, &second, late(flaky), now), second);
    // Its late OK is the answer to the same command: the debit happened.
    let paid = transition(
        def,
        &second,
        &late(Outcome::Ok),
        Clock {
            now,
            jitter: Jitter::NONE,
        },
    );
    assert_eq!(paid.next.state, SagaState::Completed);
    assert_eq!(paid.history[0].detail["answers_attempt"], 1);
    // A reply to an attempt not yet sent is still ignored.
    let future = Event::Reply {
        epoch: 0,
        step: 0,
        attempt: 3,
        compensation: false,
        outcome: Outcome::Ok,
    };
    assert_eq!(step(def, &second, future, now), second);
}
