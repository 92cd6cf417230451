//! Exponential backoff with jitter: one implementation for the runtime's
//! restarts and for a connector that resends by its protocol (the
//! Elasticsearch sink's 429s).

use std::time::Duration;

use crate::Stopping;

/// Delays that double from `first` up to `max`, each drawn from the upper
/// half of its step (half fixed, half random): many pipelines or writers
/// failing on one server spread out, and none comes back at once.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The next delay; the one after it is twice as long (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next.min(self.max);
        self.next = self.next.saturating_mul(2).min(self.max);
        step / 2 + step.mul_f64(fastrand::f64() / 2.0)
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps the next delay unless ferry stops first; false when it stopped.
    pub async fn wait(&mut self, stopping: &Stopping) -> bool {
        let delay = self.next_delay();
        stopping.sleep(delay).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_max_and_stay_in_the_upper_half() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let steps = [100u64, 200, 350, 350];
        for step in steps {
            let d = b.next_delay().as_millis() as u64;
            assert!(d >= step / 2 && d <= step, "{d} for a step of {step}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
