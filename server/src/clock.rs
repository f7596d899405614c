//! Wall-clock time as the wire and the store record it, and [`Clock`], the clock expiries are judged by
//! (paired devices, pairing codes): the system's, or a [`ManualClock`] a test moves.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// The wall clock expiries are judged by. `Default` is the system clock.
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<watch::Sender<i64>>>);

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Clock(manual)"
        } else {
            "Clock(system)"
        })
    }
}

impl Clock {
    /// Now, in epoch seconds.
    pub fn now_secs(&self) -> i64 {
        match &self.0 {
            Some(manual) => *manual.borrow(),
            None => now_ms() / 1000,
        }
    }

    /// Returns once it is `at` (epoch seconds) or later.
    pub async fn until(&self, at: i64) {
        match &self.0 {
            Some(manual) => {
                let mut now = manual.subscribe();
                // The sender lives as long as this clock: `changed` only fails if it is gone.
                while *now.borrow_and_update() < at {
                    if now.changed().await.is_err() {
                        return;
                    }
                }
            }
            None => loop {
                let left_ms = at.saturating_mul(1000).saturating_sub(now_ms());
                if left_ms <= 0 {
                    return;
                }
                // Re-read after waking: the wall clock may have been set meanwhile.
                tokio::time::sleep(Duration::from_millis(left_ms.unsigned_abs())).await;
            },
        }
    }
}

/// A clock that stands still until it is moved (tests of expiries that take days).
#[derive(Clone, Debug)]
pub struct ManualClock(Clock);

impl ManualClock {
    /// A clock showing `now` (epoch seconds).
    pub fn new(now: i64) -> ManualClock {
        ManualClock(Clock(Some(Arc::new(watch::channel(now).0))))
    }

    /// The clock to hand to the server ([`crate::ServerConfig::clock`]).
    pub fn clock(&self) -> Clock {
        self.0.clone()
    }

    /// Move the clock forward by `by`; whatever waits for a time now past wakes.
    pub fn advance(&self, by: Duration) {
        if let Some(manual) = &self.0.0 {
            let by = i64::try_from(by.as_secs()).unwrap_or(i64::MAX);
            manual.send_modify(|now| *now = now.saturating_add(by));
        }
    }
}

/// Now, in epoch milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Now, in epoch seconds with a fraction.
pub fn now_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `2026-06-10T17:00:00Z` for epoch seconds `secs` (proleptic Gregorian, UTC).
pub fn iso8601_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::iso8601_utc;

    #[test]
    fn iso8601_dates() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601_utc(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(iso8601_utc(951_782_400 + 3661), "2000-02-29T01:01:01Z");
        assert_eq!(iso8601_utc(1_781_110_800), "2026-06-10T17:00:00Z");
    }
}
