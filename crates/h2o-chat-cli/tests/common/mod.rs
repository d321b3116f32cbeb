//! `h2o-chat serve` as a process on a free loopback port, for the tests that need real
//! processes (signals, killed upstreams).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `h2o-chat serve` on a free loopback port, once its model is loaded.
pub struct Serve {
    pub child: std::process::Child,
    pub port: u16,
}

impl Serve {
    pub fn start(extra: &[&str]) -> Serve {
        Serve::start_on(free_port(), &["--slots", "2"], extra, "model loaded")
    }

    /// `serve` on `port` with `args`, once it has printed `ready` on stderr.
    pub fn start_on(port: u16, args: &[&str], extra: &[&str], ready: &str) -> Serve {
        let addr = format!("127.0.0.1:{port}");
        let mut child = StdCommand::new(assert_cmd::cargo::cargo_bin("h2o-chat"))
            .args(["-q", "serve", "--addr", &addr])
            .args(args)
            .args(extra)
            // Conversations in memory unless the test names a file.
            .args(if args.contains(&"--db") || extra.contains(&"--db") {
                &[][..]
            } else {
                &["--db", ":memory:"][..]
            })
            .env_remove("H2O_CHAT_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        // The server's own word that it is ready; the read ends if it exits instead.
        while !line.contains(ready) {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "serve exited before it was ready"
            );
        }
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while stderr.read_line(&mut sink).unwrap_or(0) > 0 {
                sink.clear();
            }
        });
        Serve { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn signal(&self, name: &str) {
        StdCommand::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// Waits for the exit (the bound only turns a hang into a failure).
    pub fn exit_status(mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
