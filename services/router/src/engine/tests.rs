//! The router against the domain's rule for what a logged event did.
//!
//! The log (`referral.events`) is the single order of facts. Two producers append to
//! it: ingest (provider responses and the referrer's cancellation, each judged against
//! the log when sent) and the router (its routing decisions, published from its outbox
//! some time after it took them). Every entry is read back in log order by the domain
//! ([`referral::fold`]) and by the router ([`Step::apply`]); the property test below
//! checks that they agree.

use std::collections::VecDeque;

use chrono::{Duration, TimeZone};
use linkwork_domain::event::{
    Identifier, Priority, ProviderStatusChange, ReferralClosedBy, Subject,
};
use linkwork_domain::referral::{self, Folded, Referral, Status};
use linkwork_domain::{Actor, DomainEvent, Need, Postcode, Source};
use proptest::prelude::*;

use super::*;
use crate::directory::{DirectoryDocument, StoredDirectory};

/// Three providers, each eligible for the person below, with room to spare: the
/// router always has someone left until all three have been tried.
const DIRECTORY: &str = r#"
providers:
  - id: prov-a
    name: A
    kind: want
    areas: { postcode_districts: [LW1] }
    needs: [loneliness]
    capacity: 50
    accept_within_working_days: 1
  - id: prov-b
    name: B
    kind: want
    areas: { postcode_districts: [LW1] }
    needs: [loneliness]
    capacity: 50
    accept_within_working_days: 2
  - id: prov-c
    name: C
    kind: want
    areas: { postcode_districts: [LW1] }
    needs: [loneliness]
    capacity: 50
    accept_within_working_days: 3
"#;

const PROVIDERS: [&str; 3] = ["prov-a", "prov-b", "prov-c"];

fn directory() -> CompiledDirectory {
    let document = DirectoryDocument::parse(DIRECTORY).expect("directory");
    CompiledDirectory::compile(&StoredDirectory {
        version: 1,
        content_hash: document.content_hash(),
        document,
    })
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0)
        .single()
        .expect("a valid time")
}

fn gp() -> Source {
    Source::parse("gp:A81001").expect("source")
}

fn referral_id() -> ReferralId {
    ReferralId::derive(&gp(), "https://gp.example/referrals", "R-1")
}

fn provider(index: usize) -> ProviderId {
    ProviderId::parse(PROVIDERS[index % PROVIDERS.len()]).expect("provider id")
}

fn received(at: DateTime<Utc>) -> ReferralReceived {
    ReferralReceived {
        referral_id: referral_id(),
        source: gp(),
        source_identifier: Identifier {
            system: "https://gp.example/referrals".into(),
            value: "R-1".into(),
        },
        subject: Subject {
            nhs_number: None,
            name: None,
            birth_date: None,
            postcode: Some(Postcode::parse("LW1 2AB").expect("postcode")),
            language: None,
        },
        needs: vec![Need::Loneliness],
        requester: None,
        priority: Priority::Routine,
        authored_on: at,
        asc_case_id: None,
        content_hash: "h1".into(),
        service_request: serde_json::json!({"resourceType": "ServiceRequest"}).into(),
        patient: None,
        national_data_opt_out: false,
        submitted_by: None,
        sealed: None,
        occurred_at: at,
    }
}

/// What a provider says about its request.
#[derive(Debug, Clone, Copy)]
enum Response {
    Accept,
    Reject,
    Complete,
    Fail,
}

/// One thing that happens, in the order generated.
#[derive(Debug, Clone)]
enum Action {
    /// A provider responds. Ingest judges the response against the log as projected
    /// (the last `lag` entries not yet, except its own) with its own events still in
    /// flight, and publishes it only if the domain accepts it there; `late` leaves it
    /// in flight, behind whatever reaches the log first.
    Respond {
        response: Response,
        provider: usize,
        late: bool,
        lag: usize,
    },
    /// The referrer withdraws the referral (judged as a response is).
    Cancel { late: bool, lag: usize },
    /// The deadline sweeper finds the current request overdue.
    Escalate,
    /// The next message of one producer reaches the log.
    Deliver { from_router: bool },
}

/// How far the projection ingest reads is behind the log: mostly not at all.
fn lag() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(0), 1 => 1..4usize]
}

