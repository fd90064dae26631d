//! One gathering fed an arbitrary sequence of joins, leaves, frames (ops,
//! acks, fetches, garbage), ticks, commit outcomes, verdicts, evictions and
//! a shutdown, on a fake clock, with commits overlapping or not (the first
//! byte). Checked: nothing is acknowledged or forwarded before it is
//! durable, at most one commit is outstanding unless overlapping, commits
//! go forward and each continues the log the last one left, nothing but
//! hand-backs follows the end, and nothing panics.
#![no_main]

use std::collections::VecDeque;

use gathering_core::protocol::{self, Frame};
use gathering_core::tournament::{Tournament, TournamentOp, TournamentPresence};
use gathering_core::{
    Action, ClientMsg, Config, ConnId, Duration, Encoding, Event, Gathering, GatheringId, Inbound,
    Instant, Phase, ServerMsg, SessionId, SessionJoin, Verdict,
};
use libfuzzer_sys::fuzz_target;

type Server = ServerMsg<TournamentOp, Tournament, TournamentPresence>;

struct Run {
    g: Gathering<Tournament>,
    now: Instant,
    /// The seqs of the commits under way, oldest first.
    persisting: VecDeque<u64>,
    /// Whether several may be.
    overlap: bool,
    /// The highest seq reported durable.
    durable: u64,
    /// The last op handed over in a commit.
    handed: u64,
    asking: bool,
    ended: bool,
}

impl Run {
    fn drain(&mut self) {
        while let Some(action) = self.g.poll_action() {
            match action {
                Action::Send { frame, .. } => {
                    assert!(!self.ended, "a send after the end");
                    match protocol::decode::<Server>(&frame).expect("server frames decode") {
                        // A client is never shown an op a crash could take back.
                        ServerMsg::Ack { seq, .. }
                        | ServerMsg::Forward { seq, .. }
                        | ServerMsg::Welcome { seq, .. }
                        | ServerMsg::Resync { seq, .. } => {
                            assert!(
                                seq <= self.durable,
                                "op {seq} out before durable {}",
                                self.durable
                            )
                        }
                        _ => {}
                    }
                }
                Action::Close { .. } => assert!(!self.ended, "a close after the end"),
                Action::Persist(commit) => {
                    assert!(
                        self.overlap || self.persisting.is_empty(),
                        "two commits outstanding"
                    );
                    assert!(commit.seq > self.handed, "a commit that goes nowhere");
                    if let Some(first) = commit.log.first() {
                        assert_eq!(first.seq, self.handed + 1, "a commit that skips ops");
                    }
                    self.handed = commit.seq;
                    self.persisting.push_back(commit.seq);
                }
                Action::Disperse { .. } => {
                    assert!(!self.asking, "asked twice without a verdict");
                    self.asking = true;
                }
                Action::Dispersed { .. } => {
                    assert!(!self.ended, "dispersed twice");
                    assert!(matches!(self.g.phase(), Phase::Dispersed(_)));
                    self.ended = true;
                }
                Action::Bounce(_) => {}
                Action::Refused { .. } => assert!(!self.ended, "a refusal after the end"),
            }
        }
    }

    fn message(&mut self, inbound: Inbound) {
        self.g.handle(Event::Message(self.now, inbound));
    }
}

fn frame(conn: u8, msg: &ClientMsg<TournamentOp>, json: bool) -> Inbound {
    let encoding = if json {
        Encoding::Json
    } else {
        Encoding::Postcard
    };
    Inbound::open_frame(
        ConnId(u64::from(conn % 4)),
        protocol::encode(msg, encoding).expect("client messages encode"),
    )
}

