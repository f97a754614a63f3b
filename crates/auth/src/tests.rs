use super::*;

fn secret() -> SecretString {
    SecretString::from("a-development-secret-of-at-least-32-bytes")
}

fn dev() -> Verifier {
    Verifier::dev(secret()).unwrap()
}

#[test]
fn a_dev_token_verifies_with_its_role_client_and_scopes() {
    let token = dev_token(
        &secret(),
        Role::Source,
        "gp:A81001",
        &[scopes::REFERRAL_SUBMIT],
        60,
    )
    .unwrap();
    let principal = dev().verify(&token).unwrap();
    assert_eq!(principal.role, Role::Source);
    assert_eq!(principal.source().unwrap().to_string(), "gp:A81001");
    assert!(principal.has_scope(scopes::REFERRAL_SUBMIT));
    assert!(!principal.has_scope(scopes::REFERRAL_RESPOND));
    assert!(principal.provider().is_none());
}

#[test]
fn an_admin_has_every_scope() {
    let token = dev_token(&secret(), Role::Admin, "ops", &[scopes::ADMIN], 60).unwrap();
    assert!(dev()
        .verify(&token)
        .unwrap()
        .has_scope(scopes::REFERRAL_SUBMIT));
}

#[test]
fn bad_tokens_are_refused_for_the_right_reason() {
    let other_secret = SecretString::from("another-development-secret-32-bytes-long");
    let forged = dev_token(&other_secret, Role::Source, "gp:A81001", &[], 60).unwrap();
    assert_eq!(dev().verify(&forged), Err(AuthError::BadSignature));
    assert_eq!(dev().verify("not.a.jwt"), Err(AuthError::Malformed));

    let claims = Claims {
        iss: DEV_ISSUER.into(),
        aud: DEV_AUDIENCE.into(),
        sub: "gp:A81001".into(),
        exp: 1_000_000,
        nbf: None,
        iat: None,
        role: Role::Source,
        scope: String::new(),
    };
    let key = EncodingKey::from_secret(secret().expose_secret().as_bytes());
    let expired = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
    assert_eq!(dev().verify(&expired), Err(AuthError::Expired));

    let elsewhere = Claims {
        aud: "another-service".into(),
        exp: u64::MAX / 2,
        ..claims.clone()
    };
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &elsewhere, &key).unwrap();
    assert_eq!(dev().verify(&token), Err(AuthError::WrongIssuerOrAudience));
}

#[test]
fn a_client_id_must_fit_its_role() {
    let token = dev_token(&secret(), Role::Source, "surgery", &[], 60).unwrap();
    assert!(matches!(
        dev().verify(&token),
        Err(AuthError::BadClient { .. })
    ));
    let token = dev_token(&secret(), Role::Provider, "Not A Provider", &[], 60).unwrap();
    assert!(matches!(
        dev().verify(&token),
        Err(AuthError::BadClient { .. })
    ));
    let token = dev_token(&secret(), Role::Provider, "townley-connectors", &[], 60).unwrap();
    assert_eq!(
        dev().verify(&token).unwrap().provider().unwrap().as_str(),
        "townley-connectors"
    );
}

#[test]
fn a_per_submission_self_identity_is_the_source_self_and_may_read_its_own() {
    let submitter = "self:0f9e4c1a-7b7e-4d0c-9f7e-2a1b3c4d5e6f";
    let token = dev_token(
        &secret(),
        Role::Source,
        submitter,
        &Role::Source.default_scopes(submitter),
        60,
    )
    .unwrap();
    let principal = dev().verify(&token).unwrap();
    assert_eq!(principal.source(), Some(Source::SelfReferral));
    assert_eq!(principal.submitter(), Some(submitter));
    assert!(principal.has_scope(scopes::REFERRAL_READ));
    // The shared identity is no submitter and reads nothing.
    let shared = dev_token(
        &secret(),
        Role::Source,
        "self",
        &Role::Source.default_scopes("self"),
        60,
    )
    .unwrap();
    let shared = dev().verify(&shared).unwrap();
    assert_eq!(shared.submitter(), None);
    assert!(!shared.has_scope(scopes::REFERRAL_READ));
    // Only self:<8-64 of a-z 0-9 -> is one.
    for bad in [
        "self:",
        "self:short",
        "self:UPPER-CASE-ID",
        "self:has space in it",
    ] {
        let token = dev_token(&secret(), Role::Source, bad, &[], 60).unwrap();
        assert!(
            matches!(dev().verify(&token), Err(AuthError::BadClient { .. })),
            "{bad}"
        );
    }
}

