//! When to redial the server after the tunnel ended (DESIGN.md §6): full jitter `U(0, min(cap, base × 2^n))`,
//! reset after a long healthy connection or a routine recycle (close 1001/1012, HTTP 502).

use std::time::Duration;

use omnigent_proto::runner_frames::close;
use omnigent_tunnel::ServeEnd;

use crate::RunnerError;

/// The reconnect schedule.
#[derive(Debug, Clone)]
pub struct BackoffPolicy {
    /// First ceiling (250 ms).
    pub base: Duration,
    /// Largest ceiling (10 s).
    pub cap: Duration,
    /// A connection that lasted this long resets the schedule (60 s).
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            base: Duration::from_millis(250),
            cap: Duration::from_secs(10),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// The state of the schedule: how many attempts failed in a row.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    attempt: u32,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Self {
        Backoff { policy, attempt: 0 }
    }

    /// The ceiling of the next delay: `min(cap, base × 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.policy.base.saturating_mul(factor).min(self.policy.cap)
    }

    /// The next delay, drawn by `jitter` from `[0, ceiling]`; advances the schedule.
    pub fn next_delay_with(&mut self, jitter: impl FnOnce(Duration) -> Duration) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        jitter(ceiling).min(ceiling)
    }

    /// The next delay with full jitter.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(full_jitter)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// What to do after a tunnel that was up for `connected_for` ended with `end`: wait this long, or stop
    /// for good (a refusal no retry can fix).
    pub fn after_tunnel(
        &mut self,
        end: &ServeEnd,
        connected_for: Duration,
    ) -> Result<Duration, RunnerError> {
        if connected_for >= self.policy.reset_after {
            self.reset();
        }
        match end {
            ServeEnd::Closed {
                code: Some(code),
                reason,
            } if close::is_fatal_for_runner(*code) => Err(RunnerError::Refused {
                code: *code,
                reason: reason.clone(),
            }),
            ServeEnd::Closed {
                code: Some(close::GOING_AWAY | close::SERVICE_RESTART),
                ..
            } => {
                self.reset();
                Ok(Duration::ZERO)
            }
            ServeEnd::Shutdown => Ok(Duration::ZERO),
            ServeEnd::Closed { .. } | ServeEnd::IdleTimeout => Ok(self.next_delay()),
        }
    }
}

/// `U(0, ceiling)`.
pub fn full_jitter(ceiling: Duration) -> Duration {
    use rand::Rng as _;
    let max = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=max))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn closed(code: u16) -> ServeEnd {
        ServeEnd::Closed {
            code: Some(code),
            reason: String::new(),
        }
    }

    /// The schedule, measured on the clock: each redial waits for its ceiling when the jitter draws the top.
    #[tokio::test(start_paused = true)]
    async fn schedule_doubles_from_250_ms_to_a_10_s_cap() {
        let mut backoff = Backoff::new(BackoffPolicy::default());
        let mut waited = Vec::new();
        for _ in 0..8 {
            let start = tokio::time::Instant::now();
            tokio::time::sleep(backoff.next_delay_with(|ceiling| ceiling)).await;
            waited.push(start.elapsed().as_millis());
        }
        assert_eq!(waited, [250, 500, 1000, 2000, 4000, 8000, 10000, 10000]);
    }

    #[test]
    fn full_jitter_stays_under_the_ceiling() {
        let mut backoff = Backoff::new(BackoffPolicy::default());
        for _ in 0..200 {
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay();
            assert!(delay <= ceiling);
        }
        assert_eq!(backoff.ceiling(), Duration::from_secs(10));
        // Draws spread over the range rather than sitting at one end.
        let draws: Vec<Duration> = (0..200)
            .map(|_| full_jitter(Duration::from_secs(10)))
            .collect();
        assert!(draws.iter().any(|d| *d < Duration::from_secs(3)));
        assert!(draws.iter().any(|d| *d > Duration::from_secs(7)));
    }

    #[test]
    fn long_connections_and_recycles_reset_the_schedule() {
        let mut backoff = Backoff::new(BackoffPolicy::default());
        for _ in 0..5 {
            backoff.next_delay();
        }
        // A short-lived tunnel keeps climbing.
        backoff
            .after_tunnel(&closed(4003), Duration::from_secs(1))
            .unwrap();
        assert_eq!(backoff.ceiling(), Duration::from_secs(10));
        // A tunnel that was up for 60 s starts over.
        let delay = backoff
            .after_tunnel(&closed(4003), Duration::from_secs(60))
            .unwrap();
        assert!(delay <= Duration::from_millis(250));
        assert_eq!(backoff.ceiling(), Duration::from_millis(500));
        // 1001 and 1012 are routine recycles: redial at once.
        for code in [1001, 1012] {
            for _ in 0..5 {
                backoff.next_delay();
            }
            assert_eq!(
                backoff.after_tunnel(&closed(code), Duration::ZERO).unwrap(),
                Duration::ZERO
            );
            assert_eq!(backoff.ceiling(), Duration::from_millis(250));
        }
    }

    #[test]
    fn refusals_are_fatal() {
        for code in [4001, 4002, 4004, 4500] {
            let mut backoff = Backoff::new(BackoffPolicy::default());
            let err = backoff
                .after_tunnel(&closed(code), Duration::ZERO)
                .unwrap_err();
            assert!(matches!(err, RunnerError::Refused { code: c, .. } if c == code));
        }
        let mut backoff = Backoff::new(BackoffPolicy::default());
        for end in [
            closed(4000),
            closed(4003),
            closed(1006),
            ServeEnd::IdleTimeout,
            ServeEnd::Closed {
                code: None,
                reason: "reset".into(),
            },
        ] {
            assert!(
                backoff.after_tunnel(&end, Duration::ZERO).is_ok(),
                "{end:?}"
            );
        }
    }
}
