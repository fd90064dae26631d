//! Command-line and environment configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The gathering server: live per-room state over WebSockets, dispersed when idle.
#[derive(Clone, Debug, Parser)]
#[command(name = "gathering-server", version, about, long_about = None)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "GATHERING_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory of the embedded database (created if missing).
    #[arg(long, env = "GATHERING_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Disperse a gathering that processed no message for this long (e.g. 24h, 90s).
    #[arg(long, env = "GATHERING_IDLE_TIMEOUT", default_value = "24h", value_parser = positive_duration)]
    pub idle_timeout: Duration,

    /// Also disperse a gathering left without connections for this long (off by default).
    #[arg(long, env = "GATHERING_EMPTY_GRACE", value_parser = positive_duration)]
    pub empty_grace: Option<Duration>,

    /// First wait before re-sending an unacknowledged forward; it doubles after each re-send, up to 30 times this.
    #[arg(long, env = "GATHERING_RETRY_INTERVAL", default_value = "1s", value_parser = positive_duration)]
    pub retry_interval: Duration,

    /// Largest frame accepted from a client, in bytes; larger ones close the connection with 1009.
    #[arg(long, env = "GATHERING_MAX_FRAME_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(64..=(64 << 20)))]
    pub max_frame_bytes: u64,

    /// Directory of the demo page served at `/` (built by scripts/build-web.sh).
    #[arg(long, env = "GATHERING_WEB_DIR", default_value = DEFAULT_WEB_DIR)]
    pub web_dir: PathBuf,
}

/// The demo page in this source tree: right for `cargo run`, overridable
/// with `--web-dir` for an installed server.
pub const DEFAULT_WEB_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../host-wasm/www");

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e} (write durations like 24h, 90s or 300ms)"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}
