//! Starting, watching and stopping the control plane's processes.
//!
//! Every process carries `GANTRY_CLUSTER=<state dir>` in its environment, and is found again by
//! it. That makes `down` reliable even when an earlier `up` crashed before recording a pid, and
//! it never touches a process that merely reused a recorded pid.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A component we started and still hold the handle of (so its exit is noticed at once).
pub struct Running {
    pub name: &'static str,
    pub log: PathBuf,
    child: Child,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the component's name, exit status and log tail when it has exited.
    pub fn ensure_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited during start-up ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log, 25)
            );
        }
        Ok(())
    }
}

/// Starts `binary` in its own process group with output to `<logs>/<name>.log`; it outlives us.
pub fn spawn(
    state: &Path,
    name: &'static str,
    binary: &Path,
    args: &[String],
    logs: &Path,
) -> Result<Running> {
    spawn_with_env(state, name, binary, args, logs, &[])
}

/// [`spawn`] with extra environment variables.
pub fn spawn_with_env(
    state: &Path,
    name: &'static str,
    binary: &Path,
    args: &[String],
    logs: &Path,
    env: &[(&str, &std::ffi::OsStr)],
) -> Result<Running> {
    fs::create_dir_all(logs)?;
    let log = logs.join(format!("{name}.log"));
    let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(binary)
        .args(args)
        .env(MARKER, state)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        // Its own process group: a Ctrl-C meant for `cargo xtask` must not kill the cluster.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name} ({})", binary.display()))?;
    Ok(Running { name, log, child })
}

/// Polls `ready` until it returns true, failing early if the component exits.
pub fn wait_until(
    component: &mut Running,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        component.ensure_alive()?;
        if ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not become ready within {timeout:?}; last lines of {}:\n{}",
                component.name,
                component.log.display(),
                log_tail(&component.log, 25)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The last `lines` lines of a log file (reads at most its last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The environment variable that tags a process as part of the cluster in a state directory.
const MARKER: &str = "GANTRY_CLUSTER";

/// Processes tagged with `state`, with their command lines.
pub fn find(state: &Path) -> Vec<(u32, String)> {
    let tag = format!("{MARKER}={}", state.display());
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
            let tagged = environ.split(|b| *b == 0).any(|var| var == tag.as_bytes());
            if !tagged || !is_running(pid) {
                return None;
            }
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some((
                pid,
                String::from_utf8_lossy(&raw)
                    .replace('\0', " ")
                    .trim()
                    .to_string(),
            ))
        })
        .collect()
}

/// Stops every process that belongs to the state directory: SIGTERM, then SIGKILL after `grace`.
/// Returns how many there were.
pub fn stop_all(state: &Path, grace: Duration) -> usize {
    let found = find(state);
    for (pid, _) in &found {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && found.iter().any(|(pid, _)| is_running(*pid)) {
        thread::sleep(Duration::from_millis(50));
    }
    for (pid, _) in &found {
        if is_running(*pid) {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
    found.len()
}

/// Kills one process at once (SIGKILL), as a crash would end it.
pub fn kill_now(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// Stops one process: SIGTERM, then SIGKILL after `grace`.
pub fn stop_pid(pid: u32, grace: Duration) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && is_running(pid) {
        thread::sleep(Duration::from_millis(50));
    }
    if is_running(pid) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

/// Alive and not a zombie.
pub fn is_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Reaps the children we hold so none lingers as a zombie while `up` is still running.
pub fn reap(components: &mut [Running]) {
    for c in components {
        let _ = c.child.try_wait();
    }
}
