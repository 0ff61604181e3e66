//! Bearer-token authentication for the HTTP API: the verifier configuration (key, pinned
//! algorithm, issuer, audience, leeway), token verification into [`Claims`], and development
//! tokens for `flowctl token`.
//!
//! **Architecture invariants:**
//! - **The algorithm comes from the configuration, never from the token.** A token whose header
//!   names another algorithm (`none`, or HS256 signed with an RSA public key) is refused before
//!   any signature check.
//! - **The raw token is never stored or logged.** Callers keep the verified [`Claims`] (and the
//!   `Principal` made from them) only; no error message here quotes the token.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// HS* shared secret. Exactly one of this and [`ENV_JWT_PUBLIC_KEY`] must be set.
pub const ENV_JWT_SECRET: &str = "FLOWCTL_JWT_SECRET";
/// Path of a PEM public key (`PUBLIC KEY` or `RSA PUBLIC KEY`): RSA → RS256, EC P-256 → ES256,
/// EC P-384 → ES384.
pub const ENV_JWT_PUBLIC_KEY: &str = "FLOWCTL_JWT_PUBLIC_KEY";
/// Optional: pins another algorithm of the key's family (e.g. `PS256`, `RS512`, `HS512`).
pub const ENV_JWT_ALGORITHM: &str = "FLOWCTL_JWT_ALGORITHM";
/// Optional: the required `iss` claim (comma-separated for several accepted issuers).
pub const ENV_JWT_ISSUER: &str = "FLOWCTL_JWT_ISSUER";
/// Optional: the required `aud` claim (comma-separated for several accepted audiences).
pub const ENV_JWT_AUDIENCE: &str = "FLOWCTL_JWT_AUDIENCE";
/// Optional: the longest lifetime a token may claim (`exp` − now, and `exp` − `iat`), e.g.
/// `12h`; default [`DEFAULT_MAX_LIFETIME`].
pub const ENV_JWT_MAX_LIFETIME: &str = "FLOWCTL_JWT_MAX_LIFETIME";

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// The longest lifetime a token may claim unless configured otherwise: a token whose `exp`
/// lies further ahead (e.g. 2^64 − 1, "never") is refused.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Secrets shorter than this are accepted with a warning: fine for development only.
pub const MIN_SECRET_LEN: usize = 32;

/// How tokens are verified. Built once at startup; cheap to share behind an `Arc`.
pub struct AuthConfig {
    key: DecodingKey,
    validation: Validation,
    algorithm: Algorithm,
    max_lifetime: Duration,
}

/// Never prints the key.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.validation.iss)
            .field("audience", &self.validation.aud)
            .field("max_lifetime", &self.max_lifetime)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    #[error("set {ENV_JWT_SECRET} (HS256 secret) or {ENV_JWT_PUBLIC_KEY} (path of an RS256/ES256 public key PEM) to verify bearer tokens")]
    Missing,
    #[error("set only one of {ENV_JWT_SECRET} and {ENV_JWT_PUBLIC_KEY}")]
    Ambiguous,
    #[error("{ENV_JWT_SECRET} is empty")]
    EmptySecret,
    #[error("cannot read the public key {path}: {message}")]
    Read { path: String, message: String },
    #[error("invalid public key: {0}")]
    InvalidKey(String),
    #[error("{ENV_JWT_ALGORITHM}={0} is not an algorithm (HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384)")]
    UnknownAlgorithm(String),
    #[error("algorithm {algorithm:?} does not fit a {key} key")]
    AlgorithmMismatch {
        algorithm: Algorithm,
        key: &'static str,
    },
    #[error("{ENV_JWT_MAX_LIFETIME}={0}: expected a duration such as 12h or 30m")]
    MaxLifetime(String),
}

/// Why a token was refused. Every variant answers `401`; the message is safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send `Authorization: Bearer <JWT>`")]
    Missing,
    #[error("malformed Authorization header: expected `Bearer <JWT>`")]
    MalformedHeader,
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm not accepted (this server accepts {0:?} only)")]
    Algorithm(Algorithm),
    #[error("invalid token signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token issuer not accepted")]
    Issuer,
    #[error("token audience not accepted")]
    Audience,
    #[error("token has no `{0}` claim")]
    MissingClaim(String),
    #[error("token claim `{0}` has the wrong type")]
    ClaimFormat(String),
    #[error("token claim `iss` must be a single string (RFC 7519), not a list")]
    IssuerNotString,
    #[error("token lifetime exceeds the {0} this server accepts: use a shorter-lived token")]
    Lifetime(String),
}

