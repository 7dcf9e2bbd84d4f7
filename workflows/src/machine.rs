//! The state machine: `(instance, event, now) -> (next instance, effects,
//! history)`. Pure: no clock, no randomness, no I/O of its own.

use chrono::{DateTime, Utc};
use sagaflow_entity::{Resolution, SagaState};
use serde::Serialize;

use crate::definition::{Action, SagaDefinition};
use crate::policy::{Jitter, RetryPolicy};

/// The part of a saga instance the state machine reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Where the saga stands.
    pub state: SagaState,
    /// Forward: the step being run. Compensating: the step being undone.
    pub step: u32,
    /// Attempts made at `step` in the current direction (0 before the
    /// first). Never reused for the same step and direction, even across an
    /// operator's retry, because it goes on the wire: participants and the
    /// reply inbox tell attempts of one command apart by it.
    pub attempt: u32,
    /// `attempt` when an operator last retried this step and direction; the
    /// retry policy counts only the attempts after it.
    pub attempt_base: u32,
    /// Set by an operator's cancel: compensation then ends in CANCELLED.
    pub cancel_requested: bool,
    /// How many times an operator forced this saga forward out of FAILED.
    /// Every command carries it and every reply echoes it: it is the
    /// fencing token that lets a participant refuse a compensation sent
    /// before the force (and the saga ignore replies to one), since message
    /// ids and attempt numbers start over with each epoch.
    pub epoch: u32,
    /// When a worker should look at the saga again; `None` when terminal.
    pub next_run_at: Option<DateTime<Utc>>,
    /// Set while a remote command is out: when it counts as timed out.
    pub deadline: Option<DateTime<Utc>>,
    /// Why the last attempt (forward or compensating) failed.
    pub last_error: Option<String>,
    /// Why the saga is being (or was) compensated: the failure or the
    /// cancel that started it. Unlike `last_error`, a compensation's own
    /// hiccups do not overwrite it; the terminal hooks report it.
    pub failure: Option<String>,
}

impl Instance {
    /// A new saga, its first step due at `now`.
    pub fn new(now: DateTime<Utc>) -> Self {
        Instance {
            state: SagaState::Running,
            step: 0,
            attempt: 0,
            attempt_base: 0,
            cancel_requested: false,
            epoch: 0,
            next_run_at: Some(now),
            deadline: None,
            last_error: None,
            failure: None,
        }
    }

    fn waiting_for_compensation(&self) -> bool {
        self.state == SagaState::Compensating && self.deadline.is_some()
    }
}

/// How a participant answered a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// The command took effect (or had already taken effect).
    Ok,
    /// A business refusal (e.g. insufficient funds): retrying cannot help,
    /// so the saga compensates at once.
    Rejected {
        /// The participant's reason.
        reason: String,
    },
    /// A transient failure: the attempt counts as failed and is retried.
    Failed {
        /// The participant's reason.
        reason: String,
    },
}

/// Something that happened to a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A worker claimed the saga because `next_run_at` passed: run the due
    /// step, or, if a command is out, treat its deadline as passed.
    Due,
    /// A local action finished inside the engine's transaction.
    Local {
        /// Step of the action.
        step: u32,
        /// Attempt of the action.
        attempt: u32,
        /// Whether it was the step's compensation.
        compensation: bool,
        /// How it went.
        outcome: Outcome,
    },
    /// A participant's reply arrived.
    Reply {
        /// Epoch of the command (see [`Instance::epoch`]).
        epoch: u32,
        /// Step the command was for.
        step: u32,
        /// Attempt the command was for.
        attempt: u32,
        /// Whether the command was a compensation.
        compensation: bool,
        /// The participant's answer.
        outcome: Outcome,
    },
    /// An operator asked to cancel: compensate, then end CANCELLED.
    Cancel {
        /// The operator's reason.
        reason: String,
    },
    /// An operator asked to run the current step (or compensation) again
    /// now, with its attempts reset.
    Retry {
        /// The operator's reason.
        reason: String,
    },
    /// An operator asked a FAILED saga to go forward again from the step
    /// whose compensation gave up, in a new epoch, instead of compensating.
    /// Participants keep it safe: a forward command is refused once the
    /// step's effect was undone, and a compensation from an earlier epoch
    /// is refused once the forward command of a later one was applied.
    ForceForward {
        /// The operator's reason.
        reason: String,
    },
    /// An operator closed a FAILED saga by hand (fixed outside the
    /// system), asserting what became of its money. The saga ends RESOLVED
    /// and runs the hook of the outcome the assertion implies: the
    /// completed one for [`Resolution::Applied`], the compensated one
    /// otherwise.
    Resolve {
        /// The operator's reason.
        reason: String,
        /// The money effect the operator asserts.
        resolution: Resolution,
    },
}

