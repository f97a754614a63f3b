//! The provider loop through the real services: ingest's HTTP API, the router, the
//! projector and the outbox relay, on the real broker and Postgres. A GP's referral is
//! routed, the provider accepts it over HTTP, records scores and completes it, and
//! everything reads back over the FHIR API and comes out on the outcome topics.

use std::time::Duration;

use linkwork::topology::{HttpSettings, Services, Topology, TopologySettings};
use linkwork_auth::{Role, Verifier};
use linkwork_bus::headers::HeaderList;
use linkwork_bus::topics::{
    consumers, OUTCOMES_OBSERVATIONS_PSEUDONYMISED, PROVIDER_RESPONSES, REFERRAL_EVENTS,
};
use linkwork_bus::{dlq, Names, Outbound, Producer};
use linkwork_domain::ReferralId;
use linkwork_ingest::responses::PROVIDER_HEADER;
use linkwork_projector::PseudonymKey;
use linkwork_router::directory::{self, DirectoryDocument};
use linkwork_store::sqlx::PgPool;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{eventually, stack, unique, Stack};

const DEV_SECRET: &str = "provider-loop-tests-development-secret-0123456789";
const BASE: &str = "https://linkwork.example/fhir";

/// Two providers for the same people (Leeds city centre, LS1, in the test referral).
const DIRECTORY: &str = r#"
providers:
  - id: connectors
    name: Community Connectors
    kind: want
    areas: { postcode_districts: [LS1] }
    needs: [social-isolation, loneliness]
    capacity: 100
    accept_within_working_days: 5
  - id: reconnect
    name: Reconnect
    kind: want
    areas: { postcode_districts: [LS2] }
    needs: [social-isolation, loneliness]
    capacity: 100
    accept_within_working_days: 5
"#;

struct Loop {
    stack: Stack,
    pool: PgPool,
    address: String,
    client: reqwest::Client,
    /// This run's topics and groups.
    names: Names,
    shutdown: CancellationToken,
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn token(role: Role, client: &str) -> String {
    linkwork_auth::dev_token(
        &SecretString::from(DEV_SECRET),
        role,
        client,
        &role.default_scopes(client),
        600,
    )
    .unwrap()
}

fn gp() -> String {
    token(Role::Source, "gp:A81001")
}

fn provider(id: &str) -> String {
    token(Role::Provider, id)
}

impl Loop {
    /// Ingest, the router and the projector as `serve` assembles them, on topics of
    /// this run's own, with the directory above.
    async fn start() -> Loop {
        Loop::start_on(stack()).await
    }

    /// As [`Loop::start`], on `stack`'s broker settings (its SASL listener, say).
    async fn start_on(stack: Stack) -> Loop {
        let pool = stack.database().await;
        let names = Names::isolated(&unique("pl"));
        let document = DirectoryDocument::parse(DIRECTORY).unwrap();
        stack.apply_topics(&names, &document.provider_ids()).await;
        linkwork_router::migrate(&pool).await.unwrap();
        let mut transaction = pool.begin().await.unwrap();
        directory::store(&mut transaction, &document, "test")
            .await
            .unwrap();
        transaction.commit().await.unwrap();

        let mut http = HttpSettings::new("127.0.0.1:0".parse().unwrap());
        http.verifier = Some(Verifier::dev(SecretString::from(DEV_SECRET)).unwrap());
        let mut settings = TopologySettings::new(
            stack.kafka.clone(),
            names.clone(),
            Services {
                ingest: true,
                router: true,
                projector: true,
                metrics: false,
            },
            http,
        )
        .unwrap();
        settings.pseudonym_key = Some(PseudonymKey::new(&[7u8; 32]).unwrap());
        settings.vault = Some(crate::helpers::vault());
        let topology = Topology::build(settings, pool.clone()).await.unwrap();
        let address = format!("http://{}", topology.http_addr().expect("ingest listens"));
        let shutdown = CancellationToken::new();
        tokio::spawn(topology.run(shutdown.clone()));
        Loop {
            stack,
            pool,
            address,
            client: reqwest::Client::new(),
            names,
            shutdown,
        }
    }

    /// Waits until ingest's `provider.responses` consumer has stored offsets at the
    /// topic's end and the outbox has drained: every response is judged and every
    /// refusal is on the dead-letter topic.
    async fn responses_settled(&self) {
        self.stack
            .caught_up(
                &self.pool,
                consumers::PROVIDER_RESPONSES,
                &self.names.topic(PROVIDER_RESPONSES),
            )
            .await;
        eventually(Duration::from_secs(60), "the outbox to drain", || async {
            let pending: Option<i64> =
                linkwork_store::sqlx::query_scalar("SELECT count(*) FROM outbox")
                    .fetch_one(&self.pool)
                    .await
                    .ok();
            pending == Some(0)
        })
        .await;
    }