#[test]
fn a_weak_development_secret_is_refused() {
    assert!(matches!(
        Verifier::dev(SecretString::from("short")),
        Err(ConfigError::WeakSecret)
    ));
}

#[test]
fn production_tokens_verify_against_the_jwks() {
    let jwks = include_str!("fixtures/test-only-jwks.json");
    let private = include_str!("fixtures/test-only-es256-private.pem");
    let verifier = Verifier::jwks(jwks, "https://login.example".into(), "linkwork".into()).unwrap();
    let claims = |issuer: &str| Claims {
        iss: issuer.into(),
        aud: "linkwork".into(),
        sub: "hospital:RVY".into(),
        exp: u64::MAX / 2,
        nbf: None,
        iat: None,
        role: Role::Source,
        scope: scopes::REFERRAL_SUBMIT.into(),
    };
    let key = EncodingKey::from_ec_pem(private.as_bytes()).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("test-key-1".into());
    let token = jsonwebtoken::encode(&header, &claims("https://login.example"), &key).unwrap();
    let principal = verifier.verify(&token).unwrap();
    assert_eq!(principal.source().unwrap().to_string(), "hospital:RVY");

    let wrong_issuer =
        jsonwebtoken::encode(&header, &claims("https://elsewhere.example"), &key).unwrap();
    assert_eq!(
        verifier.verify(&wrong_issuer),
        Err(AuthError::WrongIssuerOrAudience)
    );

    // A development token is not accepted by a production verifier.
    let dev_token = dev_token(&secret(), Role::Source, "hospital:RVY", &[], 60).unwrap();
    assert!(verifier.verify(&dev_token).is_err());
}

#[test]
fn bearer_headers_are_parsed_strictly() {
    assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
    assert_eq!(bearer(Some("bearer abc")), Ok("abc"));
    assert_eq!(bearer(None), Err(AuthError::Missing));
    assert_eq!(bearer(Some("Basic abc")), Err(AuthError::Malformed));
    assert_eq!(bearer(Some("Bearer ")), Err(AuthError::Malformed));
}

const ISSUER: &str = "https://login.example";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn production_claims() -> Claims {
    Claims {
        iss: ISSUER.into(),
        aud: "linkwork".into(),
        sub: "hospital:RVY".into(),
        exp: now() + 600,
        nbf: None,
        iat: None,
        role: Role::Source,
        scope: scopes::REFERRAL_SUBMIT.into(),
    }
}