/// What the caller must do to make the transition real, in the same
/// transaction that stores the new state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write this command to the outbox.
    SendCommand {
        /// Step the command belongs to.
        step: u32,
        /// Attempt number carried in the message.
        attempt: u32,
        /// Whether it undoes the step.
        compensation: bool,
        /// Which command.
        command: crate::messages::CommandKind,
    },
    /// Run this local action now, then feed its outcome back as
    /// [`Event::Local`].
    RunLocal {
        /// Step the action belongs to.
        step: u32,
        /// Attempt number.
        attempt: u32,
        /// Whether it undoes the step.
        compensation: bool,
        /// Name of the action.
        action: &'static str,
    },
    /// Run a terminal hook (see [`crate::Hooks`]).
    RunHook {
        /// Name of the hook's action.
        action: &'static str,
        /// The terminal state it belongs to.
        state: SagaState,
    },
}

/// What goes into the saga's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RecordKind {
    /// A local step or compensation started.
    StepStarted,
    /// A command was written to the outbox.
    CommandSent,
    /// A reply or a local outcome was applied.
    ReplyReceived,
    /// A reply did not match what the saga waits for (stale attempt,
    /// duplicate, finished step) and changed nothing.
    ReplyIgnored,
    /// A command's deadline passed without an answer.
    TimedOut,
    /// Another attempt was scheduled after a backoff.
    RetryScheduled,
    /// A step failed for good; compensation begins.
    CompensationStarted,
    /// Every step succeeded.
    Completed,
    /// Compensation finished.
    Compensated,
    /// Compensation finished after a cancel.
    Cancelled,
    /// Compensation gave up.
    Failed,
    /// An operator asked to cancel.
    CancelRequested,
    /// An operator asked for a retry.
    ManualRetry,
    /// An operator forced a FAILED saga forward.
    ForcedForward,
    /// An operator marked a FAILED saga resolved.
    Resolved,
    /// An event that does not apply in the current state was ignored.
    EventIgnored,
}

impl RecordKind {
    /// The value stored in `saga_events.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::StepStarted => "STEP_STARTED",
            RecordKind::CommandSent => "COMMAND_SENT",
            RecordKind::ReplyReceived => "REPLY_RECEIVED",
            RecordKind::ReplyIgnored => "REPLY_IGNORED",
            RecordKind::TimedOut => "TIMED_OUT",
            RecordKind::RetryScheduled => "RETRY_SCHEDULED",
            RecordKind::CompensationStarted => "COMPENSATION_STARTED",
            RecordKind::Completed => "COMPLETED",
            RecordKind::Compensated => "COMPENSATED",
            RecordKind::Cancelled => "CANCELLED",
            RecordKind::Failed => "FAILED",
            RecordKind::CancelRequested => "CANCEL_REQUESTED",
            RecordKind::ManualRetry => "MANUAL_RETRY",
            RecordKind::ForcedForward => "FORCED_FORWARD",
            RecordKind::Resolved => "RESOLVED",
            RecordKind::EventIgnored => "EVENT_IGNORED",
        }
    }
}

/// One history row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What happened.
    pub kind: RecordKind,
    /// The step concerned.
    pub step: u32,
    /// The attempt concerned.
    pub attempt: u32,
    /// Free-form detail (reason, due time, ...).
    pub detail: serde_json::Value,
}

