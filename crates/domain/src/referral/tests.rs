//! Given events, when a command, then events or a refusal.

use chrono::{Duration, TimeZone};

use super::*;
use crate::event::{Identifier, Priority, Subject};
use crate::need::Need;
use crate::outcome::{OutcomeMeasure, Timepoint};
use crate::NhsNumber;

fn at(minute: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap() + Duration::minutes(minute)
}

fn gp() -> Source {
    Source::parse("gp:A81001").unwrap()
}

fn provider(name: &str) -> ProviderId {
    ProviderId::parse(name).unwrap()
}

fn referral_id() -> ReferralId {
    ReferralId::derive(&gp(), "https://gp.example/referrals", "R-1")
}

fn received(hash: &str) -> ReferralReceived {
    ReferralReceived {
        referral_id: referral_id(),
        source: gp(),
        source_identifier: Identifier {
            system: "https://gp.example/referrals".into(),
            value: "R-1".into(),
        },
        subject: Subject {
            nhs_number: Some(NhsNumber::parse("9990000018").unwrap()),
            name: None,
            birth_date: None,
            postcode: Some(crate::Postcode::parse("LS1 4AP").unwrap()),
            language: None,
        },
        needs: vec![Need::Loneliness],
        requester: Some("Practitioner/dr-example".into()),
        priority: Priority::Routine,
        authored_on: at(0),
        asc_case_id: None,
        content_hash: hash.into(),
        service_request: serde_json::json!({"resourceType": "ServiceRequest"}).into(),
        patient: None,
        national_data_opt_out: false,
        submitted_by: None,
        sealed: None,
        occurred_at: at(0),
    }
}

/// Deadline of every routing in these tests: an hour after routing at minute 1.
const DEADLINE_MINUTE: i64 = 61;

fn routed(to: &str, attempt: u32, minute: i64) -> ReferralRouted {
    ReferralRouted {
        referral_id: referral_id(),
        provider_id: provider(to),
        attempt,
        directory_version: "v1".into(),
        rule: "least-loaded".into(),
        candidates: vec![],
        accept_by: at(minute + 60),
        occurred_at: at(minute),
    }
}

fn unroutable(minute: i64) -> ReferralUnroutable {
    ReferralUnroutable {
        referral_id: referral_id(),
        directory_version: "v1".into(),
        reasons: vec!["no provider serves the area".into()],
        candidates: vec![],
        occurred_at: at(minute),
    }
}

fn change(by: &str) -> ProviderStatusChange {
    ProviderStatusChange {
        referral_id: referral_id(),
        provider_id: provider(by),
        reason: None,
        occurred_at: at(5),
    }
}

fn closed_by(actor: &str) -> ReferralClosedBy {
    ReferralClosedBy {
        referral_id: referral_id(),
        by: Actor::parse(actor).unwrap(),
        reason: Some("no longer needed".into()),
        occurred_at: at(6),
    }
}

fn outcome(by: &str, observation: u128) -> OutcomeRecorded {
    OutcomeRecorded {
        referral_id: referral_id(),
        provider_id: provider(by),
        observation_id: Uuid::from_u128(observation),
        timepoint: Timepoint::Baseline,
        measure: OutcomeMeasure::Ucla3 { score: 7 },
        effective_at: at(10),
        occurred_at: at(10),
    }
}

fn contact(by: &str, minute: i64) -> ContactRecorded {
    ContactRecorded {
        referral_id: referral_id(),
        provider_id: provider(by),
        contact_at: at(minute),
        mode: crate::event::ContactMode::Phone,
        occurred_at: at(minute),
    }
}

fn consent(by: &str) -> ConsentChange {
    ConsentChange {
        referral_id: referral_id(),
        scope: crate::event::ConsentScope::Evaluation,
        recorded_by: Actor::parse(by).unwrap(),
        occurred_at: at(7),
    }
}

