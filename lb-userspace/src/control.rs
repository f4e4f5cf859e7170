//! The local control interface: a unix socket the `gerbang backend ...`, `gerbang reload`
//! and `gerbang status` commands talk to.
//!
//! One request per connection, one line of text: `backend drain|maint|ready SERVICE
//! BACKEND`, `reload` or `status`. The answer is one line, `ok: ...` or `error: ...`; for
//! `status`, `ok: ` and the status as one line of JSON (`observe::StatusView`). The socket
//! is created mode 0600, so only root (its owner) can change the balancer.

use std::{
    io,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

use crate::dataplane::AdminState;

/// Longest request line accepted; anything longer is an error, not a memory sink.
const MAX_REQUEST: usize = 1024;
/// A client that does not send its request in this time is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    SetAdmin {
        service: String,
        backend: String,
        state: AdminState,
    },
    Reload,
    /// The status as JSON.
    Status,
}

impl Request {
    /// Parses one request line.
    pub fn parse(line: &str) -> Result<Request, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["reload"] => Ok(Request::Reload),
            ["status"] => Ok(Request::Status),
            ["reload" | "status", ..] => Err(format!("usage: {} (no arguments)", words[0])),
            ["backend", verb, service, backend] => {
                let state = match *verb {
                    "drain" => AdminState::Drain,
                    "maint" => AdminState::Maint,
                    "ready" => AdminState::Ready,
                    other => {
                        return Err(format!(
                            "unknown backend state {other:?}: use drain, maint or ready"
                        ));
                    }
                };
                Ok(Request::SetAdmin {
                    service: (*service).to_string(),
                    backend: (*backend).to_string(),
                    state,
                })
            }
            ["backend", ..] => Err("usage: backend drain|maint|ready SERVICE BACKEND".into()),
            [] => Err("empty request".into()),
            [other, ..] => Err(format!(
                "unknown command {other:?}: use backend, reload or status"
            )),
        }
    }

    /// The request as a line (what the CLI sends).
    pub fn to_line(&self) -> String {
        match self {
            Request::Reload => "reload".into(),
            Request::Status => "status".into(),
            Request::SetAdmin {
                service,
                backend,
                state,
            } => format!("backend {} {service} {backend}", admin_word(*state)),
        }
    }
}

pub fn admin_word(state: AdminState) -> &'static str {
    match state {
        AdminState::Ready => "ready",
        AdminState::Drain => "drain",
        AdminState::Maint => "maint",
    }
}

/// A request and where its answer goes.
pub struct Incoming {
    pub request: Request,
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// Listens on the control socket and hands requests to the controller.
pub struct ControlServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl ControlServer {
    /// Binds `path` (replacing a stale socket file nobody listens on) and starts accepting.
    ///
    /// The socket file is created mode 0600 (the socket's own mode is set before `bind`,
    /// which Linux uses for the file), so no client can connect in between, whatever the
    /// umask. Directories gerbang creates for it are mode 0700.
    pub fn start(path: &Path) -> Result<(ControlServer, mpsc::Receiver<Incoming>)> {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        remove_stale(path)?;
        let listener = bind_private(path)
            .with_context(|| format!("binding the control socket {}", path.display()))?;
        let (requests, inbox) = mpsc::channel(16);
        let task = tokio::spawn(accept_loop(listener, requests));
        Ok((
            ControlServer {
                path: path.to_path_buf(),
                task,
            },
            inbox,
        ))
    }

    pub fn stop(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A listening Unix socket at `path`, mode 0600 from the moment it exists.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
    nix::sys::stat::fchmod(&socket, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    socket.bind(&SockAddr::unix(path)?)?;
    // The umask may have taken bits away, never added any: make it exactly 0600.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    socket.listen(128)?;
    socket.set_nonblocking(true)?;
    UnixListener::from_std(std::os::unix::net::UnixListener::from(socket))
}

/// A socket file whose owner died is removed; one that answers belongs to a running
/// gerbang, which is an error.
fn remove_stale(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another gerbang is listening on the control socket {}: stop it first, or \
                     give this one its own [control] socket",
                    path.display()
                );
            }
            std::fs::remove_file(path)?;
            Ok(())
        }
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err.into()),
    }
}

