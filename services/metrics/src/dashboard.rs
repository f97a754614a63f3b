//! `/dashboard`: one server-rendered HTML page with SVG charts drawn here. No scripts,
//! no external fonts or styles, so it works offline, under a strict Content Security
//! Policy, and prints. Every chart is an `<svg role="img">` with a title and a
//! description, followed by its figures as a table (the text alternative); every
//! headline figure carries `data-metric` so tests compare it with the JSON API.

use std::fmt::Write;

use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};

use crate::http::Snapshot;
use crate::referrals::{source_label, source_short, InstrumentChange};

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 260.0;
const MARGIN_LEFT: f64 = 48.0;
const MARGIN_BOTTOM: f64 = 28.0;
const MARGIN_TOP: f64 = 12.0;

fn number(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn optional(value: Option<f64>, suffix: &str) -> String {
    value
        .map(|value| format!("{}{suffix}", number(value)))
        .unwrap_or_else(|| "–".to_owned())
}

/// A headline figure: `metric` names it for machines, the label for people.
fn tile(out: &mut String, metric: &str, label: &str, value: &str) {
    let _ = write!(
        out,
        r#"<div class="tile"><span class="value" data-metric="{}">{}</span><span class="label">{}</span></div>"#,
        attr(metric),
        text(value),
        text(label)
    );
}

/// Opens a chart: a figure with an accessible SVG.
fn open_chart(out: &mut String, id: &str, title: &str, description: &str) {
    let _ = write!(
        out,
        r#"<figure class="chart" data-chart="{id}"><figcaption>{title}</figcaption><svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="{id}-title {id}-desc" preserveAspectRatio="xMidYMid meet"><title id="{id}-title">{title}</title><desc id="{id}-desc">{desc}</desc>"#,
        id = attr(id),
        title = text(title),
        desc = text(description),
    );
}

/// Closes a chart with its figures as a table.
fn close_chart(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    out.push_str("</svg><details><summary>The figures</summary><table><thead><tr>");
    for header in headers {
        let _ = write!(out, "<th scope=\"col\">{}</th>", text(header));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", text(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></details></figure>");
}

/// A step of 1, 2 or 5 times a power of ten giving at most four steps to `max`.
fn nice_step(max: f64) -> f64 {
    let rough = (max / 4.0).max(f64::MIN_POSITIVE);
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|factor| factor * power)
        .find(|step| *step >= rough)
        .unwrap_or(10.0 * power);
    // Counts are whole: never a step below one.
    step.max(1.0)
}

/// A y axis from 0 past `max` with gridlines at round values; returns the scale.
fn y_axis(out: &mut String, max: f64) -> impl Fn(f64) -> f64 {
    let step = nice_step(max.max(1.0));
    let steps = ((max.max(1.0) / step).ceil() as usize).max(1);
    let top = step * steps as f64;
    let plot = HEIGHT - MARGIN_BOTTOM - MARGIN_TOP;
    for index in 0..=steps {
        let value = step * index as f64;
        let y = HEIGHT - MARGIN_BOTTOM - plot * index as f64 / steps as f64;
        let _ = write!(
            out,
            r##"<line x1="{MARGIN_LEFT}" x2="{WIDTH}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{x:.1}" y="{ty:.1}" font-size="11" text-anchor="end" fill="#444">{label}</text>"##,
            x = MARGIN_LEFT - 4.0,
            ty = y + 4.0,
            label = number(value),
        );
    }
    move |value: f64| HEIGHT - MARGIN_BOTTOM - plot * value / top
}

/// Vertical bars, one per (label, value), with an optional second series beside each.
/// A suppressed value (`None`) draws no bar; its table says why.
fn bars(out: &mut String, labels: &[String], series: &[(&str, &[Option<f64>])]) {
    let max = series
        .iter()
        .flat_map(|(_, values)| values.iter().flatten().copied())
        .fold(0.0, f64::max);
    let y = y_axis(out, max);
    let slot = (WIDTH - MARGIN_LEFT) / labels.len().max(1) as f64;
    let bar = (slot * 0.7) / series.len().max(1) as f64;
    for (index, label) in labels.iter().enumerate() {
        let x0 = MARGIN_LEFT + slot * index as f64 + slot * 0.15;
        for (which, (colour, values)) in series.iter().enumerate() {
            let Some(value) = values.get(index).copied().flatten() else {
                continue;
            };
            let top = y(value);
            let _ = write!(
                out,
                r#"<rect x="{x:.1}" y="{top:.1}" width="{bar:.1}" height="{h:.1}" fill="{colour}"><title>{label}: {v}</title></rect>"#,
                x = x0 + bar * which as f64,
                h = (HEIGHT - MARGIN_BOTTOM - top).max(0.0),
                label = text(label),
                v = number(value),
            );
        }
        let _ = write!(
            out,
            r##"<text x="{x:.1}" y="{ty:.1}" font-size="11" text-anchor="middle" fill="#222">{label}</text>"##,
            x = x0 + slot * 0.35,
            ty = HEIGHT - MARGIN_BOTTOM + 16.0,
            label = text(label),
        );
    }
}

