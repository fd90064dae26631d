//! The HTTP routes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use gathering_core::{Encoding, GatheringId, IdError, SessionId, SessionJoin, protocol};
use gathering_driver::Status;
use serde::Serialize;
use warp::http::{HeaderMap, StatusCode};
use warp::{Filter, Rejection, Reply};

use super::auth::{self, Credentials, Refusal};
use super::ws::Joining;
use super::{Front, upgrade, ws};
use crate::metrics::AnswerLabel;

#[derive(Debug)]
struct BadId(IdError);
impl warp::reject::Reject for BadId {}

#[derive(Debug)]
struct BadQuery(String);
impl warp::reject::Reject for BadQuery {}

#[derive(Debug)]
struct ForbiddenOrigin(String);
impl warp::reject::Reject for ForbiddenOrigin {}

#[derive(Debug)]
struct Refused(Refusal);
impl warp::reject::Reject for Refused {}

#[derive(Debug)]
struct Full(u32);
impl warp::reject::Reject for Full {}

/// The body of a refused upgrade.
#[derive(Serialize)]
struct RefusedBody<'a> {
    error: &'static str,
    message: &'a str,
}

/// Most gatherings `GET /gatherings` lists at once (`?limit=` is capped).
pub const MAX_LISTING: usize = 1000;

/// One row of `GET /gatherings`.
#[derive(Serialize)]
struct Listed {
    id: String,
    connections: u32,
    /// Seconds since the last processed client message.
    idle_seconds: f64,
    /// Seconds left before idle dispersal.
    seconds_left: f64,
}

#[derive(Serialize)]
struct Listing {
    total: usize,
    gatherings: Vec<Listed>,
}

/// The answer of `GET /gatherings/{id}/status`: the row the listing
/// would show, or only the id when it is not live.
#[derive(Serialize)]
struct Live {
    live: bool,
    #[serde(flatten)]
    listed: Listed,
}

#[derive(Serialize)]
struct NotLive {
    id: String,
    live: bool,
}

/// The public routes: `/gatherings/{id}` (the WebSocket),
/// A join's query parameters `session`, `since` and `epoch`: a session
/// join, none without `session`, or what is wrong with them.
fn session_join(query: &HashMap<String, String>) -> Result<Option<Box<SessionJoin>>, String> {
    let number = |name: &str| {
        query
            .get(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    format!("{name} must be a whole number, not {}", protocol::quote(v))
                })
            })
            .transpose()
    };
    let (since, epoch) = (number("since")?, number("epoch")?);
    let Some(session) = query.get("session") else {
        if since.is_some() || epoch.is_some() {
            return Err("since and epoch resume a session: give session too".into());
        }
        return Ok(None);
    };
    let session = SessionId::parse(session).map_err(|e| e.to_string())?;
    Ok(Some(Box::new(SessionJoin {
        session,
        since,
        epoch,
    })))
}

