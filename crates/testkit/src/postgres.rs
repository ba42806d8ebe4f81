//! A private Postgres server for a test: Debian's `postgresql` binaries, a fresh cluster
//! (`initdb`) in a temporary directory, listening on 127.0.0.1 with a free port and its socket in
//! that directory; stopped (fast shutdown) when dropped, so no process is left behind.
//!
//! `initdb` and `postgres` refuse to run as root, and CI runs as root: then both run as the
//! `postgres` system user the package creates (through `setpriv`, which execs, so the child is
//! the postmaster itself), and the directory is handed to that user.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::git::free_port;

/// Where Debian installs the server binaries: `/usr/lib/postgresql/<major>/bin`.
pub const POSTGRES_LIB: &str = "/usr/lib/postgresql";
/// The database and superuser the cluster is created with.
pub const DATABASE: &str = "gantry";

/// A running private Postgres server.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
    durable: bool,
}

impl Postgres {
    /// Creates a cluster and starts it, without fsync (a test server). Panics, saying what is
    /// missing, when it cannot.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// [`Postgres::start`] with Postgres's durable defaults (fsync, synchronous commit): for
    /// benchmarks.
    pub fn start_durable() -> Self {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Self {
        let bin = server_bin().unwrap_or_else(|| {
            panic!(
                "no Postgres server under {POSTGRES_LIB}/<major>/bin: install Debian's \
                 `postgresql` package (`cargo xtask prerequisites` does)"
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("gantry-postgres-")
            .tempdir()
            .expect("postgres directory");
        let run_as = if is_root() {
            let ids = system_user("postgres").unwrap_or_else(|| {
                panic!(
                    "running as root, but there is no `postgres` user to run the server as \
                     (Debian's `postgresql` package creates it)"
                )
            });
            chown(dir.path(), ids);
            Some(ids)
        } else {
            None
        };
        let data = dir.path().join("data");
        let out = command(&bin.join("initdb"), run_as)
            .arg("-D")
            .arg(&data)
            .args(["-U", DATABASE, "--auth=trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = Postgres {
            dir,
            bin,
            port: 0,
            run_as,
            child: None,
            durable,
        };
        let mut last_err = String::new();
        for _ in 0..5 {
            server.port = free_port();
            match server.launch() {
                Ok(()) => {
                    server.create_database();
                    return server;
                }
                Err(err) => last_err = err,
            }
        }
        panic!("could not start postgres: {last_err}");
    }

    /// Starts the postmaster on `self.port` and waits until it accepts connections.
    fn launch(&mut self) -> Result<(), String> {
        let log_path = self.dir.path().join("postgres.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("postgres log");
        if let Some(ids) = self.run_as {
            chown(&log_path, ids);
        }
        let mut cmd = command(&self.bin.join("postgres"), self.run_as);
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=50",
            ]);
        if !self.durable {
            // A test server: durability is not the point, speed on a shared machine is.
            cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("postgres exited ({status}): {}", self.log()));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.ready() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                signal(&child, "INT");
                let _ = child.wait();
                return Err(format!(
                    "postgres did not accept connections within 60s: {}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `pg_isready` against the TCP port.
    fn ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn create_database(&self) {
        self.create_another_database(DATABASE);
    }

    /// Creates another database on this server; returns its URL.
    pub fn create_another_database(&self, name: &str) -> String {
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", DATABASE, name])
            .stdin(Stdio::null())
            .output()
            .expect("run createdb");
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://{DATABASE}@127.0.0.1:{}/{name}", self.port)
    }

    /// `postgres://gantry@127.0.0.1:<port>/gantry`.
    pub fn url(&self) -> String {
        format!("postgres://{DATABASE}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server is running (not [`Postgres::stop`]ped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the server (fast shutdown: clients are disconnected, data kept). Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "INT");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                if Instant::now() > deadline {
                    // Fast shutdown hung: an immediate one still leaves the data usable.
                    signal(&child, "QUIT");
                    let _ = child.wait();
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts the stopped server again on the same port and data (a restart, or a failover to a
    /// server at the same address).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "postgres is already running");
        if let Err(err) = self.launch() {
            panic!("could not start postgres again: {err}");
        }
    }

    /// Stops and starts the server.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `bin` directory of the newest server under [`POSTGRES_LIB`].
pub fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(POSTGRES_LIB)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn command(program: &Path, run_as: Option<(u32, u32)>) -> Command {
    match run_as {
        Some((uid, gid)) => {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Signals the process (the postmaster: `setpriv` execs) through the shell's builtin `kill`.
fn signal(child: &Child, name: &str) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{name} {}", child.id()))
        .status();
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// The uid and gid of a user from `/etc/passwd`.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

fn chown(path: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|err| panic!("chown {}: {err}", path.display()));
}
