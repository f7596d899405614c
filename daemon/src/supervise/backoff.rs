//! Restart policy for supervised children (DESIGN §6): backoff `min(200 ms × 1.5^n, 15 s)` ±20 % jitter;
//! 5 exits under 5 s of uptime within 120 s ⇒ crash loop (stop restarting, show it in status).
//!
//! Pure and clock-injected (`tokio::time::Instant`), so the rules are tested with `tokio::time::pause()`.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The numbers of DESIGN §6, in one place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    pub base: Duration,
    pub factor: f64,
    pub cap: Duration,
    /// Fraction of the delay added or removed at random (0.2 = ±20 %).
    pub jitter: f64,
    /// An exit after less uptime than this counts towards a crash loop.
    pub short_uptime: Duration,
    /// This many short exits …
    pub crashloop_exits: usize,
    /// … within this window make a crash loop.
    pub crashloop_window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            base: Duration::from_millis(200),
            factor: 1.5,
            cap: Duration::from_secs(15),
            jitter: 0.2,
            short_uptime: Duration::from_secs(5),
            crashloop_exits: 5,
            crashloop_window: Duration::from_secs(120),
        }
    }
}

impl RestartPolicy {
    /// Delay before restart number `n` (0-based count of consecutive short-lived runs). `unit` is a random
    /// number in `[-1, 1]` scaling the jitter (0 = no jitter).
    pub fn delay(&self, n: u32, unit: f64) -> Duration {
        let raw = self.base.as_secs_f64() * self.factor.powi(n.min(64) as i32);
        let capped = raw.min(self.cap.as_secs_f64());
        let jittered = capped * (1.0 + self.jitter * unit.clamp(-1.0, 1.0));
        Duration::from_secs_f64(jittered.max(0.0))
    }

    /// [`Self::delay`] with fresh randomness.
    pub fn delay_random(&self, n: u32) -> Duration {
        self.delay(n, rand::random_range(-1.0..=1.0))
    }
}

/// Counts exits and decides when a child is crash-looping; owns the consecutive-failure counter `n`.
#[derive(Debug, Clone)]
pub struct CrashTracker {
    policy: RestartPolicy,
    short_exits: VecDeque<Instant>,
    consecutive: u32,
}

/// What to do after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// Restart after this delay.
    RestartAfter(Duration),
    /// Crash loop: do not restart.
    CrashLoop,
}

impl CrashTracker {
    pub fn new(policy: RestartPolicy) -> Self {
        CrashTracker {
            policy,
            short_exits: VecDeque::new(),
            consecutive: 0,
        }
    }

    /// Record an unexpected exit at `now` after `uptime`; `unit` as in [`RestartPolicy::delay`].
    pub fn on_exit(&mut self, now: Instant, uptime: Duration, unit: f64) -> AfterExit {
        if uptime >= self.policy.short_uptime {
            self.consecutive = 0;
        } else {
            self.short_exits.push_back(now);
        }
        while let Some(first) = self.short_exits.front() {
            if now.duration_since(*first) > self.policy.crashloop_window {
                self.short_exits.pop_front();
            } else {
                break;
            }
        }
        if self.short_exits.len() >= self.policy.crashloop_exits {
            return AfterExit::CrashLoop;
        }
        let delay = self.policy.delay(self.consecutive, unit);
        self.consecutive = self.consecutive.saturating_add(1);
        AfterExit::RestartAfter(delay)
    }

    /// Forget the history (an explicit start after a crash loop).
    pub fn reset(&mut self) {
        self.short_exits.clear();
        self.consecutive = 0;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delay_grows_by_1_5_and_caps_at_15s_with_bounded_jitter() {
        let p = RestartPolicy::default();
        assert_eq!(p.delay(0, 0.0), ms(200));
        assert_eq!(p.delay(1, 0.0), ms(300));
        assert_eq!(p.delay(2, 0.0), ms(450));
        assert_eq!(p.delay(20, 0.0), Duration::from_secs(15));
        assert_eq!(p.delay(1000, 0.0), Duration::from_secs(15));
        assert_eq!(p.delay(0, 1.0), ms(240));
        assert_eq!(p.delay(0, -1.0), ms(160));
        assert_eq!(p.delay(20, 1.0), Duration::from_secs(18));
        for _ in 0..200 {
            let d = p.delay_random(3);
            assert!(d >= ms(540) && d <= ms(810), "{d:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn five_short_exits_within_120s_is_a_crashloop() {
        let mut t = CrashTracker::new(RestartPolicy::default());
        for i in 0..4 {
            let after = t.on_exit(Instant::now(), ms(100), 0.0);
            assert_eq!(
                after,
                AfterExit::RestartAfter(RestartPolicy::default().delay(i, 0.0))
            );
            tokio::time::advance(Duration::from_secs(20)).await;
        }
        assert_eq!(
            t.on_exit(Instant::now(), ms(100), 0.0),
            AfterExit::CrashLoop
        );
    }

    #[tokio::test(start_paused = true)]
    async fn short_exits_spread_over_more_than_120s_are_not_a_crashloop() {
        let mut t = CrashTracker::new(RestartPolicy::default());
        for _ in 0..10 {
            assert!(matches!(
                t.on_exit(Instant::now(), ms(100), 0.0),
                AfterExit::RestartAfter(_)
            ));
            tokio::time::advance(Duration::from_secs(31)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn long_runs_reset_the_backoff_and_do_not_count() {
        let mut t = CrashTracker::new(RestartPolicy::default());
        for _ in 0..3 {
            t.on_exit(Instant::now(), ms(10), 0.0);
        }
        assert_eq!(
            t.on_exit(Instant::now(), Duration::from_secs(60), 0.0),
            AfterExit::RestartAfter(ms(200))
        );
        for _ in 0..20 {
            assert!(matches!(
                t.on_exit(Instant::now(), Duration::from_secs(6), 0.0),
                AfterExit::RestartAfter(d) if d == ms(200)
            ));
        }
        // Three short exits earlier plus two now: five within the window.
        t.on_exit(Instant::now(), ms(10), 0.0);
        assert_eq!(t.on_exit(Instant::now(), ms(10), 0.0), AfterExit::CrashLoop);
        t.reset();
        assert!(matches!(
            t.on_exit(Instant::now(), ms(10), 0.0),
            AfterExit::RestartAfter(_)
        ));
    }
}
