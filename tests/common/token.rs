//! Bearer tokens for the API: signed here (HS256 with [`SECRET`], the in-process server's
//! default key), any claim overridden or left out, or minted by the binary's `flowctl token`
//! for a `flowctl serve` started with another secret.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::bin::Flowctl;

/// The HS256 key of `TestServer`'s default `Options`.
pub const SECRET: &str = "http-test-secret-0123456789abcdef0123456789";

/// Now, in seconds since the epoch, as `exp`, `iat` and `nbf` count.
pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// `claims` as a token signed HS256 with [`SECRET`].
pub fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// The claims of a valid token: `sub`, `role`, `countyId` when given, `exp` an hour from now,
/// `iat` now.
pub fn claims(sub: &str, role: &str, county: Option<&str>) -> Value {
    let mut claims = json!({ "sub": sub, "role": role, "exp": now() + 3600, "iat": now() });
    if let Some(c) = county {
        claims["countyId"] = json!(c);
    }
    claims
}

/// `claims` with every field of `overrides` set over it; a `null` removes the claim.
pub fn with(mut claims: Value, overrides: Value) -> Value {
    for (key, value) in overrides.as_object().expect("overrides are an object") {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(key);
        } else {
            claims[key] = value.clone();
        }
    }
    claims
}

/// A valid token (see [`claims`]) signed with [`SECRET`].
pub fn token(sub: &str, role: &str, county: Option<&str>) -> String {
    sign(&claims(sub, role, county))
}

/// A development token from `flowctl token --role ROLE --sub tester [--county COUNTY]`, signed
/// with `secret`.
pub fn minted(secret: &str, role: &str, county: Option<&str>) -> String {
    let mut flowctl = Flowctl::new()
        .env("FLOWCTL_JWT_SECRET", secret)
        .args(["token", "--role", role, "--sub", "tester"]);
    if let Some(county) = county {
        flowctl = flowctl.args(["--county", county]);
    }
    flowctl.output().success().stdout().trim().to_string()
}