/// The verified claims flowctl reads. Other claims are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub role: String,
    /// Absent for a role in the workflow's `all_counties`.
    pub county_id: Option<String>,
    pub exp: u64,
}

/// What `flowctl token` signs.
#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    role: &'a str,
    #[serde(rename = "countyId", skip_serializing_if = "Option::is_none")]
    county_id: Option<&'a str>,
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// The claims as they may arrive: `role` and `sub` checked by us (for a precise message),
/// `countyId` as a string or a number.
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<serde_json::Value>,
    role: Option<serde_json::Value>,
    #[serde(rename = "countyId")]
    county_id: Option<serde_json::Value>,
    exp: Option<u64>,
    iat: Option<serde_json::Value>,
    iss: Option<serde_json::Value>,
}

impl AuthConfig {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Result<AuthConfig, AuthConfigError> {
        AuthConfig::hmac(secret, Algorithm::HS256)
    }

    /// HS256, HS384 or HS512 with a shared secret.
    pub fn hmac(secret: &[u8], algorithm: Algorithm) -> Result<AuthConfig, AuthConfigError> {
        if secret.is_empty() {
            return Err(AuthConfigError::EmptySecret);
        }
        if algorithm.family() != AlgorithmFamily::Hmac {
            return Err(AuthConfigError::AlgorithmMismatch {
                algorithm,
                key: "shared-secret",
            });
        }
        let key = DecodingKey::from_secret(secret).map_err(|_| AuthConfigError::EmptySecret)?;
        Ok(AuthConfig::with_key(key, algorithm))
    }

    /// A PEM public key (`PUBLIC KEY` or `RSA PUBLIC KEY`). The algorithm defaults to the key's:
    /// RS256 for RSA, ES256 for P-256, ES384 for P-384; `algorithm` may pin another one of the
    /// same family.
    pub fn from_public_key_pem(
        pem: &str,
        algorithm: Option<Algorithm>,
    ) -> Result<AuthConfig, AuthConfigError> {
        let key = PublicKey::from_pem(pem).map_err(AuthConfigError::InvalidKey)?;
        let (default, allowed, name): (Algorithm, &[Algorithm], &'static str) = match &key {
            PublicKey::Rsa(_) => (Algorithm::RS256, AlgorithmFamily::Rsa.algorithms(), "RSA"),
            PublicKey::EcP256(_) => (Algorithm::ES256, &[Algorithm::ES256], "EC P-256"),
            PublicKey::EcP384(_) => (Algorithm::ES384, &[Algorithm::ES384], "EC P-384"),
        };
        let algorithm = algorithm.unwrap_or(default);
        if !allowed.contains(&algorithm) {
            return Err(AuthConfigError::AlgorithmMismatch {
                algorithm,
                key: name,
            });
        }
        let key = match key {
            PublicKey::Rsa(pkcs1) => DecodingKey::from_rsa_der(&pkcs1),
            PublicKey::EcP256(point) | PublicKey::EcP384(point) => DecodingKey::from_ec_der(&point),
        };
        Ok(AuthConfig::with_key(key, algorithm))
    }

    fn with_key(key: DecodingKey, algorithm: Algorithm) -> AuthConfig {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // Without a configured audience any `aud` is accepted, as for any other claim we do
        // not check.
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::from(["exp".to_string(), "sub".to_string()]);
        AuthConfig {
            key,
            validation,
            algorithm,
            max_lifetime: DEFAULT_MAX_LIFETIME,
        }
    }

    /// The longest lifetime a token may claim: `exp` at most this far after now (and after
    /// `iat`, when the token has one). Default [`DEFAULT_MAX_LIFETIME`].
    pub fn with_max_lifetime(mut self, max: Duration) -> AuthConfig {
        self.max_lifetime = max;
        self
    }

    /// Requires `iss` to be one of `issuers`.
    pub fn with_issuers<S: AsRef<str>>(mut self, issuers: &[S]) -> AuthConfig {
        let list: Vec<&str> = issuers.iter().map(AsRef::as_ref).collect();
        if !list.is_empty() {
            self.validation.set_issuer(&list);
            self.validation.required_spec_claims.insert("iss".into());
        }
        self
    }

