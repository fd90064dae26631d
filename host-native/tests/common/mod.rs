//! What the process tests share: starting a server binary as users run it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Each test file uses the part it needs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts the server binary `exe` on a free loopback port with its data in
/// `dir` and `args` after; returns the child and the address it printed.
/// Its log is drained so that it never blocks on a full pipe.
pub fn spawn(exe: &Path, dir: &Path, args: &[&str]) -> (Child, SocketAddr) {
    let (child, addr, _) = spawn_admin(exe, dir, args);
    (child, addr)
}

/// [`spawn`], with the admin listener on a free loopback port too; returns
/// its address third.
pub fn spawn_admin(exe: &Path, dir: &Path, args: &[&str]) -> (Child, SocketAddr, SocketAddr) {
    let (child, addr, admin) = launch(exe, dir, "127.0.0.1:0", "127.0.0.1:0", args);
    (
        child,
        addr,
        admin.expect("the admin listener printed its address"),
    )
}

/// Starts this package's `gathering-server` listening on `listen` (a port
/// of a server killed before, to restart it where its clients reconnect),
/// no admin listener, data in `dir`; returns the child and its address.
pub fn server_at(dir: &Path, listen: &str, args: &[&str]) -> (Child, SocketAddr) {
    let exe = Path::new(env!("CARGO_BIN_EXE_gathering-server"));
    let (child, addr, _) = launch(exe, dir, listen, "off", args);
    (child, addr)
}

/// Starts `exe` on `listen` and `admin` (`off` for none), with its data in
/// `dir` and `args` after; returns the child and the addresses it printed.
/// Its log is drained so that it never blocks on a full pipe.
fn launch(
    exe: &Path,
    dir: &Path,
    listen: &str,
    admin: &str,
    args: &[&str],
) -> (Child, SocketAddr, Option<SocketAddr>) {
    let mut child = Command::new(exe)
        .args(["--listen", listen, "--admin-listen", admin])
        // The tests send as fast as acks come back; the limit has its own.
        .args(["--max-ops-per-sec", "0"])
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{} starts: {e}", exe.display()));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (addr, admin) = loop {
        let line = lines.next().expect("server printed its address").unwrap();
        // Without an admin listener the log says `admin=off`.
        let admin_addr = (admin != "off")
            .then(|| field(&line, "admin="))
            .flatten()
            .map(|a| a.parse().unwrap());
        if let Some(addr) = field(&line, "addr=")
            && (admin == "off" || admin_addr.is_some())
        {
            break (addr.parse().unwrap(), admin_addr);
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr, admin)
}

/// Starts this package's `gathering-server` on a free port, its data in
/// `dir`, idle timeout 60 s, then `args`; returns the child and its
/// `ws://` address.
pub fn server(dir: &Path, args: &[&str]) -> (Child, String) {
    let exe = Path::new(env!("CARGO_BIN_EXE_gathering-server"));
    let mut all = vec!["--idle-timeout", "60s"];
    all.extend_from_slice(args);
    let (child, addr) = spawn(exe, dir, &all);
    (child, format!("ws://{addr}"))
}

/// The value of ` name` in a log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split(&format!(" {name}"))
        .nth(1)?
        .split_whitespace()
        .next()
}

/// The status and body of an HTTP response read whole.
pub fn status_and_body(response: &str) -> (u16, String) {
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
