//! Token checks against the committed fixture keys (`tests/fixtures/keys/`): every algorithm,
//! every refusal, rotation, `kid` selection and key confusion.

use std::path::{Path, PathBuf};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

/// A fixed "now" for every check, in seconds since the epoch.
const NOW_S: u64 = 1_800_000_000;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn keyset(names: &[&str]) -> KeySet {
    let files: Vec<PathBuf> = names.iter().map(|name| fixture(name)).collect();
    KeySet::load(&files, &[]).unwrap()
}

fn claims() -> Value {
    json!({"sub": "user-1", "channels": ["news", "scores.*"], "exp": NOW_S + 600, "iat": NOW_S})
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

/// An HS256 token with the secret of fixture `name` (its trailing newline stripped).
fn hs(name: &str, kid: Option<&str>, claims: &Value) -> String {
    let secret = read(name);
    let secret = secret.strip_suffix(b"\n").unwrap_or(&secret).to_vec();
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&secret),
        kid,
        claims,
    )
}

fn rs(claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(&read("private/rs1.pem")).unwrap();
    sign(Algorithm::RS256, &key, None, claims)
}

fn es(claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(&read("private/es1.pem")).unwrap();
    sign(Algorithm::ES256, &key, None, claims)
}

fn verify(keys: &KeySet, token: &str) -> Result<Grant, Refusal> {
    keys.verify(token, NOW_S, &mut ScopeInterner::default())
}

fn b64(json: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
}

#[test]
fn keys_load_by_kind_and_take_their_file_stem_as_kid() {
    let keys = keyset(&["hs1.secret", "rs1.pem", "es1.pem"]);
    let loaded: Vec<(&str, KeyAlgorithm)> = keys
        .keys()
        .iter()
        .map(|k| (k.kid(), k.algorithm()))
        .collect();
    assert_eq!(
        loaded,
        [
            ("hs1", KeyAlgorithm::Hs256),
            ("rs1", KeyAlgorithm::Rs256),
            ("es1", KeyAlgorithm::Es256)
        ]
    );
}

#[test]
fn pem_files_that_are_not_p256_or_rsa_public_keys_are_start_up_errors() {
    for name in ["private/rs1.pem", "private/es1.pem", "es384.pem"] {
        let error = TokenKey::from_file(&fixture(name)).unwrap_err();
        assert!(matches!(error, KeyError::Pem(..)), "{name}: {error}");
    }
    let error = TokenKey::from_file(&fixture("missing.pem")).unwrap_err();
    assert!(matches!(error, KeyError::Read(..)), "{error}");
}

#[test]
fn short_secrets_and_repeated_kids_are_refused() {
    let error = TokenKey::from_file_bytes(Path::new("k.secret"), b"short\n").unwrap_err();
    assert!(matches!(error, KeyError::ShortSecret(_, 5)), "{error}");
    let twice = KeySet::load(&[fixture("hs1.secret"), fixture("hs1.secret")], &[]);
    assert!(matches!(twice, Err(KeyError::Kid(_))));
}

#[test]
fn one_trailing_newline_is_stripped_from_a_secret_file() {
    let secret = [b'k'; 40];
    let with_newline = [&secret[..], b"\n"].concat();
    let keys = KeySet::new(vec![TokenKey::from_file_bytes(
        Path::new("a.secret"),
        &with_newline,
    )
    .unwrap()])
    .unwrap();
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&secret),
        None,
        &claims(),
    );
    assert!(verify(&keys, &token).is_ok());
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&with_newline),
        None,
        &claims(),
    );
    assert_eq!(verify(&keys, &token), Err(Refusal::BadSignature));
}

#[test]
fn an_env_secret_is_an_hs256_key_named_after_its_variable() {
    let var = "RINGPUSH_TEST_TOKEN_SECRET_KEYS_TESTS";
    std::env::set_var(var, "0123456789abcdef0123456789abcdef");
    let key = TokenKey::from_env(var).unwrap();
    assert_eq!((key.kid(), key.algorithm()), (var, KeyAlgorithm::Hs256));
    assert!(matches!(
        TokenKey::from_env("RINGPUSH_TEST_UNSET_VARIABLE"),
        Err(KeyError::Env(_))
    ));
}

#[test]
fn valid_hs256_rs256_and_es256_tokens_give_a_grant() {
    let keys = keyset(&["hs1.secret", "rs1.pem", "es1.pem"]);
    for token in [
        hs("hs1.secret", None, &claims()),
        rs(&claims()),
        es(&claims()),
    ] {
        let grant = verify(&keys, &token).unwrap();
        assert_eq!(&*grant.session, "user-1");
        assert_eq!(grant.expires_at_s, NOW_S + 600);
        assert_eq!(grant.tab, None);
        assert!(grant.may_subscribe("news"));
        assert!(grant.may_subscribe("scores.eu"));
        assert!(!grant.may_subscribe("weather"));
        assert!(
            !grant.may_publish("news"),
            "no publish claim, no publishing"
        );
    }
}

