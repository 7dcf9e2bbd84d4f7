//! Retry policies: data, not code, so that they can be configured and
//! serialised; the randomness of the jitter is passed in, so the policy is
//! deterministic under test.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often and how fast a step (or a compensation) is retried.
///
/// Attempt `n` (1-based) that failed is followed by a delay drawn uniformly
/// from `[0, min(cap, initial * 2^(n-1))]` ("full jitter"), which spreads
/// retries of many sagas that failed together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Total attempts, the first one included. At least 1.
    pub max_attempts: u32,
    /// Upper bound of the first delay.
    #[serde(with = "millis")]
    pub initial_backoff: Duration,
    /// Upper bound of any delay.
    #[serde(with = "millis")]
    pub max_backoff: Duration,
}

/// A uniform random draw in `[0, 1]`, expressed in parts per million, so
/// that delays are computed without floating point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jitter(u32);

impl Jitter {
    /// Parts per million in a whole.
    pub const SCALE: u32 = 1_000_000;
    /// No delay at all: the lower end of every range.
    pub const NONE: Jitter = Jitter(0);
    /// The full delay: the upper end of every range.
    pub const FULL: Jitter = Jitter(Self::SCALE);

    /// A jitter of `ppm` parts per million, clamped to `[0, SCALE]`.
    pub fn from_ppm(ppm: u32) -> Self {
        Jitter(ppm.min(Self::SCALE))
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub const fn once() -> Self {
        RetryPolicy {
            max_attempts: 1,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        }
    }

    /// Whether another attempt is allowed after `attempts_made`.
    pub fn allows_another(&self, attempts_made: u32) -> bool {
        attempts_made < self.max_attempts
    }

    /// The delay before the attempt that follows the failed attempt
    /// `failed_attempt` (1-based).
    pub fn backoff(&self, failed_attempt: u32, jitter: Jitter) -> Duration {
        let exp = failed_attempt.saturating_sub(1).min(32);
        let ceiling = self
            .initial_backoff
            .saturating_mul(1u32.checked_shl(exp).unwrap_or(u32::MAX))
            .min(self.max_backoff);
        let micros =
            ceiling.as_micros().saturating_mul(u128::from(jitter.0)) / u128::from(Jitter::SCALE);
        Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy();
        assert_eq!(p.backoff(1, Jitter::FULL), Duration::from_millis(100));
        assert_eq!(p.backoff(2, Jitter::FULL), Duration::from_millis(200));
        assert_eq!(p.backoff(4, Jitter::FULL), Duration::from_millis(800));
        assert_eq!(p.backoff(5, Jitter::FULL), Duration::from_secs(1));
        assert_eq!(p.backoff(40, Jitter::FULL), Duration::from_secs(1));
    }

    #[test]
    fn jitter_scales_the_delay_down() {
        let p = policy();
        assert_eq!(p.backoff(3, Jitter::NONE), Duration::ZERO);
        assert_eq!(
            p.backoff(3, Jitter::from_ppm(500_000)),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn attempts_are_bounded() {
        let p = policy();
        assert!(p.allows_another(4));
        assert!(!p.allows_another(5));
        assert!(!RetryPolicy::once().allows_another(1));
    }

    #[test]
    fn policy_round_trips_through_json() {
        let json = serde_json::to_string(&policy()).unwrap();
        assert_eq!(
            json,
            r#"{"max_attempts":5,"initial_backoff":100,"max_backoff":1000}"#
        );
        assert_eq!(
            serde_json::from_str::<RetryPolicy>(&json).unwrap(),
            policy()
        );
    }
}
