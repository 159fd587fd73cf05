//! Throwaway PostgreSQL and Redis servers for the fleet tests, each in a
//! temporary directory, reachable only through a private Unix socket.
//! PostgreSQL refuses to run as root, so it runs as `postgres` (`runuser`)
//! when the tests do (CI runs as root).
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
}

impl Postgres {
    /// initdb, start on a private socket, create database `clawgate` and
    /// provision it with the shipped SQL.
    pub fn start() -> Postgres {
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
        let pg = Postgres { dir, bin, sock };
        pg.start_server();
        pg.psql("postgres", "postgres", "CREATE DATABASE clawgate");
        check(
            Command::new(pg.bin.join("psql"))
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
        pg
    }

    fn start_server(&self) {
        check(
            as_postgres(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .arg("-o")
                .arg(format!(
                    "-k {} -c listen_addresses='' -c max_connections=200 -c shared_buffers=16MB",
                    self.sock.display()
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

    /// What clawgate connects with: the least-privileged role.
    pub fn url(&self) -> String {
        format!("host={} user=clawgate dbname=clawgate", self.sock.display())
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

    /// Runs `sql`, success or not.
    pub fn try_psql(&self, user: &str, db: &str, sql: &str) -> Output {
        Command::new(self.bin.join("psql"))
            .args(["-v", "ON_ERROR_STOP=1", "-qAt", "-U", user, "-d", db, "-h"])
            .arg(&self.sock)
            .args(["-c", sql])
            .output()
            .unwrap()
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
    pub sock: PathBuf,
}

impl Redis {
    /// `redis-server --port 0 --unixsocket` in a temporary directory.
    pub fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("cg-redis")
            .tempdir()
            .unwrap();
        let sock = dir.path().join("redis.sock");
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(&sock)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (Debian's `redis-server`; `.ci/run` installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            dir,
            child: Some(child),
            sock,
        }
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.sock.display())
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

    /// A command through redis-cli.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(&self.sock)
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
