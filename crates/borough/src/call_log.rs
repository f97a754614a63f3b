//! ASC's call-log export for the story, as the CSV ASC would send.

use chrono::Duration;
use rand::Rng;

use crate::*;

impl Borough {
    /// ASC's call-log export for the story, as the CSV ASC would send
    /// (`case_id,person_id,opened_at,closed_at,closure_reason`): the synthetic call log
    /// of the seed evaluation (920 open cases falling as connectors take diversions),
    /// plus a case for each ASC referral, opened some days before and closed as
    /// diverted to community on the day of the referral; about one diverted person in
    /// seven comes back with a new case, within 90 days or later. A later chapter's
    /// export holds only its own diversions: the seed evaluation's log is on the log
    /// already.
    pub fn call_log_csv(&self) -> String {
        let mut rng = self.chapter.rng(self.seed ^ 0x0ca1_110c);
        let mut csv = String::from("case_id,person_id,opened_at,closed_at,closure_reason\n");
        if self.chapter.number == 1 {
            self.push_seed_evaluation_log(&mut csv);
        }
        for referral in &self.referrals {
            let (Some(case), Some(person)) = (
                &referral.asc_case,
                self.people[referral.person].asc_person_id.as_ref(),
            ) else {
                continue;
            };
            let diverted = self.authored(referral);
            let opened = diverted - Duration::days(rng.random_range(3..40));
            csv.push_str(&format!(
                "{case},{person},{},{},diverted-to-community\n",
                opened.to_rfc3339(),
                diverted.to_rfc3339()
            ));
            if rng.random::<f64>() < 0.15 {
                let back = diverted + Duration::days(rng.random_range(20..150));
                let closed = back + Duration::days(rng.random_range(5..40));
                csv.push_str(&format!(
                    "{case}-R,{person},{},{},assessed\n",
                    back.to_rfc3339(),
                    closed.to_rfc3339()
                ));
            }
        }
        csv
    }

    /// The synthetic call log of the seed evaluation, as CSV rows.
    fn push_seed_evaluation_log(&self, csv: &mut String) {
        let log = crate::synthetic::call_log(self.seed);
        let mut closures = std::collections::HashMap::new();
        for event in &log.events {
            if let linkwork_domain::CallLogEvent::CaseClosed(closed) = event {
                closures.insert(closed.case_id.clone(), (closed.closed_at, closed.reason));
            }
        }
        for event in &log.events {
            if let linkwork_domain::CallLogEvent::CaseOpened(opened) = event {
                let (closed_at, reason) = closures
                    .get(&opened.case_id)
                    .map(|(at, reason)| (at.to_rfc3339(), reason.code().to_owned()))
                    .unwrap_or_default();
                csv.push_str(&format!(
                    "{},,{},{closed_at},{reason}\n",
                    opened.case_id,
                    opened.opened_at.to_rfc3339()
                ));
            }
        }
    }
}
