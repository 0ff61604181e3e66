//! Idempotency keys. **A key belongs to the whole principal** (sub, role, county): its job
//! record is the first request's fingerprint, and another request under it is `422`. A request
//! that names no key still enqueues under a unique key of its own (its trigger), so a retried
//! enqueue never queues twice.

use super::{AppError, MAX_KEY_LEN};
use crate::job::Principal;
use crate::store::UniqueKey;

/// The request header that carries an idempotency key (the body's `idempotencyKey` too).
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// An idempotency key: no control characters (`char::is_control`).
pub const IDEMPOTENCY_KEY_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F]+$";

/// The store key of a client's idempotency key: scoped by the whole principal (subject, role,
/// county), so that one principal's key never names another's job. The principal is hashed
/// (length-prefixed, so no two principals share a text) into the key's subject part.
pub fn idempotency_unique_key(principal: &Principal, key: &str) -> UniqueKey {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(b"flowctl idempotency scope v1\0");
    for part in [
        Some(principal.subject.as_str()),
        Some(principal.role.as_str()),
        principal.county.as_deref(),
    ] {
        match part {
            Some(text) => {
                hash.update([1]);
                hash.update((text.len() as u64).to_be_bytes());
                hash.update(text.as_bytes());
            }
            None => hash.update([0]),
        }
    }
    UniqueKey::idempotency(format!("principal:{}", hex::encode(hash.finalize())), key)
}

/// The key of a request that names none: its own trigger, so that retrying the enqueue after
/// a transient store failure (which may have been applied) cannot queue the job twice.
pub(super) fn trigger_unique_key(trigger: &str) -> UniqueKey {
    UniqueKey::idempotency("trigger", trigger)
}

/// The idempotency key of a request: the `Idempotency-Key` header or the body's
/// `idempotencyKey`; both may be given if they are equal.
pub(super) fn idempotency_key(
    headers: &axum::http::HeaderMap,
    body: Option<String>,
) -> Result<Option<String>, AppError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY_HEADER).iter();
    let header = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(v), None) => Some(
            v.to_str()
                .map_err(|_| {
                    AppError::InvalidRequest(
                        "the Idempotency-Key header must be visible ASCII".into(),
                    )
                })?
                .to_string(),
        ),
        (Some(_), Some(_)) => {
            return Err(AppError::InvalidRequest(
                "send one Idempotency-Key header".into(),
            ))
        }
    };
    let key = match (header, body) {
        (Some(h), Some(b)) if h != b => {
            return Err(AppError::IdempotencyKeyMismatch(
                "the Idempotency-Key header and the body's idempotencyKey differ; send one, or the same in both".into(),
            ))
        }
        (Some(h), _) => Some(h),
        (None, b) => b,
    };
    if let Some(k) = &key {
        if k.is_empty() || k.chars().count() > MAX_KEY_LEN || k.chars().any(char::is_control) {
            return Err(AppError::InvalidRequest(format!(
                "idempotencyKey must be 1 to {MAX_KEY_LEN} characters without control characters"
            )));
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_scope_is_the_whole_principal() {
        let p = |sub: &str, role: &str, county: Option<&str>| Principal {
            subject: sub.into(),
            role: role.into(),
            county: county.map(str::to_string),
        };
        let keys: Vec<UniqueKey> = [
            p("alice", "CASE_WORKER", Some("C01")),
            p("alice", "CASE_WORKER", Some("C02")),
            p("alice", "SUPERVISOR", Some("C01")),
            p("alice", "CASE_WORKER", None),
            p("bob", "CASE_WORKER", Some("C01")),
            // No text concatenation makes two principals one.
            p("alice\u{0}CASE_WORKER", "", Some("C01")),
        ]
        .iter()
        .map(|principal| idempotency_unique_key(principal, "k"))
        .collect();
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(
            idempotency_unique_key(&p("alice", "CASE_WORKER", Some("C01")), "k"),
            keys[0]
        );
    }
}
