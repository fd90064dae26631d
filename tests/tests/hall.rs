//! Scenario tests of the hall's routing and its side of the dispersal handshake.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use gathering_core::{
    ConnId, Encoding, GatheringId, Hall, HallAction, HallEvent, Inbound, RejectReason, Verdict,
};

fn id(s: &str) -> GatheringId {
    GatheringId::parse(s).unwrap()
}

fn join(c: u64) -> Inbound {
    Inbound::open_join(ConnId(c), Encoding::Json)
}

fn drain(h: &mut Hall) -> Vec<HallAction> {
    std::iter::from_fn(|| h.poll_action()).collect()
}

#[test]
fn traffic_for_an_absent_gathering_spawns_it_and_waits_in_order() {
    let mut h = Hall::new();
    h.handle(HallEvent::Route(id("a"), join(1)));
    h.handle(HallEvent::Route(id("a"), join(2)));
    assert_eq!(drain(&mut h), [HallAction::Spawn(id("a"))]);
    h.handle(HallEvent::Spawned(id("a")));
    assert_eq!(
        drain(&mut h),
        [
            HallAction::Deliver(id("a"), join(1)),
            HallAction::Deliver(id("a"), join(2))
        ]
    );
    assert!(h.is_live(&id("a")));
    // A departure for a gathering that does not exist spawns nothing.
    h.handle(HallEvent::Route(
        id("b"),
        Inbound::Leave {
            conn: ConnId(3),
            clean: false,
        },
    ));
    assert!(drain(&mut h).is_empty());
}

#[test]
fn grants_only_when_everything_routed_was_processed() {
    let mut h = Hall::new();
    h.handle(HallEvent::Route(id("a"), join(1)));
    h.handle(HallEvent::Spawned(id("a")));
    drain(&mut h);
    h.handle(HallEvent::DisperseRequest {
        id: id("a"),
        processed: 0,
    });
    assert_eq!(
        drain(&mut h),
        [HallAction::Verdict(id("a"), Verdict::Refused)]
    );
    h.handle(HallEvent::DisperseRequest {
        id: id("a"),
        processed: 1,
    });
    assert_eq!(
        drain(&mut h),
        [HallAction::Verdict(id("a"), Verdict::Granted)]
    );
    assert!(!h.is_live(&id("a")));

    // Traffic during the final persist waits, then goes to a successor.
    h.handle(HallEvent::Route(id("a"), join(2)));
    assert!(drain(&mut h).is_empty());
    h.handle(HallEvent::Dispersed(id("a")));
    assert_eq!(drain(&mut h), [HallAction::Spawn(id("a"))]);
    h.handle(HallEvent::Spawned(id("a")));
    assert_eq!(drain(&mut h), [HallAction::Deliver(id("a"), join(2))]);
}

#[test]
fn a_failed_spawn_rejects_what_waited() {
    let mut h = Hall::new();
    h.handle(HallEvent::Route(id("a"), join(1)));
    h.handle(HallEvent::Route(
        id("a"),
        Inbound::Leave {
            conn: ConnId(1),
            clean: false,
        },
    ));
    drain(&mut h);
    h.handle(HallEvent::SpawnFailed(id("a")));
    assert_eq!(
        drain(&mut h),
        [HallAction::Reject(
            id("a"),
            join(1),
            RejectReason::SpawnFailed
        )]
    );
    assert!(!h.knows(&id("a")));
}

#[test]
fn shutdown_turns_new_traffic_away_and_forgets_closed_gatherings() {
    let mut h = Hall::new();
    h.handle(HallEvent::Route(id("a"), join(1)));
    h.handle(HallEvent::Spawned(id("a")));
    h.handle(HallEvent::Route(id("b"), join(2)));
    drain(&mut h);
    h.handle(HallEvent::Shutdown);
    assert_eq!(
        drain(&mut h),
        [HallAction::Reject(
            id("b"),
            join(2),
            RejectReason::ShuttingDown
        )]
    );
    h.handle(HallEvent::Route(id("a"), join(3)));
    assert_eq!(
        drain(&mut h),
        [HallAction::Reject(
            id("a"),
            join(3),
            RejectReason::ShuttingDown
        )]
    );
    h.handle(HallEvent::Dispersed(id("a")));
    h.handle(HallEvent::Spawned(id("b")));
    h.handle(HallEvent::Dispersed(id("b")));
    assert!(drain(&mut h).is_empty());
    assert_eq!(h.live(), 0);
}

#[test]
fn a_departure_closed_by_dispersal_does_not_respawn_the_gathering() {
    let leave = |c: u64| Inbound::Leave {
        conn: ConnId(c),
        clean: false,
    };
    let mut h = Hall::new();
    h.handle(HallEvent::Route(id("a"), join(1)));
    h.handle(HallEvent::Spawned(id("a")));
    drain(&mut h);
    h.handle(HallEvent::DisperseRequest {
        id: id("a"),
        processed: 1,
    });
    drain(&mut h);
    // The socket that dispersal closed reports its end before the gathering
    // has finished: nobody waits for a successor, so none is spawned.
    h.handle(HallEvent::Route(id("a"), leave(1)));
    h.handle(HallEvent::Dispersed(id("a")));
    assert!(drain(&mut h).is_empty());
    assert!(!h.knows(&id("a")));

    // A connection that joined during dispersal and left again still
    // reaches the successor, join and departure in order.
    h.handle(HallEvent::Route(id("a"), join(2)));
    h.handle(HallEvent::Route(id("a"), leave(2)));
    h.handle(HallEvent::Route(id("a"), leave(1)));
    assert_eq!(drain(&mut h), [HallAction::Spawn(id("a"))]);
    h.handle(HallEvent::Spawned(id("a")));
    assert_eq!(
        drain(&mut h),
        [
            HallAction::Deliver(id("a"), join(2)),
            HallAction::Deliver(id("a"), leave(2))
        ]
    );
}
