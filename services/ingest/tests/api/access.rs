//! Access, route by route: the test walks the route table ingest's router is built
//! from (`linkwork_ingest::http::routes()`), not a list of its own, and proves that
//! every route refuses a request without a token, with a bad token, and from every
//! role outside its scope, whatever the request's body.

use linkwork_auth::{scopes, Role};
use linkwork_ingest::http::{routes, Access, RouteSpec};
use secrecy::SecretString;

use crate::helpers::{spawn_app, token, token_with, TestApp};

/// Callers of every kind, each with its role's scopes.
const CALLERS: [(Role, &str); 7] = [
    (Role::Source, "gp:A81001"),
    (Role::Source, "self"),
    (Role::Source, "asc"),
    (Role::Provider, "townley-connectors"),
    (Role::Data, "evaluation-team"),
    (Role::Commissioner, "townley-icb"),
    (Role::Admin, "ops"),
];

/// The rule of `POST /fhir/Consent`, which is not one scope's.
const CONSENT: &str = "consent";

/// Who gets past a route of each scope (worked out here from DESIGN.md, not from the
/// code under test): referrals are sent by sources only; read by the referrer, the
/// provider holding them and administrators (the shared `self` never reads); changed
/// by the provider holding them only; the call log is ASC's, or an administrator's.
fn passes(scope: &str, role: Role, client: &str) -> bool {
    match scope {
        scopes::REFERRAL_SUBMIT => role == Role::Source,
        scopes::REFERRAL_READ => match role {
            Role::Source => client != "self",
            Role::Provider | Role::Admin => true,
            Role::Data | Role::Commissioner => false,
        },
        scopes::REFERRAL_RESPOND => role == Role::Provider,
        scopes::CALL_LOG_SUBMIT => client == "asc" || role == Role::Admin,
        // Consent is recorded by the provider holding the referral or by its referrer
        // (not by the shared self identity, which is every self-referrer).
        CONSENT => role == Role::Provider || (role == Role::Source && client != "self"),
        // The audit trail is the administrators'.
        scopes::ADMIN => role == Role::Admin,
        other => panic!("a route with scope {other}: add who passes it to this test"),
    }
}

async fn call(app: &TestApp, route: &RouteSpec, token: Option<&str>) -> (u16, serde_json::Value) {
    let path = route
        .path
        .replace("{id}", &uuid::Uuid::new_v4().to_string());
    let method = reqwest::Method::from_bytes(route.method.as_bytes()).unwrap();
    let mut request = app
        .client
        .request(method.clone(), format!("{}{path}", app.address));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if method != reqwest::Method::GET {
        request = request
            .header("content-type", "application/fhir+json")
            .body("{}");
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

#[tokio::test]
async fn every_route_refuses_no_token_a_bad_token_and_every_role_outside_its_scope() {
    let app = spawn_app().await;
    let table = routes();
    assert!(table.len() >= 15, "the whole table: {table:?}");
    let forged = linkwork_auth::dev_token(
        &SecretString::from("another-secret-that-is-at-least-32-bytes-long"),
        Role::Admin,
        "ops",
        &[scopes::ADMIN],
        600,
    )
    .unwrap();
    let mut checked = 0;
    for route in &table {
        // What decides who passes: the scope, or for consent its own rule.
        let rule = match route.access {
            Access::Scope(scope) | Access::ScopeAs(scope, _) => scope,
            Access::AnyOf(_) if route.path == "/fhir/Consent" => CONSENT,
            Access::AnyOf(pairs) => panic!("{route:?} ({pairs:?}): add who passes it to this test"),
            Access::Open => {
                let (code, _) = call(&app, route, None).await;
                assert_eq!(code, 200, "{route:?} is open");
                continue;
            }
        };
        let what = format!("{} {}", route.method, route.path);
        for (bad, token) in [
            ("no token", None),
            ("not a JWT", Some("not.a.jwt")),
            ("a forged token", Some(forged.as_str())),
        ] {
            let (code, outcome) = call(&app, route, token).await;
            assert_eq!(code, 401, "{what} with {bad}: {outcome}");
            assert_eq!(outcome["resourceType"], "OperationOutcome", "{what}");
        }
        for (role, client) in CALLERS {
            // Its role's own scopes, then every scope there is: a token claiming more
            // than its role may hold gets no further.
            let all = [
                scopes::REFERRAL_SUBMIT,
                scopes::REFERRAL_READ,
                scopes::REFERRAL_RESPOND,
                scopes::CALL_LOG_SUBMIT,
                scopes::OUTCOMES_READ,
                scopes::ADMIN,
            ];
            for token in [token(role, client), token_with(role, client, &all)] {
                let (code, outcome) = call(&app, route, Some(&token)).await;
                if passes(rule, role, client) {
                    assert!(
                        code != 401 && code != 403,
                        "{what} refused {role:?} {client} ({code}): {outcome}"
                    );
                } else {
                    assert_eq!(code, 403, "{what} let {role:?} {client} through: {outcome}");
                    assert_eq!(outcome["resourceType"], "OperationOutcome", "{what}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "{checked} calls checked");
}
