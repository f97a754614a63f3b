//! The router's state machine over its rows: what each event does to a referral's
//! routing, to provider caseloads and to the outbox. Used by the consumer (events from
//! `referral.events`) and the deadline sweeper (acceptance deadlines), each inside one
//! transaction that also holds the rows it read.
//!
//! Log order decides, by the domain's rule (`referral::judge_provider_change`, which
//! `referral::fold` applies too). The router's own `ReferralRouted` and
//! `ReferralUnroutable` events come back to it on the log; until they have
//! (`confirmed_attempt`), the log still shows the earlier request as live, so an
//! acceptance by that provider that reached the log first stands: the newer request is
//! withdrawn from its provider and the caseloads are moved back.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use linkwork_bus::OutboxEvent;
use linkwork_domain::event::{ReferralReceived, ReferralRouted, ReferralUnroutable};
use linkwork_domain::referral::{self, Standing, Status};
use linkwork_domain::{EventId, ProviderId, ReferralEvent, ReferralId};

use crate::bundle::{self, ProviderRef};
use crate::calendar::add_working_days;
use crate::decision::{decide, Decision, Person};
use crate::directory::CompiledDirectory;
use crate::RouterConfig;

/// The CloudEvents types of what the router puts on queues.
pub const PROVIDER_REQUEST_TYPE: &str = "linkwork.provider.referral-requested.v1";
pub const PROVIDER_WITHDRAWAL_TYPE: &str = "linkwork.provider.referral-withdrawn.v1";
pub const TRIAGE_TYPE: &str = "linkwork.triage.referral-unroutable.v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteStatus {
    Requested,
    Accepted,
    Unroutable,
    Closed,
}

impl RouteStatus {
    pub fn code(self) -> &'static str {
        match self {
            RouteStatus::Requested => "requested",
            RouteStatus::Accepted => "accepted",
            RouteStatus::Unroutable => "unroutable",
            RouteStatus::Closed => "closed",
        }
    }

    fn parse(code: &str) -> Self {
        match code {
            "requested" => RouteStatus::Requested,
            "accepted" => RouteStatus::Accepted,
            "unroutable" => RouteStatus::Unroutable,
            _ => RouteStatus::Closed,
        }
    }
}

/// One referral's routing, as stored in `router_referrals`.
#[derive(Debug, Clone)]
pub struct Route {
    pub referral_id: ReferralId,
    pub status: RouteStatus,
    pub provider: Option<ProviderId>,
    pub attempt: u32,
    /// The highest attempt whose `ReferralRouted` the router has read back from the log;
    /// one more than `attempt` once its `ReferralUnroutable` has come back too (the
    /// triage decision has no attempt number of its own, and no column of its own).
    pub confirmed_attempt: u32,
    pub accept_by: Option<DateTime<Utc>>,
    pub tried: Vec<ProviderId>,
    pub reserved: bool,
    pub directory_version: String,
    /// The `ReferralReceived` body while the referral may need routing again.
    pub received: Option<Vec<u8>>,
    is_new: bool,
    changed: bool,
}

impl Route {
    /// The attempt the log has reached: the router's own decisions count only once
    /// read back.
    fn log_attempt(&self) -> u32 {
        self.confirmed_attempt.min(self.attempt)
    }

    /// Where the referral's Task stands on the log, as far as the router can tell: the
    /// router acts on its routing decisions at once, but the log (and every other
    /// reader) only sees them once they come back.
    ///
    /// One fact the router does not keep: a rejection by the provider the log shows as
    /// holding the referral, read after the router had already re-routed it. Until the
    /// re-routing comes back the log says "rejected" and this says "requested"; only a
    /// provider acting after its own rejection could tell, and ingest refuses that.
    fn on_log(&self) -> Standing<'_> {
        let attempt = self.log_attempt();
        let last = attempt
            .checked_sub(1)
            .and_then(|index| self.tried.get(index as usize));
        let (status, provider) = match self.status {
            RouteStatus::Accepted => (Status::Accepted, self.provider.as_ref()),
            // Closed covers several statuses; nothing a provider says matters then.
            RouteStatus::Closed => (Status::Cancelled, None),
            RouteStatus::Unroutable if self.confirmed_attempt > self.attempt => {
                (Status::Unroutable, None)
            }
            RouteStatus::Requested | RouteStatus::Unroutable => match last {
                Some(provider) => (Status::Requested, Some(provider)),
                None => (Status::Received, None),
            },
        };
        Standing {
            status,
            provider,
            last_tried: last,
        }
    }

    /// Whether `provider` moving the Task to `to` takes effect on the log: the domain's
    /// rule, judged against where the log stands.
    fn stands(&self, provider: &ProviderId, to: Status) -> bool {
        matches!(
            referral::judge_provider_change(self.on_log(), provider, to),
            Ok(true)
        )
    }
}

