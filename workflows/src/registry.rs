//! Which definitions the engine knows, and the operator's tuning of their
//! policies.
//!
//! A definition's *shape* (its steps and their actions) is code and is
//! pinned by `(saga_type, version)`: a running instance keeps the version it
//! started with, so an old version stays registered until no instance uses
//! it. Its *policies* (retries, backoff, timeouts) are operations: they can
//! be overridden per step from configuration ([`Tuning`]) and apply to
//! running instances from their next transition on.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::definition::SagaDefinition;
use crate::policy::RetryPolicy;
use crate::{order_payment, order_refund};

/// Overrides of one step's policies; absent fields keep the built-in value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepTuning {
    /// Retries of the forward action.
    pub retry: Option<RetryPolicy>,
    /// How long a remote forward action may stay unanswered, in ms.
    pub timeout_ms: Option<u64>,
    /// Retries of the compensation.
    pub compensation_retry: Option<RetryPolicy>,
    /// How long a remote compensation may stay unanswered, in ms.
    pub compensation_timeout_ms: Option<u64>,
}

/// Per-step overrides keyed `"<saga_type>.<step name>"`, e.g.
/// `{"order_payment.debit": {"timeout_ms": 5000}}`. They apply to every
/// registered version that has that step.
pub type Tuning = BTreeMap<String, StepTuning>;

/// Why a [`Tuning`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TuningError {
    /// The key names no step of any registered saga.
    #[error("`{0}` names no step of a known saga (expected \"<saga_type>.<step>\", e.g. \"order_payment.debit\")")]
    UnknownStep(String),
    /// A policy or timeout that cannot work.
    #[error("`{key}`: {reason}")]
    Invalid {
        /// The tuning key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// The definitions the engine runs, with tuning applied.
#[derive(Debug, Clone)]
pub struct Registry {
    defs: Vec<SagaDefinition>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::builtin()
    }
}

fn check_policy(key: &str, what: &str, p: &RetryPolicy) -> Result<(), TuningError> {
    let invalid = |reason: String| TuningError::Invalid {
        key: key.to_owned(),
        reason,
    };
    if p.max_attempts == 0 {
        return Err(invalid(format!("{what}.max_attempts must be at least 1")));
    }
    if p.initial_backoff > p.max_backoff {
        return Err(invalid(format!(
            "{what}.initial_backoff must not exceed {what}.max_backoff"
        )));
    }
    Ok(())
}

fn timeout(key: &str, what: &str, ms: u64) -> Result<Duration, TuningError> {
    if ms == 0 {
        return Err(TuningError::Invalid {
            key: key.to_owned(),
            reason: format!("{what} must be at least 1 ms"),
        });
    }
    Ok(Duration::from_millis(ms))
}

impl Registry {
    /// Every saga sagaflow ships, with built-in policies.
    pub fn builtin() -> Self {
        Registry {
            defs: vec![
                order_payment::definition().clone(),
                order_refund::definition().clone(),
            ],
        }
    }

    /// No definitions at all, not even the built-in ones.
    pub fn empty() -> Self {
        Registry { defs: Vec::new() }
    }

    /// The built-in sagas with `tuning` applied; refuses keys that name no
    /// step and policies that cannot work.
    pub fn with_tuning(tuning: &Tuning) -> Result<Self, TuningError> {
        let mut reg = Registry::builtin();
        reg.tune(tuning)?;
        Ok(reg)
    }

    /// Adds an application's own saga definition. Refuses a `(name,
    /// version)` that is already registered, and a definition without
    /// steps.
    pub fn register(&mut self, def: SagaDefinition) -> Result<(), TuningError> {
        if def.is_empty() {
            return Err(TuningError::Invalid {
                key: def.name.to_owned(),
                reason: "a saga needs at least one step".to_owned(),
            });
        }
        if self
            .defs
            .iter()
            .any(|d| d.name == def.name && d.version == def.version)
        {
            return Err(TuningError::Invalid {
                key: def.name.to_owned(),
                reason: format!("version {} is registered twice", def.version),
            });
        }
        self.defs.push(def);
        Ok(())
    }

