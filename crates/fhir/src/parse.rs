//! Reading FHIR JSON with precise locations.
//!
//! Three layers, each reporting where it failed as a FHIRPath expression: JSON syntax
//! (line and column), structure against the FHIR R4 model (`fhir-model`, whose errors
//! `serde_path_to_error` places), and elements the model does not know. The model
//! silently drops unknown elements; a FHIR server must not, so the parsed resource is
//! written back out and every element of the input missing from it is reported.

use std::fmt::Write as _;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::outcome::{Issue, IssueCode};

/// Parses request bytes as JSON.
pub fn json(bytes: &[u8]) -> Result<Value, Issue> {
    serde_json::from_slice(bytes).map_err(|error| {
        Issue::error(
            IssueCode::Structure,
            format!(
                "the body is not valid JSON: {} (line {}, column {})",
                describe_json_error(&error),
                error.line(),
                error.column()
            ),
        )
    })
}

fn describe_json_error(error: &serde_json::Error) -> String {
    // serde_json appends " at line L column C"; the location is given separately.
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

/// The `resourceType` of a JSON resource.
pub fn resource_type(value: &Value) -> Option<&str> {
    value.get("resourceType").and_then(Value::as_str)
}

/// Checks that `value` is a `expected` resource.
pub fn expect_resource_type(value: &Value, expected: &str, path: &str) -> Result<(), Issue> {
    if !value.is_object() {
        return Err(Issue::error(
            IssueCode::Structure,
            format!("expected a {expected} resource (a JSON object)"),
        )
        .at(path));
    }
    match resource_type(value) {
        Some(found) if found == expected => Ok(()),
        Some(found) => Err(Issue::error(
            IssueCode::Invalid,
            format!("expected a {expected} resource, found {found}"),
        )
        .at(format!("{path}.resourceType"))),
        None => Err(Issue::error(IssueCode::Required, "resourceType is missing")
            .at(format!("{path}.resourceType"))),
    }
}

/// Parses `value` as the FHIR type `T`, reporting structural problems and unknown
/// elements with FHIRPath expressions under `path` (e.g. `ServiceRequest` or
/// `Bundle.entry[2].resource`). Every problem is reported, not just the first: after
/// a structural error the offending element is set aside and parsing tried again.
pub fn typed<T: DeserializeOwned + Serialize>(value: &Value, path: &str) -> Result<T, Vec<Issue>> {
    const MAX_STRUCTURAL_ISSUES: usize = 20;
    let mut issues = Vec::new();
    // A copy to set problems aside in, made only once a problem is found: a valid
    // resource (the usual case) is read where it is.
    let mut remaining: Option<Value> = None;
    let mut set_aside: Vec<String> = Vec::new();
    let parsed = loop {
        let current = remaining.as_ref().unwrap_or(value);
        match serde_path_to_error::deserialize::<_, T>(current) {
            Ok(parsed) => break Some(parsed),
            Err(error) => {
                let location = fhirpath(path, error.path());
                let message = error.inner().to_string();
                // A required element we set aside is now "missing": not a new problem.
                let echo = set_aside.iter().any(|aside| {
                    message.contains(&format!("missing field `{}`", last_key(aside)))
                        && aside.starts_with(&location)
                });
                if echo {
                    break None;
                }
                issues.push(
                    Issue::error(
                        IssueCode::Structure,
                        format!("{location} is not valid FHIR R4: {message}"),
                    )
                    .at(location.clone()),
                );
                let copy = remaining.get_or_insert_with(|| value.clone());
                let removed = remove_at(copy, error.path());
                if !removed || issues.len() >= MAX_STRUCTURAL_ISSUES {
                    break None;
                }
                set_aside.push(location);
            }
        }
    };
    if let Some(parsed) = &parsed {
        let written = serde_json::to_value(parsed).map_err(|error| {
            vec![Issue::error(
                IssueCode::Exception,
                format!("could not re-serialize the parsed resource: {error}"),
            )]
        })?;
        let mut location = String::with_capacity(64);
        location.push_str(path);
        unknown_elements(
            remaining.as_ref().unwrap_or(value),
            &written,
            &mut location,
            &mut issues,
        );
    }
    match parsed {
        Some(parsed) if issues.is_empty() => Ok(parsed),
        _ => Err(issues),
    }
}

/// [`typed`] for a ServiceRequest, compiled once here: services call this rather than
/// instantiating the R4 model's (large) deserializer again in their own crates.
pub fn check_service_request(value: &Value, path: &str) -> Result<(), Vec<Issue>> {
    typed::<fhir_model::r4b::resources::ServiceRequest>(value, path).map(|_| ())
}

fn last_key(expression: &str) -> &str {
    let key = expression.rsplit('.').next().unwrap_or(expression);
    key.split('[').next().unwrap_or(key)
}

/// Removes the element at `path` from `value`; false when there is nothing to remove
/// (the error is about the whole resource).
fn remove_at(value: &mut Value, path: &serde_path_to_error::Path) -> bool {
    let segments: Vec<&serde_path_to_error::Segment> = path
        .iter()
        .filter(|segment| {
            matches!(
                segment,
                serde_path_to_error::Segment::Map { .. } | serde_path_to_error::Segment::Seq { .. }
            )
        })
        .collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut parent = value;
    for segment in parents {
        let next = match segment {
            serde_path_to_error::Segment::Map { key } => parent.get_mut(key.as_str()),
            serde_path_to_error::Segment::Seq { index } => parent.get_mut(*index),
            _ => None,
        };
        match next {
            Some(child) => parent = child,
            None => return false,
        }
    }
    match (last, parent) {
        (serde_path_to_error::Segment::Map { key }, Value::Object(fields)) => {
            fields.remove(key.as_str()).is_some()
        }
        (serde_path_to_error::Segment::Seq { index }, Value::Array(items))
            if *index < items.len() =>
        {
            items.remove(*index);
            true
        }
        _ => false,
    }
}

fn fhirpath(root: &str, path: &serde_path_to_error::Path) -> String {
    let mut expression = root.to_owned();
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Map { key } => {
                expression.push('.');
                expression.push_str(key);
            }
            serde_path_to_error::Segment::Seq { index } => {
                expression.push_str(&format!("[{index}]"));
            }
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
        }
    }
    expression
}