    /// Puts `body` on `provider.responses` as `provider` (no header when `None`), keyed
    /// by the referral as providers' systems do.
    async fn respond(&self, referral: ReferralId, provider: Option<&str>, body: &[u8]) {
        let producer = Producer::new(&self.stack.kafka).unwrap();
        let mut headers = HeaderList::default();
        if let Some(provider) = provider {
            headers.push(PROVIDER_HEADER, provider);
        }
        let key = referral.to_string();
        producer
            .send(Outbound {
                topic: &self.names.topic(PROVIDER_RESPONSES),
                key: Some(key.as_bytes()),
                partition: None,
                payload: body,
                headers,
            })
            .await
            .expect("acknowledged");
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(token)
            .header("accept", "application/fhir+json");
        if let Some(body) = body {
            request = request
                .header("content-type", "application/fhir+json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// PATCH with a body of the given content type.
    async fn patch(
        &self,
        path: &str,
        token: &str,
        content_type: &str,
        body: &Value,
    ) -> (u16, Value) {
        let response = self
            .client
            .patch(format!("{}{path}", self.address))
            .bearer_auth(token)
            .header("accept", "application/fhir+json")
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    async fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    /// POST of search parameters as a form body (`POST .../_search`).
    async fn post_form(&self, path: &str, token: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.address))
            .bearer_auth(token)
            .header("accept", "application/fhir+json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).unwrap())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn put(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, token, Some(body))
            .await
    }

    /// The provider's steps on a referral's first Task, each answered 2xx: `PUT` updates
    /// the Task, `POST <path>` records a resource.
    async fn provide(&self, referral: ReferralId, provider: &str, steps: &[(&str, Value)]) {
        let task_path = format!("/fhir/Task/{}", referral.task_id(1));
        for (how, body) in steps {
            let (status, answer) = match how.strip_prefix("POST ") {
                Some(path) => self.post(path, provider, body).await,
                None => self.put(&task_path, provider, body).await,
            };
            assert!(
                status == 200 || status == 201,
                "{how} {body}: {status} {answer}"
            );
        }
    }

    /// Posts a GP referral and waits until its Task is on a provider's queue and in the
    /// read models.
    async fn routed_referral(&self, reference: &str) -> ReferralId {
        let (status, created) = self
            .post(
                "/fhir/ServiceRequest",
                &gp(),
                &linkwork_testkit::gp_referral(reference),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let referral =
            ReferralId::from_uuid(Uuid::parse_str(created["id"].as_str().unwrap()).unwrap());
        self.wait_for_status(referral, "requested").await;
        referral
    }

    /// Waits until the read API shows the referral in `status` (linkwork's code).
    async fn wait_for_status(&self, referral: ReferralId, status: &str) {
        self.wait_for_status_as(referral, status, &gp()).await;
    }

    /// As [`Loop::wait_for_status`], read by the referrer holding `token`.
    async fn wait_for_status_as(&self, referral: ReferralId, status: &str, token: &str) {
        eventually(
            Duration::from_secs(60),
            &format!("{referral} {status}"),
            || async {
                let (code, resource) = self
                    .get(&format!("/fhir/ServiceRequest/{referral}"), token)
                    .await;
                code == 200 && referral_status(&resource) == status
            },
        )
        .await;
    }

    async fn version(&self, referral: ReferralId) -> i64 {
        linkwork_store::sqlx::query_scalar(
            "SELECT version FROM projection.referrals WHERE referral_id = $1",
        )
        .bind(referral.as_uuid())
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }
}

fn referral_status(resource: &Value) -> String {
    resource["extension"]
        .as_array()
        .and_then(|extensions| {
            extensions
                .iter()
                .find(|e| e["url"] == format!("{BASE}/StructureDefinition/referral-status"))
        })
        .and_then(|e| e["valueCode"].as_str())
        .unwrap_or("")
        .to_owned()
}

fn task(referral: ReferralId, attempt: u32, status: &str, reason: Option<&str>) -> Value {
    let mut task = json!({
        "resourceType": "Task",
        "id": referral.task_id(attempt).to_string(),
        "status": status,
        "intent": "order",
        "focus": { "reference": format!("ServiceRequest/{referral}") },
    });
    if let Some(reason) = reason {
        task["statusReason"] = json!({ "text": reason });
    }
    task
}

/// UCLA-3 loneliness at baseline: 8 (the scale runs 3 to 9).
fn ucla_baseline(referral: ReferralId) -> Value {
    score(
        referral,
        "ucla-3",
        None,
        8,
        "baseline",
        "2026-03-10T10:00:00Z",
    )
}

/// UCLA-3 at follow-up: 5, less lonely than at baseline.
fn ucla_follow_up(referral: ReferralId) -> Value {
    score(
        referral,
        "ucla-3",
        None,
        5,
        "follow-up",
        "2026-06-01T10:00:00Z",
    )
}

/// A phone call with the person, as a provider records it.
fn phone_call(referral: ReferralId) -> Value {
    json!({
        "resourceType": "Communication",
        "status": "completed",
        "basedOn": [{ "reference": format!("ServiceRequest/{referral}") }],
        "sent": "2026-03-09T15:00:00Z",
        "medium": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode", "code": "PHONE" }] }],
    })
}

/// A group activity the person attended, as a provider records it.
fn lunch_club(referral: ReferralId) -> Value {
    json!({
        "resourceType": "Procedure",
        "status": "completed",
        "basedOn": [{ "reference": format!("ServiceRequest/{referral}") }],
        "subject": { "reference": format!("Patient/{}", referral.patient_id()) },
        "category": { "coding": [{ "system": format!("{BASE}/CodeSystem/activity-kind"), "code": "group" }] },
        "code": { "text": "Townley lunch club" },
        "performedDateTime": "2026-03-20",
    })
}

/// The person's consent to share outcomes for evaluation, as a provider records it.
fn consent(referral: ReferralId) -> Value {
    json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research" }] },
        "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }] }],
        "provision": { "data": [{ "meaning": "related", "reference": { "reference": format!("ServiceRequest/{referral}") } }] },
    })
}

fn score(
    referral: ReferralId,
    instrument: &str,
    snomed: Option<&str>,
    value: i64,
    timepoint: &str,
    when: &str,
) -> Value {
    let mut coding = vec![
        json!({ "system": format!("{BASE}/CodeSystem/outcome-instrument"), "code": instrument }),
    ];
    if let Some(code) = snomed {
        coding.push(json!({ "system": "http://snomed.info/sct", "code": code }));
    }
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey" }] }],
        "code": { "coding": coding },
        "basedOn": [{ "reference": format!("ServiceRequest/{referral}") }],
        "effectiveDateTime": when,
        "valueInteger": value,
        "extension": [{ "url": format!("{BASE}/StructureDefinition/outcome-timepoint"), "valueCode": timepoint }],
    })
}

#[tokio::test]
async fn a_gp_referral_is_routed_accepted_scored_completed_and_reads_back() {
    let run = Loop::start().await;
    let referral = run.routed_referral(&unique("GP")).await;
    let task_path = format!("/fhir/Task/{}", referral.task_id(1));
    let connectors = provider("connectors");

    let (status, current) = run.get(&task_path, &connectors).await;
    assert_eq!(
        (status, current["status"].as_str()),
        (200, Some("requested")),
        "{current}"
    );
    assert_eq!(current["owner"]["identifier"]["value"], "connectors");

    let steps: Vec<(&str, Value)> = vec![
        ("PUT", task(referral, 1, "accepted", None)),
        ("POST /fhir/Consent", consent(referral)),
        ("POST /fhir/Observation", ucla_baseline(referral)),
        (
            "POST /fhir/Observation",
            score(
                referral,
                "swemwbs",
                Some("718466001"),
                17,
                "baseline",
                "2026-03-10T10:05:00Z",
            ),
        ),
        ("PUT", task(referral, 1, "in-progress", None)),
        ("POST /fhir/Communication", phone_call(referral)),
        ("POST /fhir/Procedure", lunch_club(referral)),
        ("POST /fhir/Observation", ucla_follow_up(referral)),
        (
            "POST /fhir/Observation",
            score(
                referral,
                "swemwbs",
                Some("718466001"),
                24,
                "follow-up",
                "2026-06-01T10:05:00Z",
            ),
        ),
        ("PUT", task(referral, 1, "completed", None)),
    ];
    run.provide(referral, &connectors, &steps).await;
    run.wait_for_status(referral, "completed").await;

    let (_, service_request) = run
        .get(&format!("/fhir/ServiceRequest/{referral}"), &gp())
        .await;
    assert_eq!(service_request["status"], "completed");
    // received, routed, then one version per step above.
    let versions = 2 + steps.len();
    assert_eq!(service_request["meta"]["versionId"], versions.to_string());
    let (status, history) = run
        .get(&format!("/fhir/ServiceRequest/{referral}/_history"), &gp())
        .await;
    assert_eq!(status, 200);
    assert_eq!(history["type"], "history");
    assert_eq!(history["total"], versions);
    let statuses: Vec<String> = history["entry"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|entry| referral_status(&entry["resource"]))
        .collect();
    assert_eq!(
        &statuses[..4],
        ["received", "requested", "accepted", "accepted"]
    );
    assert_eq!(statuses.last().unwrap(), "completed");
    assert_eq!(
        history["entry"][0]["resource"]["meta"]["versionId"],
        versions.to_string()
    );

    let (_, task_now) = run.get(&task_path, &connectors).await;
    assert_eq!(task_now["status"], "completed");
    let (status, observations) = run
        .get(
            &format!("/fhir/Observation?based-on=ServiceRequest/{referral}"),
            &gp(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(observations["type"], "searchset");
    assert_eq!(observations["total"], 4);
    let values: Vec<(String, i64)> = observations["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let resource = &entry["resource"];
            (
                resource["code"]["coding"][0]["code"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                resource["valueInteger"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        values,
        [
            ("ucla-3".into(), 8),
            ("swemwbs".into(), 17),
            ("ucla-3".into(), 5),
            ("swemwbs".into(), 24)
        ]
    );
    let swemwbs = &observations["entry"][1]["resource"];
    assert_eq!(swemwbs["code"]["coding"][1]["code"], "718466001");
    assert_eq!(
        swemwbs["subject"]["identifier"]["value"],
        linkwork_testkit::NHS_NUMBERS[0]
    );
    assert_eq!(
        swemwbs["basedOn"][0]["reference"],
        format!("ServiceRequest/{referral}")
    );

    // The referrer's own topic and the data teams' carry the Observations; the
    // referrer's summary comes too.
    let identified = run
        .stack
        .read_topic(
            &run.names
                .referrer_outcomes(&linkwork_domain::Source::parse("gp:A81001").unwrap()),
            5,
            Duration::from_secs(60),
        )
        .await;
    let types: Vec<&str> = identified
        .iter()
        .filter_map(|m| m.header("ce_type"))
        .collect();
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "linkwork.outcomes.observation.v1")
            .count(),
        4
    );
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "linkwork.outcomes.referral-summary.v1")
            .count(),
        1
    );
    let pseudonymised = run
        .stack
        .read_topic(
            &run.names.topic(OUTCOMES_OBSERVATIONS_PSEUDONYMISED),
            4,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(pseudonymised.len(), 4);
    for message in &pseudonymised {
        let text = String::from_utf8_lossy(&message.payload);
        assert!(
            !text.contains(linkwork_testkit::NHS_NUMBERS[0])
                && !text.contains("Brightwater")
                && !text.contains("LS1 4AP"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn transitions_outside_the_lifecycle_are_refused_with_409_and_no_event() {
    let run = Loop::start().await;
    let referral = run.routed_referral(&unique("GP")).await;
    let path = format!("/fhir/Task/{}", referral.task_id(1));
    let connectors = provider("connectors");
    // (the status the Task is moved to before, the refused status)
    let refused_from_requested = ["in-progress", "on-hold", "completed"];
    let before = run.version(referral).await;
    for status in refused_from_requested {
        let (code, outcome) = run
            .put(&path, &connectors, &task(referral, 1, status, None))
            .await;
        assert_eq!(code, 409, "requested -> {status}: {outcome}");
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        assert!(
            outcome["issue"][0]["diagnostics"]
                .as_str()
                .unwrap()
                .contains(&format!("from requested to {status}")),
            "{outcome}"
        );
    }
    let (code, outcome) = run
        .put(
            &path,
            &connectors,
            &task(referral, 1, "failed", Some("could not reach")),
        )
        .await;
    assert_eq!(code, 409, "{outcome}");
    let (code, _) = run
        .put(&path, &connectors, &task(referral, 1, "accepted", None))
        .await;
    assert_eq!(code, 200);
    let (code, outcome) = run
        .put(
            &path,
            &connectors,
            &task(referral, 1, "rejected", Some("full")),
        )
        .await;
    assert_eq!(code, 409, "accepted -> rejected: {outcome}");
    let (code, _) = run
        .put(&path, &connectors, &task(referral, 1, "completed", None))
        .await;
    assert_eq!(code, 200);
    for status in ["accepted", "in-progress", "on-hold", "failed", "cancelled"] {
        let reason = (status == "failed").then_some("late");
        let (code, outcome) = run
            .put(&path, &connectors, &task(referral, 1, status, reason))
            .await;
        assert_eq!(code, 409, "completed -> {status}: {outcome}");
    }
    // A rejection without a reason, and a status providers do not set, are 400s.
    let (code, outcome) = run
        .put(&path, &connectors, &task(referral, 1, "rejected", None))
        .await;
    assert!(code == 400 || code == 422, "{code} {outcome}");
    let (code, _) = run
        .put(&path, &connectors, &task(referral, 1, "requested", None))
        .await;
    assert!(code == 400 || code == 422);

    run.wait_for_status(referral, "completed").await;
    assert_eq!(
        run.version(referral).await,
        before + 2,
        "only the acceptance and the completion were recorded"
    );
}

#[tokio::test]
async fn a_provider_cannot_read_or_update_another_providers_referral() {
    let run = Loop::start().await;
    let referral = run.routed_referral(&unique("GP")).await;
    let other = provider("reconnect");
    let task_path = format!("/fhir/Task/{}", referral.task_id(1));
    let before = run.version(referral).await;

    let (code, _) = run
        .get(&format!("/fhir/ServiceRequest/{referral}"), &other)
        .await;
    assert_eq!(code, 403);
    let (code, _) = run
        .get(&format!("/fhir/ServiceRequest/{referral}/_history"), &other)
        .await;
    assert_eq!(code, 403);
    let (code, _) = run.get(&task_path, &other).await;
    assert_eq!(code, 403);
    let (code, _) = run
        .get(
            &format!("/fhir/Observation?based-on=ServiceRequest/{referral}"),
            &other,
        )
        .await;
    assert_eq!(code, 403);
    let (code, outcome) = run
        .put(&task_path, &other, &task(referral, 1, "accepted", None))
        .await;
    assert_eq!(code, 403, "{outcome}");
    let (code, _) = run
        .post(
            "/fhir/Observation",
            &other,
            &score(
                referral,
                "ucla-3",
                None,
                6,
                "baseline",
                "2026-03-10T10:00:00Z",
            ),
        )
        .await;
    assert_eq!(code, 403);
    let (code, _) = run
        .get("/fhir/ServiceRequest?performer=connectors", &other)
        .await;
    assert_eq!(code, 403);
    let (code, found) = run
        .get("/fhir/ServiceRequest?status=requested", &other)
        .await;
    assert_eq!((code, found["total"].as_i64()), (200, Some(0)), "{found}");
    // A data team sees no identifiable referral at all; another GP neither.
    let (code, _) = run
        .get(
            &format!("/fhir/ServiceRequest/{referral}"),
            &token(Role::Data, "evaluation-team"),
        )
        .await;
    assert_eq!(code, 403);
    let (code, _) = run
        .get(
            &format!("/fhir/ServiceRequest/{referral}"),
            &token(Role::Source, "gp:B82002"),
        )
        .await;
    assert_eq!(code, 403);
    assert_eq!(run.version(referral).await, before, "nothing was recorded");

    // The holder and the referrer find it by NHS number (a posted form: never in a
    // URL), one page at a time.
    let nhs = linkwork_testkit::NHS_NUMBERS[0];
    let second = run.routed_referral(&unique("GP")).await;
    let identifier = format!("https://fhir.nhs.uk/Id/nhs-number|{nhs}");
    let form = [("subject:identifier", identifier.as_str()), ("_count", "1")];
    let (code, page) = run
        .post_form(
            "/fhir/ServiceRequest/_search",
            &provider("connectors"),
            &form,
        )
        .await;
    assert_eq!((code, page["total"].as_i64()), (200, Some(2)), "{page}");
    assert_eq!(page["entry"].as_array().unwrap().len(), 1);
    let next = page["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("a next link");
    let next_path = next["url"]
        .as_str()
        .unwrap()
        .trim_start_matches(&run.address)
        .to_owned();
    assert!(
        next_path.starts_with("/fhir/ServiceRequest/_search?") && !next_path.contains(nhs),
        "the link names the POST endpoint and not the NHS number: {next_path}"
    );
    let (code, page_two) = run
        .post_form(&next_path, &provider("connectors"), &form)
        .await;
    assert_eq!(code, 200, "{page_two}");
    let ids: Vec<&str> = [&page, &page_two]
        .iter()
        .map(|p| p["entry"][0]["resource"]["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&referral.to_string().as_str()) && ids.contains(&second.to_string().as_str()),
        "{ids:?}"
    );
}

#[tokio::test]
async fn on_provider_responses_the_same_transitions_are_refused_to_the_dlq_and_record_nothing() {
    let run = Loop::start().await;
    let referral = run.routed_referral(&unique("GP")).await;
    let before = run.version(referral).await;
    let as_json = |value: Value| value.to_string().into_bytes();
    // (sent by, body, what the refusal must say; None: recorded). One partition, so
    // each is judged on the state the ones before it left, in one batch or several.
    let messages: Vec<(Option<&str>, Vec<u8>, Option<&str>)> = vec![
        (
            Some("connectors"),
            as_json(task(referral, 1, "in-progress", None)),
            Some("from requested to in-progress"),
        ),
        (
            Some("connectors"),
            as_json(task(referral, 1, "on-hold", None)),
            Some("from requested to on-hold"),
        ),
        (
            Some("connectors"),
            as_json(task(referral, 1, "completed", None)),
            Some("from requested to completed"),
        ),
        (
            Some("connectors"),
            as_json(task(referral, 1, "failed", Some("could not reach"))),
            Some("from requested to failed"),
        ),
        (
            Some("reconnect"),
            as_json(task(referral, 1, "accepted", None)),
            Some("reconnect"),
        ),
        (
            None,
            as_json(task(referral, 1, "accepted", None)),
            Some(PROVIDER_HEADER),
        ),
        (Some("connectors"), b"{not json".to_vec(), Some("JSON")),
        (
            Some("connectors"),
            as_json(task(
                ReferralId::from_uuid(Uuid::new_v4()),
                1,
                "accepted",
                None,
            )),
            Some("not a referral linkwork has received"),
        ),
        (
            Some("connectors"),
            as_json(task(referral, 1, "accepted", None)),
            None,
        ),
        (
            Some("connectors"),
            as_json(task(referral, 1, "rejected", Some("full"))),
            Some("from accepted to rejected"),
        ),
        (
            Some("connectors"),
            as_json(score(
                referral,
                "ucla-3",
                None,
                7,
                "baseline",
                "2026-03-10T10:00:00Z",
            )),
            None,
        ),
        (
            Some("connectors"),
            as_json(score(
                referral,
                "ucla-3",
                None,
                12,
                "baseline",
                "2026-03-10T10:00:00Z",
            )),
            Some("outside its range"),
        ),
        (
            Some("connectors"),
            as_json(task(referral, 1, "completed", None)),
            None,
        ),
        (
            Some("connectors"),
            as_json(task(referral, 1, "accepted", None)),
            Some("from completed to accepted"),
        ),
        (
            Some("connectors"),
            as_json(task(referral, 1, "in-progress", None)),
            Some("from completed to in-progress"),
        ),
        (
            Some("connectors"),
            as_json(task(referral, 1, "on-hold", None)),
            Some("from completed to on-hold"),
        ),
        (
            Some("connectors"),
            as_json(task(referral, 1, "failed", Some("late"))),
            Some("from completed to failed"),
        ),
        (
            Some("connectors"),
            as_json(task(referral, 1, "cancelled", None)),
            Some("completed"),
        ),
        (
            Some("connectors"),
            as_json(task(referral, 1, "rejected", None)),
            Some("statusReason"),
        ),
        (
            Some("connectors"),
            as_json(task(referral, 1, "requested", None)),
            Some("cannot set a Task to \"requested\""),
        ),
    ];
    for (provider, body, _) in &messages {
        run.respond(referral, *provider, body).await;
    }
    let refusals: Vec<&str> = messages
        .iter()
        .filter_map(|(_, _, refusal)| *refusal)
        .collect();

    run.wait_for_status(referral, "completed").await;
    run.responses_settled().await;
    let dead = run
        .stack
        .read_topic(
            &run.names.dlq(consumers::PROVIDER_RESPONSES),
            refusals.len(),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(
        dead.len(),
        refusals.len(),
        "one dead letter per refused message"
    );
    let mut dead: Vec<_> = dead
        .iter()
        .map(|message| {
            let offset: i64 = message
                .header(dlq::ORIGINAL_OFFSET)
                .unwrap()
                .parse()
                .unwrap();
            let reason: Value = serde_json::from_str(message.header(dlq::REASON).unwrap())
                .expect("the reason is an OperationOutcome");
            (offset, reason, message.payload.clone())
        })
        .collect();
    dead.sort_by_key(|(offset, _, _)| *offset);
    let refused_bodies: Vec<&Vec<u8>> = messages
        .iter()
        .filter(|(_, _, refusal)| refusal.is_some())
        .map(|(_, body, _)| body)
        .collect();
    for (((_, reason, payload), expected), body) in dead.iter().zip(&refusals).zip(refused_bodies) {
        assert_eq!(reason["resourceType"], "OperationOutcome");
        let diagnostics: Vec<&str> = reason["issue"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|issue| issue["diagnostics"].as_str())
            .collect();
        assert!(
            diagnostics.iter().any(|text| text.contains(expected)),
            "expected {expected:?} in {reason}"
        );
        // Sealed under the key of the person it is about: opened, the message as sent.
        assert_ne!(payload, body, "the dead letter is sealed");
        let opened = dlq::open(
            &crate::helpers::vault(),
            &mut run.pool.acquire().await.unwrap(),
            payload,
        )
        .await
        .expect("a live person's dead letter opens");
        assert_eq!(
            &opened.body, body,
            "the dead letter carries the message as sent"
        );
        assert_eq!(
            &serde_json::from_str::<Value>(&opened.reason).unwrap(),
            reason,
            "the full reason is sealed with it (the header's has no identifier to mask)"
        );
    }

    assert_eq!(
        run.version(referral).await,
        before + 3,
        "only the acceptance, the score and the completion were recorded"
    );
    let (_, observations) = run
        .get(
            &format!("/fhir/Observation?based-on=ServiceRequest/{referral}"),
            &gp(),
        )
        .await;
    assert_eq!(observations["total"], 1, "{observations}");
    assert_eq!(observations["entry"][0]["resource"]["valueInteger"], 7);
    let (_, task_now) = run
        .get(
            &format!("/fhir/Task/{}", referral.task_id(1)),
            &provider("connectors"),
        )
        .await;
    assert_eq!(task_now["status"], "completed");
}

#[tokio::test]
async fn a_task_is_patched_along_the_lifecycle_and_bad_patches_are_refused() {
    let run = Loop::start().await;
    let referral = run.routed_referral(&unique("GP")).await;
    let path = format!("/fhir/Task/{}", referral.task_id(1));
    let connectors = provider("connectors");
    let patch_type = "application/json-patch+json";
    let before = run.version(referral).await;

    let accept = json!([
        { "op": "test", "path": "/status", "value": "requested" },
        { "op": "replace", "path": "/status", "value": "accepted" },
    ]);
    let (code, other) = run
        .patch(&path, &provider("reconnect"), patch_type, &accept)
        .await;
    assert_eq!(code, 403, "another provider: {other}");
    let (code, wrong_type) = run
        .patch(&path, &connectors, "application/fhir+json", &accept)
        .await;
    assert_eq!(code, 415, "{wrong_type}");
    assert_eq!(wrong_type["resourceType"], "OperationOutcome");
    let (code, not_a_patch) = run
        .patch(
            &path,
            &connectors,
            patch_type,
            &json!({ "status": "accepted" }),
        )
        .await;
    assert_eq!(code, 400, "{not_a_patch}");

    let (code, accepted) = run.patch(&path, &connectors, patch_type, &accept).await;
    assert_eq!(
        (code, accepted["status"].as_str()),
        (200, Some("accepted")),
        "{accepted}"
    );
    run.wait_for_status(referral, "accepted").await;

    // The same patch again: its test fails now the Task is accepted.
    let (code, failed_test) = run.patch(&path, &connectors, patch_type, &accept).await;
    assert_eq!(code, 422, "{failed_test}");
    // A rejection after acceptance is outside the lifecycle, patched or put.
    let reject = json!([
        { "op": "replace", "path": "/status", "value": "rejected" },
        { "op": "add", "path": "/statusReason", "value": { "text": "full" } },
    ]);
    let (code, refused) = run.patch(&path, &connectors, patch_type, &reject).await;
    assert_eq!(code, 409, "{refused}");
    assert!(
        refused.to_string().contains("from accepted to rejected"),
        "{refused}"
    );
    let (code, _) = run
        .patch(
            &path,
            &connectors,
            patch_type,
            &json!([{ "op": "replace", "path": "/id", "value": Uuid::new_v4().to_string() }]),
        )
        .await;
    assert_eq!(code, 422, "a patch may not change the id");

    let hold = json!([
        { "op": "replace", "path": "/status", "value": "on-hold" },
        { "op": "add", "path": "/statusReason", "value": { "text": "person in hospital" } },
    ]);
    let (code, held) = run.patch(&path, &connectors, patch_type, &hold).await;
    assert_eq!(code, 200, "{held}");
    run.wait_for_status(referral, "on-hold").await;
    let (_, task_now) = run.get(&path, &connectors).await;
    assert_eq!(task_now["statusReason"]["text"], "person in hospital");
    // Resuming keeps nothing of the hold's reason.
    let resume = json!([{ "op": "replace", "path": "/status", "value": "in-progress" }]);
    let (code, resumed) = run.patch(&path, &connectors, patch_type, &resume).await;
    assert_eq!(code, 200, "{resumed}");
    assert!(resumed.get("statusReason").is_none(), "{resumed}");
    run.wait_for_status(referral, "in-progress").await;
    let (_, task_now) = run.get(&path, &connectors).await;
    assert_eq!(task_now["status"], "in-progress");
    assert!(task_now.get("statusReason").is_none(), "{task_now}");

    assert_eq!(
        run.version(referral).await,
        before + 3,
        "the acceptance, the hold and the resumption, nothing else"
    );
}

#[tokio::test]
async fn an_nhs_number_is_refused_in_a_url_and_found_through_a_posted_form() {
    let run = Loop::start().await;
    let referral = run.routed_referral(&unique("GP")).await;
    let nhs = linkwork_testkit::NHS_NUMBERS[0];
    let identifier = format!("https://fhir.nhs.uk/Id/nhs-number|{nhs}");

    // In the query string of a GET, or of the POST itself: refused, and why.
    for (method, path) in [
        (
            reqwest::Method::GET,
            format!("/fhir/ServiceRequest?subject:identifier={identifier}"),
        ),
        (
            reqwest::Method::GET,
            format!("/fhir/ServiceRequest?subject%3Aidentifier={nhs}"),
        ),
    ] {
        let (code, outcome) = run.send(method, &path, &gp(), None).await;
        assert_eq!(code, 400, "{outcome}");
        assert_eq!(outcome["issue"][0]["code"], "security", "{outcome}");
        assert!(
            outcome["issue"][0]["diagnostics"]
                .as_str()
                .unwrap()
                .contains("/fhir/ServiceRequest/_search"),
            "{outcome}"
        );
    }
    let (code, outcome) = run
        .post_form(
            &format!("/fhir/ServiceRequest/_search?subject:identifier={nhs}"),
            &gp(),
            &[],
        )
        .await;
    assert_eq!(
        (code, outcome["issue"][0]["code"].as_str()),
        (400, Some("security")),
        "{outcome}"
    );

    // In the form: found, by the referrer.
    let (code, found) = run
        .post_form(
            "/fhir/ServiceRequest/_search",
            &gp(),
            &[("subject:identifier", identifier.as_str())],
        )
        .await;
    assert_eq!(code, 200, "{found}");
    let ids: Vec<&str> = found["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["resource"]["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&referral.to_string().as_str()), "{found}");
    for link in found["link"].as_array().unwrap() {
        assert!(!link["url"].as_str().unwrap().contains(nhs), "{link}");
    }

    // A body that is not a form is refused with an OperationOutcome.
    let (code, outcome) = run
        .post(
            "/fhir/ServiceRequest/_search",
            &gp(),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(code, 415, "{outcome}");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
}

/// Log output kept in memory.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures, on this thread, what `filter` lets through, until the guard drops.
    fn install(filter: &str) -> (Captured, tracing::subscriber::DefaultGuard) {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer({
                let captured = captured.clone();
                move || captured.clone()
            })
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (captured, guard)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }
}

// One thread, so that the subscriber set for this test alone sees the HTTP handling.
#[tokio::test(flavor = "current_thread")]
async fn request_logs_name_the_path_and_never_the_query_or_an_nhs_number() {
    let (captured, _guard) =
        Captured::install("debug,tower_http=trace,h2=off,hyper=off,rdkafka=off,sqlx=off");

    let run = Loop::start().await;
    run.routed_referral(&unique("GP")).await;
    let nhs = linkwork_testkit::NHS_NUMBERS[0];
    let identifier = format!("https://fhir.nhs.uk/Id/nhs-number|{nhs}");
    // Refused, but its URL reached the server all the same.
    let (code, _) = run
        .get(
            &format!("/fhir/ServiceRequest?subject:identifier={identifier}"),
            &gp(),
        )
        .await;
    assert_eq!(code, 400);
    let (code, _) = run
        .post_form(
            "/fhir/ServiceRequest/_search",
            &gp(),
            &[("subject:identifier", identifier.as_str())],
        )
        .await;
    assert_eq!(code, 200);

    let logs = captured.text();
    assert!(
        logs.contains("/fhir/ServiceRequest/_search"),
        "the request spans were captured: {logs}"
    );
    assert!(!logs.contains(nhs), "an NHS number in the logs: {logs}");
    assert!(
        !logs.contains("subject:identifier"),
        "a query string in the logs: {logs}"
    );
}

#[tokio::test]
async fn a_self_referral_is_accepted_but_the_shared_self_identity_reads_nothing_back() {
    let run = Loop::start().await;
    let me = token(Role::Source, "self");
    let (code, created) = run
        .post(
            "/fhir/ServiceRequest",
            &me,
            &linkwork_testkit::gp_referral(&unique("SELF")),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    let referral = ReferralId::from_uuid(Uuid::parse_str(created["id"].as_str().unwrap()).unwrap());
    // In the read models (routed or in triage: the check of wait_for_status reads with
    // the GP's token, and this is not the GP's referral).
    eventually(
        Duration::from_secs(60),
        "the self-referral projected",
        || async {
            let status: Option<String> = linkwork_store::sqlx::query_scalar(
                "SELECT status FROM projection.referrals WHERE referral_id = $1",
            )
            .bind(referral.as_uuid())
            .fetch_optional(&run.pool)
            .await
            .ok() // the projector may not have built its schema yet
            .flatten();
            status.is_some()
        },
    )
    .await;

    // Not by id, not its history, its Task or its outcomes, not by search: the token is
    // every self-referrer's at once.
    for path in [
        format!("/fhir/ServiceRequest/{referral}"),
        format!("/fhir/ServiceRequest/{referral}/_history"),
        format!("/fhir/Task/{}", referral.task_id(1)),
        format!("/fhir/Observation?based-on=ServiceRequest/{referral}"),
        "/fhir/ServiceRequest?status=requested".to_owned(),
    ] {
        let (code, outcome) = run.get(&path, &me).await;
        assert_eq!(code, 403, "{path}: {outcome}");
        assert!(
            outcome["issue"][0]["diagnostics"]
                .as_str()
                .unwrap()
                .contains("self-referral is one identity for many people"),
            "{outcome}"
        );
    }
    let nhs = linkwork_testkit::NHS_NUMBERS[0];
    let identifier = format!("https://fhir.nhs.uk/Id/nhs-number|{nhs}");
    let (code, _) = run
        .post_form(
            "/fhir/ServiceRequest/_search",
            &me,
            &[("subject:identifier", identifier.as_str())],
        )
        .await;
    assert_eq!(code, 403);
}

/// What identifies the test person, and the secrets of the run: none may appear in a
/// log line or on a data-team topic.
fn identifying(run_tokens: &[&str]) -> Vec<String> {
    let mut needles: Vec<String> = linkwork_testkit::NHS_NUMBERS
        .iter()
        .map(|number| (*number).to_owned())
        .collect();
    // Also as NHS numbers are written for people: 999 000 0018.
    needles.push("999 000 0018".into());
    needles.extend(
        [
            "Brightwater",
            "1 Invented Row",
            "LS1 4AP",
            "1941-05-06",
            DEV_SECRET,
        ]
        .map(str::to_owned),
    );
    // The pseudonym key ([7; 32]) as hex and as base64.
    needles.push("07".repeat(32));
    needles.push("BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc".into());
    needles.extend(run_tokens.iter().map(|token| (*token).to_owned()));
    // A token's signature alone is secret enough to look for.
    needles.extend(
        run_tokens
            .iter()
            .filter_map(|token| token.rsplit('.').next().map(str::to_owned)),
    );
    needles
}

// One thread, so that the subscriber set for this test alone sees the whole loop.
#[tokio::test(flavor = "current_thread")]
async fn no_identifier_token_or_key_reaches_a_log_line_or_a_data_team_topic() {
    let (captured, _guard) = Captured::install("trace,h2=off,hyper=off,hyper_util=off,reqwest=off,rdkafka=off,sqlx=off,tokio=off,runtime=off");

    let run = Loop::start().await;
    let connectors = provider("connectors");
    let referrer = gp();
    let referral = run.routed_referral(&unique("GP")).await;
    let steps = [
        ("PUT", task(referral, 1, "accepted", None)),
        ("POST /fhir/Consent", consent(referral)),
        ("POST /fhir/Observation", ucla_baseline(referral)),
        ("PUT", task(referral, 1, "in-progress", None)),
        ("POST /fhir/Observation", ucla_follow_up(referral)),
        ("PUT", task(referral, 1, "completed", None)),
    ];
    run.provide(referral, &connectors, &steps).await;
    run.wait_for_status(referral, "completed").await;

    // Refusals, which are where identifiers tend to slip into messages: a referral
    // whose NHS number fails its check digit, a read by the wrong provider, a forged
    // token, a search by NHS number in a URL, and a bad update on provider.responses.
    let mut bad = linkwork_testkit::gp_referral(&unique("GP"));
    bad["contained"][0]["identifier"][0]["value"] = json!("9990000019");
    let (status, _) = run.post("/fhir/ServiceRequest", &referrer, &bad).await;
    assert_eq!(status, 422);
    let (status, _) = run
        .get(
            &format!("/fhir/ServiceRequest/{referral}"),
            &provider("reconnect"),
        )
        .await;
    assert_eq!(status, 403);
    let forged = format!("{referrer}x");
    let (status, _) = run
        .get(&format!("/fhir/ServiceRequest/{referral}"), &forged)
        .await;
    assert_eq!(status, 401);
    let (status, _) = run
        .get(
            &format!(
                "/fhir/ServiceRequest?subject:identifier={}",
                linkwork_testkit::NHS_NUMBERS[0]
            ),
            &referrer,
        )
        .await;
    assert_eq!(status, 400);
    run.respond(
        referral,
        Some("connectors"),
        serde_json::to_string(&json!({
            "resourceType": "Observation",
            "subject": { "identifier": { "value": linkwork_testkit::NHS_NUMBERS[0] } },
            "note": [{ "text": "Ada Brightwater, 1 Invented Row, LS1 4AP" }]
        }))
        .unwrap()
        .as_bytes(),
    )
    .await;
    run.responses_settled().await;

    let needles = identifying(&[&connectors, &referrer, &forged]);
    let logs = captured.text();
    assert!(
        logs.contains("path=/fhir/Task/") && logs.contains("dead_lettered=1"),
        "the loop's logs were captured, the dead letter among them: {logs}"
    );
    for needle in &needles {
        let found: Vec<&str> = logs
            .lines()
            .filter(|line| line.contains(needle.as_str()))
            .collect();
        assert!(found.is_empty(), "{needle:?} in the logs: {found:#?}");
    }

    // The data team's topic: what a data team reads.
    let pseudonymised = run
        .stack
        .read_topic(
            &run.names.topic(OUTCOMES_OBSERVATIONS_PSEUDONYMISED),
            2,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(
        pseudonymised.len(),
        2,
        "baseline and follow-up, with consent"
    );
    for message in &pseudonymised {
        let text = String::from_utf8_lossy(&message.payload);
        let headers = format!("{:?}", message.headers);
        for needle in &needles {
            assert!(
                !text.contains(needle.as_str()) && !headers.contains(needle.as_str()),
                "{needle:?} on the data team's topic: {text} {headers}"
            );
        }
    }
}

#[tokio::test]
async fn the_referrer_may_record_and_withdraw_consent_and_no_other_referrer_may() {
    let run = Loop::start().await;
    let referral = run.routed_referral(&unique("GP")).await;
    let consented = || async {
        linkwork_store::sqlx::query_scalar::<_, bool>(
            "SELECT consent_to_evaluation FROM projection.referrals WHERE referral_id = $1",
        )
        .bind(referral.as_uuid())
        .fetch_one(&run.pool)
        .await
        .unwrap()
    };
    assert!(!consented().await);

    // Another GP, and the shared self-referral identity: refused, nothing recorded.
    for (who, token) in [
        ("another GP", token(Role::Source, "gp:B82002")),
        ("self", token(Role::Source, "self")),
        ("a data team", token(Role::Data, "evaluation-team")),
    ] {
        let (code, outcome) = run.post("/fhir/Consent", &token, &consent(referral)).await;
        assert_eq!(code, 403, "{who}: {outcome}");
    }
    let before = run.version(referral).await;

    // The referrer, as the person told the GP.
    let (code, recorded) = run.post("/fhir/Consent", &gp(), &consent(referral)).await;
    assert_eq!(code, 201, "{recorded}");
    eventually(Duration::from_secs(30), "consent projected", || async {
        consented().await
    })
    .await;
    assert_eq!(run.version(referral).await, before + 1);

    // And withdrawn by the referrer again.
    let mut withdrawal = consent(referral);
    withdrawal["status"] = json!("inactive");
    let (code, answer) = run.post("/fhir/Consent", &gp(), &withdrawal).await;
    assert_eq!(code, 201, "{answer}");
    eventually(Duration::from_secs(30), "withdrawal projected", || async {
        !consented().await
    })
    .await;
}

/// A second practice's referral of another invented person, in the same area.
fn other_practice_referral(reference: &str) -> Value {
    let mut referral = linkwork_testkit::gp_referral(reference);
    let patient = &mut referral["contained"][0];
    patient["identifier"][0]["value"] = json!(linkwork_testkit::NHS_NUMBERS[1]);
    patient["name"] = json!([{ "family": "Quillfeather", "given": ["Tobias"] }]);
    patient["address"] =
        json!([{ "line": ["7 Made-up Yard"], "city": "Townley", "postalCode": "LS1 3ZZ" }]);
    referral["requester"] = json!({ "display": "Dr Invented, Marsh Lane Practice" });
    referral
}

#[tokio::test]
async fn two_referrers_each_see_only_their_own_people_on_every_outbound_topic_and_api() {
    let run = Loop::start().await;
    let connectors = provider("connectors");
    // Two practices, each with a person of its own: (source, token, referral body,
    // NHS number, family name).
    let practices = [
        (
            "gp:A81001",
            token(Role::Source, "gp:A81001"),
            linkwork_testkit::gp_referral(&unique("GPA")),
            linkwork_testkit::NHS_NUMBERS[0],
            "Brightwater",
        ),
        (
            "gp:B82002",
            token(Role::Source, "gp:B82002"),
            other_practice_referral(&unique("GPB")),
            linkwork_testkit::NHS_NUMBERS[1],
            "Quillfeather",
        ),
    ];
    let mut referrals = Vec::new();
    for (_, token, body, _, _) in &practices {
        let (status, created) = run.post("/fhir/ServiceRequest", token, body).await;
        assert_eq!(status, 201, "{created}");
        let referral =
            ReferralId::from_uuid(Uuid::parse_str(created["id"].as_str().unwrap()).unwrap());
        run.wait_for_status_as(referral, "requested", token).await;
        referrals.push(referral);
    }
    // The same provider supports both and closes both with scores before and after.
    for (referral, (_, token, ..)) in referrals.iter().zip(&practices) {
        let referral = *referral;
        let steps: Vec<(&str, Value)> = vec![
            ("PUT", task(referral, 1, "accepted", None)),
            ("POST /fhir/Observation", ucla_baseline(referral)),
            ("POST /fhir/Observation", ucla_follow_up(referral)),
            ("PUT", task(referral, 1, "completed", None)),
        ];
        run.provide(referral, &connectors, &steps).await;
        run.wait_for_status_as(referral, "completed", token).await;
    }
    // Everything on the log is projected and every outbound message relayed.
    run.stack
        .caught_up(
            &run.pool,
            consumers::PROJECTOR,
            &run.names.topic(REFERRAL_EVENTS),
        )
        .await;
    run.responses_settled().await;

    for (index, (source, token, _, nhs_number, _)) in practices.iter().enumerate() {
        let own = referrals[index];
        let other = referrals[1 - index];
        let (_, _, _, other_nhs_number, other_family) = &practices[1 - index];
        let (other_source, ..) = &practices[1 - index];

        // Its own outcomes topic: two Observations and the summary, all of its person.
        let topic = run
            .names
            .referrer_outcomes(&linkwork_domain::Source::parse(source).unwrap());
        let messages = run
            .stack
            .read_topic(&topic, 3, Duration::from_secs(60))
            .await;
        assert_eq!(messages.len(), 3, "{topic}");
        for message in &messages {
            assert_eq!(
                message.key.as_deref(),
                Some(own.to_string().as_str()),
                "{topic}"
            );
            let text = String::from_utf8_lossy(&message.payload);
            assert!(text.contains(nhs_number), "{topic}: {text}");
            assert!(
                !text.contains(other_nhs_number)
                    && !text.contains(other_family)
                    && !text.contains(&other.to_string()),
                "{topic} carries {other_source}'s person: {text}"
            );
        }

        // Over the API: its own reads, the other's refused.
        for path in [
            format!("/fhir/ServiceRequest/{own}"),
            format!("/fhir/ServiceRequest/{own}/_history"),
            format!("/fhir/Task/{}", own.task_id(1)),
            format!("/fhir/Observation?based-on=ServiceRequest/{own}"),
        ] {
            let (code, answer) = run.get(&path, token).await;
            assert_eq!(code, 200, "{source} {path}: {answer}");
        }
        for path in [
            format!("/fhir/ServiceRequest/{other}"),
            format!("/fhir/ServiceRequest/{other}/_history"),
            format!("/fhir/Task/{}", other.task_id(1)),
            format!("/fhir/Observation?based-on=ServiceRequest/{other}"),
        ] {
            let (code, answer) = run.get(&path, token).await;
            assert_eq!(code, 403, "{source} {path}: {answer}");
            assert!(!answer.to_string().contains(other_nhs_number), "{answer}");
        }
        // Searches: its own person found, the other's not (an empty searchset).
        let (code, listed) = run.get("/fhir/ServiceRequest", token).await;
        assert_eq!(code, 200, "{listed}");
        let listed = listed.to_string();
        assert!(listed.contains(&own.to_string()), "{source}: {listed}");
        assert!(!listed.contains(&other.to_string()), "{source}: {listed}");
        for (number, expected) in [(nhs_number, 1), (other_nhs_number, 0)] {
            let (code, found) = run
                .post_form(
                    "/fhir/ServiceRequest/_search",
                    token,
                    &[(
                        "subject:identifier",
                        &format!("https://fhir.nhs.uk/Id/nhs-number|{number}"),
                    )],
                )
                .await;
            assert_eq!(code, 200, "{found}");
            assert_eq!(
                found["total"], expected,
                "{source} searching {number}: {found}"
            );
        }
    }
}

/// BaRS `NHSD-Target-Identifier` for linkwork's router service: base64 of
/// `{"system":"https://linkwork.example/fhir/Id/service","value":"router"}`.
const BARS_TARGET: &str =
    "eyJzeXN0ZW0iOiJodHRwczovL2xpbmt3b3JrLmV4YW1wbGUvZmhpci9JZC9zZXJ2aWNlIiwidmFsdWUiOiJyb3V0ZXIifQ==";

/// One request the audit walk made: the route it exercises, the concrete call, who
/// made it and the status it got.
struct Walked {
    route: (&'static str, &'static str),
    path: String,
    client: &'static str,
    status: u16,
}

#[tokio::test]
async fn every_route_that_touches_identifiable_data_leaves_an_audit_event_an_administrator_finds() {
    let run = Loop::start().await;
    let connectors = provider("connectors");
    let admin = token(Role::Admin, "ig-lead");
    let asc = token(Role::Source, "asc");
    let mut walked: Vec<Walked> = Vec::new();
    let mut note = |route, path: String, client, status: u16| {
        walked.push(Walked {
            route,
            path,
            client,
            status,
        });
    };

    // Creates: a ServiceRequest, a BaRS message, a batch Bundle.
    let (status, created) = run
        .post(
            "/fhir/ServiceRequest",
            &gp(),
            &linkwork_testkit::gp_referral(&unique("AUD")),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let referral = ReferralId::from_uuid(Uuid::parse_str(created["id"].as_str().unwrap()).unwrap());
    note(
        ("POST", "/fhir/ServiceRequest"),
        "/fhir/ServiceRequest".into(),
        "gp:A81001",
        status,
    );
    let message = linkwork_testkit::bars_message(&unique("AUDB"), "new", "active");
    let response = run
        .client
        .post(format!("{}/fhir/$process-message", run.address))
        .bearer_auth(gp())
        .header("content-type", "application/fhir+json")
        .header("x-request-id", Uuid::now_v7().to_string())
        .header("x-correlation-id", Uuid::now_v7().to_string())
        .header("nhsd-target-identifier", BARS_TARGET)
        .header("nhsd-end-user-organisation-ods", "A81001")
        .body(message.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_eq!(status, 200, "{}", response.text().await.unwrap());
    note(
        ("POST", "/fhir/$process-message"),
        "/fhir/$process-message".into(),
        "gp:A81001",
        status,
    );
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [{
        "fullUrl": format!("urn:uuid:{}", Uuid::now_v7()),
        "resource": linkwork_testkit::gp_referral(&unique("AUDC")),
        "request": { "method": "POST", "url": "ServiceRequest" },
    }]});
    let (status, answer) = run.post("/fhir", &gp(), &batch).await;
    assert_eq!(status, 200, "{answer}");
    note(("POST", "/fhir"), "/fhir".into(), "gp:A81001", status);

    run.wait_for_status(referral, "requested").await;
    let task_path = format!("/fhir/Task/{}", referral.task_id(1));
    // Reads and searches by the referrer and the provider.
    for (route, path, who, token) in [
        (
            ("GET", "/fhir/ServiceRequest/{id}"),
            format!("/fhir/ServiceRequest/{referral}"),
            "gp:A81001",
            gp(),
        ),
        (
            ("GET", "/fhir/ServiceRequest/{id}/_history"),
            format!("/fhir/ServiceRequest/{referral}/_history"),
            "gp:A81001",
            gp(),
        ),
        (
            ("GET", "/fhir/Task/{id}"),
            task_path.clone(),
            "connectors",
            connectors.clone(),
        ),
        (
            ("GET", "/fhir/ServiceRequest"),
            "/fhir/ServiceRequest".to_owned(),
            "gp:A81001",
            gp(),
        ),
    ] {
        let (status, answer) = run.get(&path, &token).await;
        assert_eq!(status, 200, "{path}: {answer}");
        note(route, path, who, status);
    }
    let (status, found) = run
        .post_form(
            "/fhir/ServiceRequest/_search",
            &gp(),
            &[(
                "subject:identifier",
                &format!(
                    "https://fhir.nhs.uk/Id/nhs-number|{}",
                    linkwork_testkit::NHS_NUMBERS[0]
                ),
            )],
        )
        .await;
    assert_eq!(status, 200, "{found}");
    note(
        ("POST", "/fhir/ServiceRequest/_search"),
        "/fhir/ServiceRequest/_search".into(),
        "gp:A81001",
        status,
    );

    // The provider's updates and records.
    let (status, answer) = run
        .put(
            &task_path,
            &connectors,
            &task(referral, 1, "accepted", None),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    note(
        ("PUT", "/fhir/Task/{id}"),
        task_path.clone(),
        "connectors",
        status,
    );
    let (status, answer) = run
        .patch(
            &task_path,
            &connectors,
            "application/json-patch+json",
            &json!([{ "op": "replace", "path": "/status", "value": "in-progress" }]),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    note(
        ("PATCH", "/fhir/Task/{id}"),
        task_path.clone(),
        "connectors",
        status,
    );
    for (route, body) in [
        (("POST", "/fhir/Observation"), ucla_baseline(referral)),
        (("POST", "/fhir/Communication"), phone_call(referral)),
        (("POST", "/fhir/Procedure"), lunch_club(referral)),
        (("POST", "/fhir/Consent"), consent(referral)),
    ] {
        let (status, answer) = run.post(route.1, &connectors, &body).await;
        assert!(
            status == 200 || status == 201,
            "{route:?}: {status} {answer}"
        );
        note(route, route.1.to_owned(), "connectors", status);
    }
    run.wait_for_status(referral, "in-progress").await;
    let observations = format!("/fhir/Observation?based-on=ServiceRequest/{referral}");
    let (status, answer) = run.get(&observations, &gp()).await;
    assert_eq!(status, 200, "{answer}");
    note(
        ("GET", "/fhir/Observation"),
        "/fhir/Observation".into(),
        "gp:A81001",
        status,
    );

    // The ASC call log (case ids, no person), and a refused read by another practice.
    let response = run
        .client
        .post(format!("{}/asc/call-log", run.address))
        .bearer_auth(&asc)
        .header("content-type", "text/csv")
        .body("case_id,opened_at,closed_at,closure_reason\nAUD-1,2026-01-05T09:00:00Z,,\n")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_eq!(status, 200);
    note(
        ("POST", "/asc/call-log"),
        "/asc/call-log".into(),
        "asc",
        status,
    );
    // The person erased by an administrator (after the steps that read them).
    let (status, answer) = run
        .post(
            "/fhir/Patient/$erase",
            &admin,
            &json!({"resourceType": "Parameters", "parameter": [
                {"name": "referral", "valueString": referral.to_string()}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    note(
        ("POST", "/fhir/Patient/$erase"),
        "/fhir/Patient/$erase".into(),
        "ig-lead",
        status,
    );
    let (status, _) = run
        .get(
            &format!("/fhir/ServiceRequest/{referral}"),
            &token(Role::Source, "gp:B82002"),
        )
        .await;
    assert_eq!(status, 403);
    note(
        ("GET", "/fhir/ServiceRequest/{id}"),
        format!("/fhir/ServiceRequest/{referral}"),
        "gp:B82002",
        status,
    );

    // Every audited route was walked.
    let audited: std::collections::BTreeSet<(&str, &str)> = linkwork_ingest::http::routes()
        .into_iter()
        .filter(|spec| spec.audit.is_some())
        .map(|spec| (spec.method, spec.path))
        .collect();
    let mut covered: std::collections::BTreeSet<(&str, &str)> =
        walked.iter().map(|walk| walk.route).collect();
    covered.insert(("GET", "/fhir/AuditEvent"));
    assert_eq!(covered, audited, "every audited route is walked");

    // The administrator finds each in the trail: by the person, then by client.
    let today = chrono::Utc::now().date_naive();
    let person = format!(
        "/fhir/AuditEvent?patient=Patient/{}&date=ge{today}&_count=500",
        referral.patient_id()
    );
    let trail = |path: String| {
        let run = &run;
        let admin = admin.clone();
        async move {
            let (status, bundle) = run.get(&path, &admin).await;
            assert_eq!(status, 200, "{bundle}");
            bundle["entry"]
                .as_array()
                .unwrap()
                .iter()
                .map(|entry| entry["resource"].clone())
                .collect::<Vec<Value>>()
        }
    };
    let describes = |event: &Value, walk: &Walked| {
        event["outcomeDesc"].as_str().is_some_and(|text| {
            text.starts_with(&format!(
                "HTTP {} {} {}",
                walk.status, walk.route.0, walk.path
            ))
        }) && event["agent"][0]["who"]["identifier"]["value"] == walk.client
    };
    eventually(
        Duration::from_secs(60),
        "every access in the trail",
        || async {
            // This test's database holds this test's trail alone.
            let events = trail(format!("/fhir/AuditEvent?date=ge{today}&_count=500")).await;
            walked
                .iter()
                .all(|walk| events.iter().any(|event| describes(event, walk)))
        },
    )
    .await;
    let events = trail(person.clone()).await;
    let read = events
        .iter()
        .find(|event| describes(event, &walked[3]))
        .expect("the referrer's read");
    assert_eq!(read["subtype"][0]["code"], "read");
    assert_eq!(read["action"], "R");
    assert_eq!(read["outcome"], "0");
    assert_eq!(read["agent"][0]["network"]["address"], "127.0.0.1");
    assert_eq!(
        read["entity"][0]["what"]["reference"],
        format!("Patient/{}", referral.patient_id())
    );
    assert_eq!(
        read["entity"][1]["what"]["reference"],
        format!("ServiceRequest/{referral}")
    );
    let refused = events
        .iter()
        .find(|event| describes(event, walked.last().unwrap()))
        .expect("the refused read");
    assert_eq!(refused["outcome"], "4");
    let search = events
        .iter()
        .find(|event| {
            event["outcomeDesc"]
                .as_str()
                .is_some_and(|text| text.contains("/_search"))
        })
        .expect("the search by NHS number");
    assert_eq!(search["action"], "E");
    // The trail names people by Patient id, searches by parameter name: no identifier.
    let text = serde_json::to_string(&events).unwrap();
    assert!(text.contains("parameters: subject:identifier"), "{text}");
    for identifying in [
        linkwork_testkit::NHS_NUMBERS[0],
        "Brightwater",
        "LS1 4AP",
        "1941-05-06",
    ] {
        assert!(!text.contains(identifying), "{identifying} in the trail");
    }
    // The administrator's own search is in the trail too.
    eventually(
        Duration::from_secs(30),
        "the audit search audited",
        || async {
            trail(person.clone()).await.iter().any(|event| {
                event["outcomeDesc"]
                    .as_str()
                    .is_some_and(|text| text.contains("GET /fhir/AuditEvent"))
                    && event["agent"][0]["who"]["identifier"]["value"] == "ig-lead"
            })
        },
    )
    .await;
    // Only administrators read the trail.
    let (status, _) = run.get(&person, &gp()).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_per_submission_self_identity_reads_and_consents_for_its_own_referral_alone() {
    let run = Loop::start().await;
    let ada = token(Role::Source, "self:0a1b2c3d-ada-submission");
    let tobias = token(Role::Source, "self:9f8e7d6c-tobias-submission");
    let mut referrals = Vec::new();
    for (who, body) in [
        (&ada, linkwork_testkit::gp_referral(&unique("SELFA"))),
        (&tobias, other_practice_referral(&unique("SELFB"))),
    ] {
        let (code, created) = run.post("/fhir/ServiceRequest", who, &body).await;
        assert_eq!(code, 201, "{created}");
        let referral =
            ReferralId::from_uuid(Uuid::parse_str(created["id"].as_str().unwrap()).unwrap());
        // No provider of this directory takes self-referrals: they wait for triage.
        run.wait_for_status_as(referral, "unroutable", who).await;
        referrals.push(referral);
    }
    let [own, other] = [referrals[0], referrals[1]];
    // Ada's identity reads hers back, every way, and nothing of Tobias's.
    for path in [
        format!("/fhir/ServiceRequest/{own}"),
        format!("/fhir/ServiceRequest/{own}/_history"),
        format!("/fhir/Observation?based-on=ServiceRequest/{own}"),
    ] {
        let (code, answer) = run.get(&path, &ada).await;
        assert_eq!(code, 200, "{path}: {answer}");
    }
    for path in [
        format!("/fhir/ServiceRequest/{other}"),
        format!("/fhir/ServiceRequest/{other}/_history"),
        format!("/fhir/Observation?based-on=ServiceRequest/{other}"),
    ] {
        let (code, answer) = run.get(&path, &ada).await;
        assert_eq!(code, 403, "{path}: {answer}");
    }
    let (code, listed) = run.get("/fhir/ServiceRequest", &ada).await;
    assert_eq!(code, 200, "{listed}");
    assert_eq!(listed["total"], 1, "{listed}");
    assert_eq!(listed["entry"][0]["resource"]["id"], own.to_string());
    let (code, found) = run
        .post_form(
            "/fhir/ServiceRequest/_search",
            &ada,
            &[(
                "subject:identifier",
                &format!(
                    "https://fhir.nhs.uk/Id/nhs-number|{}",
                    linkwork_testkit::NHS_NUMBERS[1]
                ),
            )],
        )
        .await;
    assert_eq!((code, &found["total"]), (200, &json!(0)), "{found}");
    // The person consents through the front end, for their own referral only.
    let (code, answer) = run.post("/fhir/Consent", &ada, &consent(other)).await;
    assert_eq!(code, 403, "{answer}");
    let (code, answer) = run.post("/fhir/Consent", &ada, &consent(own)).await;
    assert_eq!(code, 201, "{answer}");
    eventually(
        Duration::from_secs(30),
        "the person's consent projected",
        || async {
            linkwork_store::sqlx::query_scalar::<_, bool>(
                "SELECT consent_to_evaluation FROM projection.referrals WHERE referral_id = $1",
            )
            .bind(own.as_uuid())
            .fetch_one(&run.pool)
            .await
            .unwrap_or(false)
        },
    )
    .await;
    // And the shared identity still reads nothing.
    let (code, _) = run
        .get(
            &format!("/fhir/ServiceRequest/{own}"),
            &token(Role::Source, "self"),
        )
        .await;
    assert_eq!(code, 403);
}

#[tokio::test]
async fn changes_that_come_over_kafka_are_audited_like_those_over_http() {
    let run = Loop::start().await;
    let admin = token(Role::Admin, "ig-lead");
    // A hospital's integration engine puts a referral on referrals.inbound.
    let reference = unique("KAFKA");
    let body = linkwork_testkit::gp_referral(&reference).to_string();
    let producer = Producer::new(&run.stack.kafka).unwrap();
    let mut headers = HeaderList::default();
    headers.push(linkwork_ingest::inbound::SOURCE_HEADER, "hospital:RVY");
    producer
        .send(Outbound {
            topic: &run.names.topic(linkwork_bus::topics::REFERRALS_INBOUND),
            key: Some(b"hospital:RVY"),
            partition: None,
            payload: body.as_bytes(),
            headers,
        })
        .await
        .expect("acknowledged");
    let referral = ReferralId::derive(
        &linkwork_domain::Source::parse("hospital:RVY").unwrap(),
        "https://gp.example/referrals",
        &reference,
    );
    run.wait_for_status_as(referral, "requested", &admin).await;
    // The provider accepts it over provider.responses.
    let accepted = task(referral, 1, "accepted", None).to_string();
    run.respond(referral, Some("connectors"), accepted.as_bytes())
        .await;
    run.wait_for_status_as(referral, "accepted", &admin).await;

    let path = format!("/fhir/AuditEvent?patient=Patient/{}", referral.patient_id());
    let agent = |event: &Value| {
        event["agent"][0]["who"]["identifier"]["value"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    eventually(Duration::from_secs(60), "both changes audited", || async {
        let (status, bundle) = run.get(&path, &admin).await;
        status == 200
            && bundle["entry"].as_array().is_some_and(|entries| {
                let events: Vec<&Value> = entries.iter().map(|entry| &entry["resource"]).collect();
                events
                    .iter()
                    .any(|event| agent(event) == "hospital:RVY" && event["action"] == "C")
                    && events
                        .iter()
                        .any(|event| agent(event) == "connectors" && event["action"] == "U")
            })
    })
    .await;
    let (_, bundle) = run.get(&path, &admin).await;
    let from_kafka: Vec<&Value> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| &entry["resource"])
        .filter(|event| {
            event["outcomeDesc"]
                .as_str()
                .is_some_and(|text| text.starts_with("accepted from Kafka"))
        })
        .collect();
    assert_eq!(
        from_kafka.len(),
        2,
        "one AuditEvent per change, however often applied"
    );
    for event in from_kafka {
        assert_eq!(
            event["entity"][1]["what"]["reference"],
            format!("ServiceRequest/{referral}")
        );
        assert!(!event.to_string().contains(linkwork_testkit::NHS_NUMBERS[0]));
    }
}

/// The pipeline against the local broker with SASL/SCRAM authentication on: the
/// security settings pass from configuration (`LINKWORK_KAFKA_*`) to every client
/// linkwork makes (topic admin, producers, consumers, the outbox relay), and a wrong
/// password gets nothing through.
#[tokio::test]
async fn the_pipeline_runs_against_a_broker_that_requires_sasl_scram() {
    let secured = stack().over_sasl_scram(None);
    assert_eq!(
        secured.kafka.properties["security.protocol"], "SASL_PLAINTEXT",
        "the settings came through as configured"
    );
    // Topics, ingest, the router and the projector, all through the SASL listener.
    let run = Loop::start_on(secured).await;
    let referral = run.routed_referral(&unique("SASL")).await;
    let queue = run
        .names
        .provider_queue(&linkwork_domain::ProviderId::parse("connectors").unwrap());
    let queued = run
        .stack
        .read_topic(&queue, 1, Duration::from_secs(60))
        .await;
    assert_eq!(queued.len(), 1);
    assert_eq!(
        queued[0].key.as_deref(),
        Some(referral.to_string().as_str())
    );

    // A wrong password writes nothing.
    let intruder = stack().over_sasl_scram(Some("not-the-password"));
    let producer =
        Producer::with_delivery_timeout(&intruder.kafka, Duration::from_secs(5)).unwrap();
    let sent = producer
        .send(Outbound {
            topic: &queue,
            key: Some(b"intruder"),
            partition: None,
            payload: b"{}",
            headers: HeaderList::default(),
        })
        .await;
    assert!(sent.is_err(), "a wrong SCRAM password is refused");
    let after = run
        .stack
        .read_topic(&queue, 1, Duration::from_secs(30))
        .await;
    assert_eq!(after.len(), 1, "nothing more on the queue");
}

/// Every row of every table in `pool`'s database as text, with the table's name: what
/// linkwork's Postgres holds, for scanning.
async fn every_row(pool: &PgPool) -> Vec<(String, String)> {
    let tables: Vec<(String, String)> = linkwork_store::sqlx::query_as(
        "SELECT table_schema::TEXT, table_name::TEXT FROM information_schema.tables
         WHERE table_type = 'BASE TABLE'
           AND table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut rows = Vec::new();
    for (schema, table) in tables {
        let name = format!("\"{schema}\".\"{table}\"");
        let texts: Vec<String> =
            linkwork_store::sqlx::query_scalar(&format!("SELECT t::TEXT FROM {name} t"))
                .fetch_all(pool)
                .await
                .unwrap();
        rows.extend(texts.into_iter().map(|text| (name.clone(), text)));
    }
    rows
}

/// The tables whose rows carry any of `needles`.
fn holding<'a>(rows: &'a [(String, String)], needles: &[&str]) -> Vec<(&'a str, String)> {
    rows.iter()
        .filter_map(|(table, text)| {
            needles
                .iter()
                .find(|needle| text.contains(**needle))
                .map(|needle| (table.as_str(), (*needle).to_owned()))
        })
        .collect()
}

#[tokio::test]
async fn an_erased_person_is_unreadable_on_the_log_redacted_after_replay_and_noticed_outbound() {
    let run = Loop::start().await;
    let connectors = provider("connectors");
    let admin = token(Role::Admin, "ig-lead");
    // (Tobias shares Ada's birth date: the read model's is checked by column.)
    let ada = [
        linkwork_testkit::NHS_NUMBERS[0],
        "Brightwater",
        "LS1 4AP",
        "1 Invented Row",
    ];
    let tobias = [linkwork_testkit::NHS_NUMBERS[1], "Quillfeather", "LS1 3ZZ"];

    // Ada (gp:A81001) and Tobias (gp:B82002), both supported by Community Connectors;
    // Ada consents to evaluation, so a pseudonymised copy of her score goes out.
    let erased = run.routed_referral(&unique("ERASE")).await;
    let other_gp = token(Role::Source, "gp:B82002");
    let (status, created) = run
        .post(
            "/fhir/ServiceRequest",
            &other_gp,
            &other_practice_referral(&unique("KEEP")),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let kept = ReferralId::from_uuid(Uuid::parse_str(created["id"].as_str().unwrap()).unwrap());
    run.wait_for_status_as(kept, "requested", &other_gp).await;
    run.provide(
        erased,
        &connectors,
        &[
            ("PUT", task(erased, 1, "accepted", None)),
            ("POST /fhir/Consent", consent(erased)),
            ("POST /fhir/Observation", ucla_baseline(erased)),
        ],
    )
    .await;
    let pseudonymised = run.names.topic(OUTCOMES_OBSERVATIONS_PSEUDONYMISED);
    run.stack
        .read_topic(&pseudonymised, 1, Duration::from_secs(60))
        .await;

    // On the log, what identifies either person is sealed.
    let events = run.names.topic(REFERRAL_EVENTS);
    let log = run
        .stack
        .read_topic(&events, 6, Duration::from_secs(60))
        .await;
    let received: Vec<_> = log
        .iter()
        .filter(|message| message.header("ce_type") == Some("linkwork.referral.received.v1"))
        .collect();
    assert_eq!(received.len(), 2);
    for message in &log {
        let text = String::from_utf8_lossy(&message.payload);
        for secret in ada.iter().chain(&tobias) {
            assert!(!text.contains(secret), "{secret} on the log: {text}");
        }
    }
    // Before the erasure the read models have both people.
    let (_, read) = run
        .get(&format!("/fhir/ServiceRequest/{erased}"), &gp())
        .await;
    assert!(read.to_string().contains("Brightwater"), "{read}");

    // An administrator erases Ada by her NHS number.
    let (status, answer) = run
        .post(
            "/fhir/Patient/$erase",
            &admin,
            &json!({"resourceType": "Parameters", "parameter": [
                {"name": "nhsNumber", "valueString": ada[0]}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["parameter"],
        json!([
            {"name": "keyDestroyed", "valueBoolean": true},
            {"name": "referral", "valueString": erased.to_string()}
        ])
    );
    // Nobody else may.
    let (status, _) = run
        .post(
            "/fhir/Patient/$erase",
            &gp(),
            &json!({"resourceType": "Parameters", "parameter": [
                {"name": "nhsNumber", "valueString": tobias[0]}
            ]}),
        )
        .await;
    assert_eq!(status, 403);

    // Redaction notices: on the provider's queue and on the referrer's topic; the
    // pseudonymised copy is retracted.
    let notice_on = |topic: String| {
        let run = &run;
        async move {
            let notices = || async {
                run.stack
                    .read_topic(&topic, 1, Duration::from_secs(5))
                    .await
                    .into_iter()
                    .filter(|message| {
                        message.header("ce_type") == Some("linkwork.referral.redacted.v1")
                    })
                    .collect::<Vec<_>>()
            };
            eventually(
                Duration::from_secs(60),
                &format!("a notice on {topic}"),
                || async { !notices().await.is_empty() },
            )
            .await;
            notices().await.remove(0)
        }
    };
    for topic in [
        run.names.topic("provider.connectors.referrals"),
        run.names
            .referrer_outcomes(&linkwork_domain::Source::parse("gp:A81001").unwrap()),
    ] {
        let notice = notice_on(topic.clone()).await;
        assert_eq!(notice.key.as_deref(), Some(erased.to_string().as_str()));
        if topic.contains("provider.") {
            // The provider holding the referral was told the request is void first.
            let withdrawn = run
                .stack
                .read_topic(&topic, 1, Duration::from_secs(5))
                .await
                .into_iter()
                .filter(|message| message.offset < notice.offset)
                .any(|message| {
                    let text = String::from_utf8_lossy(&message.payload);
                    text.contains("\"cancelled\"") && text.contains("erased at their request")
                });
            assert!(withdrawn, "no withdrawal before the notice on {topic}");
        }
        let body: Value = serde_json::from_slice(&notice.payload).unwrap();
        assert_eq!(body["id"], erased.to_string(), "{topic}");
        assert_eq!(body["meta"]["security"][0]["code"], "REDACTED");
        let text = body.to_string();
        assert!(text.contains("erased at their request"), "{text}");
        for secret in ada {
            assert!(!text.contains(secret), "{topic}: {text}");
        }
    }
    eventually(
        Duration::from_secs(60),
        "the pseudonymised copy retracted",
        || async {
            run.stack
                .read_topic(&pseudonymised, 1, Duration::from_secs(5))
                .await
                .iter()
                .any(|message| {
                    let text = String::from_utf8_lossy(&message.payload);
                    text.contains("entered-in-error") && text.contains("\"code\":\"erased\"")
                })
        },
    )
    .await;

    // The read models: Ada redacted, found by nobody; Tobias untouched.
    run.stack
        .caught_up(&run.pool, consumers::PROJECTOR, &events)
        .await;
    let check_read_models = || async {
        let (status, read) = run
            .get(&format!("/fhir/ServiceRequest/{erased}"), &gp())
            .await;
        assert_eq!(status, 200, "{read}");
        assert_eq!(read["meta"]["security"][0]["code"], "REDACTED", "{read}");
        // Nobody can work with her now: the referral is cancelled, the Task with it.
        assert_eq!(read["status"], "revoked", "{read}");
        let (_, task_now) = run
            .get(&format!("/fhir/Task/{}", erased.task_id(1)), &connectors)
            .await;
        assert_eq!(task_now["status"], "cancelled", "{task_now}");
        let (_, found) = run
            .post_form(
                "/fhir/ServiceRequest/_search",
                &gp(),
                &[(
                    "subject:identifier",
                    &format!("https://fhir.nhs.uk/Id/nhs-number|{}", ada[0]),
                )],
            )
            .await;
        assert_eq!(found["total"], 0, "{found}");
        let (_, other) = run
            .get(&format!("/fhir/ServiceRequest/{kept}"), &other_gp)
            .await;
        assert!(other.to_string().contains("Quillfeather"), "{other}");
        // Nothing readable about Ada anywhere in linkwork's database (her key is gone,
        // so what the log and the router hold of her stays sealed).
        // Not even the vault's keyed hash of her NHS number, which whoever holds the
        // vault secret could reverse by trying every number.
        let hash = crate::helpers::vault()
            .person_with_nhs_number(ada[0])
            .to_string();
        let rows = every_row(&run.pool).await;
        let found = holding(&rows, &[&ada[..], &[hash.as_str()]].concat());
        assert!(found.is_empty(), "Ada is still readable in {found:?}");
        assert!(!holding(&rows, &tobias[..2]).is_empty(), "Tobias is kept");
        let birth_date: Option<chrono::NaiveDate> = linkwork_store::sqlx::query_scalar(
            "SELECT birth_date FROM projection.referrals WHERE referral_id = $1",
        )
        .bind(erased.as_uuid())
        .fetch_one(&run.pool)
        .await
        .unwrap();
        assert_eq!(birth_date, None);
    };
    check_read_models().await;

    // A replay from offset 0 rebuilds the read models with Ada redacted.
    let mut config =
        linkwork::topology::projector_config(&run.names, PseudonymKey::new(&[7u8; 32]).unwrap());
    config.vault = Some(crate::helpers::vault());
    let report = linkwork_projector::replay::replay(&run.pool, &run.stack.kafka, &config, false)
        .await
        .unwrap();
    assert_eq!(report.referrals, 2);
    check_read_models().await;
}

#[tokio::test]
async fn a_dead_letter_about_a_person_is_sealed_and_unreadable_once_they_are_erased() {
    let run = Loop::start().await;
    let admin = token(Role::Admin, "ig-lead");
    // A referral the intake refuses (no reason for it), about Ada.
    let mut refused = linkwork_testkit::gp_referral(&unique("DLQ"));
    refused.as_object_mut().unwrap().remove("reasonCode");
    refused.as_object_mut().unwrap().remove("code");
    let producer = Producer::new(&run.stack.kafka).unwrap();
    let mut headers = HeaderList::default();
    headers.push("linkwork-source", "gp:A81001");
    let body = refused.to_string();
    producer
        .send(Outbound {
            topic: &run.names.topic(linkwork_bus::topics::REFERRALS_INBOUND),
            key: Some(b"https://gp.example/referrals|DLQ"),
            partition: None,
            payload: body.as_bytes(),
            headers,
        })
        .await
        .expect("acknowledged");
    let dead_letters = run.names.dlq(consumers::INBOUND);
    let letters = run
        .stack
        .read_topic(&dead_letters, 1, Duration::from_secs(60))
        .await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    let text = String::from_utf8_lossy(&letter.payload).into_owned();
    let everything = format!("{text} {:?}", letter.headers);
    for secret in [
        linkwork_testkit::NHS_NUMBERS[0],
        "Brightwater",
        "LS1 4AP",
        "1941-05-06",
    ] {
        assert!(
            !everything.contains(secret),
            "{secret} in the dead letter: {everything}"
        );
    }
    assert_eq!(
        letter.header("content-type"),
        Some(dlq::SEALED_CONTENT_TYPE)
    );
    let reason: Value = serde_json::from_str(letter.header(dlq::REASON).unwrap()).unwrap();
    assert_eq!(reason["resourceType"], "OperationOutcome", "{reason}");

    // While Ada's key lives, an operator opens it: the message as sent, the full reason.
    let vault = crate::helpers::vault();
    let mut connection = run.pool.acquire().await.unwrap();
    let opened = dlq::open(&vault, &mut connection, &letter.payload)
        .await
        .expect("it opens");
    assert_eq!(opened.body, body.as_bytes());
    assert!(opened.reason.contains("OperationOutcome"));

    // A refused Bundle naming two people opens only while both are in the vault.
    let mut both = linkwork_testkit::gp_referral(&unique("DLQ2"));
    both.as_object_mut().unwrap().remove("code");
    both["contained"]
        .as_array_mut()
        .unwrap()
        .push(other_practice_referral("x")["contained"][0].clone());
    both["contained"][1]["id"] = json!("carer");
    let body_of_both = both.to_string();
    let mut headers = HeaderList::default();
    headers.push("linkwork-source", "gp:A81001");
    producer
        .send(Outbound {
            topic: &run.names.topic(linkwork_bus::topics::REFERRALS_INBOUND),
            key: Some(b"https://gp.example/referrals|DLQ2"),
            partition: None,
            payload: body_of_both.as_bytes(),
            headers,
        })
        .await
        .expect("acknowledged");
    let letters = run
        .stack
        .read_topic(&dead_letters, 2, Duration::from_secs(60))
        .await;
    assert_eq!(letters.len(), 2);
    let second = letters
        .iter()
        .find(|other| other.payload != letter.payload)
        .unwrap();
    let text = String::from_utf8_lossy(&second.payload).into_owned();
    assert!(!text.contains("Quillfeather") && !text.contains(linkwork_testkit::NHS_NUMBERS[1]));
    assert_eq!(
        dlq::open(&vault, &mut connection, &second.payload)
            .await
            .unwrap()
            .body,
        body_of_both.as_bytes()
    );
    let (status, answer) = run
        .post(
            "/fhir/Patient/$erase",
            &admin,
            &json!({"resourceType": "Parameters", "parameter": [
                {"name": "nhsNumber", "valueString": linkwork_testkit::NHS_NUMBERS[1]}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        dlq::open(&vault, &mut connection, &second.payload)
            .await
            .is_err(),
        "erasing either person shuts a dead letter naming both"
    );
    assert!(
        dlq::open(&vault, &mut connection, &letter.payload)
            .await
            .is_ok(),
        "Ada's own still opens"
    );

    // Erased (she has no referral on record, only the dead letter): it opens no more.
    let (status, answer) = run
        .post(
            "/fhir/Patient/$erase",
            &admin,
            &json!({"resourceType": "Parameters", "parameter": [
                {"name": "nhsNumber", "valueString": linkwork_testkit::NHS_NUMBERS[0]}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["parameter"][0]["valueBoolean"], true, "{answer}");
    assert!(matches!(
        dlq::open(&vault, &mut connection, &letter.payload).await,
        Err(linkwork_vault::VaultError::Unreadable(_))
    ));
}
