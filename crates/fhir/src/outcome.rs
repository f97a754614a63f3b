//! FHIR OperationOutcome: how linkwork says what is wrong, where, and how badly.

use serde::Serialize;

/// OperationOutcome.issue.severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

/// OperationOutcome.issue.code (the FHIR issue-type codes linkwork uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IssueCode {
    /// Content invalid against the specification.
    Invalid,
    /// A structural problem: wrong type, unknown element, broken JSON.
    Structure,
    /// A required element is missing.
    Required,
    /// An element's value is not allowed.
    Value,
    /// A rule of linkwork's business (what a referral must be).
    BusinessRule,
    /// Something linkwork does not do (a booking, XML).
    NotSupported,
    Duplicate,
    Conflict,
    /// Authentication is missing or failed.
    Login,
    /// Authenticated, but not allowed.
    Forbidden,
    /// A request that would put data where it must not go (an identifier in a URL).
    Security,
    /// Too large.
    TooCostly,
    Throttled,
    NotFound,
    /// A failure that may pass (the broker is down).
    Transient,
    Timeout,
    /// An unexpected failure inside linkwork.
    Exception,
}

/// A coding in OperationOutcome.issue.details (BaRS error codes, for instance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Coding {
    pub system: String,
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Details {
    pub coding: Vec<Coding>,
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
    pub diagnostics: String,
    /// FHIRPath of the offending element(s), e.g. `ServiceRequest.subject.identifier[0].value`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expression: Vec<String>,
}

impl Issue {
    pub fn error(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            details: None,
            diagnostics: diagnostics.into(),
            expression: Vec::new(),
        }
    }

    pub fn warning(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, diagnostics)
        }
    }

    /// Where in the resource the problem is (a FHIRPath expression).
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression.push(expression.into());
        self
    }

    pub fn with_detail(mut self, system: &str, code: &str) -> Self {
        self.details
            .get_or_insert_with(|| Details { coding: Vec::new() })
            .coding
            .push(Coding {
                system: system.to_owned(),
                code: code.to_owned(),
                display: None,
            });
        self
    }

    pub fn is_error(&self) -> bool {
        matches!(self.severity, Severity::Error | Severity::Fatal)
    }
}

/// An OperationOutcome resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "resourceType")]
pub struct OperationOutcome {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub issue: Vec<Issue>,
}

impl OperationOutcome {
    pub fn new(issues: Vec<Issue>) -> Self {
        Self {
            id: None,
            issue: issues,
        }
    }

    pub fn single(issue: Issue) -> Self {
        Self::new(vec![issue])
    }

    /// A successful outcome with one informational message.
    pub fn information(diagnostics: impl Into<String>) -> Self {
        Self::single(Issue {
            severity: Severity::Information,
            code: IssueCode::Invalid,
            details: None,
            diagnostics: diagnostics.into(),
            expression: Vec::new(),
        })
    }

    pub fn has_errors(&self) -> bool {
        self.issue.iter().any(Issue::is_error)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(|error| {
            serde_json::json!({
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "fatal", "code": "exception", "diagnostics": error.to_string()}]
            })
        })
    }

    /// Every FHIRPath expression of every issue, for tests and logs.
    pub fn expressions(&self) -> Vec<&str> {
        self.issue
            .iter()
            .flat_map(|issue| issue.expression.iter().map(String::as_str))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_a_fhir_operation_outcome() {
        let outcome = OperationOutcome::single(
            Issue::error(IssueCode::BusinessRule, "status must be active")
                .at("ServiceRequest.status")
                .with_detail(
                    "https://fhir.nhs.uk/Codesystem/http-error-codes",
                    "REC_UNPROCESSABLE_ENTITY",
                ),
        );
        let json = outcome.to_json();
        assert_eq!(json["resourceType"], "OperationOutcome");
        assert_eq!(json["issue"][0]["severity"], "error");
        assert_eq!(json["issue"][0]["code"], "business-rule");
        assert_eq!(json["issue"][0]["expression"][0], "ServiceRequest.status");
        assert_eq!(
            json["issue"][0]["details"]["coding"][0]["code"],
            "REC_UNPROCESSABLE_ENTITY"
        );
        // What we produce is valid FHIR R4.
        let parsed: fhir_model::r4b::resources::OperationOutcome =
            serde_json::from_value(json).unwrap();
        assert_eq!(parsed.issue.len(), 1);
    }
}
