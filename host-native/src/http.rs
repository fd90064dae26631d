//! The HTTP routes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use gathering_core::{Encoding, GatheringId, IdError};
use serde::Serialize;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::server::Shared;
use crate::{upgrade, ws};

#[derive(Debug)]
struct BadId(IdError);
impl warp::reject::Reject for BadId {}

#[derive(Debug)]
struct BadQuery(String);
impl warp::reject::Reject for BadQuery {}

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

/// All routes of the server.
pub fn routes(
    shared: Arc<Shared>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let with = {
        let shared = shared.clone();
        warp::any().map(move || shared.clone())
    };
    let join = warp::path!("gatherings" / String)
        .and(warp::get())
        .and_then(|raw: String| async move {
            GatheringId::parse(&raw).map_err(|e| warp::reject::custom(BadId(e)))
        })
        .and(warp::query::<HashMap<String, String>>())
        .and_then(|id, query: HashMap<String, String>| async move {
            let encoding = match query.get("encoding").map(String::as_str) {
                None | Some("json") => Encoding::Json,
                Some("postcard") => Encoding::Postcard,
                Some(other) => {
                    return Err(warp::reject::custom(BadQuery(format!(
                        "unknown encoding {other:?}: use json or postcard"
                    ))));
                }
            };
            Ok::<_, Rejection>((id, encoding))
        })
        .untuple_one()
        .and(upgrade::handshake())
        .and(with.clone())
        .map(
            |id: GatheringId,
             encoding: Encoding,
             handshake: upgrade::Handshake,
             shared: Arc<Shared>| {
                // Frames up to twice the limit are read and refused with 1009;
                // larger ones are cut off by the WebSocket layer itself.
                let max = shared.config.max_frame_bytes.saturating_mul(2);
                handshake.accept(max, move |socket| ws::serve(socket, id, encoding, shared))
            },
        );
    let list = warp::path!("gatherings")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(with.clone())
        .map(|query: HashMap<String, String>, shared: Arc<Shared>| {
            let limit = query
                .get("limit")
                .and_then(|l| l.parse::<usize>().ok())
                .unwrap_or(1000);
            warp::reply::json(&listing(&shared, limit))
        });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with)
        .map(|shared: Arc<Shared>| {
            warp::reply::with_header(
                shared.metrics.render(),
                "content-type",
                "text/plain; version=0.0.4; charset=utf-8",
            )
        });
    let health = warp::path!("healthz").and(warp::get()).map(|| "ok\n");
    let page = match shared.config.web_dir.clone() {
        Some(dir) => warp::get().and(warp::fs::dir(dir)).boxed(),
        None => warp::any()
            .and_then(|| async { Err::<warp::fs::File, _>(warp::reject::not_found()) })
            .boxed(),
    };
    join.or(list)
        .or(metrics)
        .or(health)
        .or(page)
        .recover(recover)
}

fn listing(shared: &Shared, limit: usize) -> Listing {
    let now = shared.clock.now().as_nanos();
    let secs = |nanos: u64| nanos as f64 / 1e9;
    let Ok(registry) = shared.registry.lock() else {
        return Listing {
            total: 0,
            gatherings: Vec::new(),
        };
    };
    let gatherings = registry
        .iter()
        .take(limit)
        .map(|(id, s)| {
            let last = s.last_activity.load(Ordering::Relaxed);
            let deadline = s.idle_deadline.load(Ordering::Relaxed);
            Listed {
                id: id.to_string(),
                connections: s.connections.load(Ordering::Relaxed),
                idle_seconds: secs(now.saturating_sub(last)),
                seconds_left: secs(deadline.saturating_sub(now)),
            }
        })
        .collect();
    Listing {
        total: registry.len(),
        gatherings,
    }
}

async fn recover(rejection: Rejection) -> Result<impl Reply, Infallible> {
    let (status, message) = if let Some(BadId(e)) = rejection.find() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else if let Some(BadQuery(e)) = rejection.find() {
        (StatusCode::BAD_REQUEST, e.clone())
    } else if let Some(upgrade::NotUpgrade(e)) = rejection.find() {
        (StatusCode::BAD_REQUEST, (*e).to_owned())
    } else if rejection.is_not_found() {
        (
            StatusCode::NOT_FOUND,
            "no such route: try /, /gatherings/{id}, /gatherings, /metrics or /healthz".into(),
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "only GET is served".into())
    } else {
        (StatusCode::BAD_REQUEST, format!("{rejection:?}"))
    };
    Ok(warp::reply::with_status(format!("{message}\n"), status))
}