fn action() -> impl Strategy<Value = Action> {
    let response = prop_oneof![
        Just(Response::Accept),
        Just(Response::Reject),
        Just(Response::Complete),
        Just(Response::Fail),
    ];
    prop_oneof![
        4 => (response, 0..PROVIDERS.len(), any::<bool>(), lag()).prop_map(
            |(response, provider, late, lag)| Action::Respond {
                response,
                provider,
                late,
                lag,
            }
        ),
        1 => (any::<bool>(), lag()).prop_map(|(late, lag)| Action::Cancel { late, lag }),
        3 => Just(Action::Escalate),
        4 => any::<bool>().prop_map(|from_router| Action::Deliver { from_router }),
    ]
}

/// The router's view of a referral, as the test compares it.
#[derive(Debug, Clone, PartialEq)]
struct View {
    status: RouteStatus,
    /// Who holds it and at which attempt; not compared once closed (nothing more
    /// happens then, and the router keeps whoever it last knew).
    holder: Option<(Option<ProviderId>, u32)>,
}

impl View {
    fn of_route(route: &Route) -> Self {
        let holder =
            (route.status != RouteStatus::Closed).then(|| (route.provider.clone(), route.attempt));
        View {
            status: route.status,
            holder,
        }
    }

    /// The mapping from the domain's statuses to the router's:
    ///
    /// - requested → requested, same provider and attempt;
    /// - accepted, in progress, on hold → accepted, same provider and attempt (the
    ///   router only cares that a provider holds it);
    /// - unroutable → unroutable, no provider, same attempt;
    /// - completed, failed, cancelled, entered in error → closed;
    /// - received and rejected have no router counterpart: the router routes (or
    ///   re-routes) as soon as it reads either, so the state it is compared with never
    ///   rests there. `None` makes any such comparison fail.
    fn of_referral(referral: &Referral) -> Option<Self> {
        let held = Some((referral.provider.clone(), referral.attempt));
        let (status, holder) = match referral.status {
            Status::Requested => (RouteStatus::Requested, held),
            Status::Accepted | Status::InProgress | Status::OnHold => (RouteStatus::Accepted, held),
            Status::Unroutable => (RouteStatus::Unroutable, Some((None, referral.attempt))),
            status if status.is_terminal() => (RouteStatus::Closed, None),
            _ => return None,
        };
        Some(View { status, holder })
    }
}

/// One line per event, for failure messages.
fn summary<'a>(events: impl IntoIterator<Item = &'a ReferralEvent>) -> Vec<String> {
    events
        .into_iter()
        .map(|event| match event {
            ReferralEvent::Received(_) => "received".to_owned(),
            ReferralEvent::Routed(routed) => {
                format!(
                    "routed to {} (attempt {})",
                    routed.provider_id, routed.attempt
                )
            }
            ReferralEvent::Unroutable(_) => "unroutable".to_owned(),
            ReferralEvent::Accepted(change) => format!("accepted by {}", change.provider_id),
            ReferralEvent::Rejected(change) => format!("rejected by {}", change.provider_id),
            ReferralEvent::Completed(change) => format!("completed by {}", change.provider_id),
            ReferralEvent::Failed(change) => format!("failed by {}", change.provider_id),
            ReferralEvent::Cancelled(_) => "cancelled".to_owned(),
            other => other.event_type().to_owned(),
        })
        .collect()
}

/// The log and its two readers.
struct World {
    config: RouterConfig,
    directory: CompiledDirectory,
    loads: Loads,
    routes: Routes,
    now: DateTime<Utc>,
    /// The domain's reading of the log so far.
    state: Option<Referral>,
    log: Vec<ReferralEvent>,
    /// Which log entries ingest published (it overlays them until projected).
    published_by_ingest: Vec<bool>,
    /// The router's events, in outbox order, not yet on the log.
    from_router: VecDeque<ReferralEvent>,
    /// Ingest's events, in the order published, not yet on the log.
    from_ingest: VecDeque<ReferralEvent>,
    /// Referrals opened with the vault: none, these tests seal nothing.
    opened: HashMap<ReferralId, ReferralReceived>,
}

impl World {
    fn new() -> Self {
        World {
            config: RouterConfig::default(),
            directory: directory(),
            loads: Loads::default(),
            routes: Routes::new(),
            now: start(),
            state: None,
            log: Vec::new(),
            published_by_ingest: Vec::new(),
            from_router: VecDeque::new(),
            from_ingest: VecDeque::new(),
            opened: HashMap::new(),
        }
    }

