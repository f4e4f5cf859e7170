//! Notify commands (keepalived's `notify_master`, `notify_backup`, `notify_fault`,
//! `notify_stop`): run with `sh -c` when an instance enters a state.
//!
//! They get the instance in the environment: `GERBANG_VRRP_INSTANCE`,
//! `GERBANG_VRRP_STATE` (`MASTER`, `BACKUP`, `FAULT`, `STOP`) and
//! `GERBANG_VRRP_PRIORITY`. A transition does not wait for its command; stopping waits
//! for `stop`'s, up to [`STOP_WAIT`].

use std::{process::Stdio, time::Duration};

use tokio::process::{Child, Command};
use tracing::{debug, warn};

/// How long stopping waits for the stop command.
pub const STOP_WAIT: Duration = Duration::from_secs(10);

/// Starts `command` for `instance` entering `state` and logs how it ended, without
/// waiting for it.
pub fn spawn(command: &str, instance: &str, state: &str, priority: u8) {
    if let Some(child) = start(command, instance, state, priority) {
        let (instance, state) = (instance.to_owned(), state.to_owned());
        tokio::spawn(async move { finish(child, &instance, &state).await });
    }
}

/// Runs `command` and waits for it, at most [`STOP_WAIT`].
pub async fn run(command: &str, instance: &str, state: &str, priority: u8) {
    if let Some(child) = start(command, instance, state, priority)
        && tokio::time::timeout(STOP_WAIT, finish(child, instance, state))
            .await
            .is_err()
    {
        warn!(
            instance,
            state, "notify command still running after {STOP_WAIT:?}; not waiting"
        );
    }
}

fn start(command: &str, instance: &str, state: &str, priority: u8) -> Option<Child> {
    let spawned = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("GERBANG_VRRP_INSTANCE", instance)
        .env("GERBANG_VRRP_STATE", state)
        .env("GERBANG_VRRP_PRIORITY", priority.to_string())
        .stdin(Stdio::null())
        // Errors stay visible next to gerbang's own log.
        .stdout(Stdio::null())
        .spawn();
    match spawned {
        Ok(child) => Some(child),
        Err(error) => {
            warn!(instance, state, "cannot run notify command: {error}");
            None
        }
    }
}

async fn finish(mut child: Child, instance: &str, state: &str) {
    match child.wait().await {
        Ok(status) if status.success() => debug!(instance, state, "notify command done"),
        Ok(status) => warn!(instance, state, %status, "notify command failed"),
        Err(error) => warn!(instance, state, "waiting for notify command: {error}"),
    }
}
