//! The token keys (`--token-key FILE`, `--token-key-env VAR`) and the check of one token
//! against them: [`KeySet::verify`] turns a compact JWT into a [`Grant`] or a [`Refusal`].
//!
//! Signatures are checked by the `jsonwebtoken` crate (RustCrypto backend); this file only
//! chooses which key may check which token, and reads the claims.
//!
//! Invariants:
//! - Each key verifies exactly one algorithm, fixed when it is loaded: a PEM public key is
//!   RS256 (RSA) or ES256 (P-256) by its type, any other file is an HS256 secret. So an
//!   HS256 token is never checked with a public key's bytes as its secret (key confusion),
//!   and `alg: none` matches no key.
//! - A file that looks like PEM but is not an RSA or P-256 public key (a private key, a
//!   certificate, another curve) is a start-up error, never an HS256 secret.
//! - An HS256 secret has at least [`HMAC_SECRET_BYTES_MIN`] bytes (RFC 7518 §3.2).
//! - With a `kid`, only the key of that id is tried; without one, every key of the header's
//!   algorithm is, in the order given on the command line.
//! - Time is a parameter (`now_s`), never read here, so the checks are testable.

use std::fs;
use std::path::{Path, PathBuf};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::extract::well_formed;
use super::refusal::Refusal;
use super::scope::{valid_name, Grant, Patterns, Scope, ScopeInterner};

/// The shortest HS256 secret accepted, in bytes: the hash output size (RFC 7518 §3.2).
pub const HMAC_SECRET_BYTES_MIN: usize = 32;

/// How far a token's `nbf` or `iat` may lie in the future and still be accepted, in seconds:
/// the clock skew tolerated between the token issuer and the node. `exp` gets no leeway, so a
/// token is refused from the very second the node closes its live connections (4003).
pub const CLOCK_LEEWAY_S: u64 = 30;

/// The longest token accepted, in bytes; longer ones are malformed without being decoded.
pub const TOKEN_BYTES_MAX: usize = 8 * 1024;

/// The PEM labels of a public key: SubjectPublicKeyInfo and PKCS#1 RSA.
const PEM_PUBLIC_LABELS: &[&str] = &["PUBLIC KEY", "RSA PUBLIC KEY"];

/// The length of an uncompressed P-256 point (0x04, x, y): what the EC key of ES256 holds.
const P256_POINT_BYTES: usize = 65;

/// The one algorithm a key verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// HMAC with SHA-256 over a shared secret.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 over an RSA public key.
    Rs256,
    /// ECDSA on P-256 with SHA-256 over an EC public key.
    Es256,
}

impl KeyAlgorithm {
    fn jwt(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::Rs256 => Algorithm::RS256,
            Self::Es256 => Algorithm::ES256,
        }
    }

    /// The `alg` header value this key accepts.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }
}

/// Why a key could not be loaded: a start-up error naming the file or variable.
#[derive(Debug)]
pub enum KeyError {
    /// The file could not be read.
    Read(PathBuf, std::io::Error),
    /// The environment variable is unset, empty or not Unicode.
    Env(String),
    /// A PEM file that is not an RSA or P-256 public key; the text says what it is.
    Pem(PathBuf, String),
    /// An HS256 secret shorter than [`HMAC_SECRET_BYTES_MIN`] bytes.
    ShortSecret(String, usize),
    /// The key id (file stem or variable name) is empty or used twice.
    Kid(String),
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Read(path, error) => write!(f, "token key {}: {error}", path.display()),
            Self::Env(var) => write!(f, "token key variable {var} is unset, empty or not UTF-8"),
            Self::Pem(path, what) => write!(f, "token key {}: {what}", path.display()),
            Self::ShortSecret(kid, bytes) => write!(
                f,
                "token key {kid}: an HS256 secret of {bytes} bytes; at least \
                 {HMAC_SECRET_BYTES_MIN} are required"
            ),
            Self::Kid(kid) => write!(f, "token key id {kid:?} is empty or given twice"),
        }
    }
}

impl std::error::Error for KeyError {}

/// One verification key.
pub struct TokenKey {
    kid: String,
    algorithm: KeyAlgorithm,
    key: DecodingKey,
    /// The crate's checks for this key: its one algorithm, and no time checks (they are done
    /// here, against `now_s`).
    validation: Validation,
}