    /// Requires `aud` to name one of `audiences`.
    pub fn with_audiences<S: AsRef<str>>(mut self, audiences: &[S]) -> AuthConfig {
        let list: Vec<&str> = audiences.iter().map(AsRef::as_ref).collect();
        if !list.is_empty() {
            self.validation.set_audience(&list);
            self.validation.validate_aud = true;
            self.validation.required_spec_claims.insert("aud".into());
        }
        self
    }

    /// From [`ENV_JWT_SECRET`] or [`ENV_JWT_PUBLIC_KEY`], with [`ENV_JWT_ALGORITHM`],
    /// [`ENV_JWT_ISSUER`] and [`ENV_JWT_AUDIENCE`] when set.
    pub fn from_env() -> Result<AuthConfig, AuthConfigError> {
        AuthConfig::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// As [`AuthConfig::from_env`], reading variables through `var` (for tests).
    pub fn from_lookup(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<AuthConfig, AuthConfigError> {
        let algorithm = match var(ENV_JWT_ALGORITHM) {
            Some(name) => Some(
                name.trim()
                    .parse::<Algorithm>()
                    .ok()
                    .filter(|a| *a != Algorithm::EdDSA)
                    .ok_or(AuthConfigError::UnknownAlgorithm(name))?,
            ),
            None => None,
        };
        let config = match (var(ENV_JWT_SECRET), var(ENV_JWT_PUBLIC_KEY)) {
            (Some(_), Some(_)) => return Err(AuthConfigError::Ambiguous),
            (None, None) => return Err(AuthConfigError::Missing),
            (Some(secret), None) => {
                if secret.len() < MIN_SECRET_LEN {
                    tracing::warn!(
                        "{ENV_JWT_SECRET} is shorter than {MIN_SECRET_LEN} bytes: use a long random secret outside development"
                    );
                }
                AuthConfig::hmac(secret.as_bytes(), algorithm.unwrap_or(Algorithm::HS256))?
            }
            (None, Some(path)) => {
                let pem = std::fs::read_to_string(&path).map_err(|e| AuthConfigError::Read {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                AuthConfig::from_public_key_pem(&pem, algorithm)?
            }
        };
        let max_lifetime = match var(ENV_JWT_MAX_LIFETIME) {
            Some(text) => crate::compiler::parse_duration(text.trim())
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or(AuthConfigError::MaxLifetime(text))?,
            None => DEFAULT_MAX_LIFETIME,
        };
        let list = |v: Option<String>| -> Vec<String> {
            v.map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
        };
        Ok(config
            .with_issuers(&list(var(ENV_JWT_ISSUER)))
            .with_audiences(&list(var(ENV_JWT_AUDIENCE)))
            .with_max_lifetime(max_lifetime))
    }

    /// The pinned algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Verifies an `Authorization` header value (`Bearer <JWT>`).
    pub fn verify_header(&self, header: Option<&[u8]>) -> Result<Claims, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| AuthError::MalformedHeader)?;
        let (scheme, token) = header
            .trim()
            .split_once(' ')
            .ok_or(AuthError::MalformedHeader)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::MalformedHeader);
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::MalformedHeader);
        }
        self.verify(token)
    }

    /// Verifies signature, algorithm, `exp`, `nbf`, `iss`, `aud`, the lifetime cap, and reads
    /// the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<RawClaims>(token, &self.key, &self.validation)
            .map_err(|e| self.refusal(e.kind()))?;
        let raw = data.claims;
        // jsonwebtoken accepts a list `iss` when any element matches; RFC 7519 makes `iss` one
        // StringOrURI, so a list is refused whether or not an issuer is configured.
        match &raw.iss {
            None | Some(serde_json::Value::String(_)) => {}
            Some(serde_json::Value::Array(_)) => return Err(AuthError::IssuerNotString),
            Some(_) => return Err(AuthError::ClaimFormat("iss".into())),
        }
        let exp = raw
            .exp
            .ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
        let max = self.max_lifetime.as_secs();
        let too_long = || AuthError::Lifetime(format_lifetime(self.max_lifetime));
        let now = jsonwebtoken::get_current_timestamp();
        if exp.saturating_sub(now) > max.saturating_add(LEEWAY.as_secs()) {
            return Err(too_long());
        }
        match &raw.iat {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Number(n)) => {
                let iat = n
                    .as_u64()
                    .ok_or_else(|| AuthError::ClaimFormat("iat".into()))?;
                if exp.saturating_sub(iat) > max.saturating_add(LEEWAY.as_secs()) {
                    return Err(too_long());
                }
            }
            Some(_) => return Err(AuthError::ClaimFormat("iat".into())),
        }
        let string_claim = |name: &str, value: Option<serde_json::Value>| match value {
            None | Some(serde_json::Value::Null) => Err(AuthError::MissingClaim(name.into())),
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => {
                Err(AuthError::MissingClaim(name.into()))
            }
            Some(serde_json::Value::String(s)) => Ok(s),
            Some(_) => Err(AuthError::ClaimFormat(name.into())),
        };
        let sub = string_claim("sub", raw.sub)?;
        let role = string_claim("role", raw.role)?;
        let county_id = match raw.county_id {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            Some(_) => return Err(AuthError::ClaimFormat("countyId".into())),
        };
        Ok(Claims {
            sub,
            role,
            county_id,
            exp,
        })
    }

    fn refusal(&self, kind: &ErrorKind) -> AuthError {
        match kind {
            ErrorKind::InvalidSignature => AuthError::Signature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::MissingAlgorithm
            | ErrorKind::UnsupportedAlgorithm => AuthError::Algorithm(self.algorithm),
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidIssuer => AuthError::Issuer,
            ErrorKind::InvalidAudience => AuthError::Audience,
            ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
            ErrorKind::InvalidClaimFormat(c) => AuthError::ClaimFormat(c.clone()),
            // A header naming an algorithm jsonwebtoken does not know (`none`) fails to parse
            // as JSON: it is still an algorithm refusal, and says so.
            ErrorKind::Json(e) if e.to_string().contains("unknown variant") => {
                AuthError::Algorithm(self.algorithm)
            }
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => {
                tracing::error!(?kind, "the configured JWT verification key is unusable");
                AuthError::Signature
            }
            _ => AuthError::Malformed,
        }
    }
}

