//! The partner's adapter as a process: started with `sh -c <start command>` in a process group
//! of its own (so its children stop with it), its output appended to one log per scenario,
//! stopped with SIGTERM then SIGKILL after a grace, or killed at once.

use std::{
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// How long a stopped adapter gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One adapter process (restartable).
pub struct Adapter {
    command: String,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Adapter {
    /// An adapter started by `command` with `env`, logging to `log`.
    pub fn new(command: &str, env: Vec<(String, String)>, log: &Path) -> Self {
        Self {
            command: command.to_owned(),
            env,
            log: log.to_owned(),
            child: None,
        }
    }

    /// Changes (or adds) an environment variable for the next start.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_owned(), value.to_owned()));
    }

    /// Starts it.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the adapter: sh -c {:?}", self.command))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether it exited on its own; its status then.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// SIGKILL to its process group.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(child.id(), "KILL").await;
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within the grace.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        signal_group(pid, "TERM").await;
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                // The shell is gone; anything it left behind goes too.
                signal_group(pid, "KILL").await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        signal_group(pid, "KILL").await;
        let _ = child.kill().await;
        let _ = child.wait().await;
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Sends `signal` to the child's process group (`kill -SIG -- -pgid`).
async fn signal_group(pid: Option<u32>, signal: &str) {
    let Some(pid) = pid else {
        return;
    };
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}