    fn step(&mut self) -> Step<'_> {
        Step {
            config: &self.config,
            directory: &self.directory,
            loads: &mut self.loads,
            now: self.now,
            outbox: Vec::new(),
            opened: &self.opened,
        }
    }

    /// Moves the router's events from its outbox to the queue for the log.
    fn publish(&mut self, outbox: Vec<OutboxEvent>) {
        for message in outbox {
            if message.topic == self.config.topics.events {
                let event = ReferralEvent::decode(&message.event_type, &message.payload)
                    .expect("the router publishes events it can read back");
                self.from_router.push_back(event);
            }
        }
    }

    fn route(&self) -> Option<&Route> {
        self.routes.get(&referral_id())
    }

    /// Appends one event to the log and lets both readers read it.
    ///
    /// For a provider's response, the router "took effect" when it changed the route
    /// (accepted; re-routed or sent to triage after a rejection; closed), or, for a
    /// rejection by the provider the log still shows as holding the referral, when
    /// the router had already moved it on (deadline) and judges the rejection to stand:
    /// its consequence, the re-routing, is already on its way to the log.
    fn append(&mut self, event: ReferralEvent) -> Result<(), TestCaseError> {
        let before = self.route().map(View::of_route);
        let rejection_stands = match (&event, self.route()) {
            (ReferralEvent::Rejected(change), Some(route)) => {
                route.stands(&change.provider_id, Status::Rejected)
            }
            _ => false,
        };
        let folded = referral::fold(self.state.as_ref(), &event);
        let body = match &event {
            ReferralEvent::Received(received) => serde_json::to_vec(received).expect("body"),
            other => other.encode(),
        };
        let mut routes = std::mem::take(&mut self.routes);
        let mut step = self.step();
        step.apply(&mut routes, &event, &body);
        let outbox = step.outbox;
        self.routes = routes;
        self.publish(outbox);
        let after = self.route().map(View::of_route);
        let applied = matches!(folded, Folded::Applied(_));
        if let Folded::Applied(next) = folded {
            self.state = Some(next);
        }
        self.published_by_ingest.push(!matches!(
            event,
            ReferralEvent::Routed(_) | ReferralEvent::Unroutable(_)
        ));
        self.log.push(event.clone());
        if matches!(
            event,
            ReferralEvent::Accepted(_)
                | ReferralEvent::Rejected(_)
                | ReferralEvent::Completed(_)
                | ReferralEvent::Failed(_)
                | ReferralEvent::Cancelled(_)
        ) {
            prop_assert_eq!(
                applied,
                before != after || rejection_stands,
                "the domain and the router disagree on whether the last event took effect; log: {:#?}",
                summary(&self.log)
            );
        }
        Ok(())
    }

    /// What ingest judges a new submission against: the log as projected `lag`
    /// entries ago, with its own events since (projected or not) overlaid.
    fn ingest_view(&self, lag: usize) -> Option<Referral> {
        let projected = self.log.len().saturating_sub(lag);
        let own_since = self.log[projected..]
            .iter()
            .zip(&self.published_by_ingest[projected..])
            .filter(|(_, own)| **own)
            .map(|(event, _)| event);
        self.log[..projected]
            .iter()
            .chain(own_since)
            .chain(&self.from_ingest)
            .fold(None, |state, event| {
                match referral::fold(state.as_ref(), event) {
                    Folded::Applied(next) => Some(next),
                    Folded::Repeat | Folded::Superseded(_) => state,
                }
            })
    }

    /// Publishes `event` if ingest would accept it now; on time, it reaches the log
    /// at once (with anything ingest sent before it).
    fn submit(
        &mut self,
        event: ReferralEvent,
        late: bool,
        lag: usize,
    ) -> Result<(), TestCaseError> {
        let view = self.ingest_view(lag);
        if !matches!(referral::fold(view.as_ref(), &event), Folded::Applied(_)) {
            return Ok(());
        }
        self.from_ingest.push_back(event);
        if !late {
            while let Some(event) = self.from_ingest.pop_front() {
                self.append(event)?;
            }
        }
        Ok(())
    }

    fn run(&mut self, action: &Action) -> Result<(), TestCaseError> {
        self.now += Duration::minutes(7);
        match *action {
            Action::Respond {
                response,
                provider: index,
                late,
                lag,
            } => {
                let change = ProviderStatusChange {
                    referral_id: referral_id(),
                    provider_id: provider(index),
                    reason: None,
                    occurred_at: self.now,
                };
                let event = match response {
                    Response::Accept => ReferralEvent::Accepted(change),
                    Response::Reject => ReferralEvent::Rejected(change),
                    Response::Complete => ReferralEvent::Completed(change),
                    Response::Fail => ReferralEvent::Failed(change),
                };
                self.submit(event, late, lag)?;
            }
            Action::Cancel { late, lag } => {
                let closed = ReferralClosedBy {
                    referral_id: referral_id(),
                    by: Actor::Source(gp()),
                    reason: None,
                    occurred_at: self.now,
                };
                self.submit(ReferralEvent::Cancelled(closed), late, lag)?;
            }
            Action::Escalate => {
                let due = self
                    .route()
                    .filter(|route| route.status == RouteStatus::Requested)
                    .and_then(|route| route.accept_by);
                if let Some(deadline) = due {
                    self.now = self.now.max(deadline);
                    let mut routes = std::mem::take(&mut self.routes);
                    let mut step = self.step();
                    if let Some(route) = routes.get_mut(&referral_id()) {
                        step.escalate(route);
                    }
                    let outbox = step.outbox;
                    self.routes = routes;
                    self.publish(outbox);
                }
            }
            Action::Deliver { from_router } => {
                let (first, second) = if from_router {
                    (&mut self.from_router, &mut self.from_ingest)
                } else {
                    (&mut self.from_ingest, &mut self.from_router)
                };
                if let Some(event) = first.pop_front().or_else(|| second.pop_front()) {
                    self.append(event)?;
                }
            }
        }
        self.check()
    }

    /// The router's view is what the domain's state will be once the router's own
    /// events still in flight reach the log: the router acts on its decisions before
    /// reading them back.
    fn check(&self) -> Result<(), TestCaseError> {
        let Some(route) = self.route() else {
            return Ok(());
        };
        let expected_state = self
            .from_router
            .iter()
            .fold(self.state.clone(), |state, event| {
                match referral::fold(state.as_ref(), event) {
                    Folded::Applied(next) => Some(next),
                    Folded::Repeat | Folded::Superseded(_) => state,
                }
            });
        let expected = expected_state.as_ref().and_then(View::of_referral);
        prop_assert_eq!(
            Some(View::of_route(route)),
            expected,
            "the router's route differs from the domain's state; log: {:#?}; router's events in flight: {:#?}",
            summary(&self.log),
            summary(&self.from_router)
        );
        // Caseloads: the provider the referral is (or will be) with counts it once,
        // everyone else not at all.
        for index in 0..PROVIDERS.len() {
            let provider = provider(index);
            let holds = expected_state.as_ref().is_some_and(|state| {
                state.provider.as_ref() == Some(&provider)
                    && (state.status == Status::Requested || state.status.is_with_provider())
            });
            prop_assert_eq!(
                self.loads
                    .active()
                    .get(&provider)
                    .copied()
                    .unwrap_or_default(),
                u32::from(holds),
                "{}'s caseload; log: {:#?}; router's events in flight: {:#?}",
                provider,
                summary(&self.log),
                summary(&self.from_router)
            );
        }
        if let Some(state) = self
            .state
            .as_ref()
            .filter(|state| !state.status.is_terminal())
        {
            let on_log = route.on_log();
            let mut expected = state.standing();
            // Mapped as the router keeps it: it does not follow a Task past acceptance,
            // and (see `Route::on_log`) it keeps no rejection that its own re-routing
            // had already overtaken.
            if expected.status.is_with_provider() {
                expected.status = Status::Accepted;
            }
            if expected.status == Status::Rejected {
                expected.status = Status::Requested;
                expected.provider = expected.last_tried;
            }
            prop_assert_eq!(
                (on_log.status, on_log.provider),
                (expected.status, expected.provider),
                "where the router thinks the log stands differs from the domain's state; log: {:#?}; router's events in flight: {:#?}",
                summary(&self.log),
                summary(&self.from_router)
            );
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_router_and_the_domain_agree_on_every_interleaving_of_the_log(
        actions in proptest::collection::vec(action(), 0..40),
        drain_router_first in any::<bool>(),
    ) {
        let mut world = World::new();
        world.append(ReferralEvent::Received(Box::new(received(world.now))))?;
        world.check()?;
        for action in &actions {
            world.run(action)?;
        }
        // Everything in flight reaches the log in the end.
        while !world.from_router.is_empty() || !world.from_ingest.is_empty() {
            world.run(&Action::Deliver { from_router: drain_router_first })?;
        }
        prop_assert!(world.from_router.is_empty());
    }
}

/// A world where the referral has been received and routed to prov-a (attempt 1),
/// with that routing already back on the log.
fn routed_to_a() -> World {
    let mut world = World::new();
    let received = ReferralEvent::Received(Box::new(received(world.now)));
    world.append(received).expect("receipt");
    world
        .run(&Action::Deliver { from_router: true })
        .expect("routing to prov-a comes back");
    world
}

fn accept(provider: usize) -> Action {
    Action::Respond {
        response: Response::Accept,
        provider,
        late: false,
        lag: 0,
    }
}

fn held_by(world: &World, provider: usize, attempt: u32) -> View {
    let view = View {
        status: RouteStatus::Accepted,
        holder: Some((Some(self::provider(provider)), attempt)),
    };
    let state = world.state.as_ref().expect("state");
    assert_eq!(View::of_referral(state), Some(view.clone()), "the domain");
    view
}

#[test]
fn an_acceptance_by_the_previous_provider_before_the_reroute_came_back_stands() {
    let mut world = routed_to_a();
    world.run(&Action::Escalate).expect("re-routed to prov-b");
    world.run(&accept(0)).expect("prov-a accepts");
    world
        .run(&Action::Deliver { from_router: true })
        .expect("the re-routing comes back, superseded");
    let route = world.route().expect("route");
    assert_eq!(View::of_route(route), held_by(&world, 0, 1));
    assert_eq!(world.loads.active().get(&provider(1)).copied(), Some(0));
    assert_eq!(world.loads.active().get(&provider(0)).copied(), Some(1));
}

#[test]
fn an_acceptance_by_the_provider_the_log_still_shows_stands_after_two_re_routings() {
    let mut world = routed_to_a();
    world.run(&Action::Escalate).expect("re-routed to prov-b");
    world.run(&Action::Escalate).expect("re-routed to prov-c");
    world.run(&accept(0)).expect("prov-a accepts");
    let route = world.route().expect("route");
    assert_eq!(View::of_route(route), held_by(&world, 0, 1));
}

#[test]
fn an_acceptance_that_reaches_the_log_before_the_triage_decision_stands() {
    let mut world = routed_to_a();
    for _ in 0..3 {
        world
            .run(&Action::Escalate)
            .expect("re-routed, then to triage");
    }
    assert_eq!(
        world.route().map(|route| route.status),
        Some(RouteStatus::Unroutable)
    );
    world.run(&accept(0)).expect("prov-a accepts");
    let route = world.route().expect("route");
    assert_eq!(View::of_route(route), held_by(&world, 0, 1));
}

#[test]
fn an_acceptance_after_the_triage_decision_came_back_does_not_stand() {
    let mut world = World::new();
    // Nobody serves this postcode: the receipt goes straight to triage.
    let mut elsewhere = received(world.now);
    elsewhere.subject.postcode = Some(Postcode::parse("ZZ9 9ZZ").expect("postcode"));
    world
        .append(ReferralEvent::Received(Box::new(elsewhere)))
        .expect("receipt");
    world
        .run(&Action::Deliver { from_router: true })
        .expect("triage comes back");
    let route = world.route().expect("route");
    assert_eq!(route.on_log().status, Status::Unroutable);
    assert!(!route.stands(&provider(0), Status::Accepted));
}

#[test]
fn an_acceptance_by_the_new_provider_before_its_routing_came_back_does_not_stand() {
    let mut world = routed_to_a();
    world.run(&Action::Escalate).expect("re-routed to prov-b");
    let route = world.route().expect("route");
    assert_eq!(route.provider, Some(provider(1)));
    assert!(
        !route.stands(&provider(1), Status::Accepted),
        "the log does not show prov-b holding the referral yet"
    );
    assert!(route.stands(&provider(0), Status::Accepted));
}

#[test]
fn a_rejection_by_a_provider_the_router_already_moved_on_from_re_routes_nothing_more() {
    let mut world = routed_to_a();
    world.run(&Action::Escalate).expect("re-routed to prov-b");
    let before = world.route().map(View::of_route);
    world
        .run(&Action::Respond {
            response: Response::Reject,
            provider: 0,
            late: false,
            lag: 0,
        })
        .expect("prov-a rejects; the domain applies it");
    assert_eq!(world.route().map(View::of_route), before);
    assert_eq!(world.from_router.len(), 1, "only the routing to prov-b");
}