/// The events that bring a referral to `status`. Where a provider is involved it is
/// `prov-a`, routed at minute 1 with its deadline at minute 61.
fn history_to(status: Status) -> Vec<ReferralEvent> {
    use ReferralEvent as E;
    let base = vec![E::Received(Box::new(received("h1")))];
    let requested = [base.clone(), vec![E::Routed(routed("prov-a", 1, 1))]].concat();
    let accepted = [requested.clone(), vec![E::Accepted(change("prov-a"))]].concat();
    let extra = match status {
        Status::Received => return base,
        Status::Unroutable => return [base, vec![E::Unroutable(unroutable(1))]].concat(),
        Status::Requested => return requested,
        Status::Accepted => return accepted,
        Status::Rejected => return [requested, vec![E::Rejected(change("prov-a"))]].concat(),
        Status::Cancelled => {
            return [requested, vec![E::Cancelled(closed_by("gp:A81001"))]].concat()
        }
        Status::EnteredInError => {
            return [requested, vec![E::EnteredInError(closed_by("gp:A81001"))]].concat()
        }
        Status::InProgress => E::Started(change("prov-a")),
        Status::OnHold => E::OnHold(change("prov-a")),
        Status::Completed => E::Completed(change("prov-a")),
        Status::Failed => E::Failed(change("prov-a")),
    };
    [accepted, vec![extra]].concat()
}

fn given(status: Status) -> Referral {
    let state = replay(&history_to(status)).expect("history starts with a receipt");
    assert_eq!(
        state.status, status,
        "fixture history should reach {status}"
    );
    state
}

/// The command that asks for `to`. Routing commands come after the deadline, so the
/// deadline rule never hides the transition rule here.
fn command_to(to: Status, state: &Referral) -> Command {
    let after_deadline = DEADLINE_MINUTE + 1;
    match to {
        Status::Received => Command::Receive(Box::new(received("h1"))),
        Status::Requested => Command::Route(routed("prov-b", state.attempt + 1, after_deadline)),
        Status::Unroutable => Command::MarkUnroutable(unroutable(after_deadline)),
        Status::Accepted => Command::Accept(change("prov-a")),
        Status::Rejected => Command::Reject(change("prov-a")),
        Status::InProgress => Command::Start(change("prov-a")),
        Status::OnHold => Command::Hold(change("prov-a")),
        Status::Completed => Command::Complete(change("prov-a")),
        Status::Failed => Command::Fail(change("prov-a")),
        Status::Cancelled => Command::Cancel(closed_by("gp:A81001")),
        Status::EnteredInError => Command::EnterInError(closed_by("gp:A81001")),
    }
}

/// The lifecycle of DESIGN.md, written out edge by edge (not computed from the code).
const ALLOWED: &[(Status, Status)] = {
    use Status::*;
    &[
        // Routing and re-routing.
        (Received, Requested),
        (Unroutable, Requested),
        (Rejected, Requested),
        (Requested, Requested),
        (Received, Unroutable),
        (Rejected, Unroutable),
        (Requested, Unroutable),
        // requested → accepted | rejected | cancelled
        (Requested, Accepted),
        (Requested, Rejected),
        (Requested, Cancelled),
        // accepted → in-progress | on-hold | completed | failed | cancelled
        (Accepted, InProgress),
        (Accepted, OnHold),
        (Accepted, Completed),
        (Accepted, Failed),
        (Accepted, Cancelled),
        // in-progress ↔ on-hold
        (InProgress, OnHold),
        (OnHold, InProgress),
        // in-progress | on-hold → completed | failed | cancelled
        (InProgress, Completed),
        (InProgress, Failed),
        (InProgress, Cancelled),
        (OnHold, Completed),
        (OnHold, Failed),
        (OnHold, Cancelled),
        // The referrer withdraws a referral no provider holds.
        (Received, Cancelled),
        (Unroutable, Cancelled),
        (Rejected, Cancelled),
        // any → entered-in-error
        (Received, EnteredInError),
        (Unroutable, EnteredInError),
        (Requested, EnteredInError),
        (Accepted, EnteredInError),
        (Rejected, EnteredInError),
        (InProgress, EnteredInError),
        (OnHold, EnteredInError),
        (Completed, EnteredInError),
        (Failed, EnteredInError),
        (Cancelled, EnteredInError),
    ]
};

fn is_provider_status(status: Status) -> bool {
    matches!(
        status,
        Status::Accepted
            | Status::Rejected
            | Status::InProgress
            | Status::OnHold
            | Status::Completed
            | Status::Failed
    )
}

