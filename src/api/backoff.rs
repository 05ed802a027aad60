//! Capped exponential backoff with jitter, per object.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// Delay before retry number `retry` (1 = first retry): base·2^(retry-1), capped.
    ///
    /// ```
    /// use std::time::Duration;
    /// use bindlet_api::Backoff;
    /// let b = Backoff { base: Duration::from_millis(500), max: Duration::from_secs(60) };
    /// assert_eq!(b.delay(1), Duration::from_millis(500));
    /// assert_eq!(b.delay(3), Duration::from_secs(2));
    /// assert_eq!(b.delay(20), Duration::from_secs(60));
    /// ```
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << exp).min(self.max)
    }

    /// `delay` with up to +25% random jitter, so retries of many objects spread out.
    pub fn jittered(&self, retry: u32) -> Duration {
        let d = self.delay(retry);
        let jitter = rand::random::<f64>() * 0.25;
        d.mul_f64(1.0 + jitter).min(self.max.mul_f64(1.25))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let got: Vec<u128> = (1..=6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
        for n in 1..10 {
            let j = b.jittered(n);
            assert!(j >= b.delay(n) && j <= b.delay(n).mul_f64(1.25), "{j:?}");
        }
    }
}