fn call_log_chart(out: &mut String, snapshot: &Snapshot) {
    let log = &snapshot.call_log;
    let description = format!(
        "Open ASC cases each day from {} ({} open) to {} ({} open): {} fewer ({}). The dashed line is the baseline.",
        log.baseline,
        log.open_at_baseline,
        log.end,
        log.open_at_end,
        log.reduction,
        optional(log.reduction_percent, "%"),
    );
    open_chart(
        out,
        "call-log",
        "Open ASC call-log cases against the baseline",
        &description,
    );
    let max = log
        .daily
        .iter()
        .filter_map(|day| day.open.as_f64())
        .fold(0.0, f64::max);
    let y = y_axis(out, max.max(log.open_at_baseline.as_f64().unwrap_or(0.0)));
    let span = (log.daily.len().max(2) - 1) as f64;
    let x = |index: usize| MARGIN_LEFT + (WIDTH - MARGIN_LEFT - 8.0) * index as f64 / span;
    let mut points = String::new();
    // Suppressed days are left out of the line.
    for (index, day) in log.daily.iter().enumerate() {
        if let Some(open) = day.open.as_f64() {
            let _ = write!(points, "{:.1},{:.1} ", x(index), y(open));
        }
    }
    if let Some(baseline) = log.open_at_baseline.as_f64() {
        let baseline_y = y(baseline);
        let _ = write!(
            out,
            r##"<line x1="{MARGIN_LEFT}" x2="{WIDTH}" y1="{baseline_y:.1}" y2="{baseline_y:.1}" stroke="#b00" stroke-dasharray="6 4"/>"##,
        );
    }
    let _ = write!(
        out,
        r##"<polyline points="{points}" fill="none" stroke="#1d5fa8" stroke-width="2"/>"##,
    );
    for (index, day) in [
        (0usize, log.daily.first()),
        (log.daily.len().saturating_sub(1), log.daily.last()),
    ] {
        if let Some(day) = day {
            let _ = write!(
                out,
                r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="{}" fill="#222">{}</text>"##,
                x(index),
                HEIGHT - MARGIN_BOTTOM + 16.0,
                if index == 0 { "start" } else { "end" },
                day.date,
            );
        }
    }
    // The table gives the first of each month and the last day.
    let mut rows: Vec<Vec<String>> = log
        .daily
        .iter()
        .filter(|day| day.date.format("%d").to_string() == "01")
        .map(|day| vec![day.date.to_string(), day.open.to_string()])
        .collect();
    if let Some(last) = log.daily.last() {
        if rows.last().map(|row| row[0].as_str()) != Some(last.date.to_string().as_str()) {
            rows.push(vec![last.date.to_string(), last.open.to_string()]);
        }
    }
    close_chart(out, &["Day", "Open cases"], &rows);
}

fn sources_chart(out: &mut String, snapshot: &Snapshot) {
    let totals = &snapshot.referrals.by_source_total;
    let description = totals
        .iter()
        .map(|(kind, count)| format!("{}: {count}", source_label(kind)))
        .collect::<Vec<_>>()
        .join("; ");
    open_chart(
        out,
        "sources",
        "Referrals by source",
        &format!("Referrals received in the period by kind of source. {description}."),
    );
    let labels: Vec<String> = totals
        .keys()
        .map(|kind| source_short(kind).to_owned())
        .collect();
    let values: Vec<Option<f64>> = totals.values().map(|count| count.as_f64()).collect();
    bars(out, &labels, &[("#1d5fa8", &values)]);
    let rows: Vec<Vec<String>> = snapshot
        .referrals
        .by_source
        .iter()
        .map(|row| {
            vec![
                row.month.clone(),
                source_label(&row.source).to_owned(),
                row.referrals.to_string(),
            ]
        })
        .collect();
    close_chart(out, &["Month", "Source", "Referrals"], &rows);
}