impl std::fmt::Debug for TokenKey {
    /// Never prints the key material: a secret must not reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl TokenKey {
    /// A key from a file's bytes; `kid` is the file name without its extension.
    pub fn from_file_bytes(path: &Path, bytes: &[u8]) -> Result<TokenKey, KeyError> {
        let kid = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::str::from_utf8(bytes).unwrap_or("");
        match pem_label(text) {
            Some(label) if PEM_PUBLIC_LABELS.contains(&label) => public_key(path, kid, bytes),
            Some(label) => Err(KeyError::Pem(
                path.to_owned(),
                format!("a PEM {label}; give the node the public key (BEGIN PUBLIC KEY)"),
            )),
            None => {
                let secret = bytes.strip_suffix(b"\n").unwrap_or(bytes);
                let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
                TokenKey::hmac(kid, secret)
            }
        }
    }

    /// Reads `--token-key FILE`.
    pub fn from_file(path: &Path) -> Result<TokenKey, KeyError> {
        let bytes = fs::read(path).map_err(|error| KeyError::Read(path.to_owned(), error))?;
        TokenKey::from_file_bytes(path, &bytes)
    }

    /// Reads `--token-key-env VAR`: an HS256 secret whose `kid` is the variable's name.
    pub fn from_env(var: &str) -> Result<TokenKey, KeyError> {
        match std::env::var(var) {
            Ok(secret) if !secret.is_empty() => TokenKey::hmac(var.to_owned(), secret.as_bytes()),
            _ => Err(KeyError::Env(var.to_owned())),
        }
    }

    /// An HS256 key from secret bytes.
    pub fn hmac(kid: String, secret: &[u8]) -> Result<TokenKey, KeyError> {
        if secret.len() < HMAC_SECRET_BYTES_MIN {
            return Err(KeyError::ShortSecret(kid, secret.len()));
        }
        Ok(TokenKey::new(
            kid,
            KeyAlgorithm::Hs256,
            DecodingKey::from_secret(secret),
        ))
    }

    fn new(kid: String, algorithm: KeyAlgorithm, key: DecodingKey) -> TokenKey {
        let mut validation = Validation::new(algorithm.jwt());
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        // The node has no audience of its own: its keys are its audience (SECURITY.md).
        validation.validate_aud = false;
        TokenKey {
            kid,
            algorithm,
            key,
            validation,
        }
    }

    /// The key id: the file name without extension, or the variable name.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }
}

/// The label of the first PEM block in `text`, if it starts with one (after whitespace).
fn pem_label(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix("-----BEGIN ")?;
    let end = rest.find("-----")?;
    Some(&rest[..end])
}

/// An RSA or P-256 public key from PEM bytes.
fn public_key(path: &Path, kid: String, pem: &[u8]) -> Result<TokenKey, KeyError> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(TokenKey::new(kid, KeyAlgorithm::Rs256, key));
    }
    match DecodingKey::from_ec_pem(pem) {
        Ok(key) if key.as_bytes().len() == P256_POINT_BYTES => {
            Ok(TokenKey::new(kid, KeyAlgorithm::Es256, key))
        }
        Ok(_) => Err(KeyError::Pem(
            path.to_owned(),
            "an EC key on a curve other than P-256; only ES256 is accepted".into(),
        )),
        Err(error) => Err(KeyError::Pem(
            path.to_owned(),
            format!("not an RSA or EC public key ({error})"),
        )),
    }
}

/// Every configured key.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<TokenKey>,
}

/// The claims read from a verified token. Unknown claims are ignored.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
    iat: Option<u64>,
    publish: Option<Vec<String>>,
    tab: Option<String>,
}

/// The longest key id a log line repeats, in characters.
pub const LOG_KID_CHARS_MAX: usize = 64;

/// The `kid` of a refused token's header as a log line may show it (the token itself is
/// never logged): `None` when the header has none or cannot be read, and `"invalid"` for an
/// id over [`LOG_KID_CHARS_MAX`] characters or outside `[A-Za-z0-9_.:-]`, since the header
/// is the client's text.
pub fn log_kid(token: &str) -> Option<String> {
    if token.len() > TOKEN_BYTES_MAX || !well_formed(token) {
        return None;
    }
    let kid = decode_header(token).ok()?.kid?;
    let printable = kid.len() <= LOG_KID_CHARS_MAX
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    Some(if printable { kid } else { "invalid".to_owned() })
}

impl KeySet {
    /// A key set of `keys`, refusing empty or repeated key ids.
    pub fn new(keys: Vec<TokenKey>) -> Result<KeySet, KeyError> {
        for (index, key) in keys.iter().enumerate() {
            if key.kid.is_empty() || keys[..index].iter().any(|other| other.kid == key.kid) {
                return Err(KeyError::Kid(key.kid.clone()));
            }
        }
        Ok(KeySet { keys })
    }

