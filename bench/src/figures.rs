//! Figures: each measured several times, reported as the median with min and max, and
//! set beside the raw figure of the part it stands on.

use serde::Serialize;

/// One measured quantity over several runs.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// `ingest`, `routing`, `projection`, `replay`, `latency`, `memory`.
    pub stage: String,
    /// What was measured, e.g. `HTTP referrals/s`.
    pub name: String,
    pub unit: String,
    /// Every run's value, in run order.
    pub runs: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// The name of the raw figure it is set beside, when there is one.
    pub beside: Option<String>,
    /// Its median over the raw figure's median.
    pub ratio: Option<f64>,
    /// The target the issue sets, in words, and whether the median meets it.
    pub target: Option<Target>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub text: String,
    pub met: bool,
}

/// Whether larger or smaller is better, for a target.
#[derive(Debug, Clone, Copy)]
pub enum Better {
    Higher,
    Lower,
}

impl Figure {
    pub fn new(stage: &str, name: &str, unit: &str, runs: Vec<f64>) -> Self {
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        let median = median(&sorted);
        Self {
            stage: stage.to_owned(),
            name: name.to_owned(),
            unit: unit.to_owned(),
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            median,
            runs,
            beside: None,
            ratio: None,
            target: None,
        }
    }

    /// Sets this figure beside `raw`: the ratio of their medians.
    pub fn beside(mut self, raw: &Figure) -> Self {
        self.beside = Some(raw.name.clone());
        self.ratio = (raw.median > 0.0).then(|| self.median / raw.median);
        self
    }

    /// The target `limit` (with `text` saying it), met when the median is on the right
    /// side of it.
    pub fn target(mut self, text: &str, better: Better, limit: f64) -> Self {
        let met = match better {
            Better::Higher => self.median >= limit,
            Better::Lower => self.median <= limit,
        };
        self.target = Some(Target {
            text: text.to_owned(),
            met,
        });
        self
    }

    /// Adds to the target that the ratio to the raw figure be at least `ratio` (set
    /// [`Figure::beside`] and [`Figure::target`] first): the issue asks for both a rate
    /// and a share of what the parts underneath manage.
    pub fn and_at_least_of_raw(mut self, ratio: f64, words: &str) -> Self {
        let enough = self.ratio.is_some_and(|measured| measured >= ratio);
        if let Some(target) = &mut self.target {
            target.text = format!("{} and {words} of raw", target.text);
            target.met &= enough;
        }
        self
    }
}

/// The middle of sorted values (the mean of the middle two for an even count).
pub fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => sorted[len / 2],
        len => (sorted[len / 2 - 1] + sorted[len / 2]) / 2.0,
    }
}

/// The value at `quantile` (0 to 1) of sorted values, nearest rank.
pub fn percentile(sorted: &[f64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn number(value: f64) -> String {
    if !value.is_finite() {
        "-".to_owned()
    } else if value >= 100.0 {
        let whole = value.round() as i64;
        let digits = whole.abs().to_string();
        let mut grouped = String::new();
        for (index, digit) in digits.chars().enumerate() {
            if index > 0 && (digits.len() - index) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        if whole < 0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The figures as a table for a terminal.
/// Rows of cells as aligned text: the first row a heading followed by a rule, the
/// columns in `right` right-aligned (numbers), the others left-aligned.
pub fn aligned<const N: usize>(
    rows: &[[String; N]],
    right: std::ops::RangeInclusive<usize>,
) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for (index, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(column, (cell, width))| {
                if right.contains(&column) {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
        if index == 0 {
            let rule: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
            text.push_str(&rule.join("  "));
            text.push('\n');
        }
    }
    text
}

pub fn table(figures: &[Figure]) -> String {
    let mut rows = vec![[
        "stage".to_owned(),
        "figure".to_owned(),
        "median".to_owned(),
        "min".to_owned(),
        "max".to_owned(),
        "unit".to_owned(),
        "ratio to raw".to_owned(),
        "target".to_owned(),
    ]];
    for figure in figures {
        rows.push([
            figure.stage.clone(),
            figure.name.clone(),
            number(figure.median),
            number(figure.min),
            number(figure.max),
            figure.unit.clone(),
            match (&figure.ratio, &figure.beside) {
                (Some(ratio), Some(raw)) => format!("{ratio:.2} of {raw}"),
                _ => String::new(),
            },
            match &figure.target {
                Some(target) if target.met => format!("met: {}", target.text),
                Some(target) => format!("NOT MET: {}", target.text),
                None => String::new(),
            },
        ]);
    }
    aligned(&rows, 2..=4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_odd_and_an_even_count() {
        assert_eq!(median(&[1.0, 5.0, 9.0]), 5.0);
        assert_eq!(median(&[1.0, 3.0, 5.0, 9.0]), 4.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn a_figure_beside_its_raw_figure_has_the_ratio_of_the_medians_and_its_target() {
        let raw = Figure::new(
            "ingest",
            "raw produce",
            "events/s",
            vec![100.0, 300.0, 200.0],
        );
        let figure = Figure::new("ingest", "HTTP", "referrals/s", vec![50.0, 40.0, 60.0])
            .beside(&raw)
            .target("at least 10,000/s", Better::Higher, 10_000.0);
        assert_eq!((figure.min, figure.median, figure.max), (40.0, 50.0, 60.0));
        assert_eq!(figure.ratio, Some(0.25));
        assert!(!figure.target.as_ref().unwrap().met);
        let table = table(&[raw, figure]);
        assert!(table.contains("0.25 of raw produce"), "{table}");
        assert!(table.contains("NOT MET: at least 10,000/s"), "{table}");
    }

    #[test]
    fn a_rate_target_with_a_share_of_raw_is_met_only_when_both_are() {
        let raw = Figure::new("routing", "raw", "events/s", vec![40_000.0]);
        let fast_enough = |runs: Vec<f64>| {
            Figure::new("routing", "decisions", "events/s", runs)
                .beside(&raw)
                .target("at least 20,000/s", Better::Higher, 20_000.0)
                .and_at_least_of_raw(0.5, "half")
        };
        let both = fast_enough(vec![21_000.0]);
        assert!(both.target.as_ref().unwrap().met);
        assert_eq!(
            both.target.as_ref().unwrap().text,
            "at least 20,000/s and half of raw"
        );
        let rate_only = Figure::new("routing", "decisions", "events/s", vec![20_500.0])
            .beside(&Figure::new("routing", "raw", "events/s", vec![50_000.0]))
            .target("at least 20,000/s", Better::Higher, 20_000.0)
            .and_at_least_of_raw(0.5, "half");
        assert!(!rate_only.target.as_ref().unwrap().met, "0.41 of raw");
        assert!(!fast_enough(vec![19_000.0]).target.as_ref().unwrap().met);
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(number(1_234_567.4), "1,234,567");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(0.5), "0.50");
    }
}
