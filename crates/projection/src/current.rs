//! The command side's view of a referral: the read model as the projector last wrote
//! it, with the events the command side has already put on the log but the projector
//! has not applied yet laid on top (`pending_provider_events`), so a provider's second
//! update is judged on what it was told succeeded.
//!
//! This crate owns that table: the command side records rows here, the projector's
//! batch deletes each row when it applies (or supersedes) the event.

use std::collections::HashMap;

use linkwork_domain::referral::{self, Folded, Referral};
use linkwork_domain::{DomainEvent, EventId, ReferralEvent, ReferralId};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{model, quote_ident, ReadError, LIVE_SCHEMA};

/// The referrals `referrals` as the log has built them, with the pending events on
/// top: one read of the read model and one of the pending events, whatever the number.
/// Referrals not known are absent. Runs inside the caller's transaction and leaves its
/// `search_path` as it found it.
pub async fn states(
    connection: &mut PgConnection,
    referrals: &[ReferralId],
) -> Result<HashMap<ReferralId, Referral>, ReadError> {
    let ids: Vec<Uuid> = referrals.iter().map(|id| *id.as_uuid()).collect();
    // The pending events first, the read model second. Each statement sees the
    // database as of its own start, and the projector deletes a pending row in the same
    // transaction that applies its event: read in this order, an event the projector
    // commits in between is seen in both, never in neither. Seen in both, a status
    // change or an outcome folds as a repeat; a contact or activity is counted twice
    // in the judged state, whose counts no rule of `decide` reads.
    // (Read the other way round, a referral accepted a moment ago could look as if
    // the acceptance had never happened.)
    let pending: Vec<(Uuid, String, Vec<u8>)> = sqlx::query_as(
        "SELECT referral_id, event_type, body FROM public.pending_provider_events
         WHERE referral_id = ANY($1) ORDER BY seq",
    )
    .bind(&ids)
    .fetch_all(&mut *connection)
    .await?;
    // The read models resolve through search_path; put it back afterwards so the rest
    // of the caller's transaction sees what it saw before.
    let saved: String = sqlx::query_scalar("SELECT current_setting('search_path')")
        .fetch_one(&mut *connection)
        .await?;
    sqlx::query("SELECT set_config('search_path', $1, true)")
        .bind(format!("{}, public", quote_ident(LIVE_SCHEMA)))
        .execute(&mut *connection)
        .await?;
    let loaded = model::load(connection, &ids).await;
    sqlx::query("SELECT set_config('search_path', $1, true)")
        .bind(&saved)
        .execute(&mut *connection)
        .await?;
    let mut states: HashMap<ReferralId, Referral> = loaded
        .map_err(|error| match error {
            model::ModelError::Database(error) => ReadError::from(error),
            model::ModelError::Corrupt(corrupt) => ReadError::Corrupt(corrupt),
        })?
        .into_iter()
        .map(|(id, projected)| (id, projected.state))
        .collect();
    for (referral, event_type, body) in pending {
        let referral = ReferralId::from_uuid(referral);
        let Ok(event) = ReferralEvent::decode(&event_type, &body) else {
            continue;
        };
        // Judged as the projector will: an event the state refuses changes nothing.
        if let Some(current) = states.get_mut(&referral) {
            if let Folded::Applied(next) = referral::fold(Some(current), &event) {
                *current = next;
            }
        }
    }
    Ok(states)
}

/// Records events the command side has put on the log, until the projector has them.
pub async fn remember_pending(
    connection: &mut PgConnection,
    events: &[(EventId, ReferralEvent)],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = events.iter().map(|(id, _)| *id.as_uuid()).collect();
    let referrals: Vec<Uuid> = events
        .iter()
        .map(|(_, event)| *event.referral_id().as_uuid())
        .collect();
    let types: Vec<&str> = events.iter().map(|(_, event)| event.event_type()).collect();
    let bodies: Vec<Vec<u8>> = events.iter().map(|(_, event)| event.encode()).collect();
    // One statement for the lot; WITH ORDINALITY keeps the log order in `seq`.
    sqlx::query(
        "INSERT INTO public.pending_provider_events (event_id, referral_id, event_type, body)
         SELECT event_id, referral_id, event_type, body
         FROM unnest($1::UUID[], $2::UUID[], $3::TEXT[], $4::BYTEA[])
              WITH ORDINALITY AS pending (event_id, referral_id, event_type, body, position)
         ORDER BY position
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&referrals)
    .bind(&types)
    .bind(&bodies)
    .execute(connection)
    .await?;
    Ok(())
}
