//! NHS Booking and Referral Standard (BaRS) message Bundles: a `message` Bundle whose
//! first entry is a MessageHeader; `eventCoding` says what it is, `reason` whether it
//! is new or an update, and `focus` points (by `urn:uuid:`) at the ServiceRequest.

use linkwork_domain::event::Identifier;
use serde_json::Value;

use crate::outcome::{Issue, IssueCode};
use crate::referral::{array, codings, text, Located};
use crate::resolve::Resolver;

/// The BaRS event linkwork takes.
pub const SERVICE_REQUEST_REQUEST: &str = "servicerequest-request";

/// Whether the message is a new referral or an update to one sent before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageReason {
    New,
    Update,
}

/// A BaRS referral message, read.
#[derive(Debug, Clone)]
pub struct BarsMessage<'a> {
    pub reason: MessageReason,
    pub service_request: Located<'a>,
    pub resolver: Resolver<'a>,
    /// The MessageHeader's id or fullUrl, for the response.
    pub header: &'a Value,
}

/// Reads a BaRS message Bundle, reporting every structural problem at once.
pub fn read(bundle: &Value) -> Result<BarsMessage<'_>, Vec<Issue>> {
    crate::parse::expect_resource_type(bundle, "Bundle", "Bundle").map_err(|issue| vec![issue])?;
    crate::parse::typed::<fhir_model::r4b::resources::Bundle>(bundle, "Bundle")?;
    if text(bundle, "type") != Some("message") {
        return Err(vec![Issue::error(
            IssueCode::Invalid,
            format!(
                "$process-message takes a Bundle of type message, not {}",
                text(bundle, "type").unwrap_or("(missing)")
            ),
        )
        .at("Bundle.type")]);
    }
    let header_path = "Bundle.entry[0].resource";
    let header = bundle
        .get("entry")
        .and_then(|entries| entries.get(0))
        .and_then(|entry| entry.get("resource"))
        .filter(|resource| crate::parse::resource_type(resource) == Some("MessageHeader"))
        .ok_or_else(|| {
            vec![Issue::error(
                IssueCode::Invalid,
                "the first entry of a message Bundle must be its MessageHeader",
            )
            .at(header_path)]
        })?;

    let mut issues = Vec::new();
    let event = header
        .get("eventCoding")
        .and_then(|coding| text(coding, "code"));
    match event {
        Some(SERVICE_REQUEST_REQUEST) => {}
        Some("booking-request") => issues.push(
            Issue::error(
                IssueCode::NotSupported,
                "this is a BaRS booking (booking-request); linkwork takes referrals (servicerequest-request), not bookings",
            )
            .at(format!("{header_path}.eventCoding.code")),
        ),
        other => issues.push(
            Issue::error(
                IssueCode::NotSupported,
                format!(
                    "message event {} is not supported; linkwork takes {SERVICE_REQUEST_REQUEST}",
                    other.unwrap_or("(missing)")
                ),
            )
            .at(format!("{header_path}.eventCoding.code")),
        ),
    }
    if !issues.is_empty() {
        // Not a referral message: what it carries is beside the point.
        return Err(issues);
    }
    let reason = header
        .get("reason")
        .and_then(|reason| codings(reason).find_map(|(_, code)| code));
    let reason = match reason {
        Some("new") => Some(MessageReason::New),
        Some("update") => Some(MessageReason::Update),
        Some(other) => {
            issues.push(
                Issue::error(
                    IssueCode::NotSupported,
                    format!("message reason {other} is not supported (new or update)"),
                )
                .at(format!("{header_path}.reason")),
            );
            None
        }
        None => {
            issues.push(
                Issue::error(
                    IssueCode::Required,
                    "the MessageHeader must give a reason (new or update)",
                )
                .at(format!("{header_path}.reason")),
            );
            None
        }
    };
    let resolver = Resolver::new().with_bundle(bundle, "Bundle");
    let focus = array(header, "focus")
        .next()
        .and_then(|(_, focus)| text(focus, "reference"));
    let service_request = match focus {
        None => {
            issues.push(
                Issue::error(
                    IssueCode::Required,
                    "the MessageHeader must point at the ServiceRequest with focus",
                )
                .at(format!("{header_path}.focus")),
            );
            None
        }
        Some(reference) => match resolver.resolve(reference) {
            Some((resource, path))
                if crate::parse::resource_type(resource) == Some("ServiceRequest") =>
            {
                let fallback_identifier = reference.starts_with("urn:uuid:").then(|| Identifier {
                    system: "urn:ietf:rfc:3986".into(),
                    value: reference.to_owned(),
                });
                Some(Located {
                    resource,
                    path,
                    fallback_identifier,
                })
            }
            Some(_) => {
                issues.push(
                    Issue::error(
                        IssueCode::Invalid,
                        "the MessageHeader's focus must be the ServiceRequest",
                    )
                    .at(format!("{header_path}.focus[0].reference")),
                );
                None
            }
            None => {
                issues.push(
                    Issue::error(
                        IssueCode::Invalid,
                        format!("the focus {reference:?} is not an entry of this Bundle"),
                    )
                    .at(format!("{header_path}.focus[0].reference")),
                );
                None
            }
        },
    };
    match (reason, service_request) {
        (Some(reason), Some(service_request)) if issues.is_empty() => {
            let resolver = resolver.with_contained(service_request.resource, &service_request.path);
            Ok(BarsMessage {
                reason,
                service_request,
                resolver,
                header,
            })
        }
        _ => Err(issues),
    }
}