/// The routing rows a transaction holds, by referral.
pub type Routes = HashMap<ReferralId, Route>;

/// The caseloads a transaction holds (rows locked), and which it changed.
#[derive(Debug, Default)]
pub struct Loads {
    active: HashMap<ProviderId, u32>,
    changed: HashSet<ProviderId>,
}

impl Loads {
    pub fn active(&self) -> &HashMap<ProviderId, u32> {
        &self.active
    }

    fn reserve(&mut self, provider: &ProviderId) {
        *self.active.entry(provider.clone()).or_default() += 1;
        self.changed.insert(provider.clone());
    }

    fn release(&mut self, provider: &ProviderId) {
        let active = self.active.entry(provider.clone()).or_default();
        *active = active.saturating_sub(1);
        self.changed.insert(provider.clone());
    }
}

/// What one step decided: rows and loads change in place; messages to publish here.
#[derive(Debug)]
pub struct Step<'a> {
    pub config: &'a RouterConfig,
    pub directory: &'a CompiledDirectory,
    pub loads: &'a mut Loads,
    pub now: DateTime<Utc>,
    pub outbox: Vec<OutboxEvent>,
    /// The batch's referrals opened with the vault ([`open_received`]): what routing
    /// reads of the person. A referral absent here is read as it is on the log.
    pub opened: &'a HashMap<ReferralId, ReferralReceived>,
}

