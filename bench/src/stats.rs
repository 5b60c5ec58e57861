//! Summary statistics over benchmark samples: median, p10, p90, min, max and mean.
//!
//! Conventions (stated in every report header so numbers can be compared across runs):
//! * the median of an even count is the mean of the two middle samples;
//! * p90 is the nearest-rank percentile: the smallest sample with at least 90 % of the samples at or
//!   below it (for 20 samples, the 18th smallest); p10 likewise (for 20 samples, the 2nd smallest).
//!
//! Never trusts its input to be clean: NaN and infinite samples are rejected rather than sorted.

/// The summary of one metric's samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none or any is not a finite number.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Summary {
            n,
            median,
            p10: nearest_rank(&sorted, 10),
            p90: nearest_rank(&sorted, 90),
            min: sorted[0],
            max: sorted[n - 1],
            mean: sorted.iter().sum::<f64>() / n as f64,
        })
    }
}

/// The nearest-rank `pct`-th percentile of an ascending, non-empty slice.
fn nearest_rank(sorted: &[f64], pct: usize) -> f64 {
    let rank = (pct * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// Formats a value with a precision that suits its magnitude (4 significant digits or so, never
/// scientific notation), so that a table column of latencies or rates stays readable.
pub fn format_value(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "-".to_string()
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// [`format_value`] for quantities that are usually whole numbers (threads, VMs): no decimals when whole.
pub fn format_count(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format_value(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_count_median_is_the_middle_sample() {
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max, s.mean), (3, 3.0, 1.0, 5.0, 3.0));
    }

    #[test]
    fn even_count_median_is_the_mean_of_the_middle_two() {
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
    }

    #[test]
    fn p90_of_twenty_samples_is_the_eighteenth_smallest() {
        let samples: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        let s = Summary::of(&samples).unwrap();
        assert_eq!(s.p90, 18.0);
        assert_eq!(s.p10, 2.0);
        assert_eq!(s.median, 10.5);
        assert_eq!((s.min, s.max), (1.0, 20.0));
    }

    #[test]
    fn p90_of_small_counts_stays_in_range() {
        assert_eq!(Summary::of(&[7.0]).unwrap().p90, 7.0);
        assert_eq!(Summary::of(&[7.0]).unwrap().p10, 7.0);
        assert_eq!(Summary::of(&[1.0, 2.0]).unwrap().p10, 1.0);
        assert_eq!(Summary::of(&[1.0, 2.0]).unwrap().p90, 2.0);
        // 10 samples: rank 9.
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(Summary::of(&ten).unwrap().p90, 9.0);
    }

    #[test]
    fn empty_or_non_finite_samples_have_no_summary() {
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[1.0, f64::NAN]).is_none());
        assert!(Summary::of(&[f64::INFINITY]).is_none());
    }

    #[test]
    fn values_are_formatted_by_magnitude() {
        assert_eq!(format_value(12345.678), "12346");
        assert_eq!(format_value(123.456), "123.5");
        assert_eq!(format_value(12.3456), "12.35");
        assert_eq!(format_value(0.12345), "0.123");
        assert_eq!(format_value(f64::NAN), "-");
        assert_eq!(format_count(4.0), "4");
        assert_eq!(format_count(4.5), "4.50");
    }
}
