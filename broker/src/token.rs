//! Issuing subscriber tokens (HS256 JWT) for applications: the same function
//! `sluice token` uses. Edges verify them (`sluice-edge --auth-secret`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sluice_shared::token::{validate_pattern, Claims};

/// Shortest secret accepted (the edge refuses shorter ones too).
pub const MIN_SECRET_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the secret must be at least {MIN_SECRET_LEN} bytes")]
    WeakSecret,
    #[error("at least one task id or pattern is required")]
    NoTasks,
    #[error("invalid task pattern {0:?}: {1}")]
    BadPattern(String, sluice_shared::TaskIdError),
    #[error("the lifetime must be between 1 second and 366 days")]
    BadTtl,
    #[error("cannot sign the token")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Signs a token allowing `tasks` (exact ids or `prefix*` patterns) for
/// `ttl`, with an optional subject for logs.
pub fn issue(
    secret: &str,
    tasks: &[String],
    ttl: Duration,
    sub: Option<&str>,
) -> Result<String, TokenError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(TokenError::WeakSecret);
    }
    if tasks.is_empty() {
        return Err(TokenError::NoTasks);
    }
    for t in tasks {
        validate_pattern(t).map_err(|e| TokenError::BadPattern(t.clone(), e))?;
    }
    if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(366 * 24 * 3600) {
        return Err(TokenError::BadTtl);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        tasks: tasks.to_vec(),
        exp: now + ttl.as_secs(),
        iat: Some(now),
        sub: sub.map(str::to_owned),
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_input() {
        let s = "0123456789abcdef";
        assert!(matches!(
            issue("short", &["a".into()], Duration::from_secs(60), None),
            Err(TokenError::WeakSecret)
        ));
        assert!(matches!(
            issue(s, &[], Duration::from_secs(60), None),
            Err(TokenError::NoTasks)
        ));
        assert!(matches!(
            issue(s, &["a b".into()], Duration::from_secs(60), None),
            Err(TokenError::BadPattern(..))
        ));
        assert!(matches!(
            issue(s, &["a".into()], Duration::ZERO, None),
            Err(TokenError::BadTtl)
        ));
        let t = issue(
            s,
            &["reports-*".into()],
            Duration::from_secs(60),
            Some("u1"),
        )
        .expect("token");
        assert_eq!(t.split('.').count(), 3);
    }
}
