//! Throwaway PostgreSQL and Redis servers for the fleet tests, each in a
//! temporary directory, set up as a managed service would be: TLS only,
//! with a server certificate from a test CA, and password authentication.
//! PostgreSQL takes `hostssl ... scram-sha-256` on loopback TCP and nothing
//! else for clawgate's roles (its private socket admits only the
//! `postgres` superuser, for the tests' own checks); Redis listens with
//! `tls-port` and `port 0`, its default user off and an ACL user
//! `clawgate`. PostgreSQL refuses to run as root, so it runs as
//! `postgres` (`runuser`) when the tests do (CI runs as root).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    reason = "test harness: a failed setup step should stop the test loudly"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use clawgate::certs;

/// The password of the stores' `clawgate` users: a canary that tests look
/// for in logs, records and answers.
pub const PASSWORD: &str = "canary-store-pw-5t0r3";

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test CA, a server certificate for `localhost` and a password file,
/// written into `dir` (readable by `owner` when we are root).
pub struct Secrets {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub password_file: PathBuf,
    /// Another CA, which signed nothing the servers present.
    pub wrong_ca: PathBuf,
}

impl Secrets {
    fn write(dir: &Path) -> Secrets {
        let ca = certs::new_ca("store test CA", 1).unwrap();
        let (server, _) = certs::issue(&ca, &certs::server_spec(&[], 1).unwrap()).unwrap();
        let wrong = certs::new_ca("unrelated CA", 1).unwrap();
        let s = Secrets {
            ca: dir.join("store-ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
            password_file: dir.join("store-password"),
            wrong_ca: dir.join("wrong-ca.pem"),
        };
        std::fs::write(&s.ca, &ca.cert).unwrap();
        std::fs::write(&s.wrong_ca, &wrong.cert).unwrap();
        std::fs::write(&s.cert, &server.cert).unwrap();
        std::fs::write(&s.key, server.key_pem()).unwrap();
        std::fs::write(&s.password_file, format!("{PASSWORD}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&s.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        s
    }
}

/// The provisioning SQL shipped in the repository.
pub const SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/postgres/clawgate.sql");

fn pg_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (Debian's `postgresql`; `.ci/run` installs it)")
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .expect("a PostgreSQL server under /usr/lib/postgresql")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs `program` as `postgres` when we are root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn check(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub struct Postgres {
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    sock: PathBuf,
    pub port: u16,
    pub secrets: Secrets,
    /// Whether plain (non-TLS) TCP is admitted too: only the benchmark's
    /// TLS-off baseline asks for that.
    plain_too: bool,
}

impl Postgres {
    /// initdb, start TLS-only on loopback (and a private socket for the
    /// superuser), create database `clawgate`, provision it with the
    /// shipped SQL and give the `clawgate` role its password.
    pub fn start() -> Postgres {
        Postgres::start_with(false)
    }

    /// As [`Postgres::start`]; with `plain_too`, plain TCP with a password
    /// is admitted beside TLS (the benchmark's baseline).
    pub fn start_with(plain_too: bool) -> Postgres {
        let bin = pg_bin();
        let dir = tempfile::Builder::new().prefix("cg-pg").tempdir().unwrap();
        let sock = dir.path().join("s");
        std::fs::create_dir(&sock).unwrap();
        if is_root() {
            check(
                Command::new("chown")
                    .args(["-R", "postgres"])
                    .arg(dir.path())
                    .output()
                    .unwrap(),
                "chown",
            );
        }
        check(
            as_postgres(&bin.join("initdb"))
                .arg("-D")
                .arg(dir.path().join("data"))
                .args(["-A", "trust", "-U", "postgres", "--no-sync"])
                .output()
                .unwrap(),
            "initdb",
        );
        let secrets = Secrets::write(dir.path());
        let data = dir.path().join("data");
        let mut hba =
            String::from("local all postgres trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n");
        if plain_too {
            hba.push_str("hostnossl all all 127.0.0.1/32 scram-sha-256\n");
        }
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        if is_root() {
            check(
                Command::new("chown")
                    .args(["-R", "postgres"])
                    .arg(dir.path())
                    .output()
                    .unwrap(),
                "chown",
            );
        }
        let pg = Postgres {
            dir,
            bin,
            sock,
            port: free_port(),
            secrets,
            plain_too,
        };
        pg.start_server();
        pg.psql("postgres", "postgres", "CREATE DATABASE clawgate");
        check(
            Command::new(pg.bin.join("psql"))
                .env("PGPORT", pg.port.to_string())
                .args([
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-q",
                    "-U",
                    "postgres",
                    "-d",
                    "clawgate",
                    "-h",
                ])
                .arg(&pg.sock)
                .arg("-f")
                .arg(SCHEMA)
                .output()
                .unwrap(),
            "provisioning SQL",
        );
        for role in ["clawgate", "clawgate_retention"] {
            pg.psql(
                "postgres",
                "clawgate",
                &format!("ALTER ROLE {role} PASSWORD '{PASSWORD}'"),
            );
        }
        pg
    }

    fn start_server(&self) {
        check(
            as_postgres(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .arg("-o")
                .arg(format!(
                    "-k {} -c listen_addresses=127.0.0.1 -p {} -c max_connections=200 \
                     -c shared_buffers=16MB -c ssl=on -c ssl_cert_file={} -c ssl_key_file={} \
                     -c password_encryption=scram-sha-256",
                    self.sock.display(),
                    self.port,
                    self.secrets.cert.display(),
                    self.secrets.key.display(),
                ))
                .arg("-l")
                .arg(self.dir.path().join("log"))
                .args(["-w", "start"])
                .stdout(Stdio::null())
                .output()
                .unwrap(),
            "pg_ctl start",
        );
    }

    /// What clawgate connects with: the least-privileged role, over TLS
    /// verified against the test CA, its password in a file.
    pub fn url(&self) -> String {
        self.url_as("clawgate")
    }

    /// [`Postgres::url`] for `role`.
    pub fn url_as(&self, role: &str) -> String {
        format!(
            "postgres://{role}@localhost:{}/clawgate?sslrootcert={}&password_file={}",
            self.port,
            self.secrets.ca.display(),
            self.secrets.password_file.display()
        )
    }

    /// A plain connection string (no TLS), for the benchmark's baseline;
    /// refused by the server unless started with `plain_too`.
    pub fn url_plain(&self) -> String {
        format!(
            "postgres://clawgate@127.0.0.1:{}/clawgate?sslmode=disable&password_file={}",
            self.port,
            self.secrets.password_file.display()
        )
    }

    /// Runs `sql` as `user` on `db`; returns psql's unaligned output.
    pub fn psql(&self, user: &str, db: &str, sql: &str) -> String {
        let out = self.try_psql(user, db, sql);
        check(out, &format!("psql `{sql}`"));
        self.try_psql_text(user, db, sql)
    }

    fn try_psql_text(&self, user: &str, db: &str, sql: &str) -> String {
        String::from_utf8_lossy(&self.try_psql(user, db, sql).stdout)
            .trim()
            .to_owned()
    }

    /// Runs `sql`, success or not: the superuser on the private socket,
    /// any other role as clawgate would (TLS verify-full, password).
    pub fn try_psql(&self, user: &str, db: &str, sql: &str) -> Output {
        let mut c = Command::new(self.bin.join("psql"));
        c.args(["-v", "ON_ERROR_STOP=1", "-qAt"]);
        if user == "postgres" {
            c.args(["-U", user, "-d", db, "-h"])
                .arg(&self.sock)
                .env("PGPORT", self.port.to_string());
        } else {
            c.arg(format!(
                "host=localhost port={} user={user} dbname={db} sslmode=verify-full sslrootcert={}",
                self.port,
                self.secrets.ca.display()
            ))
            .env("PGPASSWORD", PASSWORD);
        }
        c.args(["-c", sql]).output().unwrap()
    }

    /// The superuser's private socket directory.
    pub fn socket(&self) -> &Path {
        &self.sock
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// `kill -STOP` on the postmaster and every backend: connections hang.
    pub fn freeze(&self) {
        self.signal_all("-STOP");
    }

    /// `kill -CONT`: the frozen server resumes.
    pub fn thaw(&self) {
        self.signal_all("-CONT");
    }

    fn signal_all(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().trim().to_owned();
        // The postmaster and its children (the backends).
        let children = Command::new("pgrep").args(["-P", &pid]).output().unwrap();
        let mut pids = vec![pid];
        pids.extend(
            String::from_utf8_lossy(&children.stdout)
                .lines()
                .map(|l| l.trim().to_owned()),
        );
        let _ = Command::new("kill").arg(signal).args(&pids).status();
    }

    /// `pg_ctl -m immediate stop`: no shutdown checkpoint, as in a crash.
    pub fn stop_immediate(&self) {
        check(
            as_postgres(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "immediate", "-w", "stop"])
                .output()
                .unwrap(),
            "pg_ctl stop",
        );
    }

    pub fn restart(&self) {
        self.start_server();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.thaw();
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

pub struct Redis {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub port: u16,
    pub secrets: Secrets,
    /// A plain TCP port beside TLS (the benchmark's baseline only).
    pub plain_port: Option<u16>,
}

impl Redis {
    /// `redis-server --port 0 --tls-port P` with its default user off and
    /// an ACL user `clawgate`, in a temporary directory, nothing persisted.
    pub fn start() -> Redis {
        Redis::start_with(false)
    }

    /// As [`Redis::start`]; with `plain_too`, a plain TCP port as well.
    pub fn start_with(plain_too: bool) -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("cg-redis")
            .tempdir()
            .unwrap();
        let secrets = Secrets::write(dir.path());
        let acl = dir.path().join("users.acl");
        std::fs::write(
            &acl,
            format!("user default off\nuser clawgate on >{PASSWORD} ~clawgate:* +@all\n"),
        )
        .unwrap();
        let mut redis = Redis {
            dir,
            child: None,
            port: free_port(),
            secrets,
            plain_port: plain_too.then(free_port),
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let mut c = Command::new("redis-server");
        c.args(["--port"])
            .arg(self.plain_port.unwrap_or(0).to_string())
            .args(["--bind", "127.0.0.1", "--tls-port"])
            .arg(self.port.to_string())
            .arg("--tls-cert-file")
            .arg(&self.secrets.cert)
            .arg("--tls-key-file")
            .arg(&self.secrets.key)
            .arg("--tls-ca-cert-file")
            .arg(&self.secrets.ca)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--aclfile")
            .arg(self.dir.path().join("users.acl"))
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = c
            .spawn()
            .expect("redis-server is installed (Debian's `redis-server`; `.ci/run` installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `--limits` flags a replica needs: TLS verified against the test
    /// CA, the ACL user, its password in a file.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--limits".into(),
            format!("rediss://clawgate@localhost:{}", self.port),
            "--limits-ca".into(),
            self.secrets.ca.display().to_string(),
            "--limits-password-file".into(),
            self.secrets.password_file.display().to_string(),
        ]
    }

    /// The flags for the plain port (benchmark baseline).
    pub fn args_plain(&self) -> Vec<String> {
        vec![
            "--limits".into(),
            format!(
                "redis://clawgate@127.0.0.1:{}",
                self.plain_port.unwrap_or(0)
            ),
            "--limits-password-file".into(),
            self.secrets.password_file.display().to_string(),
        ]
    }

    fn signal(&self, name: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([name, &child.id().to_string()])
                .status();
        }
    }

    /// `kill -STOP`: connections hang rather than fail.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port after [`Redis::kill`]: empty, since
    /// nothing is persisted.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A command through redis-cli, over TLS as the ACL user.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert"])
            .arg(&self.secrets.ca)
            .args(["-h", "localhost", "-p"])
            .arg(self.port.to_string())
            .args(["--user", "clawgate", "--no-auth-warning", "-a", PASSWORD])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}