/// The result of [`transition`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The instance after the event.
    pub next: Instance,
    /// What to do, in order.
    pub effects: Vec<Effect>,
    /// What to record, in order.
    pub history: Vec<Record>,
}

impl Transition {
    /// Whether the event changed nothing at all (a duplicate or stale one).
    pub fn is_noop(&self, before: &Instance) -> bool {
        self.effects.is_empty() && self.next == *before
    }
}

/// The current time and a random draw, passed in so that the machine stays
/// deterministic.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Now.
    pub now: DateTime<Utc>,
    /// The draw used for the next backoff's jitter.
    pub jitter: Jitter,
}

/// Applies `event` to `instance` under `def`.
///
/// Guarantees (checked by the property tests): an instance only moves
/// forward through the steps or backward through compensations; a step is
/// compensated only if it completed or may have (a timed-out or failed
/// remote attempt); compensations run in reverse step order, each at most
/// once to success; a reply that does not match the step and direction the
/// saga waits for, answers a later attempt than the one out, or is an
/// earlier attempt's transient failure changes nothing (an earlier
/// attempt's OK or refusal is the answer to the same command, so it
/// counts); attempts never exceed the
/// policy; terminal states are never left except FAILED by an operator's
/// retry, force forward or resolve (RESOLVED is final); a reply from
/// another epoch changes nothing.
pub fn transition(
    def: &SagaDefinition,
    instance: &Instance,
    event: &Event,
    clock: Clock,
) -> Transition {
    let mut m = Machine {
        def,
        clock,
        cur: instance.clone(),
        effects: Vec::new(),
        history: Vec::new(),
    };
    m.apply(event);
    Transition {
        next: m.cur,
        effects: m.effects,
        history: m.history,
    }
}

/// A new saga's first transition, when all it does is send its first
/// step's command: the transaction that creates the saga (the one placing
/// an order) can then write the saga already WAITING, with the command in
/// its outbox, and no worker has to claim the saga first. `None` when the
/// first round has to run a local action or a hook, which only the engine
/// can do: such a saga is created due now, as [`Instance::new`].
///
/// The result is the transition a worker claiming the new saga at `now`
/// would make (no jitter is drawn: sending a first attempt waits for no
/// backoff).
pub fn start(def: &SagaDefinition, now: DateTime<Utc>) -> Option<Transition> {
    let clock = Clock {
        now,
        jitter: Jitter::from_ppm(0),
    };
    let t = transition(def, &Instance::new(now), &Event::Due, clock);
    let only_commands = t
        .effects
        .iter()
        .all(|e| matches!(e, Effect::SendCommand { .. }));
    (only_commands && t.next.state == SagaState::Waiting).then_some(t)
}

struct Machine<'a> {
    def: &'a SagaDefinition,
    clock: Clock,
    cur: Instance,
    effects: Vec<Effect>,
    history: Vec<Record>,
}

