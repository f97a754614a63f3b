//! What a provider does for a referral it holds: Task updates, contacts, activities,
//! outcome measures and consent, as the FHIR resources a provider's system sends.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};

use crate::*;

/// One thing a provider does for a referral it holds, `after_days` after it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub after_days: u32,
    /// A FHIR resource as a provider sends it: a Task (`PUT /fhir/Task/{id}` or on
    /// `provider.responses`), or an Observation, Communication, Procedure or Consent
    /// (`POST`, or on `provider.responses`).
    pub resource: Value,
}

impl Support {
    /// The provider's steps for a referral it accepts, through to completion or the
    /// person stopping, dated from `arrived`.
    pub fn steps(
        &self,
        referral_id: &str,
        task_id: &str,
        patient_id: &str,
        arrived: DateTime<Utc>,
        canonical_base: &str,
    ) -> Vec<Step> {
        let at = |days: u32| (arrived + Duration::days(i64::from(days))).to_rfc3339();
        let based_on = json!([{ "reference": format!("ServiceRequest/{referral_id}") }]);
        let task = |status: &str, reason: Option<&str>| {
            let mut task = json!({
                "resourceType": "Task",
                "id": task_id,
                "status": status,
                "intent": "order",
                "focus": { "reference": format!("ServiceRequest/{referral_id}") },
            });
            if let Some(reason) = reason {
                task["statusReason"] = json!({ "text": reason });
            }
            task
        };
        let score = |code: &str, snomed: Option<&str>, value: u8, timepoint: &str, days: u32| {
            let mut coding = vec![
                json!({ "system": format!("{canonical_base}/CodeSystem/outcome-instrument"), "code": code }),
            ];
            if let Some(snomed) = snomed {
                coding.push(json!({ "system": "http://snomed.info/sct", "code": snomed }));
            }
            json!({
                "resourceType": "Observation",
                "status": "final",
                "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey" }] }],
                "code": { "coding": coding },
                "basedOn": based_on,
                "effectiveDateTime": at(days),
                "valueInteger": value,
                "extension": [{ "url": format!("{canonical_base}/StructureDefinition/outcome-timepoint"), "valueCode": timepoint }],
            })
        };
        let first = self.contact_after_days;
        let mut steps = vec![Step {
            after_days: 1,
            resource: task("accepted", None),
        }];
        if self.consent {
            steps.push(Step {
                after_days: first,
                resource: json!({
                    "resourceType": "Consent",
                    "status": "active",
                    "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research" }] },
                    "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }] }],
                    "provision": { "data": [{ "meaning": "related", "reference": { "reference": format!("ServiceRequest/{referral_id}") } }] },
                }),
            });
        }
        steps.push(Step {
            after_days: first,
            resource: json!({
                "resourceType": "Communication",
                "status": "completed",
                "basedOn": based_on,
                "sent": at(first),
                "medium": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode", "code": "PHONE" }] }],
            }),
        });
        steps.push(Step {
            after_days: first,
            resource: score("ucla-3", None, self.ucla.0, "baseline", first),
        });
        steps.push(Step {
            after_days: first,
            resource: score(
                "swemwbs",
                Some("718466001"),
                self.swemwbs.0,
                "baseline",
                first,
            ),
        });
        steps.push(Step {
            after_days: first + 1,
            resource: task("in-progress", None),
        });
        let stops = first + 30;
        for (index, (activity, kind)) in self.activities.iter().enumerate() {
            let days = first + 7 + 14 * index as u32;
            if !self.completes && days >= stops {
                break;
            }
            steps.push(Step {
                after_days: days,
                resource: json!({
                    "resourceType": "Procedure",
                    "status": "completed",
                    "basedOn": based_on,
                    "subject": { "reference": format!("Patient/{patient_id}") },
                    "category": { "coding": [{ "system": format!("{canonical_base}/CodeSystem/activity-kind"), "code": kind }] },
                    "code": { "text": activity.replace('-', " ") },
                    "performedDateTime": at(days),
                }),
            });
        }
        if self.completes {
            let follow_up = first + 84;
            steps.push(Step {
                after_days: follow_up,
                resource: score("ucla-3", None, self.ucla.1, "follow-up", follow_up),
            });
            steps.push(Step {
                after_days: follow_up,
                resource: score(
                    "swemwbs",
                    Some("718466001"),
                    self.swemwbs.1,
                    "follow-up",
                    follow_up,
                ),
            });
            steps.push(Step {
                after_days: follow_up + 1,
                resource: task("completed", None),
            });
        } else {
            steps.push(Step {
                after_days: stops,
                resource: task(
                    "failed",
                    Some("stopped engaging after several attempts to contact"),
                ),
            });
        }
        // In the order they happen (same-day steps keep the order written).
        steps.sort_by_key(|step| step.after_days);
        steps
    }
}
