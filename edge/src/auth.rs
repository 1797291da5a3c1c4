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
        let mut expired = false;
        for key in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                    expired = true
                }
                Err(_) => {}
            }
        }
        Err(if expired {
            "token expired"
        } else {
            "token invalid"
        })
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

    /// Checks that the bearer of `token` may read `task`.
    pub fn authorize(&self, token: Option<&str>, task: &TaskId) -> Result<(), ApiError> {
        let Some(verifier) = &self.verifier else {
            return Ok(());
        };
        let Some(token) = token else {
            self.metrics.refuse(RefuseReason::Unauthorized);
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a token is required (Authorization: Bearer or ?token=)",
            ));
        };
        let claims = verifier.verify(token).map_err(|why| {
            self.metrics.refuse(RefuseReason::Unauthorized);
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why)
        })?;
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
