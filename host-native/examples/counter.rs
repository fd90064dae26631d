//! README's "Host your own app", whole and runnable: the counter app, a
//! server for it inside this program (loopback, a temporary data
//! directory), and two clients: an op acknowledged, its forward received by
//! the other client, and a refusal.
//!
//! ```sh
//! cargo run -p gathering-native --example counter
//! ```
//!
//! README.md quotes the app between the two `README` marks below;
//! `host-native/tests/readme.rs` checks the quote and runs [`run`].

// README: begin
use gathering_core::{App, Member, Rejection, wire_enum};
use serde::{Deserialize, Serialize};

wire_enum! {
    #[derive(Clone, Debug, PartialEq)]
    pub enum CounterOp { Add { by: u32 } }
}

#[derive(Default, Serialize, Deserialize)]
pub struct Counter {
    total: u32,
}

impl App for Counter {
    const NAME: &'static str = "counter";
    type Op = CounterOp;
    type Presence = ();
    fn apply(&mut self, _by: &Member, op: &CounterOp) -> Result<(), Rejection> {
        let CounterOp::Add { by } = op;
        self.total = self
            .total
            .checked_add(*by)
            .ok_or_else(|| Rejection::new("overflow", "the counter is full"))?;
        Ok(())
    }
}
// README: end

use std::error::Error;

use gathering_core::{Encoding, GatheringId};
use gathering_native::Server;
use gathering_native::client::{Client, ClientError, Incoming};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run().await?;
    println!("counter: op acked, forward received, overflow refused");
    Ok(())
}

/// Serves the counter on a loopback port and plays it through: Ada's op is
/// acknowledged as op 1, Bob receives it as a forward, and an op that would
/// overflow is refused with the app's code and changes nothing.
pub async fn run() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let server = Server::<Counter>::builder()
        .listen("127.0.0.1:0".parse()?)
        .admin_listen(None)
        .data_dir(dir.path())
        .start()
        .await?;
    let url = format!("ws://{}", server.addr);
    let room = GatheringId::parse("the-counter")?;
    let mut ada = Client::<Counter>::connect(&url, &room, Encoding::Json).await?;
    let mut bob = Client::<Counter>::connect(&url, &room, Encoding::Postcard).await?;
    // A fetch answered means the join was processed: Bob hears what follows.
    bob.fetch().await?;

    let seq = ada.op(CounterOp::Add { by: 2 }).await?;
    check(seq == 1, format!("the first op is op 1, not {seq}"))?;
    let forward = bob.next().await?;
    let expected = Incoming::Forward {
        seq: 1,
        op: CounterOp::Add { by: 2 },
    };
    check(forward == expected, format!("Bob got {forward:?}"))?;

    match ada.op(CounterOp::Add { by: u32::MAX }).await {
        Err(ClientError::Rejected { code, .. }) if code == "overflow" => {}
        other => return Err(format!("an overflow was answered {other:?}").into()),
    }
    let (seq, state) = bob.fetch().await?;
    check(
        seq == 1 && state.total == 2,
        format!("after the refusal: op {seq}, total {}", state.total),
    )?;

    ada.close().await;
    bob.close().await;
    server.shutdown().await;
    Ok(())
}

fn check(ok: bool, otherwise: String) -> Result<(), Box<dyn Error>> {
    if ok { Ok(()) } else { Err(otherwise.into()) }
}