#[test]
fn a_forged_signature_is_refused() {
    let keys = keyset(&["hs1.secret", "rs1.pem", "es1.pem"]);
    for token in [
        hs("hs1.secret", None, &claims()),
        rs(&claims()),
        es(&claims()),
    ] {
        // The same header and signature over other claims: a changed `sub`.
        let parts: Vec<&str> = token.split('.').collect();
        let mut forged_claims = claims();
        forged_claims["sub"] = json!("admin");
        let forged = format!("{}.{}.{}", parts[0], b64(&forged_claims), parts[2]);
        assert_eq!(
            verify(&keys, &forged),
            Err(Refusal::BadSignature),
            "{token}"
        );
    }
    // A token signed with a secret the node does not hold.
    let stranger = hs("hs-removed.secret", None, &claims());
    assert_eq!(verify(&keys, &stranger), Err(Refusal::BadSignature));
}

#[test]
fn alg_none_is_refused_with_or_without_a_signature() {
    let keys = keyset(&["hs1.secret", "rs1.pem"]);
    let header = b64(&json!({"alg": "none", "typ": "JWT"}));
    let body = b64(&claims());
    for token in [format!("{header}.{body}."), format!("{header}.{body}.c2ln")] {
        assert_eq!(
            verify(&keys, &token),
            Err(Refusal::WrongAlgorithm),
            "{token}"
        );
    }
    let header = b64(&json!({"alg": "HS512"}));
    let token = format!("{header}.{body}.c2ln");
    assert_eq!(verify(&keys, &token), Err(Refusal::WrongAlgorithm));
}

#[test]
fn hs256_signed_with_the_public_key_as_secret_is_refused() {
    let public_pem = read("rs1.pem");
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        None,
        &claims(),
    );
    // Only public keys: no key verifies HS256 at all.
    assert_eq!(
        verify(&keyset(&["rs1.pem"]), &confused),
        Err(Refusal::WrongAlgorithm)
    );
    // Beside a real HS256 key: that key is tried, never the PEM.
    let mixed = keyset(&["rs1.pem", "hs1.secret"]);
    assert_eq!(verify(&mixed, &confused), Err(Refusal::BadSignature));
    // Naming the RSA key's kid does not make it an HMAC secret either.
    let with_kid = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        Some("rs1"),
        &claims(),
    );
    assert_eq!(verify(&mixed, &with_kid), Err(Refusal::WrongAlgorithm));
    // The stripped form of the PEM as a secret fares no better.
    let stripped = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(public_pem.strip_suffix(b"\n").unwrap()),
        None,
        &claims(),
    );
    assert_eq!(
        verify(&keyset(&["rs1.pem"]), &stripped),
        Err(Refusal::WrongAlgorithm)
    );
}

#[test]
fn expiry_has_no_leeway_and_nbf_has_the_documented_leeway() {
    let keys = keyset(&["hs1.secret"]);
    let at = |field: &str, value: u64| {
        let mut c = claims();
        c[field] = json!(value);
        hs("hs1.secret", None, &c)
    };
    assert_eq!(verify(&keys, &at("exp", NOW_S)), Err(Refusal::Expired));
    assert_eq!(
        verify(&keys, &at("exp", NOW_S - 3600)),
        Err(Refusal::Expired)
    );
    assert!(verify(&keys, &at("exp", NOW_S + 1)).is_ok());
    let late = NOW_S + CLOCK_LEEWAY_S + 1;
    assert_eq!(verify(&keys, &at("nbf", late)), Err(Refusal::NotYetValid));
    assert_eq!(verify(&keys, &at("iat", late)), Err(Refusal::NotYetValid));
    assert!(verify(&keys, &at("nbf", NOW_S + CLOCK_LEEWAY_S)).is_ok());
    assert!(verify(&keys, &at("nbf", NOW_S - 10)).is_ok());
}

#[test]
fn a_rotated_key_still_verifies_and_a_removed_one_is_refused() {
    let both = keyset(&["hs1.secret", "hs2.secret"]);
    let old = hs("hs1.secret", None, &claims());
    let new = hs("hs2.secret", None, &claims());
    assert!(verify(&both, &old).is_ok());
    assert!(verify(&both, &new).is_ok());
    let rotated = keyset(&["hs2.secret"]);
    assert_eq!(verify(&rotated, &old), Err(Refusal::BadSignature));
    assert!(verify(&rotated, &new).is_ok());
    let old_with_kid = hs("hs1.secret", Some("hs1"), &claims());
    assert_eq!(verify(&rotated, &old_with_kid), Err(Refusal::UnknownKey));
}