/// `24h`, `90m`, `45s`: the largest whole unit.
fn format_lifetime(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s >= 60 && s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// A development token for `flowctl token`: HS256 with `secret`, valid for `ttl`. `issuer` and
/// `audience` are set when the server requires them.
pub fn mint_dev_token(
    secret: &[u8],
    subject: &str,
    role: &str,
    county: Option<&str>,
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, String> {
    if secret.is_empty() {
        return Err(format!("{ENV_JWT_SECRET} is empty"));
    }
    let now = jsonwebtoken::get_current_timestamp();
    let claims = MintClaims {
        sub: subject,
        role,
        county_id: county,
        exp: now.saturating_add(ttl.as_secs()),
        iat: now,
        iss: issuer,
        aud: audience,
    };
    let key =
        EncodingKey::from_secret(secret).map_err(|e| format!("cannot sign the token: {e}"))?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|e| format!("cannot sign the token: {e}"))
}

/// A public key read from PEM, as jsonwebtoken's verifiers take it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PublicKey {
    /// PKCS#1 `RSAPublicKey` DER.
    Rsa(Vec<u8>),
    /// Uncompressed SEC1 point.
    EcP256(Vec<u8>),
    EcP384(Vec<u8>),
}

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

impl PublicKey {
    fn from_pem(text: &str) -> Result<PublicKey, String> {
        let (label, der) = pem_to_der(text)?;
        match label.as_str() {
            "PUBLIC KEY" => PublicKey::from_spki(&der),
            "RSA PUBLIC KEY" => {
                check_rsa_pkcs1(&der)?;
                Ok(PublicKey::Rsa(der))
            }
            "CERTIFICATE" => Err(
                "a certificate, not a public key: extract it with `openssl x509 -pubkey -noout`"
                    .into(),
            ),
            l if l.contains("PRIVATE KEY") => Err(
                "a private key: give the public key (`openssl pkey -pubout`); the private key stays with the token issuer"
                    .into(),
            ),
            other => Err(format!("unsupported PEM block `{other}`: expected PUBLIC KEY")),
        }
    }