/// `/gatherings/{id}/status` and `/healthz`. They reject what they do not
/// serve, so that other filters (a page, an app's own routes) can follow
/// with `.or`. Nothing here enumerates gatherings: only those who know an
/// id learn of it.
pub fn routes(
    shared: Arc<Front>,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let health = health(shared.clone());
    let with = warp::any().map(move || shared.clone());
    let join = warp::path!("gatherings" / String)
        .and(warp::get())
        .and_then(parse_id)
        .and(warp::query::<HashMap<String, String>>())
        .and_then(|id, mut query: HashMap<String, String>| async move {
            let encoding = match query.get("encoding").map(String::as_str) {
                None | Some("json") => Encoding::Json,
                Some("postcard") => Encoding::Postcard,
                Some(other) => {
                    return Err(warp::reject::custom(BadQuery(format!(
                        "unknown encoding {other:?}: use json or postcard"
                    ))));
                }
            };
            let session = session_join(&query).map_err(|e| warp::reject::custom(BadQuery(e)))?;
            Ok::<_, Rejection>((id, encoding, query.remove("token"), session))
        })
        .untuple_one()
        .and(warp::header::headers_cloned())
        .and(with.clone())
        .and_then(
            |id: GatheringId,
             encoding,
             token: Option<String>,
             session: Option<Box<SessionJoin>>,
             headers: HeaderMap,
             shared: Arc<Front>| async move {
                // A page on another site must not drive this server with the
                // visitor's reach (cross-site WebSocket hijacking); clients
                // that are not browsers send no Origin.
                let origin = headers.get("origin").and_then(|o| o.to_str().ok());
                let host = headers.get("host").and_then(|h| h.to_str().ok());
                if let Some(origin) = origin
                    && !shared.origins.allows(origin, host)
                {
                    return Err(warp::reject::custom(ForbiddenOrigin(origin.to_owned())));
                }
                // Before the upgrade: a refusal is an HTTP answer a client
                // can read, not a socket that closes.
                let admission = match &shared.auth {
                    None => None,
                    Some(auth) => {
                        let credentials = Credentials {
                            token: auth::token(&headers, token.as_deref()),
                            headers: &headers,
                        };
                        match auth.authenticate(&credentials, &id) {
                            Ok(admission) => Some(admission),
                            Err(refusal) => {
                                let answer = refusal.code();
                                shared
                                    .metrics
                                    .joins_refused
                                    .get_or_create(&AnswerLabel { answer })
                                    .inc();
                                // A browser sees a refused upgrade only as
                                // 1006: a session's join without an
                                // Authorization header (a page's) is told
                                // by a close code it can read instead.
                                if session.is_some() && !headers.contains_key("authorization") {
                                    let refused = Some(refusal);
                                    let joining = Joining {
                                        admission: None,
                                        session,
                                        refused,
                                        moved: None,
                                    };
                                    return Ok((id, encoding, joining));
                                }
                                return Err(warp::reject::custom(Refused(refusal)));
                            }
                        }
                    }
                };
                // Full: told before the upgrade. (One that fills meanwhile
                // closes the newcomer with 1013.)
                if let Some(status) = shared.registry.get(&id)
                    && status.connections() >= shared.max_per_gathering
                {
                    shared
                        .metrics
                        .joins_refused
                        .get_or_create(&AnswerLabel { answer: "full" })
                        .inc();
                    return Err(warp::reject::custom(Full(shared.max_per_gathering)));
                }
                let refused = None;
                let moved = elsewhere(&shared, &id).await;
                if moved.is_some() {
                    shared.metrics.joins_moved.inc();
                }
                Ok((
                    id,
                    encoding,
                    Joining {
                        admission,
                        session,
                        refused,
                        moved,
                    },
                ))
            },
        )
        .untuple_one()
        .and(upgrade::handshake())
        .and(with.clone())
        .map(
            |id: GatheringId,
             encoding: Encoding,
             joining: Joining,
             handshake: upgrade::Handshake,
             shared: Arc<Front>| {
                // Larger frames are refused by the WebSocket layer itself
                // (1009), from their header, before their payload is read.
                let max = shared.max_frame_bytes;
                handshake.accept(max, shared.frame_timeout, move |socket, slot| {
                    ws::serve(socket, slot, id, encoding, joining, shared)
                })
            },
        );
    let status = warp::path!("gatherings" / String / "status")
        .and(warp::get())
        .and_then(parse_id)
        .and(with.clone())
        .map(
            |id: GatheringId, shared: Arc<Front>| match shared.registry.get(&id) {
                Some(s) => warp::reply::json(&Live {
                    live: true,
                    listed: listed(&shared, &id, &s),
                }),
                None => warp::reply::json(&NotLive {
                    id: id.to_string(),
                    live: false,
                }),
            },
        );
    let owner = warp::path!("gatherings" / String / "owner")
        .and(warp::get())
        .and_then(parse_id)
        .and(with)
        .and_then(|id: GatheringId, shared: Arc<Front>| async move {
            let Some(cluster) = shared.cluster.clone() else {
                return Err(warp::reject::not_found());
            };
            let key = id.clone();
            let owner = tokio::task::spawn_blocking(move || cluster.owner(&key))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            Ok(match owner {
                Ok(owner) => warp::reply::with_status(
                    warp::reply::json(&OwnerAnswer {
                        id: id.to_string(),
                        node: owner.as_ref().map(|o| o.node.clone()),
                        url: owner.map(|o| o.url),
                    }),
                    StatusCode::OK,
                )
                .into_response(),
                Err(e) => warp::reply::with_status(
                    format!("the owner cannot be looked up now: {e}\n"),
                    StatusCode::SERVICE_UNAVAILABLE,
                )
                .into_response(),
            })
        });
    join.or(status).or(owner).or(health)
}

/// The answer of `GET /gatherings/{id}/owner` in a cluster: the live node
/// that owns the gathering and its WebSocket base URL, or `null`s when none
/// does (the next join claims it).
#[derive(Serialize)]
struct OwnerAnswer {
    id: String,
    node: Option<String>,
    url: Option<String>,
}

/// In a cluster, where a join for `id` must go instead of here, as the
/// reason of its 4001 close; `None`: here (it is live here, or no other
/// live node owns it, and the load claims it).
async fn elsewhere(shared: &Arc<Front>, id: &GatheringId) -> Option<String> {
    let cluster = shared.cluster.clone()?;
    if cluster.draining() {
        return Some("draining".into());
    }
    if shared.registry.get(id).is_some() {
        return None;
    }
    let key = id.clone();
    match tokio::task::spawn_blocking(move || cluster.owner_elsewhere(&key)).await {
        Ok(Ok(owner)) => owner.map(|o| o.close_reason()),
        Ok(Err(e)) => {
            // The load will say whether it can be had here.
            tracing::warn!(id = %id, error = %e, "owner not looked up");
            None
        }
        Err(_) => None,
    }
}

