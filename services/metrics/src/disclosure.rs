//! Statistical disclosure control: no published figure may single anyone out.
//!
//! Every count the metrics publish goes through a [`Sheet`] before it leaves:
//!
//! - **primary suppression**: a count of 1 to `threshold − 1` (default 5, so 1–4) is
//!   published as suppressed (`null` in JSON, "suppressed" in text, a `masked`
//!   data-absent reason in FHIR). Zero is shown: knowing that nobody is in a cell
//!   tells nothing about anyone.
//! - **secondary suppression**: counts that add up (a total and its parts, or a count
//!   and its unpublished remainder) form a *relation*. A relation with exactly one
//!   suppressed member gives it away by subtraction, so another member is suppressed
//!   too: an unpublished remainder first (which costs the reader nothing), then the
//!   smallest non-zero count. This repeats until no relation has exactly one, the
//!   usual rule of official statistics for linked tables.
//! - figures derived from a suppressed count (a percentage, a mean, a median) are not
//!   published either; the builders below ask [`Sheet::shown`] before working them
//!   out.
//!
//! Written here rather than taken from a crate: no Rust crate does cell suppression
//! (the field's tools, sdcTable and tau-Argus, are R and Java programs for whole
//! tables), and the rule needed is a few dozen lines.

use serde::Serialize;

/// Small-number suppression as configured (`LINKWORK_SMALL_NUMBER_THRESHOLD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Disclosure {
    /// Counts from 1 up to this, exclusive, are suppressed; 1 suppresses nothing.
    pub threshold: i64,
}

impl Disclosure {
    /// The default: counts of 1 to 4 are suppressed.
    pub const DEFAULT_THRESHOLD: i64 = 5;

    /// Nothing suppressed: for worked examples and tests of the arithmetic, never for
    /// a published figure.
    pub const fn none() -> Self {
        Self { threshold: 1 }
    }
}

impl Default for Disclosure {
    fn default() -> Self {
        Self {
            threshold: Self::DEFAULT_THRESHOLD,
        }
    }
}

/// A published count: the number, or suppressed (`null` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Count(Option<i64>);

impl Count {
    pub const SUPPRESSED: Count = Count(None);

    /// A count shown as it is (the sheet decides; tests build expectations with it).
    pub const fn shown(value: i64) -> Self {
        Self(Some(value))
    }

    /// The number, when it is shown.
    pub const fn value(self) -> Option<i64> {
        self.0
    }

    pub const fn is_suppressed(self) -> bool {
        self.0.is_none()
    }

    /// The number as a float for charts and gauges, when shown.
    pub fn as_f64(self) -> Option<f64> {
        self.0.map(|value| value as f64)
    }
}

impl std::fmt::Display for Count {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(value) => write!(formatter, "{value}"),
            None => formatter.write_str("suppressed"),
        }
    }
}

/// What a report says about its suppression, for whoever reads its JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DisclosureNote {
    pub threshold: i64,
    /// Published counts shown as suppressed (`null`).
    pub suppressed_counts: usize,
    pub rule: &'static str,
}

const RULE: &str = "counts from 1 to threshold - 1 are suppressed (null), and so is a second count wherever one suppressed count could be worked out from a total; figures derived from a suppressed count are left out";

/// One cell of a sheet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell(usize);

#[derive(Debug, Clone, Copy)]
struct Entry {
    value: i64,
    /// Published (a remainder that only completes a relation is not).
    published: bool,
    /// A count of people or things about them; a difference (the fall in open cases)
    /// is not small-number checked itself.
    counts: bool,
    suppressed: bool,
}

/// The counts of one report and how they add up; [`Sheet::solve`] decides which are
/// shown.
#[derive(Debug)]
pub struct Sheet {
    disclosure: Disclosure,
    entries: Vec<Entry>,
    relations: Vec<Vec<Cell>>,
    solved: bool,
}

impl Sheet {
    pub fn new(disclosure: Disclosure) -> Self {
        Self {
            disclosure,
            entries: Vec::new(),
            relations: Vec::new(),
            solved: false,
        }
    }

    fn push(&mut self, value: i64, published: bool, counts: bool) -> Cell {
        self.entries.push(Entry {
            value,
            published,
            counts,
            suppressed: false,
        });
        Cell(self.entries.len() - 1)
    }

    /// A published count.
    pub fn count(&mut self, value: i64) -> Cell {
        self.push(value, true, true)
    }

