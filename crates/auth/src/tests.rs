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
