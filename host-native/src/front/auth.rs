//! Who may join a gathering: the check every WebSocket upgrade passes
//! before it is accepted, and the one shipped, HS256 JSON Web Tokens.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gathering_core::{GatheringId, Member};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use warp::http::HeaderMap;

/// Longest `sub` and `role` a token may carry, in characters.
pub const MAX_CLAIM_CHARS: usize = 64;

/// What an upgrade request presents.
#[derive(Clone, Copy, Debug)]
pub struct Credentials<'a> {
    /// The token, from `Authorization: Bearer <token>` or else from the
    /// query's `token` (browsers cannot set headers on a WebSocket).
    pub token: Option<&'a str>,
    /// Every header of the request, for checks of one's own.
    pub headers: &'a HeaderMap,
}

/// A connection let in: as whom, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The member it acts as.
    pub member: Member,
    /// When its right ends: the server then closes it with 4003 `token
    /// expired`. `None` for never.
    pub expires: Option<SystemTime>,
}

/// Why an upgrade is turned away, answered before it with HTTP 401 or
/// 403 and a JSON body `{"error", "message"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials, or ones that do not hold (401 `unauthorized`).
    Unauthorized(String),
    /// Valid credentials that do not reach this gathering (403 `forbidden`).
    Forbidden(String),
}

impl Refusal {
    /// The `error` of its answer (and its label in `joins_refused_total`).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Unauthorized(_) => "unauthorized",
            Refusal::Forbidden(_) => "forbidden",
        }
    }
}

/// Decides who may join which gathering. Called once per upgrade, on the
/// accept path, so it must answer at once (no I/O): a check against keys
/// it holds, like [`Jwt`].
pub trait Authenticator: Send + Sync + 'static {
    /// Admits `credentials` to `gathering`, or says why not.
    fn authenticate(
        &self,
        credentials: &Credentials<'_>,
        gathering: &GatheringId,
    ) -> Result<Admission, Refusal>;
}

/// The claims of a gathering token (RFC 7519): `sub`, the member (1 to 64
/// characters); `role`, which the app interprets (1 to 64 characters);
/// `gathering`, the one gathering it is for, or `*` for any; `exp`, when
/// it expires, in Unix seconds (required).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who.
    pub sub: String,
    /// As what.
    pub role: String,
    /// Where: a gathering id, or `*`.
    pub gathering: String,
    /// Until when, in Unix seconds.
    pub exp: u64,
}

/// HS256 JSON Web Tokens under one shared secret: the server checks them
/// at the upgrade, and an operator mints them (`gathering-server token`).
/// Only HS256 is accepted; `alg: none` and every other algorithm are
/// refused, and a token past its `exp` is refused without leeway.
pub struct Jwt {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Jwt { .. }")
    }
}

impl Jwt {
    /// Tokens signed with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Jwt {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token with `claims`, signed.
    pub fn mint(&self, claims: &Claims) -> Result<String, String> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| format!("cannot sign the token: {e}"))
    }

    /// A token for `sub` as `role` in `gathering` (or `*`), valid for `ttl`
    /// from now.
    pub fn mint_for(
        &self,
        sub: &str,
        role: &str,
        gathering: &str,
        ttl: Duration,
    ) -> Result<String, String> {
        let exp = SystemTime::now()
            .checked_add(ttl)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .ok_or("the token's lifetime is out of range")?
            .as_secs();
        let claims = Claims {
            sub: sub.into(),
            role: role.into(),
            gathering: gathering.into(),
            exp,
        };
        check_claim("sub", &claims.sub)?;
        check_claim("role", &claims.role)?;
        self.mint(&claims)
    }

    /// The claims of `token` if it is ours and holds.
    pub fn verify(&self, token: &str) -> Result<Claims, Refusal> {
        // The header first, so that `alg: none` (which the library cannot
        // even parse) is told as what it is.
        let other_alg = || {
            Refusal::Unauthorized(
                "the token must be signed with HS256 (alg none and others are refused)".into(),
            )
        };
        match jsonwebtoken::decode_header(token) {
            Ok(header) if header.alg == Algorithm::HS256 => {}
            Ok(_) => return Err(other_alg()),
            // A header that is JSON but names no algorithm the library knows.
            Err(e) if matches!(e.kind(), ErrorKind::Json(_)) => return Err(other_alg()),
            Err(e) => return Err(Refusal::Unauthorized(refusal_message(e.kind()))),
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| Refusal::Unauthorized(refusal_message(e.kind())))?;
        let claims = data.claims;
        check_claim("sub", &claims.sub).map_err(Refusal::Unauthorized)?;
        check_claim("role", &claims.role).map_err(Refusal::Unauthorized)?;
        Ok(claims)
    }
}