async fn accept_loop(listener: UnixListener, requests: mpsc::Sender<Incoming>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, requests.clone()));
            }
            Err(err) => {
                warn!("control socket accept: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(stream: UnixStream, requests: mpsc::Sender<Incoming>) {
    let (reader, mut writer) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(reader).take(MAX_REQUEST as u64 + 1);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
    let answer = match read {
        Ok(Ok(_)) if line.len() > MAX_REQUEST => Err("request too long".to_string()),
        Ok(Ok(_)) => match Request::parse(&line) {
            Ok(request) => {
                debug!(request = %request.to_line(), "control request");
                let (reply, answer) = oneshot::channel();
                if requests.send(Incoming { request, reply }).await.is_err() {
                    Err("gerbang is stopping".to_string())
                } else {
                    answer
                        .await
                        .unwrap_or_else(|_| Err("gerbang is stopping".to_string()))
                }
            }
            Err(err) => Err(err),
        },
        Ok(Err(err)) => Err(format!("reading the request: {err}")),
        Err(_) => Err("no request within 5 s".to_string()),
    };
    let text = match answer {
        Ok(message) => format!("ok: {message}\n"),
        Err(message) => format!("error: {message}\n"),
    };
    let _ = writer.write_all(text.as_bytes()).await;
}

/// Sends `request` to the gerbang listening on `socket` and returns its answer.
pub fn send(socket: &Path, request: &Request) -> Result<String> {
    use std::io::{BufRead as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|err| {
        anyhow!(
            "cannot reach gerbang on {} ({err}): is it running, and are you root?",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    writeln!(stream, "{}", request.to_line())?;
    let mut answer = String::new();
    std::io::BufReader::new(stream).read_line(&mut answer)?;
    let answer = answer.trim_end();
    if let Some(message) = answer.strip_prefix("ok: ") {
        Ok(message.to_string())
    } else if let Some(message) = answer.strip_prefix("error: ") {
        bail!("{message}")
    } else {
        bail!("unexpected answer from gerbang: {answer:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_print_back() {
        for line in [
            "reload",
            "status",
            "backend drain web pi-1",
            "backend maint web pi-2",
            "backend ready db a",
        ] {
            let request = Request::parse(line).unwrap();
            assert_eq!(request.to_line(), line);
        }
        assert_eq!(
            Request::parse("  backend   drain web  pi-1 \n").unwrap(),
            Request::SetAdmin {
                service: "web".into(),
                backend: "pi-1".into(),
                state: AdminState::Drain
            }
        );
    }

    #[tokio::test]
    async fn the_socket_is_root_only_and_its_directory_private() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = std::env::temp_dir().join(format!("gerbang-control-{}", std::process::id()));
        let path = dir.join("run/control.sock");
        let (server, _inbox) = ControlServer::start(&path).unwrap();
        let socket = std::fs::metadata(&path).unwrap();
        assert!(socket.file_type().is_socket());
        assert_eq!(socket.mode() & 0o777, 0o600);
        assert_eq!(socket.uid(), nix::unistd::Uid::effective().as_raw());
        let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(parent.mode() & 0o777, 0o700);
        server.stop();
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_requests_say_what_is_allowed() {
        assert!(Request::parse("").unwrap_err().contains("empty"));
        assert!(
            Request::parse("backend stop web a")
                .unwrap_err()
                .contains("drain, maint or ready")
        );
        assert!(
            Request::parse("backend drain web")
                .unwrap_err()
                .contains("usage")
        );
        assert!(
            Request::parse("restart")
                .unwrap_err()
                .contains("unknown command")
        );
        assert!(Request::parse("status web").unwrap_err().contains("usage"));
        // Arbitrary bytes never panic.
        let mut seed = 0x9e37_79b9_u32;
        for _ in 0..2000 {
            let line: String = (0..(seed % 40))
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    char::from(b" abcdeknlmrtwy\\n"[(seed % 16) as usize])
                })
                .collect();
            let _ = Request::parse(&line);
        }
    }
}
