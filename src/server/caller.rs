//! Who is asking. **Who a job runs as comes from the verified token only** ([`Caller`]); the
//! `role` and `countyId` a client puts in a body are accepted and ignored. **A job outside the
//! caller's county answers exactly as a job that does not exist** (`404`, [`Caller::can_see`]).

use axum::extract::FromRequestParts;
use axum::http::header::{self, HeaderValue};
use axum::http::request::Parts;

use super::errors::clip;
use super::{AppError, AppState};
use crate::job::{Job, Principal};

/// The verified caller: the principal jobs run as, from the bearer token.
///
/// `401` for a missing or invalid token, `403` for a role the workflow does not declare or a
/// token without `countyId` for a county-scoped role. A role in the workflow's `all_counties`
/// (`admin` here) sees every county and its jobs run for all of them (county `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    pub admin: bool,
}

impl Caller {
    /// Whether this caller may see (and cancel) `job`.
    pub fn can_see(&self, job: &Job) -> bool {
        self.admin || (job.county.is_some() && job.county == self.principal.county)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let claims = state
            .auth
            .verify_header(header)
            .map_err(|e| AppError::Unauthorized(e.to_string()))?;
        if !state.engine.workflow.roles.contains(&claims.role) {
            return Err(AppError::Forbidden(format!(
                "role {} is not declared in the workflow",
                clip(&claims.role)
            )));
        }
        // The workflow's county rule (`Workflow::check_county`, the one every entry point
        // uses): a county-scoped role needs the token's `countyId`; a role in `all_counties`
        // sees every county and its jobs run for all of them.
        let workflow = &state.engine.workflow;
        workflow
            .check_county(&claims.role, claims.county_id.as_deref())
            .map_err(|e| AppError::Forbidden(format!("the token has no countyId claim: {e}")))?;
        let admin = workflow.sees_all_counties(&claims.role);
        let county = if admin { None } else { claims.county_id };
        Ok(Caller {
            principal: Principal {
                subject: claims.sub,
                role: claims.role,
                county,
            },
            admin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::NewJob;
    use chrono::Utc;

    #[test]
    fn visibility_is_by_county_and_admin_sees_all() {
        let caller = |role: &str, county: Option<&str>| Caller {
            principal: Principal {
                subject: "s".into(),
                role: role.into(),
                county: county.map(str::to_string),
            },
            admin: role == "ADMIN",
        };
        let mut job = NewJob::new("R", Principal::system("ADMIN"), "t")
            .into_job("JOB_AAAAAAAA".parse().unwrap(), Utc::now());
        assert!(!caller("CASE_WORKER", Some("C01")).can_see(&job));
        assert!(caller("ADMIN", None).can_see(&job));
        job.county = Some("C01".into());
        assert!(caller("CASE_WORKER", Some("C01")).can_see(&job));
        assert!(!caller("CASE_WORKER", Some("C02")).can_see(&job));
    }
}