    /// `SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }`.
    fn from_spki(der: &[u8]) -> Result<PublicKey, String> {
        let bad = || "malformed SubjectPublicKeyInfo".to_string();
        let (spki, rest) = der_take(der, TAG_SEQUENCE).ok_or_else(bad)?;
        if !rest.is_empty() {
            return Err(bad());
        }
        let (algorithm, spki) = der_take(spki, TAG_SEQUENCE).ok_or_else(bad)?;
        let (bits, trailing) = der_take(spki, TAG_BIT_STRING).ok_or_else(bad)?;
        if !trailing.is_empty() {
            return Err(bad());
        }
        let key = match bits.split_first() {
            Some((0, key)) => key.to_vec(),
            _ => return Err(bad()),
        };
        let (oid, params) = der_take(algorithm, TAG_OID).ok_or_else(bad)?;
        if oid == OID_RSA {
            check_rsa_pkcs1(&key)?;
            return Ok(PublicKey::Rsa(key));
        }
        if oid == OID_EC_PUBLIC_KEY {
            let (curve, _) = der_take(params, TAG_OID).ok_or_else(bad)?;
            let (len, make): (usize, fn(Vec<u8>) -> PublicKey) = if curve == OID_P256 {
                (65, PublicKey::EcP256)
            } else if curve == OID_P384 {
                (97, PublicKey::EcP384)
            } else {
                return Err("unsupported EC curve: expected P-256 or P-384".into());
            };
            if key.len() != len || key[0] != 0x04 {
                return Err("EC public key must be an uncompressed point".into());
            }
            return Ok(make(key));
        }
        Err("unsupported key type: expected RSA or EC (P-256, P-384)".into())
    }
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn check_rsa_pkcs1(der: &[u8]) -> Result<(), String> {
    let bad = || "malformed RSA public key".to_string();
    let (seq, rest) = der_take(der, TAG_SEQUENCE).ok_or_else(bad)?;
    let (modulus, seq) = der_take(seq, TAG_INTEGER).ok_or_else(bad)?;
    let (_exponent, seq) = der_take(seq, TAG_INTEGER).ok_or_else(bad)?;
    if !rest.is_empty() || !seq.is_empty() {
        return Err(bad());
    }
    // A leading zero byte keeps the integer positive.
    let bits = modulus.iter().skip_while(|b| **b == 0).count() * 8;
    if bits < 2048 {
        return Err(format!("RSA key of {bits} bits: use at least 2048"));
    }
    Ok(())
}

/// Takes one DER element of `tag` from the front of `input`: `(content, rest)`.
fn der_take(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, input) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || input.len() < n {
            return None;
        }
        let len = input[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        input = &input[n..];
        len
    };
    if input.len() < len {
        return None;
    }
    Some(input.split_at(len))
}

