//! The programs the benchmarks run and how each is configured: nginx as the backends'
//! HTTP server, and the balancers (gerbang, HAProxy, nginx stream, keepalived) set up to
//! do the same job: VIP:80 (TCP) and VIP:53 (UDP) spread round-robin over the same
//! backends, with the balancer's own address as the source towards them.

use std::{
    env, fs,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use gerbang_testbed::{ChildGuard, Cmd, Netns};
use nix::sys::{
    resource::{Resource, getrlimit},
    signal::{Signal, killpg},
};
use nix::unistd::Pid;

use super::load::http_get;

/// Where the backends serve HTTP and receive UDP.
pub const HTTP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 5353;
/// The service ports on the VIP.
pub const VIP_HTTP: u16 = 80;
pub const VIP_UDP: u16 = 53;

/// nginx's stream module as Debian's `libnginx-mod-stream` installs it.
pub const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// How long a server may take to answer after it was started.
pub const READY_WAIT: Duration = Duration::from_secs(15);

/// A program on `PATH` or in the sbin directories root's programs live in.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A backend: a namespace and address that serve HTTP and sink UDP.
pub struct BackendHost<'t> {
    pub ns: &'t Netns,
    pub addr: Ipv4Addr,
    pub name: String,
}

/// The backends' servers: nginx with a fixed reply, and a UDP socket that is never read.
///
/// Nobody reads the UDP socket on purpose: a datagram that reaches it is counted by the
/// kernel (`InDatagrams`, or `RcvbufErrors` once its buffer is full) without a process
/// spending CPU on it, so the backends never limit what a balancer can deliver.
pub struct Backends<'t> {
    hosts: Vec<BackendHost<'t>>,
    nginx: Vec<Option<ChildGuard>>,
    _sinks: Vec<UdpSocket>,
    http: Vec<SocketAddrV4>,
    udp: Vec<SocketAddrV4>,
    dir: PathBuf,
}

impl<'t> Backends<'t> {
    pub fn start(hosts: Vec<BackendHost<'t>>, dir: &Path) -> Result<Backends<'t>> {
        let _sinks = hosts
            .iter()
            .map(|h| {
                let addr = SocketAddrV4::new(h.addr, UDP_PORT);
                h.ns.run(|| UdpSocket::bind(addr))?
                    .with_context(|| format!("binding UDP {addr}"))
            })
            .collect::<Result<_>>()?;
        let mut backends = Backends {
            nginx: hosts.iter().map(|_| None).collect(),
            http: hosts
                .iter()
                .map(|h| SocketAddrV4::new(h.addr, HTTP_PORT))
                .collect(),
            udp: hosts
                .iter()
                .map(|h| SocketAddrV4::new(h.addr, UDP_PORT))
                .collect(),
            hosts,
            _sinks,
            dir: dir.to_path_buf(),
        };
        for i in 0..backends.hosts.len() {
            backends.restart(i)?;
        }
        Ok(backends)
    }

    pub fn hosts(&self) -> &[BackendHost<'t>] {
        &self.hosts
    }

    /// Starts backend `i`'s nginx (again) and waits until it answers (asked from the
    /// backend's own namespace, which needs no route).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let host = &self.hosts[i];
        let dir = self.dir.join(format!("nginx-{}", host.name));
        fs::create_dir_all(&dir)?;
        let conf = dir.join("nginx.conf");
        fs::write(&conf, backend_nginx_conf(host, &dir))?;
        let mut nginx = host.ns.spawn(&nginx_cmd(&conf, &dir))?;
        let log = dir.join("stderr.log");
        wait_http(host.ns, self.http[i], Some((&mut nginx, &log)))?;
        self.nginx[i] = Some(nginx);
        Ok(())
    }

    /// Kills backend `i`'s nginx at once (SIGKILL to master and workers): the backend
    /// dies, its port is closed.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut nginx) = self.nginx[i].take() {
            let _ = killpg(Pid::from_raw(nginx.pid() as i32), Signal::SIGKILL);
            let _ = nginx.terminate();
        }
    }

    /// Where the backends serve HTTP.
    pub fn http(&self) -> &[SocketAddrV4] {
        &self.http
    }

    /// Where the backends receive UDP.
    pub fn udp(&self) -> &[SocketAddrV4] {
        &self.udp
    }
}

/// nginx in the foreground with `conf`, its files (pid, logs, temp) in `dir`.
pub fn nginx_cmd(conf: &Path, dir: &Path) -> Cmd {
    let prefix = format!("{}/", dir.display());
    Cmd::new("nginx")
        .arg("-p")
        .arg(&prefix)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(conf)
        .log_to(dir.join("stderr.log"))
}

/// Settings every nginx here shares: in the foreground, files in its own directory.
fn nginx_main(dir: &Path, workers: &str) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nworker_processes {workers};\nworker_rlimit_nofile 16384;\n\
         pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{\n  worker_connections 8192;\n  multi_accept on;\n}}\n"
    )
}

/// A small fixed reply, two workers, no logging, long keep-alive.
fn backend_nginx_conf(host: &BackendHost<'_>, dir: &Path) -> String {
    let d = dir.display();
    format!(
        "{}http {{\n  access_log off;\n  default_type text/plain;\n\
         keepalive_timeout 300s;\n  keepalive_requests 1000000;\n\
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         server {{\n    listen {}:{HTTP_PORT} reuseport backlog=4096;\n\
         location / {{ return 200 \"{}\\n\"; }}\n  }}\n}}\n",
        nginx_main(dir, "2"),
        host.addr,
        host.name
    )
}

/// What a balancer is given: where clients reach it and where the backends are.
pub struct Job<'a> {
    pub vip: Ipv4Addr,
    pub snat: Ipv4Addr,
    pub backends: &'a [SocketAddrV4],
    pub udp_backends: &'a [SocketAddrV4],
}

