//! `flowctl token`: mints a development HS256 token signed with `FLOWCTL_JWT_SECRET`, with the
//! issuer and audience the server requires when those are configured.

use std::time::Duration;

use super::{error, EXIT_OK};
use crate::auth::{self, ENV_JWT_AUDIENCE, ENV_JWT_ISSUER, ENV_JWT_SECRET};

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The `role` claim (a role declared in the workflow).
    #[arg(long)]
    pub role: String,
    /// The `countyId` claim; the server requires it unless the role is in `all_counties`.
    #[arg(long)]
    pub county: Option<String>,
    /// Lifetime, e.g. 30m, 1h. `serve` refuses tokens that claim more than
    /// `FLOWCTL_JWT_MAX_LIFETIME` (default 24h).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// The `sub` claim.
    #[arg(long, default_value = "dev")]
    pub sub: String,
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let d = crate::compiler::parse_duration(text)?;
    if d.is_zero() {
        return Err("the lifetime must be more than 0".into());
    }
    Ok(d)
}

pub fn run(args: TokenArgs) -> u8 {
    let Some(secret) = std::env::var_os(ENV_JWT_SECRET).filter(|s| !s.is_empty()) else {
        return error(format!(
            "{ENV_JWT_SECRET} is not set: `flowctl token` signs with the same secret the server verifies with"
        ));
    };
    let Some(secret) = secret.to_str().map(str::to_owned) else {
        return error(format!("{ENV_JWT_SECRET} is not valid UTF-8"));
    };
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.split(',').next().map(|s| s.trim().to_string()))
            .filter(|v| !v.is_empty())
    };
    match auth::mint_dev_token(
        secret.as_bytes(),
        &args.sub,
        &args.role,
        args.county.as_deref(),
        args.ttl,
        var(ENV_JWT_ISSUER).as_deref(),
        var(ENV_JWT_AUDIENCE).as_deref(),
    ) {
        Ok(token) => {
            use std::io::Write as _;
            // A closed stdout (`flowctl token ... | true`) is not worth a panic.
            let _ = writeln!(std::io::stdout().lock(), "{token}");
            EXIT_OK
        }
        Err(e) => error(e),
    }
}