#[test]
fn a_kid_selects_its_key_and_only_it() {
    let keys = keyset(&["hs1.secret", "hs2.secret"]);
    assert!(verify(&keys, &hs("hs2.secret", Some("hs2"), &claims())).is_ok());
    // Signed with hs2 but naming hs1: hs2 is not tried.
    let misnamed = hs("hs2.secret", Some("hs1"), &claims());
    assert_eq!(verify(&keys, &misnamed), Err(Refusal::BadSignature));
    let unknown = hs("hs2.secret", Some("nope"), &claims());
    assert_eq!(verify(&keys, &unknown), Err(Refusal::UnknownKey));
}

#[test]
fn claims_that_break_the_rules_are_malformed() {
    let keys = keyset(&["hs1.secret"]);
    let mut cases = Vec::new();
    let mut no_sub = claims();
    no_sub.as_object_mut().unwrap().remove("sub");
    cases.push(no_sub);
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    cases.push(no_exp);
    let mut text_exp = claims();
    text_exp["exp"] = json!("tomorrow");
    cases.push(text_exp);
    let mut bad_sub = claims();
    bad_sub["sub"] = json!("a/b");
    cases.push(bad_sub);
    let mut bad_tab = claims();
    bad_tab["tab"] = json!("");
    cases.push(bad_tab);
    let mut bad_pattern = claims();
    bad_pattern["channels"] = json!(["a*"]);
    cases.push(bad_pattern);
    let mut bad_publish = claims();
    bad_publish["publish"] = json!(["x y"]);
    cases.push(bad_publish);
    for case in cases {
        let token = hs("hs1.secret", None, &case);
        assert_eq!(verify(&keys, &token), Err(Refusal::Malformed), "{case}");
    }
    for token in [
        "",
        "a.b",
        "a.b.c.d",
        "a b.c.d",
        "!!.e30.c2ln",
        "e30.e30.c2ln",
    ] {
        assert_eq!(verify(&keys, token), Err(Refusal::Malformed), "{token:?}");
    }
    let huge = format!("{}.e30.c2ln", "a".repeat(TOKEN_BYTES_MAX));
    assert_eq!(verify(&keys, &huge), Err(Refusal::Malformed));
}

#[test]
fn tab_and_publish_claims_are_kept() {
    let keys = keyset(&["hs1.secret"]);
    let mut c = claims();
    c["tab"] = json!("tab-2");
    c["publish"] = json!(["chat.*"]);
    c["unknown_claim"] = json!({"ignored": true});
    let grant = verify(&keys, &hs("hs1.secret", None, &c)).unwrap();
    assert_eq!(grant.tab.as_deref(), Some("tab-2"));
    assert!(grant.may_publish("chat.room1"));
    assert!(!grant.may_publish("news"));
}

#[test]
fn equal_claims_share_one_interned_scope() {
    let keys = keyset(&["hs1.secret"]);
    let mut interner = ScopeInterner::default();
    let mut reordered = claims();
    reordered["channels"] = json!(["scores.*", "news", "news"]);
    reordered["sub"] = json!("user-2");
    let a = keys
        .verify(&hs("hs1.secret", None, &claims()), NOW_S, &mut interner)
        .unwrap();
    let b = keys
        .verify(&hs("hs1.secret", None, &reordered), NOW_S, &mut interner)
        .unwrap();
    assert!(std::sync::Arc::ptr_eq(&a.scope, &b.scope));
    assert_eq!(interner.len(), 1);
}

#[test]
fn a_refused_tokens_kid_is_logged_only_when_printable() {
    use base64::Engine as _;
    let encode = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
    let token = |header: &str| format!("{}.{}.c2ln", encode(header), encode("{}"));
    assert_eq!(
        log_kid(&token(r#"{"alg":"HS256","kid":"2026-06"}"#)).as_deref(),
        Some("2026-06")
    );
    assert_eq!(log_kid(&token(r#"{"alg":"HS256"}"#)), None);
    assert_eq!(
        log_kid(&token(r#"{"alg":"HS256","kid":"a b\nevent=forged"}"#)).as_deref(),
        Some("invalid")
    );
    let long = format!(r#"{{"alg":"HS256","kid":"{}"}}"#, "k".repeat(65));
    assert_eq!(log_kid(&token(&long)).as_deref(), Some("invalid"));
    assert_eq!(log_kid("not a token"), None);
}
