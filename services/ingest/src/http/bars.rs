//! BaRS request headers (Booking and Referral Standard 1.4.0).

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine;
use linkwork_domain::ProviderId;
use linkwork_fhir::{Issue, IssueCode};
use uuid::Uuid;

pub const REQUEST_ID: &str = "x-request-id";
pub const CORRELATION_ID: &str = "x-correlation-id";
pub const TARGET_IDENTIFIER: &str = "nhsd-target-identifier";
pub const END_USER_ORGANISATION_ODS: &str = "nhsd-end-user-organisation-ods";

/// Whom a BaRS message may be addressed to: linkwork's router, or a provider it knows.
#[derive(Debug, Clone)]
pub struct BarsTargets {
    /// (system, value) naming linkwork's router.
    pub router: (String, String),
    /// Identifier system of provider ids.
    pub provider_system: String,
    pub providers: Vec<ProviderId>,
}

impl BarsTargets {
    pub fn new(canonical_base: &str) -> Self {
        Self {
            router: (format!("{canonical_base}/Id/service"), "router".into()),
            provider_system: format!("{canonical_base}/Id/provider"),
            providers: Vec::new(),
        }
    }

    fn knows(&self, system: &str, value: &str) -> bool {
        (system == self.router.0 && value == self.router.1)
            || (system == self.provider_system
                && self
                    .providers
                    .iter()
                    .any(|provider| provider.as_str() == value))
    }
}

/// The headers to echo on every response, as BaRS asks.
pub fn echoed(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    [REQUEST_ID, CORRELATION_ID]
        .into_iter()
        .filter_map(|name| {
            let value = headers.get(name)?.clone();
            Some((HeaderName::from_static(name), value))
        })
        .collect()
}

/// Every problem with the BaRS headers of a request.
pub fn check(headers: &HeaderMap, targets: &BarsTargets) -> Vec<Issue> {
    let mut issues = Vec::new();
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    };
    for name in [REQUEST_ID, CORRELATION_ID] {
        match text(name) {
            None | Some("") => issues.push(header_issue(
                IssueCode::Required,
                format!("the {} header is required", display(name)),
            )),
            Some(value) if Uuid::parse_str(value).is_err() => issues.push(header_issue(
                IssueCode::Value,
                format!("the {} header must be a UUID, not {value:?}", display(name)),
            )),
            Some(_) => {}
        }
    }
    match text(END_USER_ORGANISATION_ODS) {
        None | Some("") => issues.push(header_issue(
            IssueCode::Required,
            format!(
                "the {} header (the sending organisation's ODS code) is required",
                display(END_USER_ORGANISATION_ODS)
            ),
        )),
        Some(code)
            if !(3..=10).contains(&code.len())
                || !code
                    .bytes()
                    .all(|byte| byte.is_ascii_uppercase() || byte.is_ascii_digit()) =>
        {
            issues.push(header_issue(
                IssueCode::Value,
                format!(
                    "the {} header {code:?} is not an ODS code",
                    display(END_USER_ORGANISATION_ODS)
                ),
            ))
        }
        Some(_) => {}
    }
    match text(TARGET_IDENTIFIER) {
        None | Some("") => issues.push(header_issue(
            IssueCode::Required,
            format!(
                "the {} header (whom the message is for) is required",
                display(TARGET_IDENTIFIER)
            ),
        )),
        Some(encoded) => {
            if let Err(problem) = check_target(encoded, targets) {
                issues.push(header_issue(
                    IssueCode::Value,
                    format!("the {} header {problem}", display(TARGET_IDENTIFIER)),
                ));
            }
        }
    }
    issues
}

fn check_target(encoded: &str, targets: &BarsTargets) -> Result<(), String> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "is not base64".to_owned())?;
    let identifier: serde_json::Value = serde_json::from_slice(&decoded)
        .map_err(|_| "does not decode to a JSON identifier".to_owned())?;
    let system = identifier.get("system").and_then(serde_json::Value::as_str);
    let value = identifier.get("value").and_then(serde_json::Value::as_str);
    match (system, value) {
        (Some(system), Some(value)) if targets.knows(system, value) => Ok(()),
        (Some(system), Some(value)) => Err(format!(
            "names {system}|{value}, which is neither linkwork's router ({}|{}) nor a provider it knows",
            targets.router.0, targets.router.1
        )),
        _ => Err("must be an identifier with a system and a value".to_owned()),
    }
}

fn header_issue(code: IssueCode, diagnostics: String) -> Issue {
    Issue::error(code, diagnostics)
}

fn display(name: &str) -> &'static str {
    match name {
        REQUEST_ID => "X-Request-Id",
        CORRELATION_ID => "X-Correlation-Id",
        TARGET_IDENTIFIER => "NHSD-Target-Identifier",
        END_USER_ORGANISATION_ODS => "NHSD-End-User-Organisation-ODS",
        _ => "BaRS",
    }
}