    /// Applies `tuning` to every registered definition; refuses keys that
    /// name no step and policies that cannot work, changing nothing then.
    pub fn tune(&mut self, tuning: &Tuning) -> Result<(), TuningError> {
        let mut defs = self.defs.clone();
        for (key, t) in tuning {
            let mut found = false;
            for def in &mut defs {
                for step in &mut def.steps {
                    if *key != format!("{}.{}", def.name, step.name) {
                        continue;
                    }
                    found = true;
                    if let Some(r) = t.retry {
                        check_policy(key, "retry", &r)?;
                        step.retry = r;
                    }
                    if let Some(ms) = t.timeout_ms {
                        step.timeout = timeout(key, "timeout_ms", ms)?;
                    }
                    if t.compensation_retry.is_some() || t.compensation_timeout_ms.is_some() {
                        let comp =
                            step.compensation
                                .as_mut()
                                .ok_or_else(|| TuningError::Invalid {
                                    key: key.clone(),
                                    reason: "the step has no compensation to tune".to_owned(),
                                })?;
                        if let Some(r) = t.compensation_retry {
                            check_policy(key, "compensation_retry", &r)?;
                            comp.retry = r;
                        }
                        if let Some(ms) = t.compensation_timeout_ms {
                            comp.timeout = timeout(key, "compensation_timeout_ms", ms)?;
                        }
                    }
                }
            }
            if !found {
                return Err(TuningError::UnknownStep(key.clone()));
            }
        }
        self.defs = defs;
        Ok(())
    }

    /// The definition an instance of `saga_type` at `version` runs under.
    pub fn get(&self, saga_type: &str, version: i32) -> Option<&SagaDefinition> {
        self.defs
            .iter()
            .find(|d| d.name == saga_type && i64::from(d.version) == i64::from(version))
    }

    /// Every registered definition.
    pub fn definitions(&self) -> &[SagaDefinition] {
        &self.defs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuning(json: &str) -> Tuning {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn tuning_overrides_only_what_it_names() {
        let reg = Registry::with_tuning(&tuning(
            r#"{"order_payment.debit": {"timeout_ms": 250,
                "retry": {"max_attempts": 5, "initial_backoff": 10, "max_backoff": 20}}}"#,
        ))
        .unwrap();
        let def = reg.get(order_payment::SAGA_TYPE, 1).unwrap();
        let debit = &def.steps[0];
        assert_eq!(debit.timeout, Duration::from_millis(250));
        assert_eq!(debit.retry.max_attempts, 5);
        let builtin = &order_payment::definition().steps[0];
        assert_eq!(debit.compensation, builtin.compensation);
        assert_eq!(
            reg.get(order_refund::SAGA_TYPE, 1),
            Some(order_refund::definition())
        );
    }

    #[test]
    fn bad_tuning_is_refused_with_its_key() {
        let unknown = Registry::with_tuning(&tuning(r#"{"order_payment.teleport": {}}"#));
        assert_eq!(
            unknown.unwrap_err(),
            TuningError::UnknownStep("order_payment.teleport".into())
        );
        let zero = Registry::with_tuning(&tuning(
            r#"{"order_refund.credit": {"compensation_retry": {"max_attempts": 0, "initial_backoff": 1, "max_backoff": 1}}}"#,
        ));
        assert!(
            matches!(zero, Err(TuningError::Invalid { ref key, .. }) if key == "order_refund.credit")
        );
        assert!(
            serde_json::from_str::<Tuning>(r#"{"order_payment.debit": {"timeout": 5}}"#).is_err()
        );
    }

    #[test]
    fn applications_register_their_own_sagas_once() {
        let mut reg = Registry::builtin();
        let mut mine = order_refund::definition().clone();
        mine.name = "gift_card";
        reg.register(mine.clone()).unwrap();
        assert!(reg.get("gift_card", 1).is_some());
        assert!(
            reg.register(mine.clone()).is_err(),
            "same name and version twice"
        );
        mine.steps.clear();
        mine.version = 2;
        assert!(reg.register(mine).is_err(), "no steps");
        reg.tune(&tuning(r#"{"gift_card.credit": {"timeout_ms": 7}}"#))
            .unwrap();
        assert_eq!(
            reg.get("gift_card", 1).unwrap().steps[0].timeout,
            Duration::from_millis(7)
        );
    }

    #[test]
    fn lookups_are_by_type_and_version() {
        let reg = Registry::builtin();
        assert!(reg.get(order_payment::SAGA_TYPE, 1).is_some());
        assert!(reg.get(order_payment::SAGA_TYPE, 2).is_none());
        assert!(reg.get("nope", 1).is_none());
        assert_eq!(reg.definitions().len(), 2);
    }
}