#[test]
fn every_allowed_transition_produces_one_event_that_reaches_the_target() {
    for &(from, to) in ALLOWED {
        let state = given(from);
        let events = decide(Some(&state), command_to(to, &state)).unwrap_or_else(|refusal| {
            panic!("{from} → {to} should be allowed, was refused: {refusal}")
        });
        assert_eq!(events.len(), 1, "{from} → {to}");
        let after = apply(Some(state), &events[0]).expect("state");
        assert_eq!(after.status, to, "{from} → {to}");
    }
}

#[test]
fn every_transition_outside_the_graph_is_refused_without_events() {
    let mut refused = 0;
    for from in Status::ALL {
        for to in Status::ALL {
            if to == Status::Received || from == to || ALLOWED.contains(&(from, to)) {
                continue;
            }
            let state = given(from);
            let outcome = decide(Some(&state), command_to(to, &state));
            let expected = if is_provider_status(to) && state.provider.is_none() {
                // Nobody holds the referral, so no provider may move it.
                Refusal::NotAssignedProvider {
                    provider: provider("prov-a"),
                }
            } else {
                Refusal::InvalidTransition { from, to }
            };
            assert_eq!(outcome, Err(expected), "{from} → {to}");
            refused += 1;
        }
    }
    // 11 statuses × 10 targets, less the 10 self-pairs and the other allowed edges
    // (requested → requested, a re-route, is both).
    let allowed_between_different_statuses = ALLOWED.iter().filter(|(from, to)| from != to).count();
    assert_eq!(allowed_between_different_statuses, 35);
    assert_eq!(refused, 11 * 10 - 10 - allowed_between_different_statuses);
}

#[test]
fn repeating_the_current_status_is_an_idempotent_no_op() {
    for status in Status::ALL {
        if matches!(status, Status::Received | Status::Requested) {
            continue; // a receipt repeat is tested below; requested → requested is a re-route
        }
        let state = given(status);
        assert_eq!(
            decide(Some(&state), command_to(status, &state)),
            Ok(vec![]),
            "{status}"
        );
    }
}

#[test]
fn a_new_referral_is_received() {
    let events = decide(None, Command::Receive(Box::new(received("h1")))).unwrap();
    assert_eq!(
        events,
        vec![ReferralEvent::Received(Box::new(received("h1")))]
    );
    assert_eq!(replay(&events).unwrap().status, Status::Received);
}

#[test]
fn a_resubmission_with_the_same_content_adds_nothing() {
    let state = given(Status::Accepted);
    assert_eq!(
        decide(Some(&state), Command::Receive(Box::new(received("h1")))),
        Ok(vec![])
    );
}

#[test]
fn a_resubmission_with_different_content_is_a_conflict() {
    let state = given(Status::Received);
    assert_eq!(
        decide(Some(&state), Command::Receive(Box::new(received("h2")))),
        Err(Refusal::ConflictingResubmission(referral_id()))
    );
}

#[test]
fn commands_for_an_unknown_referral_are_refused() {
    assert_eq!(
        decide(None, Command::Accept(change("prov-a"))),
        Err(Refusal::UnknownReferral(referral_id()))
    );
}

#[test]
fn a_command_for_another_referral_is_refused() {
    let state = given(Status::Requested);
    let mut other = change("prov-a");
    other.referral_id = ReferralId::derive(&gp(), "https://gp.example/referrals", "R-2");
    assert!(matches!(
        decide(Some(&state), Command::Accept(other)),
        Err(Refusal::WrongReferral { .. })
    ));
}

#[test]
fn another_provider_cannot_move_the_referral() {
    for status in [
        Status::Requested,
        Status::Accepted,
        Status::InProgress,
        Status::OnHold,
    ] {
        let state = given(status);
        for command in [
            Command::Accept(change("prov-z")),
            Command::Reject(change("prov-z")),
            Command::Start(change("prov-z")),
            Command::Complete(change("prov-z")),
            Command::RecordContact(contact("prov-z", 8)),
            Command::RecordOutcome(outcome("prov-z", 1)),
        ] {
            assert_eq!(
                decide(Some(&state), command),
                Err(Refusal::NotAssignedProvider {
                    provider: provider("prov-z")
                }),
                "{status}"
            );
        }
    }
}

