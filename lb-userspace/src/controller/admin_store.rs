//! Admin states (drain, maint) that outlive the process, so that a restart or an upgrade
//! (the SIGUSR2 hand-over) does not put a backend the operator took out back into
//! rotation. They live in a file next to the control socket (`control.sock` ->
//! `control.admin-state`): under /run by default, so a reboot clears them as it clears
//! the flows, and two gerbangs with their own sockets never share one.
//!
//! One line per backend that is not ready: `drain<TAB>service<TAB>backend`. Names cannot
//! hold tabs or line breaks (the config allows `A-Z a-z 0-9 _ . -`). A line that does not
//! parse, or names a backend the configuration no longer has, is skipped with a warning:
//! a damaged file never stops gerbang from starting.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use tracing::{info, warn};

use crate::{
    config::Config,
    control::admin_word,
    dataplane::{AdminState, BackendKey},
};

pub struct AdminStore {
    path: PathBuf,
}

impl AdminStore {
    /// The store of the gerbang whose control socket is `socket`.
    pub fn next_to(socket: &Path) -> Self {
        Self {
            path: socket.with_extension("admin-state"),
        }
    }

    /// The states an earlier run saved, for the backends `config` has. None when there is
    /// no file.
    pub fn load(&self, config: &Config) -> BTreeMap<BackendKey, AdminState> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return BTreeMap::new(),
            Err(err) => {
                warn!(path = %self.path.display(), "cannot read saved admin states: {err}");
                return BTreeMap::new();
            }
        };
        let mut states = BTreeMap::new();
        for (number, line) in text.lines().enumerate() {
            match parse_line(line, config) {
                Ok((key, state)) => {
                    info!(
                        service = %key.0,
                        backend = %key.1,
                        state = admin_word(state),
                        "admin state restored"
                    );
                    states.insert(key, state);
                }
                Err(why) => warn!(
                    path = %self.path.display(),
                    line = number + 1,
                    "saved admin state skipped: {why}"
                ),
            }
        }
        states
    }

    /// Replaces the file with `states` (written whole, then renamed over, so a crash
    /// leaves the old file or the new one). Root-only, like the control socket.
    pub fn save(&self, states: &BTreeMap<BackendKey, AdminState>) -> Result<()> {
        let mut text = String::new();
        for ((service, backend), state) in states {
            if *state != AdminState::Ready {
                text += &format!("{}\t{service}\t{backend}\n", admin_word(*state));
            }
        }
        let partial = self.path.with_extension("admin-state.new");
        let write = || -> io::Result<()> {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&partial)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            fs::rename(&partial, &self.path)
        };
        write().with_context(|| format!("saving admin states to {}", self.path.display()))
    }
}

fn parse_line(line: &str, config: &Config) -> Result<(BackendKey, AdminState), String> {
    let mut fields = line.split('\t');
    let (Some(word), Some(service), Some(backend), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(format!("expected state, service and backend: {line:?}"));
    };
    let state = match word {
        "drain" => AdminState::Drain,
        "maint" => AdminState::Maint,
        other => return Err(format!("unknown state {other:?}")),
    };
    let known = config
        .services
        .iter()
        .any(|s| s.name == service && s.backends.iter().any(|b| b.name == backend));
    if !known {
        return Err(format!(
            "the configuration has no backend {service}/{backend}"
        ));
    }
    Ok(((service.to_string(), backend.to_string()), state))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "[dataplane]\ninterfaces = [\"eth0\"]\nsnat_address = \"10.0.0.1\"\n\
        [[service]]\nname = \"web\"\nlisten = \"10.0.0.10:80\"\n\
        [[service.backend]]\nname = \"a\"\naddress = \"10.0.1.1:80\"\n\
        [[service.backend]]\nname = \"b\"\naddress = \"10.0.1.2:80\"\n";

    fn key(service: &str, backend: &str) -> BackendKey {
        (service.to_string(), backend.to_string())
    }

    #[test]
    fn saved_states_come_back_and_bad_lines_are_skipped() {
        let config = Config::parse(CONFIG, "<test>").unwrap();
        let dir = std::env::temp_dir().join(format!("gerbang-admin-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let store = AdminStore::next_to(&dir.join("control.sock"));
        assert!(store.load(&config).is_empty(), "no file yet");

        let states = BTreeMap::from([
            (key("web", "a"), AdminState::Drain),
            (key("web", "b"), AdminState::Maint),
        ]);
        store.save(&states).unwrap();
        assert_eq!(store.load(&config), states);

        fs::write(
            &store.path,
            "drain\tweb\ta\nsleep\tweb\tb\nmaint\tweb\tgone\nmaint web b\n\nmaint\tweb\tb\textra\n",
        )
        .unwrap();
        assert_eq!(
            store.load(&config),
            BTreeMap::from([(key("web", "a"), AdminState::Drain)])
        );

        store.save(&BTreeMap::new()).unwrap();
        assert!(store.load(&config).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
