//! [`PgConfig`]: how to open a [`PgStore`](super::PgStore): the URL, flowctl's own `pool_size=N`
//! in it, and the settings every connection gets; and the URL helpers the CLI uses.

use std::str::FromStr;
use std::time::Duration;

use crate::store::{StoreError, StoreResult};

/// How to open a [`PgStore`](super::PgStore).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgConfig {
    /// `postgres://user@host:port/db`, with libpq-style parameters (`?options=-csearch_path%3Dx`)
    /// and flowctl's own `pool_size=N`, which overrides [`PgConfig::pool_size`].
    pub url: String,
    /// Connections in the pool (the LISTEN connection comes on top).
    pub pool_size: usize,
}

impl PgConfig {
    pub const DEFAULT_POOL_SIZE: usize = 8;

    pub fn new(url: impl Into<String>) -> PgConfig {
        PgConfig {
            url: url.into(),
            pool_size: Self::DEFAULT_POOL_SIZE,
        }
    }

    /// `url` without flowctl's own `pool_size=N` parameter, and `N`.
    pub(super) fn split_pool_size(&self) -> StoreResult<(String, Option<usize>)> {
        let Some((base, query)) = self.url.split_once('?') else {
            return Ok((self.url.clone(), None));
        };
        let mut size = None;
        let mut kept = Vec::new();
        for pair in query.split('&') {
            match pair.strip_prefix("pool_size=") {
                Some(n) => {
                    size = Some(n.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        StoreError::Postgres(format!(
                            "invalid store URL {}: pool_size={n}: expected a whole number ≥ 1",
                            redact_url(&self.url)
                        ))
                    })?);
                }
                None => kept.push(pair),
            }
        }
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((url, size))
    }

    /// The connection settings for `url`: the process's `instance` name as
    /// `flowctl.instance` (the payload of its `NOTIFY`s, see `notify`), and flowctl's defaults
    /// for the application name and the connect timeout.
    pub(super) fn connection_config(&self, instance: &str) -> StoreResult<tokio_postgres::Config> {
        let (url, _) = self.split_pool_size()?;
        let mut config = tokio_postgres::Config::from_str(&url).map_err(|e| {
            StoreError::Postgres(format!("invalid store URL {}: {e}", redact_url(&self.url)))
        })?;
        let options = match config.get_options() {
            Some(options) if !options.trim().is_empty() => {
                format!("{options} -c flowctl.instance={instance}")
            }
            _ => format!("-c flowctl.instance={instance}"),
        };
        config.options(&options);
        if config.get_application_name().is_none() {
            config.application_name("flowctl");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        Ok(config)
    }
}

/// Whether `text` names a PostgreSQL store (`postgres://` or `postgresql://`).
pub fn is_postgres_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// The URL with its password replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::PgConfig;

    #[test]
    fn urls_are_recognised_and_redacted() {
        assert!(super::is_postgres_url("postgres://u@h/db"));
        assert!(super::is_postgres_url("postgresql://u@h/db"));
        assert!(!super::is_postgres_url(".flowctl/db"));
        assert_eq!(
            super::redact_url("postgres://me:secret@db:5432/x?options=y"),
            "postgres://me:***@db:5432/x?options=y"
        );
        assert_eq!(
            super::redact_url("postgres://me@db/x"),
            "postgres://me@db/x"
        );
    }

    #[test]
    fn pool_size_comes_out_of_the_url() {
        let split = |url: &str| PgConfig::new(url).split_pool_size();
        assert_eq!(
            split("postgres://u@h/db?pool_size=3").unwrap(),
            ("postgres://u@h/db".into(), Some(3))
        );
        assert_eq!(
            split("postgres://u@h/db?options=x&pool_size=16&application_name=a").unwrap(),
            (
                "postgres://u@h/db?options=x&application_name=a".into(),
                Some(16)
            )
        );
        assert_eq!(
            split("postgres://u@h/db").unwrap(),
            ("postgres://u@h/db".into(), None)
        );
        assert!(split("postgres://u@h/db?pool_size=0").is_err());
    }
}