/// Decodes the first PEM block of `text`: `(label, DER bytes)`.
pub fn pem_to_der(text: &str) -> Result<(String, Vec<u8>), String> {
    let begin = text
        .find("-----BEGIN ")
        .ok_or("not PEM: no -----BEGIN line")?;
    let after = &text[begin + "-----BEGIN ".len()..];
    let label_end = after
        .find("-----")
        .ok_or("not PEM: unterminated BEGIN line")?;
    let label = after[..label_end].to_string();
    let body_start = label_end + 5;
    let end_marker = format!("-----END {label}-----");
    let end = after
        .find(&end_marker)
        .ok_or_else(|| format!("not PEM: no {end_marker} line"))?;
    let body = &after[body_start..end];
    if body.contains(':') {
        return Err("encrypted PEM is not supported".into());
    }
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("not PEM: bad base64 ({e})"))?;
    Ok((label, der))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn token(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn a_minted_token_verifies_and_keeps_its_claims() {
        let config = AuthConfig::hs256(SECRET).unwrap();
        let t = mint_dev_token(
            SECRET,
            "alice",
            "SUPERVISOR",
            Some("C01"),
            Duration::from_secs(60),
            None,
            None,
        )
        .unwrap();
        let claims = config.verify(&t).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.role, "SUPERVISOR");
        assert_eq!(claims.county_id.as_deref(), Some("C01"));
    }

    #[test]
    fn leeway_is_thirty_seconds() {
        let config = AuthConfig::hs256(SECRET).unwrap();
        let ok = token(serde_json::json!({"sub": "a", "role": "R", "exp": now() - 10}));
        assert!(config.verify(&ok).is_ok());
        let late = token(serde_json::json!({"sub": "a", "role": "R", "exp": now() - 60}));
        assert_eq!(config.verify(&late), Err(AuthError::Expired));
        let early = token(
            serde_json::json!({"sub": "a", "role": "R", "exp": now() + 600, "nbf": now() + 120}),
        );
        assert_eq!(config.verify(&early), Err(AuthError::NotYetValid));
    }

    #[test]
    fn exp_sub_and_role_are_required() {
        let config = AuthConfig::hs256(SECRET).unwrap();
        let no_exp = token(serde_json::json!({"sub": "a", "role": "R"}));
        assert_eq!(
            config.verify(&no_exp),
            Err(AuthError::MissingClaim("exp".into()))
        );
        let no_sub = token(serde_json::json!({"role": "R", "exp": now() + 60}));
        assert_eq!(
            config.verify(&no_sub),
            Err(AuthError::MissingClaim("sub".into()))
        );
        let no_role = token(serde_json::json!({"sub": "a", "exp": now() + 60}));
        assert_eq!(
            config.verify(&no_role),
            Err(AuthError::MissingClaim("role".into()))
        );
        let numeric_county =
            token(serde_json::json!({"sub": "a", "role": "R", "countyId": 7, "exp": now() + 60}));
        assert_eq!(
            config.verify(&numeric_county).unwrap().county_id.as_deref(),
            Some("7")
        );
    }

    #[test]
    fn an_issuer_list_is_refused() {
        let config = AuthConfig::hs256(SECRET)
            .unwrap()
            .with_issuers(&["https://idp"]);
        let list = token(
            serde_json::json!({"sub": "a", "role": "R", "exp": now() + 60, "iss": ["evil", "https://idp"]}),
        );
        assert_eq!(config.verify(&list), Err(AuthError::IssuerNotString));
        // Without a configured issuer too: a list is not an `iss`.
        let open = AuthConfig::hs256(SECRET).unwrap();
        assert_eq!(open.verify(&list), Err(AuthError::IssuerNotString));
        let number =
            token(serde_json::json!({"sub": "a", "role": "R", "exp": now() + 60, "iss": 7}));
        assert!(open.verify(&number).is_err());
    }

    #[test]
    fn token_lifetime_is_capped() {
        let config = AuthConfig::hs256(SECRET).unwrap();
        let forever = token(serde_json::json!({"sub": "a", "role": "R", "exp": u64::MAX}));
        let err = config.verify(&forever).unwrap_err();
        assert_eq!(err, AuthError::Lifetime("24h".into()));
        assert!(err.to_string().contains("24h"), "{err}");
        let day = token(serde_json::json!({"sub": "a", "role": "R", "exp": now() + 24 * 3600}));
        assert!(config.verify(&day).is_ok());
        let old_long = token(
            serde_json::json!({"sub": "a", "role": "R", "iat": now() - 30 * 24 * 3600, "exp": now() + 60}),
        );
        assert_eq!(
            config.verify(&old_long),
            Err(AuthError::Lifetime("24h".into()))
        );
        let short = AuthConfig::hs256(SECRET)
            .unwrap()
            .with_max_lifetime(Duration::from_secs(600));
        assert!(short.verify(&day).is_err());
        let vars = |name: &str| match name {
            ENV_JWT_SECRET => Some(String::from_utf8(SECRET.to_vec()).unwrap()),
            ENV_JWT_MAX_LIFETIME => Some("soon".into()),
            _ => None,
        };
        assert!(matches!(
            AuthConfig::from_lookup(vars),
            Err(AuthConfigError::MaxLifetime(_))
        ));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let config = AuthConfig::hs256(SECRET)
            .unwrap()
            .with_issuers(&["https://idp"])
            .with_audiences(&["flowctl"]);
        let good = token(
            serde_json::json!({"sub": "a", "role": "R", "exp": now() + 60, "iss": "https://idp", "aud": "flowctl"}),
        );
        assert!(config.verify(&good).is_ok());
        let wrong_iss = token(
            serde_json::json!({"sub": "a", "role": "R", "exp": now() + 60, "iss": "evil", "aud": "flowctl"}),
        );
        assert_eq!(config.verify(&wrong_iss), Err(AuthError::Issuer));
        let wrong_aud = token(
            serde_json::json!({"sub": "a", "role": "R", "exp": now() + 60, "iss": "https://idp", "aud": "other"}),
        );
        assert_eq!(config.verify(&wrong_aud), Err(AuthError::Audience));
        let no_aud = token(
            serde_json::json!({"sub": "a", "role": "R", "exp": now() + 60, "iss": "https://idp"}),
        );
        assert_eq!(
            config.verify(&no_aud),
            Err(AuthError::MissingClaim("aud".into()))
        );
    }

    #[test]
    fn header_parsing() {
        let config = AuthConfig::hs256(SECRET).unwrap();
        assert_eq!(config.verify_header(None), Err(AuthError::Missing));
        assert_eq!(
            config.verify_header(Some(b"Basic abc")),
            Err(AuthError::MalformedHeader)
        );
        assert_eq!(
            config.verify_header(Some(b"Bearer ")),
            Err(AuthError::MalformedHeader)
        );
        assert_eq!(
            config.verify_header(Some(b"Bearer abc")),
            Err(AuthError::Malformed)
        );
        let t = token(serde_json::json!({"sub": "a", "role": "R", "exp": now() + 60}));
        assert!(config
            .verify_header(Some(format!("bearer {t}").as_bytes()))
            .is_ok());
    }

    #[test]
    fn environment_configuration() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            AuthConfig::from_lookup(env(&[])).unwrap_err(),
            AuthConfigError::Missing
        );
        assert_eq!(
            AuthConfig::from_lookup(env(&[(ENV_JWT_SECRET, "s"), (ENV_JWT_PUBLIC_KEY, "/k")]))
                .unwrap_err(),
            AuthConfigError::Ambiguous
        );
        assert!(matches!(
            AuthConfig::from_lookup(env(&[(ENV_JWT_SECRET, "s"), (ENV_JWT_ALGORITHM, "RS256")])),
            Err(AuthConfigError::AlgorithmMismatch { .. })
        ));
        assert!(matches!(
            AuthConfig::from_lookup(env(&[(ENV_JWT_SECRET, "s"), (ENV_JWT_ALGORITHM, "none")])),
            Err(AuthConfigError::UnknownAlgorithm(_))
        ));
        let c =
            AuthConfig::from_lookup(env(&[(ENV_JWT_SECRET, "s"), (ENV_JWT_ALGORITHM, "HS512")]))
                .unwrap();
        assert_eq!(c.algorithm(), Algorithm::HS512);
        assert!(matches!(
            AuthConfig::from_lookup(env(&[(ENV_JWT_PUBLIC_KEY, "/nonexistent/key.pem")])),
            Err(AuthConfigError::Read { .. })
        ));
    }

    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEY72UGeRHiKWMWdmB0vmKYdpY7DN7