impl Authenticator for Jwt {
    fn authenticate(
        &self,
        credentials: &Credentials<'_>,
        gathering: &GatheringId,
    ) -> Result<Admission, Refusal> {
        let token = credentials.token.ok_or_else(|| {
            Refusal::Unauthorized(
                "a token is required: send Authorization: Bearer <token>, or ?token=<token> \
                 from a browser"
                    .into(),
            )
        })?;
        let claims = self.verify(token)?;
        if claims.gathering != "*" && claims.gathering != gathering.as_str() {
            return Err(Refusal::Forbidden(format!(
                "this token is for gathering {}, not {}",
                gathering_core::protocol::quote(&claims.gathering),
                gathering_core::protocol::quote(gathering.as_str())
            )));
        }
        Ok(Admission {
            member: Member::new(claims.sub, claims.role),
            expires: Some(UNIX_EPOCH + Duration::from_secs(claims.exp)),
        })
    }
}

fn check_claim(name: &str, value: &str) -> Result<(), String> {
    if (1..=MAX_CLAIM_CHARS).contains(&value.chars().count()) {
        Ok(())
    } else {
        Err(format!(
            "the token's {name} must be 1 to {MAX_CLAIM_CHARS} characters"
        ))
    }
}

/// What a client is told of a token that does not hold: enough to act on,
/// nothing of the secret.
fn refusal_message(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired: get a fresh one".into(),
        ErrorKind::InvalidSignature => "the token's signature does not match this server".into(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "the token must be signed with HS256".into()
        }
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        ErrorKind::Json(_) => {
            "the token's claims must be sub, role, gathering (strings) and exp (Unix seconds)"
                .into()
        }
        _ => "the token is malformed: expected a JWT (header.claims.signature)".into(),
    }
}

/// The token of an upgrade: `Authorization: Bearer` first, then `?token=`.
pub(crate) fn token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .or(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials<'a>(token: Option<&'a str>, headers: &'a HeaderMap) -> Credentials<'a> {
        Credentials { token, headers }
    }

    #[test]
    fn only_a_valid_hs256_token_for_the_gathering_is_admitted() {
        let jwt = Jwt::new(b"secret");
        let headers = HeaderMap::new();
        let here = GatheringId::parse("spring-open").unwrap();
        let hour = Duration::from_secs(3600);
        let ok = jwt.mint_for("Ada", "player", "spring-open", hour).unwrap();
        let admitted = jwt
            .authenticate(&credentials(Some(&ok), &headers), &here)
            .unwrap();
        assert_eq!(admitted.member, Member::new("Ada", "player"));
        let any = jwt.mint_for("Org", "organizer", "*", hour).unwrap();
        assert!(
            jwt.authenticate(&credentials(Some(&any), &headers), &here)
                .is_ok()
        );

        let other = jwt.mint_for("Ada", "player", "autumn", hour).unwrap();
        let unauthorized = |token: Option<&str>| {
            matches!(
                jwt.authenticate(&credentials(token, &headers), &here),
                Err(Refusal::Unauthorized(_))
            )
        };
        assert!(matches!(
            jwt.authenticate(&credentials(Some(&other), &headers), &here),
            Err(Refusal::Forbidden(_))
        ));
        let foreign = Jwt::new(b"other")
            .mint_for("Ada", "player", "*", hour)
            .unwrap();
        let expired = jwt
            .mint(&Claims {
                sub: "Ada".into(),
                role: "player".into(),
                gathering: "*".into(),
                exp: 1,
            })
            .unwrap();
        // alg none: a header saying so, the claims, no signature.
        let b64 = |s: &str| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
        };
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"sub":"Ada","role":"organizer","gathering":"*","exp":99999999999}"#)
        );
        for bad in [
            None,
            Some("not-a-jwt"),
            Some(&foreign),
            Some(&expired),
            Some(&none),
        ] {
            assert!(unauthorized(bad), "{bad:?} admitted");
        }
        assert!(jwt.mint_for("", "player", "*", hour).is_err());
    }

    #[test]
    fn the_header_comes_before_the_query() {
        let mut headers = HeaderMap::new();
        assert_eq!(token(&headers, Some("q")), Some("q"));
        headers.insert("authorization", "Bearer h".parse().unwrap());
        assert_eq!(token(&headers, Some("q")), Some("h"));
    }
}
