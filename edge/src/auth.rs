//! Subscriber authorization: HS256 JWTs whose `tasks` claim covers the task
//! (the HTTP layer finds the token in `Authorization: Bearer` or `?token=`:
//! EventSource cannot set headers). Missing, malformed, badly signed or
//! expired: 401; valid but not for this task: 403. With no secret
//! (`--insecure` / `--demo`) every subscription is allowed.

use std::sync::Arc;

use axum::http::StatusCode;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sluice_shared::token::Claims;
use sluice_shared::TaskId;

use crate::error::ApiError;
use crate::metrics::{Metrics, RefuseReason};

/// Longest token accepted (bytes).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

pub struct Verifier {
    keys: Vec<DecodingKey>,
    validation: Validation,
}

impl Verifier {
    pub fn new(secrets: &[String]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_exp = true;
        // A token whose `nbf` (not before) is still in the future is refused.
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        Verifier {
            keys: secrets
                .iter()
                .map(|s| DecodingKey::from_secret(s.as_bytes()))
                .collect(),
            validation,
        }
    }

    /// Verifies a token against every configured secret (rotation).
    pub fn verify(&self, token: &str) -> Result<Claims, &'static str> {
        if token.len() > MAX_TOKEN_LEN {
            return Err("token too long");
        }
        use jsonwebtoken::errors::ErrorKind;
        let mut why = "token invalid";
        for key in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => match e.kind() {
                    ErrorKind::ExpiredSignature => why = "token expired",
                    ErrorKind::ImmatureSignature => why = "token not yet valid",
                    _ => {}
                },
            }
        }
        Err(why)
    }
}

/// Who may read which task: the token verifier (`None` when the node runs
/// open) and the metrics that count refusals.
pub struct Access {
    verifier: Option<Verifier>,
    metrics: Arc<Metrics>,
}

impl Access {
    /// Verifies tokens signed with any of `secrets`; no secret: open.
    pub fn new(secrets: &[String], metrics: Arc<Metrics>) -> Self {
        let verifier = (!secrets.is_empty()).then(|| Verifier::new(secrets));
        Access { verifier, metrics }
    }

    pub fn is_open(&self) -> bool {
        self.verifier.is_none()
    }

    /// Checks that `token` is a valid token (whatever tasks it covers):
    /// 401 otherwise; always fine when the node runs open.
    pub fn check_token(&self, token: Option<&str>) -> Result<(), ApiError> {
        self.claims(token).map(|_| ())
    }

    /// The claims of a valid token; `None` when the node runs open.
    fn claims(&self, token: Option<&str>) -> Result<Option<Claims>, ApiError> {
        let Some(verifier) = &self.verifier else {
            return Ok(None);
        };
        let Some(token) = token else {
            self.metrics.refuse(RefuseReason::Unauthorized);
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a token is required (Authorization: Bearer or ?token=)",
            ));
        };
        verifier.verify(token).map(Some).map_err(|why| {
            self.metrics.refuse(RefuseReason::Unauthorized);
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why)
        })
    }

    /// Checks that the bearer of `token` may read `task`.
    pub fn authorize(&self, token: Option<&str>, task: &TaskId) -> Result<(), ApiError> {
        let Some(claims) = self.claims(token)? else {
            return Ok(());
        };
        if claims.allows(task.as_str()) {
            Ok(())
        } else {
            self.metrics.refuse(RefuseReason::Forbidden);
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("the token does not cover task {task}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "unit-test-secret-0123456789";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn token(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode")
    }

    #[test]
    fn not_before_in_the_future_is_refused() {
        let v = Verifier::new(&[SECRET.to_owned()]);
        let t = now();
        let later = token(serde_json::json!({"tasks": ["a"], "exp": t + 600, "nbf": t + 300}));
        assert_eq!(v.verify(&later).err(), Some("token not yet valid"));
        let valid = token(serde_json::json!({"tasks": ["a"], "exp": t + 600, "nbf": t - 10}));
        assert_eq!(v.verify(&valid).map(|c| c.tasks), Ok(vec!["a".to_owned()]));
        let expired = token(serde_json::json!({"tasks": ["a"], "exp": t - 600}));
        assert_eq!(v.verify(&expired).err(), Some("token expired"));
    }
}