impl Step<'_> {
    /// Applies one event read from `referral.events`. `body` is its raw body (kept
    /// for a `ReferralReceived`, to route it again later).
    pub fn apply(&mut self, routes: &mut Routes, event: &ReferralEvent, body: &[u8]) {
        let referral_id = event.referral_id();
        match event {
            ReferralEvent::Received(received) => {
                if routes.contains_key(&referral_id) {
                    return; // a resubmission: routed already
                }
                let received = self.opened.get(&referral_id).unwrap_or(received);
                let mut route = Route {
                    referral_id,
                    status: RouteStatus::Requested,
                    provider: None,
                    attempt: 0,
                    confirmed_attempt: 0,
                    accept_by: None,
                    tried: Vec::new(),
                    reserved: false,
                    directory_version: String::new(),
                    received: Some(body.to_vec()),
                    is_new: true,
                    changed: true,
                };
                if received.is_redacted() {
                    tracing::info!(referral = %referral_id, "the person was erased before routing: not routed");
                    close(&mut route);
                } else {
                    self.route(&mut route, received, received.occurred_at);
                }
                routes.insert(referral_id, route);
            }
            ReferralEvent::Routed(routed) => {
                if let Some(route) = routes.get_mut(&referral_id) {
                    if routed.attempt > route.confirmed_attempt {
                        route.confirmed_attempt = routed.attempt;
                        route.changed = true;
                    }
                }
            }
            ReferralEvent::Unroutable(_) => {
                // The triage decision is back: the log no longer shows the last
                // request as live (see `Route::on_log`).
                if let Some(route) = routes.get_mut(&referral_id) {
                    if route.status == RouteStatus::Unroutable
                        && route.confirmed_attempt <= route.attempt
                    {
                        route.confirmed_attempt = route.attempt + 1;
                        route.changed = true;
                    }
                }
            }
            ReferralEvent::Accepted(change) => {
                let Some(route) = routes.get_mut(&referral_id) else {
                    return;
                };
                if !matches!(
                    route.status,
                    RouteStatus::Requested | RouteStatus::Unroutable
                ) {
                    return; // a repeat, or the referral has closed
                }
                if !route.stands(&change.provider_id, Status::Accepted) {
                    tracing::warn!(
                        referral = %referral_id,
                        provider = %change.provider_id,
                        "acceptance by a provider the log does not show holding the referral ignored"
                    );
                    return;
                }
                let log_attempt = route.log_attempt();
                if route.provider.as_ref() != Some(&change.provider_id) {
                    // An acceptance by the provider the log still shows as holding the
                    // referral, read before the router's re-routing (or triage) came
                    // back: it stands, and the newer request is withdrawn.
                    self.withdraw(
                        route,
                        "the previous provider accepted the referral before it was re-routed",
                    );
                    self.release(route);
                    self.loads.reserve(&change.provider_id);
                    route.reserved = true;
                    route.provider = Some(change.provider_id.clone());
                    route.attempt = log_attempt;
                }
                route.status = RouteStatus::Accepted;
                route.accept_by = None;
                route.received = None;
                route.changed = true;
            }
            ReferralEvent::Rejected(change) => {
                let Some(route) = routes.get_mut(&referral_id) else {
                    return;
                };
                if !matches!(
                    route.status,
                    RouteStatus::Requested | RouteStatus::Unroutable
                ) || !route.stands(&change.provider_id, Status::Rejected)
                {
                    return; // a repeat, or superseded on the log
                }
                // A rejection by a provider the router has already moved the referral
                // away from (deadline) needs nothing more: the next routing is on its
                // way to the log.
                if route.status == RouteStatus::Requested
                    && route.provider.as_ref() == Some(&change.provider_id)
                {
                    self.release(route);
                    self.reroute(route, change.occurred_at);
                }
            }
            ReferralEvent::Completed(change) | ReferralEvent::Failed(change) => {
                let Some(route) = routes.get_mut(&referral_id) else {
                    return;
                };
                let to = match event {
                    ReferralEvent::Failed(_) => Status::Failed,
                    _ => Status::Completed,
                };
                if route.status == RouteStatus::Accepted && route.stands(&change.provider_id, to) {
                    self.release(route);
                    close(route);
                }
            }
            ReferralEvent::Cancelled(closed) | ReferralEvent::EnteredInError(closed) => {
                let Some(route) = routes.get_mut(&referral_id) else {
                    return;
                };
                if route.status == RouteStatus::Requested {
                    let reason = closed
                        .reason
                        .clone()
                        .unwrap_or_else(|| format!("the referral was withdrawn by {}", closed.by));
                    self.withdraw(route, &reason);
                }
                self.release(route);
                close(route);
            }
            ReferralEvent::Started(_)
            | ReferralEvent::OnHold(_)
            | ReferralEvent::ContactRecorded(_)
            | ReferralEvent::ActivityAttended(_)
            | ReferralEvent::OutcomeRecorded(_)
            | ReferralEvent::ConsentRecorded(_)
            | ReferralEvent::ConsentWithdrawn(_) => {}
            ReferralEvent::Erased(erased) => {
                let Some(route) = routes.get_mut(&referral_id) else {
                    return;
                };
                // Every queue the person's data went to is told to delete it.
                let mut told: Vec<String> = Vec::new();
                for provider in &route.tried {
                    told.push(self.config.topics.provider_queue(provider));
                }
                // Triage has it when the last decision sent it there (triage is where
                // a referral stays: nothing routes it on), closed since or not.
                if route.status == RouteStatus::Unroutable
                    || route.confirmed_attempt > route.attempt
                {
                    told.push(self.config.topics.triage.clone());
                }
                // A provider holding it is told the request is void, as on a
                // cancellation, before the notice.
                if matches!(route.status, RouteStatus::Requested | RouteStatus::Accepted) {
                    self.withdraw(route, "the person's data was erased at their request");
                }
                told.sort_unstable();
                told.dedup();
                let referral = referral_id.to_string();
                let at = erased.occurred_at.timestamp_micros().to_string();
                let notice =
                    linkwork_domain::event::erasure_notice(referral_id, erased.occurred_at);
                for topic in told {
                    self.outbox.push(OutboxEvent::fhir(
                        &topic,
                        EventId::derive(&["redaction-notice", &topic, &referral, &at]),
                        &self.config.source,
                        self.now,
                        referral.clone(),
                        linkwork_domain::event::REDACTION_NOTICE_TYPE,
                        &notice,
                    ));
                }
                self.release(route);
                close(route);
            }
        }
    }

    /// A requested referral whose deadline has passed: withdrawn from its provider and
    /// routed to the next one (or triage).
    pub fn escalate(&mut self, route: &mut Route) {
        let Some(deadline) = route.accept_by else {
            return;
        };
        let days = route
            .provider
            .as_ref()
            .and_then(|provider| self.directory.provider(provider))
            .map(|provider| provider.provider.accept_within_working_days);
        let reason = match days {
            Some(days) => format!("not accepted within {days} working days; offered elsewhere"),
            None => "not accepted in time; offered elsewhere".to_owned(),
        };
        self.withdraw(route, &reason);
        self.release(route);
        self.reroute(route, deadline);
    }

    fn reroute(&mut self, route: &mut Route, at: DateTime<Utc>) {
        let received = match self.opened.get(&route.referral_id) {
            Some(opened) => Some(Ok(opened.clone())),
            None => route
                .received
                .as_deref()
                .map(serde_json::from_slice::<ReferralReceived>),
        };
        match received {
            Some(Ok(received)) if received.is_redacted() => {
                tracing::info!(referral = %route.referral_id, "the person was erased: not routed again");
                close(route);
            }
            Some(Ok(received)) => self.route(route, &received, at),
            _ => {
                // Not reachable through the router's own writes; kept safe anyway.
                tracing::error!(referral = %route.referral_id, "no referral content held to route again; sent to triage without it");
                let unroutable = ReferralUnroutable {
                    referral_id: route.referral_id,
                    directory_version: self.directory.label.clone(),
                    reasons: vec!["the router no longer holds the referral's content".into()],
                    candidates: Vec::new(),
                    occurred_at: self.now,
                };
                self.publish_event(
                    &ReferralEvent::Unroutable(unroutable),
                    &[
                        "unroutable",
                        &route.referral_id.to_string(),
                        &route.attempt.to_string(),
                    ],
                );
                route.status = RouteStatus::Unroutable;
                route.provider = None;
                route.accept_by = None;
                route.received = None;
                route.changed = true;
            }
        }
    }

    /// Decides and records the next routing attempt. `at` is when the fact that asked
    /// for it happened (receipt, rejection, deadline): deadlines count from it.
    fn route(&mut self, route: &mut Route, received: &ReferralReceived, at: DateTime<Utc>) {
        let person = Person::of(received, at.date_naive());
        let decision = decide(self.directory, &person, &route.tried, self.loads.active());
        route.directory_version = self.directory.label.clone();
        route.changed = true;
        let referral = route.referral_id.to_string();
        match decision {
            Decision::Route {
                provider,
                rule,
                candidates,
            } => {
                let Some(compiled) = self.directory.provider(&provider) else {
                    return;
                };
                let attempt = route.attempt + 1;
                let accept_by = add_working_days(
                    at,
                    compiled.provider.accept_within_working_days,
                    &self.directory.bank_holidays,
                );
                self.loads.reserve(&provider);
                let routed = ReferralRouted {
                    referral_id: route.referral_id,
                    provider_id: provider.clone(),
                    attempt,
                    directory_version: self.directory.label.clone(),
                    rule: rule.clone(),
                    candidates,
                    accept_by,
                    occurred_at: self.now,
                };
                let attempt_text = attempt.to_string();
                self.publish_event(
                    &ReferralEvent::Routed(routed),
                    &["routed", &referral, &attempt_text],
                );
                let request = bundle::provider_request(
                    *EventId::derive(&["provider-request", &referral, &attempt_text]).as_uuid(),
                    received,
                    &ProviderRef {
                        id: &provider,
                        name: &compiled.provider.name,
                    },
                    &bundle::Attempt {
                        number: attempt,
                        accept_by,
                        routed_at: self.now,
                        rule: &rule,
                    },
                    &self.config.canonical_base,
                );
                self.outbox.push(OutboxEvent::fhir(
                    &self.config.topics.provider_queue(&provider),
                    EventId::derive(&["provider-request", &referral, &attempt_text]),
                    &self.config.source,
                    self.now,
                    referral.clone(),
                    PROVIDER_REQUEST_TYPE,
                    &request,
                ));
                route.status = RouteStatus::Requested;
                route.attempt = attempt;
                route.tried.push(provider.clone());
                route.provider = Some(provider);
                route.accept_by = Some(accept_by);
                route.reserved = true;
            }
            Decision::Unroutable {
                reasons,
                candidates,
            } => {
                let attempt_text = route.attempt.to_string();
                let triage = bundle::triage(
                    *EventId::derive(&["triage", &referral, &attempt_text]).as_uuid(),
                    received,
                    &reasons,
                    &candidates,
                    &self.directory.label,
                    self.now,
                    &self.config.canonical_base,
                );
                let unroutable = ReferralUnroutable {
                    referral_id: route.referral_id,
                    directory_version: self.directory.label.clone(),
                    reasons,
                    candidates,
                    occurred_at: self.now,
                };
                self.publish_event(
                    &ReferralEvent::Unroutable(unroutable),
                    &["unroutable", &referral, &attempt_text],
                );
                self.outbox.push(OutboxEvent::fhir(
                    &self.config.topics.triage,
                    EventId::derive(&["triage", &referral, &attempt_text]),
                    &self.config.source,
                    self.now,
                    referral,
                    TRIAGE_TYPE,
                    &triage,
                ));
                route.status = RouteStatus::Unroutable;
                route.provider = None;
                route.accept_by = None;
                route.received = None;
            }
        }
    }

    fn publish_event(&mut self, event: &ReferralEvent, id_parts: &[&str]) {
        self.outbox.push(OutboxEvent::new(
            &self.config.topics.events,
            EventId::derive(id_parts),
            &self.config.source,
            self.now,
            event,
        ));
    }

    /// Tells the current provider its request is void.
    fn withdraw(&mut self, route: &Route, reason: &str) {
        let Some(provider) = &route.provider else {
            return;
        };
        let name = self
            .directory
            .provider(provider)
            .map(|compiled| compiled.provider.name.clone())
            .unwrap_or_else(|| provider.to_string());
        let referral = route.referral_id.to_string();
        let attempt = route.attempt.to_string();
        let event_id = EventId::derive(&["provider-withdrawal", &referral, &attempt]);
        let withdrawal = bundle::provider_withdrawal(
            *event_id.as_uuid(),
            route.referral_id,
            &ProviderRef {
                id: provider,
                name: &name,
            },
            route.attempt,
            reason,
            self.now,
            &self.config.canonical_base,
        );
        self.outbox.push(OutboxEvent::fhir(
            &self.config.topics.provider_queue(provider),
            event_id,
            &self.config.source,
            self.now,
            referral,
            PROVIDER_WITHDRAWAL_TYPE,
            &withdrawal,
        ));
    }

    fn release(&mut self, route: &mut Route) {
        if route.reserved {
            if let Some(provider) = &route.provider {
                self.loads.release(provider);
            }
            route.reserved = false;
            route.changed = true;
        }
    }
}