fn outcome_chart(out: &mut String, instrument: &InstrumentChange) {
    let id = format!("outcome-{}", instrument.instrument);
    let change = instrument
        .change
        .as_ref()
        .map(|change| {
            let interval = match (change.ci95_low, change.ci95_high) {
                (Some(low), Some(high)) => format!(" (95% CI {} to {})", number(low), number(high)),
                _ => String::new(),
            };
            format!("mean change {}{interval}", number(change.mean))
        })
        .unwrap_or_default();
    let description = format!(
        "How many people had each {} score before (baseline, grey) and after (follow-up, blue): {} pairs, {} improved, {change}; {} is better.",
        instrument.name,
        instrument.pairs,
        instrument.improved,
        if instrument.higher_is_better { "higher" } else { "lower" },
    );
    open_chart(
        out,
        &id,
        &format!("{}: before and after", instrument.name),
        &description,
    );
    let labels: Vec<String> = instrument
        .distribution
        .iter()
        .map(|band| {
            if band.low == band.high {
                band.low.to_string()
            } else {
                format!("{}–{}", band.low, band.high)
            }
        })
        .collect();
    let before: Vec<Option<f64>> = instrument
        .distribution
        .iter()
        .map(|band| band.baseline.as_f64())
        .collect();
    let after: Vec<Option<f64>> = instrument
        .distribution
        .iter()
        .map(|band| band.follow_up.as_f64())
        .collect();
    bars(out, &labels, &[("#9a9a9a", &before), ("#1d5fa8", &after)]);
    let _ = write!(
        out,
        r##"<rect x="{x:.1}" y="4" width="10" height="10" fill="#9a9a9a"/><text x="{tx:.1}" y="13" font-size="11" fill="#222">baseline</text><rect x="{x2:.1}" y="4" width="10" height="10" fill="#1d5fa8"/><text x="{tx2:.1}" y="13" font-size="11" fill="#222">follow-up</text>"##,
        x = WIDTH - 150.0,
        tx = WIDTH - 136.0,
        x2 = WIDTH - 78.0,
        tx2 = WIDTH - 64.0,
    );
    let rows: Vec<Vec<String>> = instrument
        .distribution
        .iter()
        .zip(&labels)
        .map(|(band, label)| {
            vec![
                label.clone(),
                band.baseline.to_string(),
                band.follow_up.to_string(),
            ]
        })
        .collect();
    close_chart(
        out,
        &["Score", "People at baseline", "People at follow-up"],
        &rows,
    );
}

fn providers_chart(out: &mut String, snapshot: &Snapshot) {
    let providers = &snapshot.referrals.providers;
    let description = providers
        .iter()
        .map(|provider| format!("{}: {}", provider.provider_id, provider.summary))
        .collect::<Vec<_>>()
        .join("; ");
    open_chart(
        out,
        "providers",
        "Provider response: median days to accept",
        &format!(
            "Median days from a referral's offer to its acceptance, per provider. {description}."
        ),
    );
    let labels: Vec<String> = providers.iter().map(|p| p.provider_id.clone()).collect();
    let values: Vec<Option<f64>> = providers.iter().map(|p| p.median_days_to_accept).collect();
    bars(out, &labels, &[("#1d5fa8", &values)]);
    let rows: Vec<Vec<String>> = providers
        .iter()
        .map(|p| {
            vec![
                p.provider_id.clone(),
                p.offered.to_string(),
                p.accepted.to_string(),
                p.rejected.to_string(),
                p.unanswered.to_string(),
                optional(p.acceptance_percent, "%"),
                optional(p.median_days_to_accept, ""),
            ]
        })
        .collect();
    close_chart(
        out,
        &[
            "Provider",
            "Offered",
            "Accepted",
            "Rejected",
            "No answer",
            "Accepted (%)",
            "Median days to accept",
        ],
        &rows,
    );
}

