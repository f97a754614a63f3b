//! Erasure on an immutable log (crypto-shredding). What identifies a person is sealed
//! under their own key before it reaches `referral.events` or a dead letter
//! (linkwork-vault). Erasing them, in one transaction:
//!
//! 1. destroys their key (once any batch being sealed for them has committed);
//! 2. takes the referrals sealed for them from the vault's record (kept by a keyed
//!    hash, never by an identifier, and deleted now) and records that an erasure
//!    happened (who, when, how many referrals: nothing about the person);
//! 3. puts `ReferralErased` for each referral in the outbox, so the projector redacts
//!    its read models and tells the referrer, and the router tells the provider.
//!
//! From then on nothing sealed for them opens: a replay rebuilds the read models with
//! the person redacted. `linkwork erase` and `POST /fhir/Patient/$erase` both come here.

use chrono::Utc;
use linkwork_bus::consumer::OutboxEvent;
use linkwork_domain::event::ReferralErased;
use linkwork_domain::{Actor, EventId, NhsNumber, ReferralEvent, ReferralId};
use linkwork_vault::{Vault, VaultError};
use sqlx::PgPool;

use crate::intake::EVENT_SOURCE;

/// Whom to erase.
#[derive(Debug, Clone)]
pub enum ErasureTarget {
    /// The person with this NHS number, across every referral of theirs.
    NhsNumber(NhsNumber),
    /// The person of this referral (a person without an NHS number is known by their
    /// referral alone), across every referral of theirs.
    Referral(ReferralId),
}

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    /// Whether a key was destroyed (false: none existed, or erased before).
    pub key_destroyed: bool,
    /// The referrals whose identifying parts can no longer be read, in id order; each
    /// gets `ReferralErased`.
    pub referrals: Vec<ReferralId>,
}

#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Store(#[from] linkwork_store::StoreError),
}

/// Erases the person `target` names (see the module): returns what was done. The
/// `ReferralErased` events go out with the outbox relay.
pub async fn erase(
    pool: &PgPool,
    vault: &Vault,
    events_topic: &str,
    target: &ErasureTarget,
    by: Actor,
) -> Result<Erasure, ErasureError> {
    let mut transaction = pool.begin().await?;
    let person = match target {
        ErasureTarget::NhsNumber(number) => vault.person_with_nhs_number(&number.to_string()),
        ErasureTarget::Referral(referral_id) => vault
            .person_of_sealed_referral(&mut transaction, *referral_id)
            .await?
            .unwrap_or_else(|| vault.person_of_referral(&referral_id.to_string())),
    };
    // The key first: an erasure waits here for any batch sealing for the person to
    // commit, so the referrals it then reads include that batch's.
    let linkwork_vault::Erased {
        key_destroyed,
        referrals,
    } = vault
        .erase(&mut transaction, person, &by.to_string())
        .await?;
    let now = Utc::now();
    let messages = referrals
        .iter()
        .map(|referral_id| {
            let event = ReferralEvent::Erased(ReferralErased {
                referral_id: *referral_id,
                erased_by: by.clone(),
                occurred_at: now,
            });
            let id = EventId::derive(&[
                "referral",
                &referral_id.to_string(),
                "erased",
                &now.timestamp_micros().to_string(),
            ]);
            OutboxEvent::new(events_topic, id, EVENT_SOURCE, now, &event).into_message(None, None)
        })
        .collect();
    linkwork_store::outbox::insert(&mut transaction, messages).await?;
    transaction.commit().await?;
    tracing::info!(
        referrals = referrals.len(),
        key_destroyed,
        by = %by,
        "a person was erased"
    );
    Ok(Erasure {
        key_destroyed,
        referrals,
    })
}

/// `POST /fhir/Patient/$erase` for administrators. The body is a FHIR Parameters
/// naming the person by `nhsNumber` (valueString, or valueIdentifier with the NHS
/// number system) or by `referral` (valueString: a referral id), so no identifier sits
/// in a URL. Answers 200 with Parameters: `keyDestroyed` and one `referral` per
/// referral redacted.
pub async fn http_erase(
    axum::extract::State(state): axum::extract::State<crate::http::AppState>,
    caller: crate::http::extract::Caller,
    crate::http::extract::FhirJson(body): crate::http::extract::FhirJson,
) -> Result<axum::response::Response, crate::http::error::FhirError> {
    use axum::http::StatusCode;
    use linkwork_fhir::{Issue, IssueCode};
    use serde_json::{json, Value};

    use crate::http::error::FhirError;

    caller.require(linkwork_auth::scopes::ADMIN)?;
    let invalid = |diagnostics: String| {
        FhirError::one(
            StatusCode::BAD_REQUEST,
            Issue::error(IssueCode::Invalid, diagnostics).at("Parameters.parameter".to_owned()),
        )
    };
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(invalid(
            "the body must be a FHIR Parameters naming nhsNumber or referral".to_owned(),
        ));
    }
    let parameters = body
        .get("parameter")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut targets = Vec::new();
    for parameter in parameters {
        let value = parameter
            .get("valueString")
            .or_else(|| parameter.pointer("/valueIdentifier/value"))
            .and_then(Value::as_str);
        match (parameter.get("name").and_then(Value::as_str), value) {
            (Some("nhsNumber"), Some(value)) => {
                let number = NhsNumber::parse(value).map_err(|error| {
                    invalid(format!("nhsNumber is not a valid NHS number: {error}"))
                })?;
                targets.push(ErasureTarget::NhsNumber(number));
            }
            (Some("referral"), Some(value)) => {
                let id = value
                    .parse::<ReferralId>()
                    .map_err(|_| invalid(format!("referral {value:?} is not a referral id")))?;
                targets.push(ErasureTarget::Referral(id));
            }
            (name, _) => {
                return Err(invalid(format!(
                    "parameter {} is not nhsNumber or referral with a value",
                    name.unwrap_or("(unnamed)")
                )))
            }
        }
    }
    let [target] = targets.as_slice() else {
        return Err(invalid(
            "name exactly one person: one nhsNumber or one referral".to_owned(),
        ));
    };
    let Some(vault) = state.intake.vault() else {
        return Err(FhirError::unavailable(
            "erasure needs the vault (LINKWORK_VAULT_KEY), which this process was not given",
            60,
        ));
    };
    let by = Actor::Admin(caller.0.client.clone());
    let erasure = erase(&state.pool, vault, &state.config.events_topic, target, by)
        .await
        .map_err(|error| match error {
            ErasureError::Vault(VaultError::Database(_))
            | ErasureError::Database(_)
            | ErasureError::Store(_) => {
                tracing::warn!(%error, "an erasure failed; nothing was erased");
                FhirError::unavailable(
                    "linkwork's database is unavailable; nothing was erased, try again",
                    5,
                )
            }
            other => FhirError::internal(&other),
        })?;
    let mut parameter =
        vec![json!({"name": "keyDestroyed", "valueBoolean": erasure.key_destroyed})];
    parameter.extend(
        erasure
            .referrals
            .iter()
            .map(|id| json!({"name": "referral", "valueString": id.to_string()})),
    );
    let response = crate::http::fhir::fhir_response(
        StatusCode::OK,
        json!({"resourceType": "Parameters", "parameter": parameter}),
    );
    Ok(crate::audit::audited(response, erasure.referrals))
}