#[test]
fn re_routing_waits_for_the_acceptance_deadline() {
    let state = given(Status::Requested);
    let early = routed("prov-b", 2, DEADLINE_MINUTE - 1);
    assert_eq!(
        decide(Some(&state), Command::Route(early)),
        Err(Refusal::DeadlineNotPassed {
            accept_by: at(DEADLINE_MINUTE)
        })
    );
    assert!(matches!(
        decide(
            Some(&state),
            Command::MarkUnroutable(unroutable(DEADLINE_MINUTE - 1))
        ),
        Err(Refusal::DeadlineNotPassed { .. })
    ));
    let on_time = routed("prov-b", 2, DEADLINE_MINUTE);
    assert_eq!(
        decide(Some(&state), Command::Route(on_time.clone())),
        Ok(vec![ReferralEvent::Routed(on_time)])
    );
}

#[test]
fn a_referral_is_never_routed_back_to_a_provider_that_had_it() {
    let state = given(Status::Rejected);
    assert_eq!(
        decide(Some(&state), Command::Route(routed("prov-a", 2, 10))),
        Err(Refusal::AlreadyTried(provider("prov-a")))
    );
}

#[test]
fn a_duplicate_routing_decision_is_a_no_op_and_a_stale_one_is_refused() {
    let state = given(Status::Requested);
    assert_eq!(
        decide(Some(&state), Command::Route(routed("prov-a", 1, 1))),
        Ok(vec![])
    );
    assert_eq!(
        decide(Some(&state), Command::Route(routed("prov-b", 1, 1))),
        Err(Refusal::StaleAttempt { current: 1, got: 1 })
    );
    assert_eq!(
        decide(Some(&state), Command::Route(routed("prov-b", 5, 100))),
        Err(Refusal::StaleAttempt { current: 1, got: 5 })
    );
}