/// Elements of `input` that `written` (the model's view of it) does not have. `path`
/// is where `input` is; it is extended and restored as the walk goes, so a valid
/// resource costs no allocation per element.
fn unknown_elements(input: &Value, written: &Value, path: &mut String, issues: &mut Vec<Issue>) {
    match (input, written) {
        (Value::Object(input), Value::Object(written)) => {
            for (key, value) in input {
                let parent = path.len();
                path.push('.');
                path.push_str(key);
                match written.get(key) {
                    Some(known) => unknown_elements(value, known, path, issues),
                    None if is_empty(value) => issues.push(
                        Issue::error(
                            IssueCode::Structure,
                            format!("{key} is empty; FHIR does not allow empty elements (leave it out)"),
                        )
                        .at(path.clone()),
                    ),
                    None => issues.push(
                        Issue::error(
                            IssueCode::Structure,
                            format!("unknown element {key:?}: not part of this FHIR R4 resource (element names are case-sensitive)"),
                        )
                        .at(path.clone()),
                    ),
                }
                path.truncate(parent);
            }
        }
        (Value::Array(input), Value::Array(written)) => {
            for (index, (value, known)) in input.iter().zip(written).enumerate() {
                let parent = path.len();
                let _ = write!(path, "[{index}]"); // writing to a String cannot fail
                unknown_elements(value, known, path, issues);
                path.truncate(parent);
            }
        }
        _ => {}
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(text) => text.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhir_model::r4b::resources::ServiceRequest;
    use serde_json::json;

    #[test]
    fn broken_json_is_located_by_line_and_column() {
        let issue = json(b"{\n  \"resourceType\": \"ServiceRequest\",\n  oops\n}").unwrap_err();
        assert_eq!(issue.code, IssueCode::Structure);
        assert!(
            issue.diagnostics.contains("line 3"),
            "{}",
            issue.diagnostics
        );
    }

    #[test]
    fn a_wrong_type_is_located_by_fhirpath() {
        let value = json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "subject": {"reference": "#p"}, "basedOn": {"reference": "urn:uuid:x"}});
        let issues = typed::<ServiceRequest>(&value, "ServiceRequest").unwrap_err();
        assert_eq!(issues[0].expression, vec!["ServiceRequest.basedOn"]);
    }

    #[test]
    fn an_unknown_code_is_refused_where_it_is() {
        let value = json!({"resourceType": "ServiceRequest", "status": "bogus", "intent": "order",
            "subject": {"reference": "#p"}});
        let issues = typed::<ServiceRequest>(&value, "ServiceRequest").unwrap_err();
        assert_eq!(issues[0].expression, vec!["ServiceRequest.status"]);
    }

    #[test]
    fn unknown_and_empty_elements_are_reported() {
        let value = json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "subject": {"reference": "#p", "colour": "blue"}, "PatientInstruction": "x", "note": []});
        let issues = typed::<ServiceRequest>(&value, "ServiceRequest").unwrap_err();
        let expressions: Vec<&str> = issues
            .iter()
            .map(|issue| issue.expression[0].as_str())
            .collect();
        assert!(
            expressions.contains(&"ServiceRequest.PatientInstruction"),
            "{expressions:?}"
        );
        assert!(
            expressions.contains(&"ServiceRequest.subject.colour"),
            "{expressions:?}"
        );
        assert!(
            expressions.contains(&"ServiceRequest.note"),
            "{expressions:?}"
        );
    }

    #[test]
    fn every_structural_problem_is_reported_not_just_the_first() {
        let value = json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "subject": {"reference": "#p"}, "basedOn": {"reference": "x"}, "priority": "whenever",
            "PatientInstruction": "y"});
        let issues = typed::<ServiceRequest>(&value, "ServiceRequest").unwrap_err();
        let expressions: Vec<&str> = issues
            .iter()
            .map(|issue| issue.expression[0].as_str())
            .collect();
        assert_eq!(
            expressions,
            vec![
                "ServiceRequest.basedOn",
                "ServiceRequest.priority",
                "ServiceRequest.PatientInstruction"
            ]
        );
        // An invalid required element is named once, not again as "missing".
        let value = json!({"resourceType": "ServiceRequest", "status": "bogus", "intent": "order",
            "subject": {"reference": "#p"}});
        let issues = typed::<ServiceRequest>(&value, "ServiceRequest").unwrap_err();
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].expression, vec!["ServiceRequest.status"]);
    }

    #[test]
    fn valid_resources_round_trip_without_issues() {
        let value = json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "subject": {"reference": "#p"}, "_status": {"extension": [{"url": "http://x", "valueString": "y"}]},
            "occurrenceDateTime": "2026-01-01", "identifier": [{"system": "s", "value": "v"}]});
        typed::<ServiceRequest>(&value, "ServiceRequest").unwrap();
    }

    #[test]
    fn resource_type_mismatches_name_both_types() {
        let issue = expect_resource_type(
            &json!({"resourceType": "Patient"}),
            "ServiceRequest",
            "ServiceRequest",
        )
        .unwrap_err();
        assert!(issue.diagnostics.contains("found Patient"));
        assert_eq!(issue.expression, vec!["ServiceRequest.resourceType"]);
    }
}
