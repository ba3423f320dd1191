//! Tests of token verification, including the refusals that matter for
//! security: expiry, wrong key, `alg: none`, algorithm confusion.

use std::path::PathBuf;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Mints a token under any algorithm and key, including the forged ones the
/// verifier must refuse.
fn sign(alg: Algorithm, claims: &impl serde::Serialize, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn claims(sub: &str, exp_offset: i64) -> Claims {
    Claims {
        sub: sub.into(),
        channels: Some(ChannelsClaim::Joined("room:*, user:alice".into())),
        exp: Some((now_secs() as i64 + exp_offset) as u64),
        nbf: None,
        iat: Some(now_secs()),
    }
}

#[test]
fn hs256_round_trip_and_channels_claim() {
    let verifier = Verifier::from_secret("dev-secret", None).unwrap();
    let token = mint_hs256("dev-secret", &claims("alice", 60));
    let verified = verifier.verify(&token).unwrap();
    assert_eq!(verified.sub, "alice");
    assert_eq!(
        verified.channels.unwrap().entries(),
        vec!["room:*".to_string(), "user:alice".to_string()]
    );
}

#[test]
fn refusals_are_named() {
    let verifier = Verifier::from_secret("dev-secret", None).unwrap();
    assert_eq!(
        verifier.verify(&mint_hs256("dev-secret", &claims("a", -60))),
        Err(TokenError::Expired)
    );
    assert_eq!(
        verifier.verify(&mint_hs256("other-secret", &claims("a", 60))),
        Err(TokenError::BadSignature)
    );
    let mut future = claims("a", 600);
    future.nbf = Some(now_secs() + 300);
    assert_eq!(
        verifier.verify(&mint_hs256("dev-secret", &future)),
        Err(TokenError::NotYetValid)
    );
    assert_eq!(verifier.verify("not.a.jwt"), Err(TokenError::Malformed));
    let no_sub = sign(
        Algorithm::HS256,
        &serde_json::json!({ "exp": now_secs() + 60 }),
        &EncodingKey::from_secret(b"dev-secret"),
    );
    assert_eq!(verifier.verify(&no_sub), Err(TokenError::Malformed));
}

#[test]
fn alg_none_is_refused() {
    let verifier = Verifier::from_secret("dev-secret", None).unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64.encode(serde_json::to_vec(&claims("mallory", 60)).unwrap());
    for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
        assert!(verifier.verify(&token).is_err(), "{token}");
    }
}

#[test]
fn rs256_and_es256_from_pem_and_no_algorithm_confusion() {
    let rsa = Verifier::from_public_key_file(&fixture("rsa-public.pem"), None).unwrap();
    let rsa_private = std::fs::read(fixture("rsa-private.pem")).unwrap();
    let rsa_key = EncodingKey::from_rsa_pem(&rsa_private).unwrap();
    let token = sign(Algorithm::RS256, &claims("bob", 60), &rsa_key);
    assert_eq!(rsa.verify(&token).unwrap().sub, "bob");

    // The classic attack: an HS256 token whose HMAC key is the server's
    // public RSA key. The verifier only accepts RS256.
    let public_pem = std::fs::read(fixture("rsa-public.pem")).unwrap();
    let public_as_secret = EncodingKey::from_secret(&public_pem);
    let forged = sign(Algorithm::HS256, &claims("mallory", 60), &public_as_secret);
    assert_eq!(rsa.verify(&forged), Err(TokenError::WrongAlgorithm));

    let ec = Verifier::from_public_key_file(&fixture("ec-public.pem"), None).unwrap();
    let ec_private = std::fs::read(fixture("ec-private.pem")).unwrap();
    let ec_key = EncodingKey::from_ec_pem(&ec_private).unwrap();
    let token = sign(Algorithm::ES256, &claims("carol", 60), &ec_key);
    assert_eq!(ec.verify(&token).unwrap().sub, "carol");
    assert_eq!(rsa.verify(&token), Err(TokenError::WrongAlgorithm));
}

#[test]
fn keys_and_algorithms_must_fit() {
    assert!(Verifier::from_secret("s", Some("RS256")).is_err());
    assert!(Verifier::from_secret("s", Some("none")).is_err());
    assert!(Verifier::from_public_key_file(&fixture("rsa-public.pem"), Some("ES256")).is_err());
    assert!(Verifier::from_public_key_file(&fixture("README.md"), None).is_err());
    assert!(Verifier::from_public_key_file(&fixture("missing.pem"), None).is_err());
}
