//! The routing rows and caseloads in Postgres: read (and locked) for a transaction,
//! written back in one statement per table. The state machine itself
//! ([`super::Step`]) never touches the database.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use linkwork_domain::{ProviderId, ReferralId};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Loads, Route, RouteStatus, Routes};

/// Reads and locks the routing rows of `ids`.
pub async fn load_routes(
    connection: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Routes, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        SELECT referral_id, status, provider_id, attempt, confirmed_attempt, accept_by, tried,
               reserved, directory_version, received
        FROM router_referrals
        WHERE referral_id = ANY($1)
        FOR UPDATE
        "#,
        ids,
    )
    .fetch_all(connection)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let referral_id = ReferralId::from_uuid(row.referral_id);
            let route = Route {
                referral_id,
                status: RouteStatus::parse(&row.status),
                provider: row.provider_id.and_then(|id| ProviderId::parse(&id).ok()),
                attempt: u32::try_from(row.attempt).unwrap_or_default(),
                confirmed_attempt: u32::try_from(row.confirmed_attempt).unwrap_or_default(),
                accept_by: row.accept_by,
                tried: parse_tried(&row.tried),
                reserved: row.reserved,
                directory_version: row.directory_version,
                received: row.received,
                is_new: false,
                changed: false,
            };
            (referral_id, route)
        })
        .collect())
}

/// Reads and locks the requested routes whose deadline is at or before `now`, oldest
/// first; rows another transaction holds are skipped (it is working on them).
pub async fn load_due(
    connection: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Routes, sqlx::Error> {
    let ids = sqlx::query_scalar!(
        r#"
        SELECT referral_id
        FROM router_referrals
        WHERE status = 'requested' AND accept_by <= $1
        ORDER BY accept_by
        LIMIT $2
        FOR UPDATE SKIP LOCKED
        "#,
        now,
        limit,
    )
    .fetch_all(&mut *connection)
    .await?;
    if ids.is_empty() {
        return Ok(Routes::new());
    }
    load_routes(connection, &ids).await
}

/// Locks every caseload row, in provider id order (one order for every transaction,
/// so two never wait on each other in a cycle), and reads them.
pub async fn lock_loads(connection: &mut PgConnection) -> Result<Loads, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT provider_id, active FROM provider_load ORDER BY provider_id FOR UPDATE"
    )
    .fetch_all(connection)
    .await?;
    let active = rows
        .into_iter()
        .filter_map(|row| {
            let id = ProviderId::parse(&row.provider_id).ok()?;
            Some((id, u32::try_from(row.active).unwrap_or_default()))
        })
        .collect();
    Ok(Loads {
        active,
        changed: HashSet::new(),
    })
}

/// The received bodies one INSERT carries at most: sqlx copies a statement's arguments
/// into the connection's write buffer, which keeps its largest size.
const INSERT_CHUNK_BYTES: usize = 1 << 20;