/// Op `op` as connection `arg % 4` sends it, in JSON or postcard by `arg`.
fn op_frame(arg: u8, op: TournamentOp) -> Inbound {
    let msg = ClientMsg::Op {
        id: u64::from(arg),
        op,
    };
    frame(arg, &msg, arg & 0x40 == 0)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let overlap = first & 1 == 1;
    let config = Config {
        idle_timeout: Duration::from_secs(5),
        empty_grace: Some(Duration::from_secs(2)),
        retry_interval: Duration::from_millis(300),
        max_retry_interval: Duration::from_secs(1),
        max_unacked: 8,
        max_in_flight: 4,
        snapshot_ops: 4,
        snapshot_bytes: 64,
        // Small, so that runs meet them: four connection ids, three fit.
        max_connections: 3,
        max_ops_per_sec: 50,
        op_burst: 3,
        // Read by the host's hall, not the gathering.
        max_gatherings: u32::MAX,
        overlap_commits: overlap,
        // Small too: sessions forgotten, history outrun, presence refused.
        max_sessions: 2,
        resume_ops: 4,
        resume_bytes: 256,
        max_presence_bytes: 32,
        presence_grace: Duration::from_secs(1),
    };
    let now = Instant::from_millis(1_000);
    let id = GatheringId::parse("fuzz").expect("a valid id");
    let mut run = Run {
        g: Gathering::new(id, config, now),
        now,
        persisting: VecDeque::new(),
        overlap,
        durable: 0,
        handed: 0,
        asking: false,
        ended: false,
    };
    let mut bytes = data.chunks_exact(2);
    for pair in bytes.by_ref() {
        let (what, arg) = (pair[0], pair[1]);
        let conn = ConnId(u64::from(arg % 4));
        match what % 13 {
            0 => {
                let encoding = if arg & 0x80 == 0 {
                    Encoding::Json
                } else {
                    Encoding::Postcard
                };
                // Half the joins with one of three sessions, resuming from
                // a seq of one of two epochs.
                let session = (arg & 0x40 != 0).then(|| {
                    Box::new(SessionJoin {
                        session: SessionId::parse(["s0", "s1", "s2"][usize::from(arg % 3)])
                            .expect("a valid session"),
                        since: (arg & 0x20 != 0).then_some(u64::from(arg % 8)),
                        epoch: Some(u64::from(arg & 0x10 != 0) + 1),
                    })
                });
                run.message(Inbound::Join {
                    conn,
                    encoding,
                    member: None,
                    session,
                })
            }
            1 => run.message(Inbound::Leave {
                conn,
                clean: arg & 0x80 == 0,
            }),
            2 => {
                let op = TournamentOp::RegisterPlayer {
                    name: format!("p{}", arg % 16),
                };
                run.message(op_frame(arg, op));
            }
            3 => {
                let op = TournamentOp::RecordResult {
                    a: format!("p{}", arg % 4),
                    b: format!("p{}", (arg / 4) % 4),
                    winner: (arg & 0x10 != 0).then(|| format!("p{}", arg % 4)),
                };
                run.message(op_frame(arg, op));
            }
            4 => run.message(frame(
                arg,
                &ClientMsg::Ack {
                    seq: u64::from(arg / 4),
                },
                true,
            )),
            5 => run.message(frame(arg, &ClientMsg::Fetch { id: 7 }, false)),
            6 => run.message(Inbound::open_frame(
                conn,
                Frame::Binary(pair.to_vec().into()),
            )),
            7 => {
                // To the next deadline, or a little way.
                let next = run.g.next_deadline().map(|d| d.at);
                run.now = match next {
                    Some(at) if arg & 1 == 0 && at > run.now => at,
                    _ => run.now + Duration::from_millis(u64::from(arg) * 20),
                };
                run.g.handle(Event::Tick(run.now));
            }
            8 => {
                if let Some(seq) = run.persisting.pop_front() {
                    run.durable = run.durable.max(seq);
                    run.g.handle(Event::Persisted(run.now, seq));
                }
            }
            9 => {
                // As a host must: the commits after a failed one fail too.
                if !run.persisting.is_empty() {
                    run.persisting.clear();
                    run.handed = run.durable;
                    // A storage failure, or a cluster's fence: the same
                    // refusals, another reason to leave.
                    if arg & 2 == 0 {
                        run.g.handle(Event::PersistFailed(run.now));
                    } else {
                        run.g.handle(Event::Fenced(run.now));
                    }
                    run.drain();
                    if arg & 1 == 0 {
                        run.g.handle(Event::PersistFailed(run.now));
                    }
                }
            }
            10 => {
                if run.asking {
                    run.asking = false;
                    let verdict = if arg & 1 == 0 {
                        Verdict::Granted
                    } else {
                        Verdict::Refused
                    };
                    run.g.handle(Event::Verdict(run.now, verdict));
                }
            }
            11 if arg & 1 == 0 => run.g.handle(Event::Evict(run.now)),
            11 => run.g.handle(Event::Handoff(run.now)),
            _ => run.g.handle(Event::Shutdown(run.now)),
        }
        run.drain();
    }
});