impl Machine<'_> {
    fn record(&mut self, kind: RecordKind, detail: serde_json::Value) {
        self.history.push(Record {
            kind,
            step: self.cur.step,
            attempt: self.cur.attempt,
            detail,
        });
    }

    fn ignore(&mut self, kind: RecordKind, why: &str) {
        self.record(kind, serde_json::json!({ "ignored": why }));
    }

    fn apply(&mut self, event: &Event) {
        use SagaState::*;
        match (self.cur.state, event) {
            (Completed | Compensated | Cancelled | Resolved, Event::Reply { .. }) => {
                self.ignore(RecordKind::ReplyIgnored, "saga already finished")
            }
            (Completed | Compensated | Cancelled | Resolved, _) => {
                self.ignore(RecordKind::EventIgnored, "saga already finished")
            }

            (Failed, Event::Retry { reason }) => {
                self.record(
                    RecordKind::ManualRetry,
                    serde_json::json!({ "reason": reason }),
                );
                self.cur.state = Compensating;
                self.restart_attempts();
            }
            (Failed, Event::ForceForward { reason }) => self.force_forward(reason),
            (_, Event::ForceForward { .. }) => self.ignore(
                RecordKind::EventIgnored,
                "only a FAILED saga can be forced forward",
            ),
            (Failed, Event::Resolve { reason, resolution }) => self.resolve(reason, *resolution),
            (_, Event::Resolve { .. }) => self.ignore(
                RecordKind::EventIgnored,
                "only a FAILED saga can be marked resolved",
            ),
            (Failed, Event::Reply { .. }) => self.ignore(
                RecordKind::ReplyIgnored,
                "saga failed; waits for an operator",
            ),
            (Failed, _) => self.ignore(
                RecordKind::EventIgnored,
                "saga failed; waits for an operator",
            ),

            (_, Event::Retry { reason }) => {
                self.record(
                    RecordKind::ManualRetry,
                    serde_json::json!({ "reason": reason }),
                );
                if self.cur.state == Waiting {
                    self.cur.state = Running;
                }
                self.restart_attempts();
            }
            (_, Event::Cancel { reason }) => self.cancel(reason),

            (Running, Event::Due) => self.start_forward(),
            (Waiting, Event::Due) => {
                if self.is_before_deadline() {
                    self.ignore(RecordKind::EventIgnored, "deadline not reached");
                } else {
                    self.record(RecordKind::TimedOut, serde_json::Value::Null);
                    self.forward_attempt_failed("timed out".to_owned());
                }
            }
            (Compensating, Event::Due) => {
                if self.cur.deadline.is_none() {
                    self.start_compensation_step();
                } else if self.is_before_deadline() {
                    self.ignore(RecordKind::EventIgnored, "deadline not reached");
                } else {
                    self.record(RecordKind::TimedOut, serde_json::Value::Null);
                    self.compensation_attempt_failed("compensation timed out".to_owned());
                }
            }

            (
                _,
                Event::Reply {
                    epoch,
                    step,
                    attempt,
                    compensation,
                    ..
                },
            ) if *epoch != self.cur.epoch => {
                self.history.push(Record {
                    kind: RecordKind::ReplyIgnored,
                    step: *step,
                    attempt: *attempt,
                    detail: serde_json::json!({
                        "ignored": "answers a command of an earlier epoch, before a force forward",
                        "epoch": epoch,
                        "compensation": compensation,
                    }),
                });
            }
            (
                _,
                Event::Reply {
                    step,
                    attempt,
                    compensation,
                    outcome,
                    ..
                },
            ) => self.on_outcome(*step, *attempt, *compensation, outcome, true),
            (
                _,
                Event::Local {
                    step,
                    attempt,
                    compensation,
                    outcome,
                },
            ) => self.on_outcome(*step, *attempt, *compensation, outcome, false),
        }
    }

    fn is_before_deadline(&self) -> bool {
        self.cur.deadline.is_some_and(|d| self.clock.now < d)
    }

    /// A new step or direction, due now: its attempts start from zero.
    fn schedule_now(&mut self) {
        self.cur.attempt = 0;
        self.cur.attempt_base = 0;
        self.cur.deadline = None;
        self.cur.next_run_at = Some(self.clock.now);
    }

    /// An operator's retry: the same step and direction, due now, with the
    /// policy's attempts available again. The attempt counter itself goes
    /// on (see [`Instance::attempt`]).
    fn restart_attempts(&mut self) {
        self.cur.attempt_base = self.cur.attempt;
        self.cur.deadline = None;
        self.cur.next_run_at = Some(self.clock.now);
    }

    /// Out of FAILED, forward again at the step whose compensation gave up
    /// (its forward command is idempotent at the participant, or refused if
    /// the step was undone after all), in a new epoch with fresh attempts.
    /// The operator's decision replaces any earlier cancel or failure.
    fn force_forward(&mut self, reason: &str) {
        self.cur.epoch += 1;
        self.record(
            RecordKind::ForcedForward,
            serde_json::json!({ "reason": reason, "epoch": self.cur.epoch }),
        );
        self.cur.state = SagaState::Running;
        self.cur.cancel_requested = false;
        self.cur.failure = None;
        self.schedule_now();
    }

    /// FAILED to RESOLVED on the operator's word. The hook of the outcome
    /// the assertion implies runs, so that what the saga is about (the
    /// order) ends consistent with the ledger the operator describes.
    fn resolve(&mut self, reason: &str, resolution: Resolution) {
        self.record(
            RecordKind::Resolved,
            serde_json::json!({ "reason": reason, "resolution": resolution }),
        );
        self.cur.state = SagaState::Resolved;
        self.cur.next_run_at = None;
        self.cur.deadline = None;
        self.cur.failure = Some(format!("resolved by an operator: {reason}"));
        let hook = match resolution {
            Resolution::Applied => self.def.hooks.on_completed,
            Resolution::None | Resolution::SettledOutside => self.def.hooks.on_compensated,
        };
        if let Some(action) = hook {
            self.effects.push(Effect::RunHook {
                action,
                state: SagaState::Resolved,
            });
        }
    }

    /// Attempts that count against the policy.
    fn used(&self) -> u32 {
        self.cur.attempt.saturating_sub(self.cur.attempt_base)
    }

    fn deadline_after(&self, timeout: std::time::Duration) -> DateTime<Utc> {
        self.clock.now + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX)
    }

    fn backoff_until(&self, policy: &RetryPolicy) -> DateTime<Utc> {
        let delay = policy.backoff(self.used(), self.clock.jitter);
        self.clock.now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX)
    }

    /// Runs the forward step that is due: a remote command goes out and the
    /// saga waits; a local action is handed to the caller.
    fn start_forward(&mut self) {
        let Some(step) = self.def.step(self.cur.step).copied() else {
            // A saga past its last step has nothing left to do.
            return self.complete();
        };
        if !step.retry.allows_another(self.used()) {
            return self.forward_attempt_failed("no attempts left".to_owned());
        }
        self.cur.attempt += 1;
        match step.action {
            Action::Remote(command) => {
                let deadline = self.deadline_after(step.timeout);
                self.cur.state = SagaState::Waiting;
                self.cur.deadline = Some(deadline);
                self.cur.next_run_at = Some(deadline);
                self.effects.push(Effect::SendCommand {
                    step: self.cur.step,
                    attempt: self.cur.attempt,
                    compensation: false,
                    command,
                });
                self.record(
                    RecordKind::CommandSent,
                    serde_json::json!({ "command": command.as_str(), "deadline": deadline }),
                );
            }
            Action::Local(action) => {
                self.cur.deadline = None;
                self.effects.push(Effect::RunLocal {
                    step: self.cur.step,
                    attempt: self.cur.attempt,
                    compensation: false,
                    action,
                });
                self.record(
                    RecordKind::StepStarted,
                    serde_json::json!({ "action": action }),
                );
            }
        }
    }

    fn start_compensation_step(&mut self) {
        let Some(comp) = self.def.step(self.cur.step).and_then(|s| s.compensation) else {
            return self.next_compensation_below(self.cur.step);
        };
        if !comp.retry.allows_another(self.used()) {
            // A local compensation that never reported back used its attempts.
            return self.compensation_attempt_failed("no attempts left".to_owned());
        }
        self.cur.attempt += 1;
        match comp.action {
            Action::Remote(command) => {
                let deadline = self.deadline_after(comp.timeout);
                self.cur.deadline = Some(deadline);
                self.cur.next_run_at = Some(deadline);
                self.effects.push(Effect::SendCommand {
                    step: self.cur.step,
                    attempt: self.cur.attempt,
                    compensation: true,
                    command,
                });
                self.record(
                    RecordKind::CommandSent,
                    serde_json::json!({ "command": command.as_str(), "compensation": true, "deadline": deadline }),
                );
            }
            Action::Local(action) => {
                self.effects.push(Effect::RunLocal {
                    step: self.cur.step,
                    attempt: self.cur.attempt,
                    compensation: true,
                    action,
                });
                self.record(
                    RecordKind::StepStarted,
                    serde_json::json!({ "action": action, "compensation": true }),
                );
            }
        }
    }

    fn on_outcome(
        &mut self,
        step: u32,
        attempt: u32,
        compensation: bool,
        outcome: &Outcome,
        remote: bool,
    ) {
        let expected = if compensation {
            self.cur.state == SagaState::Compensating
                && (!remote || self.cur.waiting_for_compensation())
        } else if remote {
            self.cur.state == SagaState::Waiting
        } else {
            self.cur.state == SagaState::Running
        };
        // Every attempt of a step's command (in one direction and epoch)
        // carries the same message id, and the participant answers them
        // alike: an earlier attempt's OK or refusal, arriving late while a
        // retry is out, is the answer to the command the saga waits for.
        // Only an earlier attempt's transient failure is stale: the retry
        // out now may still succeed.
        let earlier_decision = remote
            && attempt > 0
            && attempt < self.cur.attempt
            && !matches!(outcome, Outcome::Failed { .. });
        if !expected
            || step != self.cur.step
            || !(attempt == self.cur.attempt || earlier_decision)
            || attempt == 0
        {
            let kind = if remote {
                RecordKind::ReplyIgnored
            } else {
                RecordKind::EventIgnored
            };
            self.history.push(Record {
                kind,
                step,
                attempt,
                detail: serde_json::json!({
                    "ignored": "does not match the step, attempt and direction the saga waits for",
                    "compensation": compensation,
                }),
            });
            return;
        }
        let mut detail = serde_json::json!({ "compensation": compensation, "outcome": outcome });
        if attempt != self.cur.attempt {
            detail["answers_attempt"] = attempt.into();
        }
        self.record(RecordKind::ReplyReceived, detail);
        self.cur.deadline = None;
        match (compensation, outcome) {
            (false, Outcome::Ok) => self.forward_step_succeeded(),
            (false, Outcome::Rejected { reason }) => {
                self.cur.last_error = Some(reason.clone());
                // Refused outright: this step had no effect, undo the ones before it.
                match self.cur.step.checked_sub(1) {
                    Some(below) => self.begin_compensation(below, reason.clone()),
                    None => self.finish_compensation(reason.clone()),
                }
            }
            (false, Outcome::Failed { reason }) => self.forward_attempt_failed(reason.clone()),
            (true, Outcome::Ok) => self.next_compensation_below(self.cur.step),
            (true, Outcome::Rejected { reason } | Outcome::Failed { reason }) => {
                self.compensation_attempt_failed(reason.clone())
            }
        }
    }

    fn forward_step_succeeded(&mut self) {
        self.cur.step += 1;
        self.cur.attempt = 0;
        self.cur.attempt_base = 0;
        self.cur.last_error = None;
        if self.cur.step >= self.def.len() {
            self.complete();
        } else {
            self.cur.state = SagaState::Running;
            self.cur.next_run_at = Some(self.clock.now);
        }
    }

    fn complete(&mut self) {
        self.cur.state = SagaState::Completed;
        self.cur.next_run_at = None;
        self.cur.deadline = None;
        self.record(RecordKind::Completed, serde_json::Value::Null);
        if let Some(action) = self.def.hooks.on_completed {
            self.effects.push(Effect::RunHook {
                action,
                state: SagaState::Completed,
            });
        }
    }

    /// A forward attempt timed out or failed transiently: retry after a
    /// backoff, or compensate once the attempts run out. The step itself is
    /// compensated too, since its effect may have happened.
    fn forward_attempt_failed(&mut self, reason: String) {
        self.cur.deadline = None;
        self.cur.last_error = Some(reason.clone());
        let retry = self
            .def
            .step(self.cur.step)
            .map(|s| s.retry)
            .unwrap_or(RetryPolicy::once());
        if retry.allows_another(self.used()) {
            let at = self.backoff_until(&retry);
            self.cur.state = SagaState::Running;
            self.cur.next_run_at = Some(at);
            self.record(
                RecordKind::RetryScheduled,
                serde_json::json!({ "reason": reason, "due": at }),
            );
        } else {
            self.begin_compensation(self.cur.step, reason);
        }
    }

    fn compensation_attempt_failed(&mut self, reason: String) {
        self.cur.deadline = None;
        self.cur.last_error = Some(reason.clone());
        let retry = self
            .def
            .step(self.cur.step)
            .and_then(|s| s.compensation)
            .map(|c| c.retry)
            .unwrap_or(RetryPolicy::once());
        if retry.allows_another(self.used()) {
            let at = self.backoff_until(&retry);
            self.cur.next_run_at = Some(at);
            self.record(
                RecordKind::RetryScheduled,
                serde_json::json!({ "reason": reason, "due": at, "compensation": true }),
            );
        } else {
            self.cur.state = SagaState::Failed;
            self.cur.next_run_at = None;
            self.record(RecordKind::Failed, serde_json::json!({ "reason": reason }));
            if let Some(action) = self.def.hooks.on_failed {
                self.effects.push(Effect::RunHook {
                    action,
                    state: SagaState::Failed,
                });
            }
        }
    }

    /// Starts compensating from step `from` downwards (the highest step with
    /// a compensation at or below it).
    fn begin_compensation(&mut self, from: u32, reason: String) {
        self.cur.failure.get_or_insert_with(|| reason.clone());
        self.record(
            RecordKind::CompensationStarted,
            serde_json::json!({ "reason": reason, "from_step": from }),
        );
        match self.highest_compensable(Some(from)) {
            Some(step) => self.compensate_step(step),
            None => self.finish_compensation(reason),
        }
    }

    fn next_compensation_below(&mut self, step: u32) {
        match self.highest_compensable(step.checked_sub(1)) {
            Some(next) => self.compensate_step(next),
            None => {
                let reason = self
                    .cur
                    .failure
                    .clone()
                    .or_else(|| self.cur.last_error.clone())
                    .unwrap_or_default();
                self.finish_compensation(reason)
            }
        }
    }

    fn highest_compensable(&self, from: Option<u32>) -> Option<u32> {
        let from = from?;
        (0..=from)
            .rev()
            .find(|i| self.def.step(*i).is_some_and(|s| s.compensation.is_some()))
    }

    fn compensate_step(&mut self, step: u32) {
        self.cur.state = SagaState::Compensating;
        self.cur.step = step;
        self.schedule_now();
    }

    fn finish_compensation(&mut self, reason: String) {
        self.cur.failure.get_or_insert_with(|| reason.clone());
        self.cur.next_run_at = None;
        self.cur.deadline = None;
        let (state, kind, hook) = if self.cur.cancel_requested {
            (
                SagaState::Cancelled,
                RecordKind::Cancelled,
                self.def.hooks.on_cancelled,
            )
        } else {
            (
                SagaState::Compensated,
                RecordKind::Compensated,
                self.def.hooks.on_compensated,
            )
        };
        self.cur.state = state;
        self.record(kind, serde_json::json!({ "reason": reason }));
        if let Some(action) = hook {
            self.effects.push(Effect::RunHook { action, state });
        }
    }

    fn cancel(&mut self, reason: &str) {
        self.record(
            RecordKind::CancelRequested,
            serde_json::json!({ "reason": reason }),
        );
        let already = self.cur.cancel_requested;
        self.cur.cancel_requested = true;
        self.cur.last_error = Some(format!("cancelled: {reason}"));
        // A cancel decides how the saga ends, whatever failed before it.
        self.cur.failure = Some(format!("cancelled: {reason}"));
        match self.cur.state {
            // Compensation is already under way; it now ends CANCELLED.
            SagaState::Compensating => {}
            // A command is out or was attempted: its effect may exist, undo it too.
            SagaState::Waiting => self.begin_compensation(self.cur.step, reason.to_owned()),
            SagaState::Running if self.cur.attempt > 0 => {
                self.begin_compensation(self.cur.step, reason.to_owned())
            }
            SagaState::Running => match self.cur.step.checked_sub(1) {
                Some(below) => self.begin_compensation(below, reason.to_owned()),
                None => self.finish_compensation(reason.to_owned()),
            },
            _ if already => {}
            _ => {}
        }
    }
}
