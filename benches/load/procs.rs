//! The processes under test: starting them, reading their CPU time and
//! resident memory from `/proc`, stopping them. nginx is installed from
//! Debian's package when missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A running server process (and, for nginx, its workers).
#[derive(Debug)]
pub struct Server {
    pub port: u16,
    child: Child,
    /// Whether the child's own children (nginx workers) are part of it.
    with_children: bool,
}

impl Server {
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        if self.with_children {
            pids.extend(children_of(self.child.id()));
        }
        pids
    }

    /// User plus system CPU seconds used so far.
    pub fn cpu_seconds(&self) -> f64 {
        let ticks = clock_ticks();
        self.pids().iter().map(|&p| cpu_ticks(p)).sum::<u64>() as f64 / ticks
    }

    /// A `/proc/PID/status` memory field (`VmRSS`, `VmHWM`), in MiB, summed
    /// over the processes.
    pub fn memory_mib(&self, field: &str) -> f64 {
        self.pids()
            .iter()
            .map(|&p| status_kib(p, field))
            .sum::<u64>() as f64
            / 1024.0
    }

    /// SIGTERM, then wait (SIGKILL after 15 s).
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `command` with stdout and stderr in `dir/<name>.out` and `.err`,
/// and waits for a stdout line starting with `prefix`; returns what follows it.
pub fn start_and_wait(
    name: &'static str,
    mut command: Command,
    dir: &Path,
    prefix: &str,
) -> Result<(Child, String), Error> {
    let out_path = dir.join(format!("{name}.out"));
    let err_path = dir.join(format!("{name}.err"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::fs::read_to_string(&out_path).unwrap_or_default();
        if let Some(rest) = out.lines().find_map(|l| l.strip_prefix(prefix)) {
            return Ok((child, rest.trim().to_owned()));
        }
        if let Some(status) = child.try_wait()? {
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            return Err(format!("{name} exited early ({status}): {err}").into());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!("{name} did not start within 30 s").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn server(child: Child, port: u16, with_children: bool) -> Server {
    Server {
        port,
        child,
        with_children,
    }
}

/// The nginx binary, installed with apt-get when missing.
pub fn nginx_binary() -> Result<PathBuf, Error> {
    let find = || {
        ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(path) = find() {
        return Ok(path);
    }
    eprintln!("== nginx is missing; installing Debian's package");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false);
    let sudo: &[&str] = if root { &[] } else { &["sudo"] };
    for args in [
        &["apt-get", "update", "-qq"][..],
        &["apt-get", "install", "-y", "-qq", "nginx"][..],
    ] {
        let all: Vec<&str> = sudo.iter().chain(args).copied().collect();
        let status = Command::new(all[0])
            .args(&all[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        if !status.success() {
            return Err(format!("`{}` failed: {status}", all.join(" ")).into());
        }
    }
    find().ok_or_else(|| "nginx is still missing after apt-get install".into())
}

/// The nginx configuration: the same job as clawgate's gateway route. mTLS
/// with the same certificates, keep-alive `proxy_pass` to the same upstream
/// (verified TLS), one injected header, the access log on.
pub fn nginx_config(dir: &Path, certs: &Path, port: u16, upstream: u16, token: &str) -> String {
    let d = dir.display();
    let c = certs.display();
    // Debian's nginx runs its workers as another user when started as root;
    // keep them as the caller so that they can write the logs here.
    let user = if std::env::var("USER").as_deref() == Ok("root")
        || Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
    {
        "user root;\n"
    } else {
        ""
    };
    format!(
        "{user}worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    upstream bench {{
        server 127.0.0.1:{upstream};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate {c}/server.pem;
        ssl_certificate_key {c}/server-key.pem;
        ssl_client_certificate {c}/ca.pem;
        ssl_verify_client on;
        location /bench/ {{
            proxy_pass https://bench/;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Authorization \"Bearer {token}\";
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {c}/ca.pem;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
        }}
        location / {{ return 403; }}
    }}
}}
",
        workers = std::thread::available_parallelism().map_or(2, |n| n.get()),
    )
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, child: &mut Child, what: &str) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            return Err(format!("{what} exited early ({status})").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{what} did not listen within 30 s").into())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The fields of `/proc/PID/stat` after the command name.
fn stat_fields(pid: u32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    text.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn cpu_ticks(pid: u32) -> u64 {
    let fields = stat_fields(pid);
    // utime and stime are fields 14 and 15; the slice starts at field 3.
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    field(11).unwrap_or(0) + field(12).unwrap_or(0)
}

fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_fields(pid).get(1).and_then(|p| p.parse().ok()) == Some(parent))
        .collect()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