pub(crate) const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;margin:0;color:#0b0c0c;background:#f3f2f1}
header{background:#1d5fa8;color:#fff;padding:1rem 1.25rem}
header h1{margin:0;font-size:1.5rem}
main{padding:1rem 1.25rem;max-width:1200px;margin:auto}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(10rem,1fr));gap:.75rem;margin-bottom:1.25rem}
.tile{background:#fff;padding:.75rem;border-left:4px solid #1d5fa8}
.tile .value{display:block;font-size:1.6rem;font-weight:700}
.tile .label{font-size:.85rem}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,34rem),1fr));gap:1rem}
figure.chart{background:#fff;margin:0;padding:.75rem}
figcaption{font-weight:700;margin-bottom:.5rem}
svg{width:100%;height:auto}
table{border-collapse:collapse;font-size:.85rem;margin-top:.5rem}
main.report{background:#fff;line-height:1.5}
th,td{border:1px solid #ccc;padding:.2rem .4rem;text-align:left}
";

/// The whole page.
pub fn render(snapshot: &Snapshot) -> String {
    let log = &snapshot.call_log;
    let referrals = &snapshot.referrals;
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        r#"<!doctype html><html lang="en-GB"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>linkwork: social prescribing outcomes</title><style>{STYLE}</style></head><body><header><h1>Social prescribing: what has changed</h1><p>{} to {} · generated {}</p></header><main><section aria-label="Headline figures" class="tiles">"#,
        log.baseline,
        log.end,
        text(&snapshot.generated_at),
    );
    tile(
        &mut out,
        "open-at-baseline",
        "Open ASC cases at the baseline",
        &log.open_at_baseline.to_string(),
    );
    tile(
        &mut out,
        "open-at-end",
        "Open ASC cases now",
        &log.open_at_end.to_string(),
    );
    tile(
        &mut out,
        "reduction",
        "Fewer open cases",
        &log.reduction.to_string(),
    );
    tile(
        &mut out,
        "reduction-percent",
        "Reduction since the baseline",
        &optional(log.reduction_percent, "%"),
    );
    tile(
        &mut out,
        "diverted",
        "Cases diverted to community providers",
        &log.diverted.to_string(),
    );
    tile(
        &mut out,
        "returned-within-90-days",
        "Diverted people back with ASC within 90 days",
        &log.returns.returned_within_90_days.to_string(),
    );
    tile(
        &mut out,
        "referrals",
        "Referrals received",
        &referrals.referrals.to_string(),
    );
    tile(
        &mut out,
        "completions",
        "Referrals completed",
        &referrals.completions.to_string(),
    );
    tile(
        &mut out,
        "median-days-to-first-contact",
        "Median days to first contact",
        &optional(referrals.first_contact.median_days, ""),
    );
    tile(
        &mut out,
        "loneliness-improved-percent",
        "Completers less lonely",
        &optional(referrals.outcomes.loneliness.improved_percent, "%"),
    );
    tile(
        &mut out,
        "wellbeing-improved-percent",
        "Completers with better wellbeing",
        &optional(referrals.outcomes.wellbeing.improved_percent, "%"),
    );
    tile(
        &mut out,
        "activities-attended",
        "Activities attended",
        &referrals.activities.attended.to_string(),
    );
    tile(
        &mut out,
        "distinct-groups",
        "Different groups joined",
        &referrals.activities.distinct_groups.to_string(),
    );
    tile(
        &mut out,
        "consent-percent",
        "Consented to share outcomes",
        &optional(referrals.consent.consent_percent, "%"),
    );
    out.push_str("</section>");
    out.push_str(&charts(snapshot));
    out.push_str("</main></body></html>");
    out
}

/// Every chart, in one section.
pub(crate) fn charts(snapshot: &Snapshot) -> String {
    let mut out = String::with_capacity(32 * 1024);
    out.push_str(r#"<section class="charts" aria-label="Charts">"#);
    call_log_chart(&mut out, snapshot);
    sources_chart(&mut out, snapshot);
    for instrument in &snapshot.referrals.outcomes.instruments {
        outcome_chart(&mut out, instrument);
    }
    providers_chart(&mut out, snapshot);
    out.push_str("</section>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_steps_are_round_and_whole() {
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(3.0), 1.0);
        assert_eq!(nice_step(7.0), 2.0);
        assert_eq!(nice_step(920.0), 500.0);
        assert_eq!(nice_step(1012.0), 500.0);
        assert_eq!(nice_step(150.0), 50.0);
    }
}