/// A production token signed with fixture key 1 or 2 (`kid` test-key-1 or test-key-2).
fn signed(claims: &Claims, key: u8) -> String {
    let private = match key {
        1 => include_str!("fixtures/test-only-es256-private.pem"),
        _ => include_str!("fixtures/test-only-es256-private-2.pem"),
    };
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(format!("test-key-{key}"));
    let key = EncodingKey::from_ec_pem(private.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn production() -> Verifier {
    Verifier::jwks(
        include_str!("fixtures/test-only-jwks.json"),
        ISSUER.into(),
        "linkwork".into(),
    )
    .unwrap()
}

#[test]
fn an_audience_list_is_accepted_when_it_names_this_service_and_refused_when_not() {
    let listed = Claims {
        aud: Audience::Many(vec!["another-service".into(), "linkwork".into()]),
        ..production_claims()
    };
    assert_eq!(
        production().verify(&signed(&listed, 1)).unwrap().client,
        "hospital:RVY"
    );
    let elsewhere = Claims {
        aud: Audience::Many(vec!["another-service".into(), "a-third".into()]),
        ..production_claims()
    };
    assert_eq!(
        production().verify(&signed(&elsewhere, 1)),
        Err(AuthError::WrongIssuerOrAudience)
    );

    // And a development token with a list.
    let key = EncodingKey::from_secret(secret().expose_secret().as_bytes());
    let dev_listed = Claims {
        iss: DEV_ISSUER.into(),
        aud: Audience::Many(vec![DEV_AUDIENCE.into(), "another-service".into()]),
        ..production_claims()
    };
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &dev_listed, &key).unwrap();
    assert!(dev().verify(&token).is_ok());
}

#[test]
fn a_token_not_valid_yet_is_refused_until_its_nbf() {
    let later = Claims {
        nbf: Some(now() + 3_600),
        ..production_claims()
    };
    assert_eq!(
        production().verify(&signed(&later, 1)),
        Err(AuthError::NotYetValid)
    );
    let already = Claims {
        nbf: Some(now() - 10),
        ..production_claims()
    };
    assert!(production().verify(&signed(&already, 1)).is_ok());
}

#[test]
fn only_rs256_and_es256_verify_production_tokens() {
    // An HS256 token naming a production key id (the classic confusion: the public key
    // used as an HMAC secret) is refused before any key is tried.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("test-key-1".into());
    let public = include_str!("fixtures/test-only-jwks.json");
    let confused = jsonwebtoken::encode(
        &header,
        &production_claims(),
        &EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        production().verify(&confused),
        Err(AuthError::AlgorithmNotAllowed)
    );

    // `alg: none`, unsigned.
    use base64::Engine as _;
    let encode = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
    let unsigned = format!(
        "{}.{}.",
        encode(r#"{"alg":"none","typ":"JWT","kid":"test-key-1"}"#),
        encode(&serde_json::to_string(&production_claims()).unwrap())
    );
    assert!(production().verify(&unsigned).is_err());
    assert!(dev().verify(&unsigned).is_err());

    // A development verifier takes HS256 only.
    assert_eq!(
        dev().verify(&signed(
            &Claims {
                iss: DEV_ISSUER.into(),
                ..production_claims()
            },
            1
        )),
        Err(AuthError::AlgorithmNotAllowed)
    );

    // Keys of other kinds, or stating another algorithm, are refused when the JWKS is read.
    let hmac =
        r#"{"keys":[{"kty":"oct","kid":"k","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYg"}]}"#;
    assert!(Verifier::jwks(hmac, ISSUER.into(), "linkwork".into()).is_err());
    let es384 = include_str!("fixtures/test-only-jwks.json").replace("\"ES256\"", "\"ES384\"");
    assert!(Verifier::jwks(&es384, ISSUER.into(), "linkwork".into()).is_err());
    // An encryption key alone is no signing key.
    let encryption = include_str!("fixtures/test-only-jwks.json").replace("\"sig\"", "\"enc\"");
    assert!(Verifier::jwks(&encryption, ISSUER.into(), "linkwork".into()).is_err());
    // Two keys under one key id: which verifies would be an accident.
    let twice = both_keys().replace("test-key-2", "test-key-1");
    assert!(Verifier::jwks(&twice, ISSUER.into(), "linkwork".into()).is_err());
}

/// The keys of both fixture sets in one JWKS document.
fn both_keys() -> String {
    let one: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/test-only-jwks.json")).unwrap();
    let two: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/test-only-jwks-2.json")).unwrap();
    serde_json::json!({ "keys": [one["keys"][0], two["keys"][0]] }).to_string()
}

#[test]
fn a_jwks_file_is_read_again_when_it_changes_so_keys_rotate_and_revoked_keys_stop_verifying() {
    let path = std::env::temp_dir().join(format!(
        "linkwork-auth-jwks-{}-{}.json",
        std::process::id(),
        now()
    ));
    std::fs::write(&path, include_str!("fixtures/test-only-jwks.json")).unwrap();
    // Looked at on every verification, as if the recheck intervals had passed.
    let verifier = Verifier::Jwks {
        keys: JwksKeys::from_file(&path, Duration::ZERO, Duration::ZERO).unwrap(),
        issuer: ISSUER.into(),
        audience: "linkwork".into(),
    };
    let old = signed(&production_claims(), 1);
    let new = signed(&production_claims(), 2);
    assert!(verifier.verify(&old).is_ok());
    assert_eq!(verifier.verify(&new), Err(AuthError::UnknownKey));

    // Rotation: the new key is published beside the old one.
    std::fs::write(&path, both_keys()).unwrap();
    assert!(verifier.verify(&new).is_ok(), "the new key verifies");
    assert!(verifier.verify(&old).is_ok(), "the old key still does");

    // A file that no longer parses keeps the keys read last.
    std::fs::write(&path, "{ not json").unwrap();
    assert!(verifier.verify(&new).is_ok());

    // Revocation: the old key is removed.
    std::fs::write(&path, include_str!("fixtures/test-only-jwks-2.json")).unwrap();
    assert_eq!(verifier.verify(&old), Err(AuthError::UnknownKey));
    assert!(verifier.verify(&new).is_ok());
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_jwks_file_is_not_read_again_before_its_recheck_interval() {
    let path = std::env::temp_dir().join(format!(
        "linkwork-auth-jwks-quiet-{}-{}.json",
        std::process::id(),
        now()
    ));
    std::fs::write(&path, include_str!("fixtures/test-only-jwks.json")).unwrap();
    let verifier = Verifier::Jwks {
        keys: JwksKeys::from_file(
            &path,
            Duration::from_secs(3_600),
            Duration::from_secs(3_600),
        )
        .unwrap(),
        issuer: ISSUER.into(),
        audience: "linkwork".into(),
    };
    std::fs::write(&path, include_str!("fixtures/test-only-jwks-2.json")).unwrap();
    // Neither the periodic look nor an unknown key id reads the file within the hour.
    assert!(verifier.verify(&signed(&production_claims(), 1)).is_ok());
    assert_eq!(
        verifier.verify(&signed(&production_claims(), 2)),
        Err(AuthError::UnknownKey)
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_scope_counts_only_for_a_role_that_may_hold_it() {
    let verify = |role: Role, client: &str, scopes: &[&str]| {
        dev()
            .verify(&dev_token(&secret(), role, client, scopes, 60).unwrap())
            .unwrap()
    };
    // A source whose token claims everything gets a source's scopes only.
    let source = verify(
        Role::Source,
        "gp:A81001",
        &[
            scopes::ADMIN,
            scopes::REFERRAL_RESPOND,
            scopes::OUTCOMES_READ,
            scopes::CALL_LOG_SUBMIT,
            scopes::REFERRAL_SUBMIT,
        ],
    );
    assert!(source.has_scope(scopes::REFERRAL_SUBMIT));
    for refused in [
        scopes::ADMIN,
        scopes::REFERRAL_RESPOND,
        scopes::OUTCOMES_READ,
        scopes::CALL_LOG_SUBMIT,
    ] {
        assert!(!source.has_scope(refused), "{refused}");
    }
    // The call log is ASC's alone.
    assert!(
        verify(Role::Source, "asc", &[scopes::CALL_LOG_SUBMIT]).has_scope(scopes::CALL_LOG_SUBMIT)
    );
    // A provider is not a data team; a data team reads no referral.
    let provider = verify(
        Role::Provider,
        "townley-connectors",
        &[scopes::OUTCOMES_READ, scopes::ADMIN],
    );
    assert!(!provider.has_scope(scopes::OUTCOMES_READ));
    assert!(!provider.has_scope(scopes::ADMIN));
    let data = verify(
        Role::Data,
        "evaluation-team",
        &[scopes::REFERRAL_READ, scopes::OUTCOMES_READ],
    );
    assert!(data.has_scope(scopes::OUTCOMES_READ));
    assert!(!data.has_scope(scopes::REFERRAL_READ));
    // A scope the token does not carry is not granted, even to its role.
    assert!(!verify(
        Role::Provider,
        "townley-connectors",
        &[scopes::REFERRAL_READ]
    )
    .has_scope(scopes::REFERRAL_RESPOND));
    // An administrator's `admin` grants everything.
    let admin = verify(Role::Admin, "ops", &[scopes::ADMIN]);
    for scope in [
        scopes::ADMIN,
        scopes::REFERRAL_READ,
        scopes::OUTCOMES_READ,
        scopes::CALL_LOG_SUBMIT,
    ] {
        assert!(admin.has_scope(scope), "{scope}");
    }
}

#[test]
fn the_shared_self_referral_identity_may_send_but_never_read() {
    let token = dev_token(
        &secret(),
        Role::Source,
        "self",
        &[scopes::REFERRAL_SUBMIT, scopes::REFERRAL_READ],
        60,
    )
    .unwrap();
    let principal = dev().verify(&token).unwrap();
    assert!(principal.has_scope(scopes::REFERRAL_SUBMIT));
    assert!(!principal.has_scope(scopes::REFERRAL_READ));
    assert!(!Role::Source
        .default_scopes("self")
        .contains(&scopes::REFERRAL_READ));
}
