//! The room on a fake clock: what it asks its driver for, and what it tells its user.

use super::*;

type TestRoom = Room<String, u32, ()>;

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn actions(room: &mut TestRoom) -> Vec<RoomAction<String, ()>> {
    std::iter::from_fn(|| room.poll_action()).collect()
}

fn welcome(room: &mut TestRoom, now: Instant, last_op: Option<u64>) {
    room.received(
        now,
        ServerMsg::Welcome {
            member: "m".into(),
            epoch: 5,
            seq: 0,
            last_op,
        },
    );
}

fn sent_ops(actions: &[RoomAction<String, ()>]) -> Vec<(u64, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            RoomAction::Send(ClientMsg::Op { id, op }) => Some((*id, op.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_dispersed_room_waits_for_the_next_op_and_a_final_close_refuses() {
    let mut room = TestRoom::new(RoomConfig::default(), 1, None, at(0));
    assert!(matches!(
        actions(&mut room)[..],
        [RoomAction::Connect {
            since: 0,
            epoch: None,
            fresh_token: true,
            node: None,
        }]
    ));
    welcome(&mut room, at(1), None);
    room.received(
        at(2),
        ServerMsg::Dispersed {
            reason: DisperseReason::Idle,
        },
    );
    room.closed(at(3), 4000, "gathering dispersed: idle");
    assert_eq!(room.status().status, Status::Dispersed);
    assert_eq!(room.status().reason, "idle");
    room.tick(at(3_600_000));
    assert_eq!(room.deadline(), None, "no timer while dispersed");
    assert!(actions(&mut room).is_empty(), "no rejoin by itself");
    let ticket = room.op(at(3_600_001), "a".into()).unwrap();
    assert!(matches!(
        actions(&mut room)[..],
        [RoomAction::Connect { .. }]
    ));
    welcome(&mut room, at(3_600_002), None);
    assert_eq!(sent_ops(&actions(&mut room)), [(1, "a".to_owned())]);
    room.closed(at(3_600_003), 4401, "no token");
    assert!(actions(&mut room).is_empty(), "never again");
    let refused = std::iter::from_fn(|| room.poll_event()).find_map(|e| match e {
        RoomEvent::Settled {
            ticket: t,
            result: Err(r),
        } if t == ticket => Some(r.code),
        _ => None,
    });
    assert_eq!(refused.as_deref(), Some("closed"));
}

#[test]
fn ops_keep_their_ids_across_a_drop_and_delivery_waits_for_the_acks_of_applied_ones() {
    let mut room = TestRoom::new(RoomConfig::default(), 1, None, at(0));
    welcome(&mut room, at(1), None);
    room.received(at(1), ServerMsg::Resync { seq: 0, state: 0 });
    room.op(at(2), "a".into()).unwrap();
    room.op(at(2), "b".into()).unwrap();
    actions(&mut room);
    room.closed(at(3), 1006, "");
    let retry = room.deadline().unwrap();
    assert!(
        retry < at(3) + Duration::from_millis(500),
        "jittered below the first ceiling"
    );
    room.tick(retry);
    assert!(matches!(
        actions(&mut room)[..],
        [RoomAction::Connect {
            since: 0,
            epoch: Some(5),
            fresh_token: false,
            node: None,
        }]
    ));
    welcome(&mut room, retry, Some(1));
    assert_eq!(
        sent_ops(&actions(&mut room)),
        [(1, "a".to_owned()), (2, "b".to_owned())]
    );
    room.received(
        retry,
        ServerMsg::Forward {
            seq: 1,
            op: "a".into(),
        },
    );
    room.received(retry, ServerMsg::Ack { id: 1, seq: 1 });
    room.received(
        retry,
        ServerMsg::Forward {
            seq: 2,
            op: "x".into(),
        },
    );
    room.received(retry, ServerMsg::Ack { id: 2, seq: 3 });
    let ops: Vec<_> = std::iter::from_fn(|| room.poll_event())
        .filter_map(|e| match e {
            RoomEvent::Op { seq, op, own } => Some((seq, op, own)),
            _ => None,
        })
        .collect();
    assert_eq!(
        ops,
        [
            (1, "a".into(), true),
            (2, "x".into(), false),
            (3, "b".into(), true)
        ]
    );
}

#[test]
fn a_4001_naming_a_node_pins_the_next_attempt_to_it_and_only_that_one() {
    let mut room = TestRoom::new(RoomConfig::default(), 1, None, at(0));
    actions(&mut room);
    welcome(&mut room, at(1), None);
    room.closed(at(2), 4001, "node n2 at ws://10.0.0.2:8080");
    assert!(
        matches!(&actions(&mut room)[..], [RoomAction::Connect { node: Some(n), .. }] if n == "n2"),
        "at once, to the owner"
    );
    room.closed(at(3), 1006, "");
    room.tick(at(60_000));
    assert!(
        matches!(
            &actions(&mut room)[..],
            [RoomAction::Connect { node: None, .. }]
        ),
        "a later attempt lets the front choose"
    );
    assert_eq!(crate::client::moved_to("draining"), None);
    assert_eq!(crate::client::moved_to("node  at x"), None);
}