fn close(route: &mut Route) {
    route.status = RouteStatus::Closed;
    route.accept_by = None;
    route.received = None;
    route.changed = true;
}

/// Whether an event can change a caseload (and so needs the caseload rows locked).
pub fn touches_caseloads(event: &ReferralEvent) -> bool {
    matches!(
        event,
        ReferralEvent::Received(_)
            | ReferralEvent::Accepted(_)
            | ReferralEvent::Rejected(_)
            | ReferralEvent::Completed(_)
            | ReferralEvent::Failed(_)
            | ReferralEvent::Cancelled(_)
            | ReferralEvent::EnteredInError(_)
            | ReferralEvent::Erased(_)
    )
}

/// The sealed referrals the router may route while applying `events` (received now,
/// or held in `routes` for a rejection or a passed deadline) opened with the vault,
/// one query for the batch. Without a vault, or for an erased person, a referral
/// stays redacted and is not routed.
pub async fn open_received<'e>(
    connection: &mut sqlx::PgConnection,
    vault: Option<&linkwork_vault::Vault>,
    events: impl IntoIterator<Item = &'e ReferralEvent>,
    routes: &Routes,
    due: &[ReferralId],
) -> Result<HashMap<ReferralId, ReferralReceived>, linkwork_bus::consumer::HandlerError> {
    let Some(vault) = vault else {
        return Ok(HashMap::new());
    };
    let mut sealed: HashMap<ReferralId, ReferralReceived> = HashMap::new();
    let held = |id: &ReferralId, sealed: &mut HashMap<ReferralId, ReferralReceived>| {
        if let Some(received) = routes
            .get(id)
            .and_then(|route| route.received.as_deref())
            .and_then(|body| serde_json::from_slice::<ReferralReceived>(body).ok())
            .filter(ReferralReceived::is_redacted)
        {
            sealed.insert(*id, received);
        }
    };
    for event in events {
        match event {
            ReferralEvent::Received(received) if received.is_redacted() => {
                sealed.insert(received.referral_id, (**received).clone());
            }
            ReferralEvent::Rejected(change) => held(&change.referral_id, &mut sealed),
            _ => {}
        }
    }
    for id in due {
        held(id, &mut sealed);
    }
    if sealed.is_empty() {
        return Ok(sealed);
    }
    let mut referrals: Vec<&mut ReferralReceived> = sealed.values_mut().collect();
    vault
        .open_referrals(connection, &mut referrals)
        .await
        .map_err(|error| match error {
            linkwork_vault::VaultError::Database(error) => error.into(),
            other => linkwork_bus::consumer::HandlerError::Fatal(Box::new(other)),
        })?;
    Ok(sealed)
}

mod store;

pub use store::{load_due, load_routes, lock_loads, save};

#[cfg(test)]
mod tests;