    /// Loads `--token-key` files then `--token-key-env` variables, in that order.
    pub fn load(files: &[PathBuf], env_vars: &[String]) -> Result<KeySet, KeyError> {
        let mut keys = Vec::with_capacity(files.len() + env_vars.len());
        for path in files {
            keys.push(TokenKey::from_file(path)?);
        }
        for var in env_vars {
            keys.push(TokenKey::from_env(var)?);
        }
        KeySet::new(keys)
    }

    /// The loaded keys, in order.
    pub fn keys(&self) -> &[TokenKey] {
        &self.keys
    }

    /// Whether no key is configured (then every token is refused: `UnknownKey` or
    /// `WrongAlgorithm`).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `token` at time `now_s` (seconds since the Unix epoch) and keeps what the
    /// connection needs, its scope interned in `interner`.
    pub fn verify(
        &self,
        token: &str,
        now_s: u64,
        interner: &mut ScopeInterner,
    ) -> Result<Grant, Refusal> {
        if token.len() > TOKEN_BYTES_MAX || !well_formed(token) {
            return Err(Refusal::Malformed);
        }
        let header = decode_header(token).map_err(|error| header_refusal(token, error.kind()))?;
        let claims = match &header.kid {
            Some(kid) => {
                let key = self
                    .keys
                    .iter()
                    .find(|key| key.kid == *kid)
                    .ok_or(Refusal::UnknownKey)?;
                if key.algorithm.jwt() != header.alg {
                    return Err(Refusal::WrongAlgorithm);
                }
                check(token, key)?
            }
            None => {
                let mut candidates = self
                    .keys
                    .iter()
                    .filter(|key| key.algorithm.jwt() == header.alg)
                    .peekable();
                if candidates.peek().is_none() {
                    return Err(Refusal::WrongAlgorithm);
                }
                let mut outcome = Err(Refusal::BadSignature);
                for key in candidates {
                    outcome = check(token, key);
                    if !matches!(outcome, Err(Refusal::BadSignature)) {
                        break;
                    }
                }
                outcome?
            }
        };
        grant(claims, now_s, interner)
    }
}

/// Checks the signature of `token` with `key` and reads its claims.
fn check(token: &str, key: &TokenKey) -> Result<Claims, Refusal> {
    decode::<Claims>(token, &key.key, &key.validation)
        .map(|data| data.claims)
        .map_err(|error| match error.kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => Refusal::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                Refusal::WrongAlgorithm
            }
            _ => Refusal::Malformed,
        })
}

/// The refusal for a header the crate could not read: an `alg` it does not know (`none`
/// among them) is a wrong algorithm, anything else is malformed.
fn header_refusal(token: &str, kind: &ErrorKind) -> Refusal {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    if matches!(kind, ErrorKind::InvalidAlgorithmName) {
        return Refusal::WrongAlgorithm;
    }
    let encoded = token.split('.').next().unwrap_or("");
    let alg = URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .and_then(|header| header.get("alg").map(|alg| alg.is_string()));
    match alg {
        Some(true) => Refusal::WrongAlgorithm,
        _ => Refusal::Malformed,
    }
}

/// Checks the time claims and names, and keeps what a connection needs.
fn grant(claims: Claims, now_s: u64, interner: &mut ScopeInterner) -> Result<Grant, Refusal> {
    let session = claims.sub.ok_or(Refusal::Malformed)?;
    let expires_at_s = claims.exp.ok_or(Refusal::Malformed)?;
    if !valid_name(&session) || claims.tab.as_deref().is_some_and(|tab| !valid_name(tab)) {
        return Err(Refusal::Malformed);
    }
    if now_s >= expires_at_s {
        return Err(Refusal::Expired);
    }
    let future = |at: Option<u64>| at.is_some_and(|at_s| at_s > now_s + CLOCK_LEEWAY_S);
    if future(claims.nbf) || future(claims.iat) {
        return Err(Refusal::NotYetValid);
    }
    let subscribe = Patterns::parse(&claims.channels).map_err(|_| Refusal::Malformed)?;
    let publish = match &claims.publish {
        Some(list) => Patterns::parse(list).map_err(|_| Refusal::Malformed)?,
        None => Patterns::none(),
    };
    Ok(Grant {
        session: session.into(),
        tab: claims.tab.map(Into::into),
        expires_at_s,
        scope: interner.intern(Scope { subscribe, publish }),
    })
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