/// The admin routes, for the operator's listener (loopback by default):
/// `/gatherings` (the live ones by id, `?limit=` at most [`MAX_LISTING`]),
/// `/metrics` (Prometheus text) and `/healthz`.
pub fn admin_routes(
    shared: Arc<Front>,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let health = health(shared.clone());
    let with = warp::any().map(move || shared.clone());
    let list = warp::path!("gatherings")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(with.clone())
        .and_then(|query: HashMap<String, String>, shared: Arc<Front>| {
            let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
                None => Ok(MAX_LISTING),
                Some(Ok(n)) => Ok(n.min(MAX_LISTING)),
                Some(Err(_)) => Err(warp::reject::custom(BadQuery(format!(
                    "limit must be a whole number (at most {MAX_LISTING} are listed)"
                )))),
            };
            async move { limit.map(|limit| warp::reply::json(&listing(&shared, limit))) }
        });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with)
        .map(|shared: Arc<Front>| {
            warp::reply::with_header(
                shared.metrics.render(),
                "content-type",
                "text/plain; version=0.0.4; charset=utf-8",
            )
        });
    list.or(metrics).or(health)
}

/// `ok`, or 503 with why a cluster node should get no traffic (it drains,
/// or its lease is not known to hold): what a load balancer checks.
fn health(
    shared: Arc<Front>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("healthz").and(warp::get()).map(move || {
        match shared.cluster.as_ref().and_then(|c| c.unhealthy()) {
            None => "ok\n".into_response(),
            Some(why) => warp::reply::with_status(
                format!("unhealthy: {why}\n"),
                StatusCode::SERVICE_UNAVAILABLE,
            )
            .into_response(),
        }
    })
}

async fn parse_id(raw: String) -> Result<GatheringId, Rejection> {
    GatheringId::parse(&raw).map_err(|e| warp::reject::custom(BadId(e)))
}

fn listed(shared: &Front, id: &GatheringId, s: &Status) -> Listed {
    let now = shared.clock.now();
    Listed {
        id: id.to_string(),
        connections: s.connections(),
        idle_seconds: now.saturating_since(s.last_activity()).as_secs_f64(),
        seconds_left: s
            .idle_deadline(shared.idle_timeout)
            .saturating_since(now)
            .as_secs_f64(),
    }
}

fn listing(shared: &Front, limit: usize) -> Listing {
    let (total, live) = shared.registry.list(limit);
    let gatherings = live.iter().map(|(id, s)| listed(shared, id, s)).collect();
    Listing { total, gatherings }
}

/// A refused upgrade's answer: `status`, a JSON body `{error, message}`,
/// and `header`.
fn refused(
    status: StatusCode,
    error: &'static str,
    message: &str,
    header: (&'static str, &'static str),
) -> warp::reply::Response {
    let body = warp::reply::json(&RefusedBody { error, message });
    let reply = warp::reply::with_header(body, header.0, header.1);
    warp::reply::with_status(reply, status).into_response()
}

/// Answers every rejection with a status and a message a client can act on.
pub async fn recover(rejection: Rejection) -> Result<impl Reply, Infallible> {
    if let Some(Refused(refusal)) = rejection.find() {
        let (status, message) = match refusal {
            Refusal::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            Refusal::Forbidden(m) => (StatusCode::FORBIDDEN, m),
        };
        let header = ("www-authenticate", "Bearer");
        return Ok(refused(status, refusal.code(), message, header));
    }
    if let Some(Full(bound)) = rejection.find() {
        let message =
            format!("this gathering holds {bound} connections, its most; try again later");
        let header = ("retry-after", "5");
        return Ok(refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "full",
            &message,
            header,
        ));
    }
    let (status, message) = if let Some(BadId(e)) = rejection.find() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else if let Some(BadQuery(e)) = rejection.find() {
        (StatusCode::BAD_REQUEST, e.clone())
    } else if let Some(ForbiddenOrigin(origin)) = rejection.find() {
        (
            StatusCode::FORBIDDEN,
            format!(
                "WebSocket from origin {} refused: the server allows its own origin and \
                 those given with --allowed-origins",
                gathering_core::protocol::quote(origin)
            ),
        )
    } else if let Some(upgrade::NotUpgrade(e)) = rejection.find() {
        (StatusCode::BAD_REQUEST, (*e).to_owned())
    } else if rejection.is_not_found() {
        (
            StatusCode::NOT_FOUND,
            "no such route: the public listener serves /gatherings/{id}, \
             /gatherings/{id}/status, /healthz and its page; the admin listener \
             /gatherings, /metrics and /healthz"
                .into(),
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "only GET is served".into())
    } else {
        (StatusCode::BAD_REQUEST, format!("{rejection:?}"))
    };
    Ok(warp::reply::with_status(format!("{message}\n"), status).into_response())
}