    /// A published figure that is not itself a count (a difference of two counts): it
    /// is never suppressed for being small, only to protect a count it relates to.
    pub fn figure(&mut self, value: i64) -> Cell {
        self.push(value, true, false)
    }

    /// A count nobody publishes that anyone can work out (a total minus a part): small,
    /// it gives the part away.
    pub fn remainder(&mut self, value: i64) -> Cell {
        self.push(value, false, true)
    }

    /// Cells whose values are tied by one linear equation (a total and its parts):
    /// knowing all but one gives the last.
    pub fn relate(&mut self, cells: &[Cell]) {
        if cells.len() >= 2 {
            self.relations.push(cells.to_vec());
        }
    }

    /// `total` is the sum of `parts`, with the remainder (`total` minus the parts)
    /// unpublished: `improved` of `measured` relates `measured`, `improved` and the
    /// people who did not improve.
    pub fn part_of(&mut self, total: Cell, parts: &[Cell]) {
        let rest = self.entries[total.0].value
            - parts
                .iter()
                .map(|part| self.entries[part.0].value)
                .sum::<i64>();
        let rest = self.remainder(rest);
        let mut cells = vec![total, rest];
        cells.extend_from_slice(parts);
        self.relate(&cells);
    }

    /// Primary, then secondary suppression until every relation is safe.
    pub fn solve(&mut self) {
        let threshold = self.disclosure.threshold;
        for entry in &mut self.entries {
            if entry.counts && entry.value > 0 && entry.value < threshold {
                entry.suppressed = true;
            }
        }
        loop {
            let mut changed = false;
            for relation in &self.relations {
                let hidden = relation
                    .iter()
                    .filter(|cell| self.entries[cell.0].suppressed)
                    .count();
                if hidden != 1 {
                    continue;
                }
                let choice = relation
                    .iter()
                    .filter(|cell| !self.entries[cell.0].suppressed)
                    .min_by_key(|cell| {
                        let entry = self.entries[cell.0];
                        (entry.published, entry.value == 0, entry.value.abs(), cell.0)
                    })
                    .copied();
                if let Some(cell) = choice {
                    self.entries[cell.0].suppressed = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        self.solved = true;
    }

    /// The cell as published. Solves the sheet first if nobody has.
    pub fn get(&mut self, cell: Cell) -> Count {
        if !self.solved {
            self.solve();
        }
        let entry = self.entries[cell.0];
        if entry.suppressed {
            Count::SUPPRESSED
        } else {
            Count::shown(entry.value)
        }
    }

    /// Whether every one of `cells` is shown: a figure derived from them may be.
    pub fn shown(&mut self, cells: &[Cell]) -> bool {
        cells.iter().all(|cell| !self.get(*cell).is_suppressed())
    }

    /// `part` of `whole` as a percentage, when both are shown.
    pub fn percent(&mut self, part: Cell, whole: Cell) -> Option<f64> {
        match (self.get(part).value(), self.get(whole).value()) {
            (Some(part), Some(whole)) => crate::stats::percent(part, whole),
            _ => None,
        }
    }

    /// The note a report carries.
    pub fn note(&mut self) -> DisclosureNote {
        if !self.solved {
            self.solve();
        }
        DisclosureNote {
            threshold: self.disclosure.threshold,
            suppressed_counts: self
                .entries
                .iter()
                .filter(|entry| entry.published && entry.suppressed)
                .count(),
            rule: RULE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_of_one_to_four_are_suppressed_and_zero_and_five_are_shown() {
        let mut sheet = Sheet::new(Disclosure::default());
        let cells: Vec<Cell> = (0..=6).map(|value| sheet.count(value)).collect();
        let shown: Vec<Count> = cells.iter().map(|cell| sheet.get(*cell)).collect();
        assert_eq!(
            shown,
            [
                Count::shown(0),
                Count::SUPPRESSED,
                Count::SUPPRESSED,
                Count::SUPPRESSED,
                Count::SUPPRESSED,
                Count::shown(5),
                Count::shown(6)
            ]
        );
        assert_eq!(sheet.note().suppressed_counts, 4);
        assert_eq!(serde_json::to_string(&Count::SUPPRESSED).unwrap(), "null");
        assert_eq!(serde_json::to_string(&Count::shown(7)).unwrap(), "7");
    }

    #[test]
    fn a_threshold_of_one_suppresses_nothing() {
        let mut sheet = Sheet::new(Disclosure::none());
        let one = sheet.count(1);
        assert_eq!(sheet.get(one), Count::shown(1));
    }

    #[test]
    fn one_small_part_of_a_shown_total_takes_the_smallest_other_part_with_it() {
        // 20 referrals: 3 from GPs, 9 from hospitals, 8 from ASC. Publishing 20, 9 and
        // 8 would give the 3 away.
        let mut sheet = Sheet::new(Disclosure::default());
        let total = sheet.count(20);
        let parts = [sheet.count(3), sheet.count(9), sheet.count(8)];
        sheet.relate(&[total, parts[0], parts[1], parts[2]]);
        assert_eq!(sheet.get(total), Count::shown(20));
        assert_eq!(sheet.get(parts[0]), Count::SUPPRESSED);
        assert_eq!(sheet.get(parts[1]), Count::shown(9));
        assert_eq!(sheet.get(parts[2]), Count::SUPPRESSED, "the smaller other");
    }

    #[test]
    fn a_small_unpublished_remainder_hides_the_part_and_not_the_total() {
        // 12 measured, 10 improved: the 2 who did not improve are a small cell.
        let mut sheet = Sheet::new(Disclosure::default());
        let measured = sheet.count(12);
        let improved = sheet.count(10);
        sheet.part_of(measured, &[improved]);
        assert_eq!(sheet.get(measured), Count::shown(12));
        assert_eq!(sheet.get(improved), Count::SUPPRESSED);
        // 3 improved of 12: the unpublished 9 is suppressed, costing nothing shown.
        let mut sheet = Sheet::new(Disclosure::default());
        let measured = sheet.count(12);
        let improved = sheet.count(3);
        sheet.part_of(measured, &[improved]);
        assert_eq!(sheet.get(measured), Count::shown(12));
        assert_eq!(sheet.get(improved), Count::SUPPRESSED);
        assert_eq!(sheet.note().suppressed_counts, 1);
    }

    #[test]
    fn suppression_spreads_through_linked_relations() {
        // A total of kinds whose one kind is itself a total of months: the month
        // suppressed inside the kind makes the kind lose a second month; no relation
        // is left with one hidden cell.
        let mut sheet = Sheet::new(Disclosure::default());
        let all = sheet.count(30);
        let gp = sheet.count(12);
        let asc = sheet.count(18);
        sheet.relate(&[all, gp, asc]);
        let (march, april) = (sheet.count(2), sheet.count(10));
        sheet.relate(&[gp, march, april]);
        assert_eq!(sheet.get(march), Count::SUPPRESSED);
        assert_eq!(sheet.get(april), Count::SUPPRESSED);
        assert_eq!(sheet.get(gp), Count::shown(12));
        assert_eq!(sheet.get(all), Count::shown(30));
    }

    proptest! {
        /// Whatever the counts, no relation is left with exactly one suppressed
        /// member, every small count is suppressed, and no shown count changed.
        #[test]
        fn no_relation_ever_has_exactly_one_suppressed_member(
            parts in proptest::collection::vec(proptest::collection::vec(0i64..12, 1..6), 1..5),
            threshold in 1i64..8,
        ) {
            let mut sheet = Sheet::new(Disclosure { threshold });
            let mut relations = Vec::new();
            let mut totals = Vec::new();
            for row in &parts {
                let cells: Vec<Cell> = row.iter().map(|value| sheet.count(*value)).collect();
                let total = sheet.count(row.iter().sum());
                let mut relation = vec![total];
                relation.extend(&cells);
                sheet.relate(&relation);
                relations.push(relation);
                totals.push(total);
            }
            let grand = sheet.count(parts.iter().flatten().sum());
            let mut relation = vec![grand];
            relation.extend(&totals);
            sheet.relate(&relation);
            relations.push(relation);
            sheet.solve();
            for relation in &relations {
                let hidden = relation.iter().filter(|cell| sheet.get(**cell).is_suppressed()).count();
                prop_assert_ne!(hidden, 1);
            }
            for index in 0..sheet.entries.len() {
                let entry = sheet.entries[index];
                if entry.value > 0 && entry.value < threshold {
                    prop_assert!(sheet.get(Cell(index)).is_suppressed());
                }
                if let Some(value) = sheet.get(Cell(index)).value() {
                    prop_assert_eq!(value, entry.value);
                }
            }
        }
    }
}