FjoQfYnIteCNpBk34Dv4qfRSYiVRK/5q+nM50spsKQnZtlNcAp1c9cnU0w==
-----END PUBLIC KEY-----
";
    /// The PKCS#8 private key of [`EC_PUBLIC`], a test fixture.
    const EC_PRIVATE_PKCS8: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgG72iwGo0ms0Ndnzm9gRIAyPWy38SxmQ8Lafzh0s/QjahRANCAARjvZQZ5EeIpYxZ2YHS+Yph2ljsM3sWOhB9ici14I2kGTfgO/ip9FJiJVEr/mr6cznSymwpCdm2U1wCnVz1ydTT";

    #[test]
    fn es256_with_a_public_key_pem() {
        let config = AuthConfig::from_public_key_pem(EC_PUBLIC, None).unwrap();
        assert_eq!(config.algorithm(), Algorithm::ES256);
        let der = base64::engine::general_purpose::STANDARD
            .decode(EC_PRIVATE_PKCS8)
            .unwrap();
        let claims = serde_json::json!({"sub": "a", "role": "R", "exp": now() + 60});
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_der(&der),
        )
        .unwrap();
        assert_eq!(config.verify(&t).unwrap().sub, "a");
        // The same claims signed HS256 with the public key's text as the secret.
        let confused = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(EC_PUBLIC.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            config.verify(&confused),
            Err(AuthError::Algorithm(Algorithm::ES256))
        );
        assert!(matches!(
            AuthConfig::from_public_key_pem(EC_PUBLIC, Some(Algorithm::RS256)),
            Err(AuthConfigError::AlgorithmMismatch { .. })
        ));
    }

    #[test]
    fn bad_pem_is_refused_with_a_reason() {
        for (pem, expected) in [
            ("hello", "no -----BEGIN"),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "private key",
            ),
            (
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                "malformed",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "openssl x509",
            ),
        ] {
            let err = AuthConfig::from_public_key_pem(pem, None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{pem:?}: {err}");
        }
    }

    #[test]
    fn debug_output_hides_the_key() {
        let config = AuthConfig::hs256(SECRET).unwrap();
        let text = format!("{config:?}");
        assert!(!text.contains("0123456789abcdef"), "{text}");
    }
}