/// gerbang's health checks for a benchmark.
#[derive(Clone, Copy)]
pub enum Checks {
    /// None: the throughput runs count only client traffic at the backends.
    Off,
    /// HTTP GET / every 200 ms, down after 2 failures, up after 2 passes.
    Fast,
}

/// A gerbang config for `mode` (`attach = "native"`, `"generic"`, or the userspace proxy).
pub fn gerbang_conf(
    job: &Job<'_>,
    interfaces: &[&str],
    data_plane: &str,
    checks: Checks,
    dir: &Path,
    tag: &str,
) -> String {
    let interfaces: Vec<String> = interfaces.iter().map(|i| format!("{i:?}")).collect();
    let mode = match data_plane {
        "userspace" => "mode = \"userspace\"".to_owned(),
        attach => format!("attach = \"{attach}\""),
    };
    let mut text = format!(
        "# Written by `cargo xtask bench`.\n[dataplane]\ninterfaces = [{}]\n{mode}\n\
         snat_address = \"{}\"\npin_path = \"/sys/fs/bpf/gerbang-bench-{}-{tag}\"\n\n\
         [control]\nsocket = \"{}/control-{tag}.sock\"\n",
        interfaces.join(", "),
        job.snat,
        std::process::id(),
        dir.display()
    );
    let check = match checks {
        Checks::Off => "  [service.check]\n  type = \"none\"\n".to_owned(),
        Checks::Fast => {
            "  [service.check]\n  type = \"http\"\n  path = \"/\"\n  interval = \"200ms\"\n  \
                          fall = 2\n  rise = 2\n"
                .to_owned()
        }
    };
    let services: [(&str, u16, &str, &[SocketAddrV4]); 2] = [
        ("web", VIP_HTTP, "tcp", job.backends),
        ("dns", VIP_UDP, "udp", job.udp_backends),
    ];
    for (name, port, protocol, backends) in services {
        if backends.is_empty() {
            continue;
        }
        text += &format!(
            "\n[[service]]\nname = \"{name}\"\nlisten = \"{}:{port}\"\nprotocol = \"{protocol}\"\n",
            job.vip
        );
        text += if protocol == "udp" {
            "  [service.check]\n  type = \"none\"\n"
        } else {
            &check
        };
        for (i, backend) in backends.iter().enumerate() {
            text +=
                &format!("  [[service.backend]]\n  name = \"b{i}\"\n  address = \"{backend}\"\n");
        }
    }
    text
}

/// HAProxy 2.6 in TCP mode, round-robin; `checks` adds the same health checks as
/// [`Checks::Fast`], cutting a dead server's sessions like gerbang's `reset`.
pub fn haproxy_conf(job: &Job<'_>, bind: &str, checks: Checks) -> String {
    // HAProxy refuses to start if its descriptor limit cannot hold two per connection.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    let maxconn = (hard.saturating_sub(100) / 2).min(8000);
    let mut text = format!(
        "global\n  maxconn {maxconn}\n\
         defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  \
         timeout check 200ms\n\
         frontend web\n  bind {bind}:{VIP_HTTP}\n  default_backend web\n\
         backend web\n  balance roundrobin\n  source {}\n",
        job.snat
    );
    let check = match checks {
        Checks::Off => "",
        Checks::Fast => {
            text += "  option httpchk GET /\n";
            " check inter 200ms fall 2 rise 2 on-marked-down shutdown-sessions"
        }
    };
    for (i, backend) in job.backends.iter().enumerate() {
        text += &format!("  server b{i} {backend}{check}\n");
    }
    text
}

pub fn haproxy_cmd(conf: &Path, log: &Path) -> Cmd {
    Cmd::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(conf)
        .log_to(log)
}

/// nginx's stream module: TCP and UDP round-robin, two workers (one per core).
pub fn nginx_lb_conf(job: &Job<'_>, dir: &Path) -> String {
    let mut text = format!(
        "load_module {NGINX_STREAM_MODULE};\n{}stream {{\n",
        nginx_main(dir, "auto")
    );
    for (name, backends) in [("web", job.backends), ("dns", job.udp_backends)] {
        text += &format!("  upstream {name} {{\n");
        for backend in backends {
            text += &format!("    server {backend};\n");
        }
        text += "  }\n";
    }
    text += &format!(
        "  server {{\n    listen {vip}:{VIP_HTTP} reuseport backlog=4096;\n    proxy_pass web;\n    \
         proxy_bind {snat};\n  }}\n\
         server {{\n    listen {vip}:{VIP_UDP} udp reuseport;\n    proxy_pass dns;\n    \
         proxy_bind {snat};\n    proxy_timeout 60s;\n  }}\n}}\n",
        vip = job.vip,
        snat = job.snat
    );
    text
}

/// Waits until `GET /` to `addr` from `client` answers 200; `child` is watched so that a
/// server that exits is reported at once with its log.
pub fn wait_http(
    client: &Netns,
    addr: SocketAddrV4,
    mut child: Option<(&mut ChildGuard, &Path)>,
) -> Result<()> {
    let started = Instant::now();
    loop {
        let last = match client.run(|| http_get(addr, Duration::from_millis(500)))? {
            Ok(_) => return Ok(()),
            Err(err) => err,
        };
        if let Some((child, log)) = child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!(
                "exited ({status}) before serving {addr}:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        if started.elapsed() > READY_WAIT {
            let log = child
                .map(|(_, log)| fs::read_to_string(log).unwrap_or_default())
                .unwrap_or_default();
            bail!("{addr} did not answer within {READY_WAIT:?}: {last:#}\n{log}");
        }
        super::checkpoint()?;
        std::thread::sleep(Duration::from_millis(50));
    }
}
