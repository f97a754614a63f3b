//! The few statistics an evaluation report quotes: a mean change with its 95%
//! confidence interval (Student's t, from statrs), and a median.

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

/// A mean with its 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanWithInterval {
    pub n: usize,
    pub mean: f64,
    /// The sample standard deviation (n − 1).
    pub standard_deviation: Option<f64>,
    /// `None` for fewer than two values, or when every value is the same (then the
    /// interval is the mean itself and is reported as such).
    pub ci95_low: Option<f64>,
    pub ci95_high: Option<f64>,
}

/// The mean of `values` with a two-sided 95% interval from the t distribution with
/// n − 1 degrees of freedom. `None` for no values.
pub fn mean_with_interval(values: &[f64]) -> Option<MeanWithInterval> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return Some(MeanWithInterval {
            n,
            mean,
            standard_deviation: None,
            ci95_low: None,
            ci95_high: None,
        });
    }
    let variance = values
        .iter()
        .map(|value| (value - mean).powi(2))
        .sum::<f64>()
        / (n - 1) as f64;
    let standard_deviation = variance.sqrt();
    let half_width = StudentsT::new(0.0, 1.0, (n - 1) as f64)
        .ok()
        .map(|t| t.inverse_cdf(0.975) * standard_deviation / (n as f64).sqrt());
    Some(MeanWithInterval {
        n,
        mean,
        standard_deviation: Some(standard_deviation),
        ci95_low: half_width.map(|half| mean - half),
        ci95_high: half_width.map(|half| mean + half),
    })
}

/// The median (the mean of the middle two for an even count). `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    Some(if sorted.len() % 2 == 0 {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    })
}

/// `part` of `whole` as a percentage to one decimal place; `None` when `whole` is 0.
pub fn percent(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| (part as f64 * 1000.0 / whole as f64).round() / 10.0)
}

/// Rounded to `places` decimal places, for figures people read.
pub fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_uses_the_t_distribution_of_the_sample() {
        // Changes 1..=5: mean 3, sd 1.5811; t(0.975, 4) = 2.7764; half width 1.9632.
        let interval = mean_with_interval(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert_eq!(interval.n, 5);
        assert!((interval.mean - 3.0).abs() < 1e-12);
        assert!((interval.standard_deviation.unwrap() - 1.581_138_8).abs() < 1e-6);
        assert!((interval.ci95_low.unwrap() - 1.036_757).abs() < 1e-5);
        assert!((interval.ci95_high.unwrap() - 4.963_243).abs() < 1e-5);
    }

    #[test]
    fn one_value_has_a_mean_and_no_interval() {
        let interval = mean_with_interval(&[-3.0]).unwrap();
        assert_eq!((interval.mean, interval.ci95_low), (-3.0, None));
        assert_eq!(mean_with_interval(&[]), None);
    }

    #[test]
    fn medians_and_percentages() {
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(percent(344, 920), Some(37.4));
        assert_eq!(percent(1, 0), None);
    }
}