/// Writes the rows and caseloads that changed. The rows are taken: new ones move their
/// received bodies into the statement rather than copying them.
pub async fn save(
    connection: &mut PgConnection,
    routes: Routes,
    loads: &Loads,
) -> Result<(), sqlx::Error> {
    let mut new = Columns::default();
    let mut new_bytes = 0;
    let mut updated = Columns::default();
    for route in routes.into_values().filter(|route| route.changed) {
        if route.is_new {
            let bytes = route.received.as_ref().map_or(0, Vec::len);
            if !new.ids.is_empty() && new_bytes + bytes > INSERT_CHUNK_BYTES {
                insert_new(connection, std::mem::take(&mut new)).await?;
                new_bytes = 0;
            }
            new_bytes += bytes;
            new.push(route);
        } else {
            updated.push(route);
        }
    }
    if !new.ids.is_empty() {
        insert_new(connection, new).await?;
    }
    if !updated.ids.is_empty() {
        // The content is only ever dropped after receipt, never replaced.
        sqlx::query!(
            r#"
            UPDATE router_referrals AS r
            SET status = u.status, provider_id = u.provider_id, attempt = u.attempt,
                confirmed_attempt = u.confirmed_attempt, accept_by = u.accept_by,
                tried = u.tried, reserved = u.reserved, directory_version = u.directory_version,
                received = CASE WHEN u.keep_received THEN r.received END,
                updated_at = now()
            FROM UNNEST($1::UUID[], $2::TEXT[], $3::TEXT[], $4::INT[], $5::INT[],
                        $6::TIMESTAMPTZ[], $7::TEXT[], $8::BOOL[], $9::TEXT[], $10::BOOL[])
                AS u(referral_id, status, provider_id, attempt, confirmed_attempt, accept_by,
                     tried, reserved, directory_version, keep_received)
            WHERE r.referral_id = u.referral_id
            "#,
            &updated.ids,
            &updated.statuses as &[&str],
            &updated.providers as &[Option<String>],
            &updated.attempts,
            &updated.confirmed,
            &updated.accept_by as &[Option<DateTime<Utc>>],
            &updated.tried,
            &updated.reserved,
            &updated.versions,
            &updated.keep_received,
        )
        .execute(&mut *connection)
        .await?;
    }
    if !loads.changed.is_empty() {
        let (ids, counts): (Vec<String>, Vec<i32>) = loads
            .changed
            .iter()
            .map(|provider| {
                let active = loads.active.get(provider).copied().unwrap_or_default();
                (
                    provider.as_str().to_owned(),
                    i32::try_from(active).unwrap_or(i32::MAX),
                )
            })
            .unzip();
        sqlx::query!(
            r#"
            INSERT INTO provider_load (provider_id, active)
            SELECT * FROM UNNEST($1::TEXT[], $2::INT[])
            ON CONFLICT (provider_id) DO UPDATE SET active = EXCLUDED.active, updated_at = now()
            "#,
            &ids,
            &counts,
        )
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// One INSERT of new routing rows.
async fn insert_new(connection: &mut PgConnection, new: Columns) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        INSERT INTO router_referrals
            (referral_id, status, provider_id, attempt, confirmed_attempt, accept_by, tried,
             reserved, directory_version, received)
        SELECT * FROM UNNEST($1::UUID[], $2::TEXT[], $3::TEXT[], $4::INT[], $5::INT[],
                             $6::TIMESTAMPTZ[], $7::TEXT[], $8::BOOL[], $9::TEXT[], $10::BYTEA[])
        "#,
        &new.ids,
        &new.statuses as &[&str],
        &new.providers as &[Option<String>],
        &new.attempts,
        &new.confirmed,
        &new.accept_by as &[Option<DateTime<Utc>>],
        &new.tried,
        &new.reserved,
        &new.versions,
        &new.received as &[Option<Vec<u8>>],
    )
    .execute(&mut *connection)
    .await?;
    Ok(())
}

#[derive(Default)]
struct Columns {
    ids: Vec<Uuid>,
    statuses: Vec<&'static str>,
    providers: Vec<Option<String>>,
    attempts: Vec<i32>,
    confirmed: Vec<i32>,
    accept_by: Vec<Option<DateTime<Utc>>>,
    tried: Vec<String>,
    reserved: Vec<bool>,
    versions: Vec<String>,
    received: Vec<Option<Vec<u8>>>,
    keep_received: Vec<bool>,
}

impl Columns {
    fn push(&mut self, route: Route) {
        self.ids.push(*route.referral_id.as_uuid());
        self.statuses.push(route.status.code());
        self.providers
            .push(route.provider.as_ref().map(|id| id.as_str().to_owned()));
        self.attempts
            .push(i32::try_from(route.attempt).unwrap_or(i32::MAX));
        self.confirmed
            .push(i32::try_from(route.confirmed_attempt).unwrap_or(i32::MAX));
        self.accept_by.push(route.accept_by);
        self.tried.push(
            route
                .tried
                .iter()
                .map(ProviderId::as_str)
                .collect::<Vec<_>>()
                .join(","),
        );
        self.reserved.push(route.reserved);
        self.keep_received.push(route.received.is_some());
        self.versions.push(route.directory_version);
        self.received.push(route.received);
    }
}

fn parse_tried(text: &str) -> Vec<ProviderId> {
    text.split(',')
        .filter(|id| !id.is_empty())
        .filter_map(|id| ProviderId::parse(id).ok())
        .collect()
}
