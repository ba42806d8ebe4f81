//! Flux's retry timing.

use std::time::Duration;

/// Exponential backoff after `failures` consecutive failures: 750 ms doubling up to 15 minutes
/// (controller-runtime's rate limiter, which Flux uses).
pub fn after_failures(failures: u32) -> Duration {
    const BASE_MS: u64 = 750;
    const MAX: Duration = Duration::from_secs(15 * 60);
    let factor = 1u64
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u64::MAX);
    Duration::from_millis(BASE_MS.saturating_mul(factor)).min(MAX)
}

/// `interval` with up to ±5% jitter, so objects created together do not reconcile in lockstep.
/// `seed` should differ per object (e.g. a hash of its uid) and per run.
pub fn jittered(interval: Duration, seed: u64) -> Duration {
    // splitmix64: a well-mixed value from any seed, without a random-number dependency.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let unit = (z >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    interval.mul_f64(0.95 + 0.1 * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_750ms_and_caps_at_15_minutes() {
        assert_eq!(after_failures(1), Duration::from_millis(750));
        assert_eq!(after_failures(2), Duration::from_millis(1500));
        assert_eq!(after_failures(5), Duration::from_millis(12_000));
        assert_eq!(after_failures(30), Duration::from_secs(900));
        assert_eq!(after_failures(200), Duration::from_secs(900));
    }

    #[test]
    fn jitter_stays_within_five_percent_and_varies() {
        let interval = Duration::from_secs(600);
        let values: Vec<Duration> = (0..1000).map(|s| jittered(interval, s)).collect();
        assert!(
            values
                .iter()
                .all(|v| *v >= interval.mul_f64(0.95) && *v <= interval.mul_f64(1.05))
        );
        let distinct: std::collections::BTreeSet<_> = values.iter().collect();
        assert!(distinct.len() > 900, "jitter spreads objects out");
    }
}
