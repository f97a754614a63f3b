//! A broker of a test's own: Apache Kafka started by `scripts/stack` in a folder and on
//! ports nobody else uses, so a test can kill it (SIGKILL) or stop it (SIGTERM),
//! restart it on the same log, and watch what linkwork does, without disturbing the
//! shared test broker.
//!
//! Starting takes a few seconds (a JVM); the jars come from the cache that
//! `scripts/stack install-broker` fills (`make test` has done so before any test runs).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// An Apache Kafka process owned by one test. Dropping it kills the process and
/// removes its log.
#[derive(Debug)]
pub struct OwnBroker {
    dir: PathBuf,
    port: u16,
}

impl OwnBroker {
    /// Formats a new log in a fresh folder and starts the broker on free ports.
    pub fn start() -> Self {
        let port = free_port_pair();
        let dir =
            std::env::temp_dir().join(format!("linkwork-broker-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the broker's folder");
        let broker = Self { dir, port };
        broker.run_stack("broker");
        broker
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's folder (server.properties, data/, broker.log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("broker.pid"))
            .ok()
            .and_then(|pid| pid.trim().parse().ok())
    }

    /// Kills the broker with SIGKILL: no controlled shutdown, no flush; what it had
    /// written stays in the page cache, as after a crash of the process.
    pub fn kill(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while process_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = std::fs::remove_file(self.dir.join("broker.pid"));
        }
    }

    /// Stops the broker as an operator would (`scripts/stack stop`): SIGTERM, a
    /// controlled shutdown that closes the log cleanly (SIGKILL only after 60 s).
    pub fn stop(&self) {
        self.run_stack("stop");
    }

    /// Starts the broker again on the same log and ports (it recovers the log first).
    pub fn restart(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        // The killed process's ports are free again at once (SO_REUSEADDR), but wait
        // for them rather than race the kernel.
        while listening(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.run_stack("broker");
    }

    fn run_stack(&self, command: &str) {
        let script = stack_script();
        let output = Command::new("bash")
            .arg(&script)
            .arg(command)
            .env("LINKWORK_BROKER_DIR", &self.dir)
            .env("LINKWORK_BROKER_PORT", self.port.to_string())
            // A small heap: this broker holds one test's topics.
            .env("LINKWORK_BROKER_HEAP", "384m")
            .output()
            .unwrap_or_else(|error| panic!("running {}: {error}", script.display()));
        assert!(
            output.status.success(),
            "`scripts/stack {command}` for a test's own broker failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
        // LINKWORK_KEEP_BROKER_DIR keeps the log and broker.log for a look afterwards.
        if std::env::var_os("LINKWORK_KEEP_BROKER_DIR").is_some() {
            eprintln!("kept the broker's folder {}", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `scripts/stack` of this checkout.
pub fn stack_script() -> PathBuf {
    crate::workspace_root().join("scripts/stack")
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| stat.contains(") Z "))
            .unwrap_or(true)
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A port whose successor is free too (the broker listens on `port`, its KRaft
/// controller on `port + 1`).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("local address").port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two adjacent free ports on 127.0.0.1")
}
