//! The hall fed an arbitrary sequence of routed traffic, spawn outcomes,
//! dispersal requests, departures and a shutdown. Checked: traffic is
//! delivered only to a gathering that is spawned and not granted its
//! dispersal, a grant comes only when the gathering has processed all
//! that was delivered to it, no spawn follows a shutdown, and nothing panics.
#![no_main]

use std::collections::BTreeMap;

use gathering_core::{
    ConnId, Encoding, Frame, GatheringId, Hall, HallAction, HallEvent, Inbound, Verdict,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum State {
    Spawning,
    Live { delivered: u64 },
    Dispersing,
}

fuzz_target!(|data: &[u8]| {
    let ids: Vec<GatheringId> = ["a", "b", "c"]
        .iter()
        .map(|s| GatheringId::parse(s).expect("a valid id"))
        .collect();
    let mut hall = Hall::new();
    let mut states: BTreeMap<GatheringId, State> = BTreeMap::new();
    let mut shut_down = false;
    for pair in data.chunks_exact(2) {
        let (what, arg) = (pair[0], pair[1]);
        let id = ids[usize::from(arg) % ids.len()].clone();
        let conn = ConnId(u64::from(arg / 3 % 4));
        let event = match what % 8 {
            0 => HallEvent::Route(id.clone(), Inbound::open_join(conn, Encoding::Json)),
            1 => HallEvent::Route(
                id.clone(),
                Inbound::open_frame(conn, Frame::Text("{}".into())),
            ),
            2 => HallEvent::Route(id.clone(), Inbound::Leave { conn, clean: false }),
            3 if states.get(&id) == Some(&State::Spawning) => HallEvent::Spawned(id.clone()),
            4 if states.get(&id) == Some(&State::Spawning) => HallEvent::SpawnFailed(id.clone()),
            5 => {
                // What the gathering processed: all delivered, or fewer.
                let delivered = match states.get(&id) {
                    Some(State::Live { delivered }) => *delivered,
                    _ => 0,
                };
                let processed = if arg & 0x80 == 0 {
                    delivered
                } else {
                    delivered / 2
                };
                HallEvent::DisperseRequest {
                    id: id.clone(),
                    processed,
                }
            }
            6 if states.get(&id) == Some(&State::Dispersing) => HallEvent::Dispersed(id.clone()),
            7 if arg & 0x0f == 0 => {
                shut_down = true;
                HallEvent::Shutdown
            }
            _ => continue,
        };
        let request = match &event {
            HallEvent::DisperseRequest { processed, .. } => Some(*processed),
            _ => None,
        };
        match &event {
            HallEvent::Spawned(id) => {
                states.insert(id.clone(), State::Live { delivered: 0 });
            }
            HallEvent::SpawnFailed(id) | HallEvent::Dispersed(id) => {
                states.remove(id);
            }
            _ => {}
        }
        hall.handle(event);
        while let Some(action) = hall.poll_action() {
            match action {
                HallAction::Spawn(id) => {
                    assert!(!shut_down, "spawned {id} after the shutdown");
                    assert!(
                        !matches!(states.get(&id), Some(State::Live { .. } | State::Spawning)),
                        "spawned {id} twice"
                    );
                    states.insert(id, State::Spawning);
                }
                HallAction::Deliver(id, _) => match states.get_mut(&id) {
                    Some(State::Live { delivered }) => *delivered += 1,
                    other => panic!("delivered to {id} in state {other:?}"),
                },
                HallAction::Verdict(vid, Verdict::Granted) => {
                    if let (Some(State::Live { delivered }), Some(processed)) =
                        (states.get(&vid), request)
                    {
                        assert!(processed >= *delivered, "granted with traffic in flight");
                    }
                    states.insert(vid, State::Dispersing);
                }
                HallAction::Verdict(_, Verdict::Refused) | HallAction::Reject(..) => {}
            }
        }
        if shut_down {
            // A shutdown closes every live gathering; the host disperses them.
            for state in states.values_mut() {
                if matches!(state, State::Live { .. }) {
                    *state = State::Dispersing;
                }
            }
        }
    }
});