#[test]
fn re_routing_after_rejection_moves_the_task_to_the_next_provider() {
    let mut history = history_to(Status::Rejected);
    history.push(ReferralEvent::Routed(routed("prov-b", 2, 10)));
    let state = replay(&history).unwrap();
    assert_eq!(state.status, Status::Requested);
    assert_eq!(state.provider, Some(provider("prov-b")));
    assert_eq!(
        state.tried_providers,
        vec![provider("prov-a"), provider("prov-b")]
    );
    // The provider that rejected cannot act on it any more.
    assert!(decide(Some(&state), Command::Accept(change("prov-a"))).is_err());
    assert_eq!(
        decide(Some(&state), Command::Accept(change("prov-b")))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn only_the_referrer_the_holding_provider_or_linkwork_may_cancel() {
    let state = given(Status::Accepted);
    assert!(matches!(
        decide(Some(&state), Command::Cancel(closed_by("gp:B82002"))),
        Err(Refusal::NotPermitted { .. })
    ));
    assert!(matches!(
        decide(Some(&state), Command::Cancel(closed_by("provider:prov-z"))),
        Err(Refusal::NotPermitted { .. })
    ));
    for actor in ["gp:A81001", "provider:prov-a", "system:router", "admin:ops"] {
        assert_eq!(
            decide(Some(&state), Command::Cancel(closed_by(actor)))
                .unwrap()
                .len(),
            1,
            "{actor}"
        );
    }
    // A provider that rejected no longer holds the referral.
    let rejected = given(Status::Rejected);
    assert!(matches!(
        decide(
            Some(&rejected),
            Command::Cancel(closed_by("provider:prov-a"))
        ),
        Err(Refusal::NotPermitted { .. })
    ));
}

#[test]
fn contacts_and_activities_need_the_referral_to_be_with_the_provider() {
    for status in [Status::Accepted, Status::InProgress, Status::OnHold] {
        let state = given(status);
        assert_eq!(
            decide(Some(&state), Command::RecordContact(contact("prov-a", 8)))
                .unwrap()
                .len(),
            1
        );
    }
    for status in [Status::Requested, Status::Completed, Status::Cancelled] {
        let state = given(status);
        assert!(
            matches!(
                decide(Some(&state), Command::RecordContact(contact("prov-a", 8))),
                Err(Refusal::NotActive { .. })
            ),
            "{status}"
        );
    }
}

#[test]
fn outcomes_are_recorded_once_and_may_follow_completion() {
    let state = given(Status::Completed);
    let events = decide(Some(&state), Command::RecordOutcome(outcome("prov-a", 1))).unwrap();
    assert_eq!(events.len(), 1);
    let state = apply(Some(state), &events[0]).unwrap();
    assert_eq!(
        decide(Some(&state), Command::RecordOutcome(outcome("prov-a", 1))),
        Ok(vec![])
    );
    let requested = given(Status::Requested);
    assert!(matches!(
        decide(
            Some(&requested),
            Command::RecordOutcome(outcome("prov-a", 2))
        ),
        Err(Refusal::NotActive { .. })
    ));
}

#[test]
fn consent_is_given_and_withdrawn_once_each() {
    let state = given(Status::InProgress);
    let given_events = decide(
        Some(&state),
        Command::GiveConsent(consent("provider:prov-a")),
    )
    .unwrap();
    let state = apply(Some(state), &given_events[0]).unwrap();
    assert!(state.consent_to_evaluation);
    assert_eq!(
        decide(
            Some(&state),
            Command::GiveConsent(consent("provider:prov-a"))
        ),
        Ok(vec![])
    );
    let withdrawn = decide(Some(&state), Command::WithdrawConsent(consent("gp:A81001"))).unwrap();
    let state = apply(Some(state), &withdrawn[0]).unwrap();
    assert!(!state.consent_to_evaluation);
    assert_eq!(
        decide(Some(&state), Command::WithdrawConsent(consent("gp:A81001"))),
        Ok(vec![])
    );
    assert!(matches!(
        decide(
            Some(&state),
            Command::GiveConsent(consent("provider:prov-z"))
        ),
        Err(Refusal::NotPermitted { .. })
    ));
}

#[test]
fn the_first_contact_is_the_earliest_one_recorded() {
    let mut history = history_to(Status::InProgress);
    history.push(ReferralEvent::ContactRecorded(contact("prov-a", 30)));
    history.push(ReferralEvent::ContactRecorded(contact("prov-a", 20)));
    let state = replay(&history).unwrap();
    assert_eq!(state.first_contact_at, Some(at(20)));
    assert_eq!(state.contacts, 2);
    assert_eq!(state.version, history.len() as u64);
}

#[test]
fn events_for_a_referral_never_received_leave_no_state() {
    assert_eq!(
        apply(None, &ReferralEvent::Accepted(change("prov-a"))),
        None
    );
}

#[test]
fn folding_a_receipt_into_nothing_creates_the_referral() {
    let folded = fold(None, &ReferralEvent::Received(Box::new(received("h1"))));
    let Folded::Applied(state) = folded else {
        panic!("a receipt should create the referral, got {folded:?}");
    };
    assert_eq!(state.status, Status::Received);
    assert_eq!(state.version, 1);
}

#[test]
fn folding_any_other_event_into_nothing_is_superseded_as_unknown() {
    assert_eq!(
        fold(None, &ReferralEvent::Accepted(change("prov-a"))),
        Folded::Superseded(Refusal::UnknownReferral(referral_id()))
    );
}

#[test]
fn folding_an_allowed_event_applies_it_as_apply_would() {
    for &(from, to) in ALLOWED {
        let state = given(from);
        let events = decide(Some(&state), command_to(to, &state)).expect("allowed");
        let expected = apply(Some(state.clone()), &events[0]).expect("state");
        assert_eq!(
            fold(Some(&state), &events[0]),
            Folded::Applied(expected),
            "{from} → {to}"
        );
    }
}

#[test]
fn folding_a_re_sent_status_or_receipt_is_a_repeat() {
    let accepted = given(Status::Accepted);
    assert_eq!(
        fold(Some(&accepted), &ReferralEvent::Accepted(change("prov-a"))),
        Folded::Repeat
    );
    assert_eq!(
        fold(
            Some(&accepted),
            &ReferralEvent::Received(Box::new(received("h1")))
        ),
        Folded::Repeat
    );
    let rejected = given(Status::Rejected);
    assert_eq!(
        fold(Some(&rejected), &ReferralEvent::Rejected(change("prov-a"))),
        Folded::Repeat,
        "the provider that rejected re-sends its rejection"
    );
}

#[test]
fn an_acceptance_that_reaches_the_log_after_the_re_routing_is_superseded() {
    let mut history = history_to(Status::Requested);
    history.push(ReferralEvent::Routed(routed(
        "prov-b",
        2,
        DEADLINE_MINUTE + 1,
    )));
    let state = replay(&history).expect("state");
    assert_eq!(state.provider, Some(provider("prov-b")));
    assert_eq!(
        fold(Some(&state), &ReferralEvent::Accepted(change("prov-a"))),
        Folded::Superseded(Refusal::NotAssignedProvider {
            provider: provider("prov-a")
        })
    );
}

#[test]
fn a_re_routing_that_reaches_the_log_after_the_acceptance_is_superseded() {
    let state = given(Status::Accepted);
    assert_eq!(
        fold(
            Some(&state),
            &ReferralEvent::Routed(routed("prov-b", 2, DEADLINE_MINUTE + 1))
        ),
        Folded::Superseded(Refusal::InvalidTransition {
            from: Status::Accepted,
            to: Status::Requested
        })
    );
}

#[test]
fn replay_skips_the_events_that_fold_supersedes() {
    let mut history = history_to(Status::Accepted);
    history.push(ReferralEvent::Routed(routed(
        "prov-b",
        2,
        DEADLINE_MINUTE + 1,
    )));
    history.push(ReferralEvent::Accepted(change("prov-b")));
    let state = replay(&history).expect("state");
    assert_eq!(state.status, Status::Accepted);
    assert_eq!(state.provider, Some(provider("prov-a")));
    assert_eq!(state.attempt, 1);
    assert_eq!(state.version, 3, "received, routed, accepted");
}

#[test]
fn a_provider_change_is_judged_on_where_the_task_stands_alone() {
    let a = provider("prov-a");
    let b = provider("prov-b");
    let requested_from_a = Standing {
        status: Status::Requested,
        provider: Some(&a),
        last_tried: Some(&a),
    };
    assert_eq!(
        judge_provider_change(requested_from_a, &a, Status::Accepted),
        Ok(true)
    );
    assert_eq!(
        judge_provider_change(requested_from_a, &b, Status::Accepted),
        Err(Refusal::NotAssignedProvider {
            provider: b.clone()
        })
    );
    let rejected_by_a = given(Status::Rejected);
    assert_eq!(rejected_by_a.standing().provider, None);
    assert_eq!(
        judge_provider_change(rejected_by_a.standing(), &a, Status::Rejected),
        Ok(false),
        "re-sending its own rejection is a repeat"
    );
    assert_eq!(
        judge_provider_change(rejected_by_a.standing(), &a, Status::Accepted),
        Err(Refusal::NotAssignedProvider {
            provider: a.clone()
        })
    );
}

fn erased(by: &str) -> ReferralErased {
    ReferralErased {
        referral_id: referral_id(),
        erased_by: Actor::parse(by).unwrap(),
        occurred_at: at(30),
    }
}

#[test]
fn an_erasure_by_an_administrator_cancels_an_open_referral_and_leaves_a_closed_one_closed() {
    for from in Status::ALL {
        let state = given(from);
        let events = decide(Some(&state), Command::Erase(erased("admin:ig-lead")))
            .unwrap_or_else(|refusal| panic!("erasing a {from} referral was refused: {refusal}"));
        assert_eq!(events, vec![ReferralEvent::Erased(erased("admin:ig-lead"))]);
        let after = apply(Some(state), &events[0]).expect("state");
        let expected = if from.is_terminal() {
            from
        } else {
            Status::Cancelled
        };
        assert_eq!(after.status, expected, "erasing a {from} referral");
        assert_eq!(after.accept_by, None);
    }
    // Repeated, it applies again (it redacts again); nothing in the state refuses it.
    let cancelled = given(Status::Cancelled);
    assert!(matches!(
        fold(
            Some(&cancelled),
            &ReferralEvent::Erased(erased("system:ingest"))
        ),
        Folded::Applied(_)
    ));
}

#[test]
fn only_an_administrator_or_linkwork_itself_may_erase() {
    let state = given(Status::Accepted);
    for actor in ["gp:A81001", "provider:connectors", "self"] {
        assert!(
            matches!(
                decide(Some(&state), Command::Erase(erased(actor))),
                Err(Refusal::NotPermitted { .. })
            ),
            "{actor} erased"
        );
    }
}
