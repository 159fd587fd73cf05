//! The console's gate: only whoever can read `clawgate console`'s own
//! output (where it prints a one-time login URL) gets a session, and only
//! requests addressed to the console by its own name are answered.
//!
//! Invariants: a request with an unexpected `Host` or `Origin`, or marked
//! cross-site by the browser, is refused before anything else (DNS
//! rebinding: a page on another name that resolves to loopback must read
//! nothing, nor spend the login token); a login token works once, and a
//! fresh one is announced when it is spent; sessions end after a fixed
//! time; tokens and session ids are kept only as SHA-256 digests; a state
//! change (logging out) needs the session's CSRF token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};

/// The session cookie's name.
pub const COOKIE: &str = "clawgate_console";

type Digest = [u8; 32];

/// Why a request is refused before it reaches the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Host` is not a name of the console (DNS rebinding).
    Host,
    /// `Origin` (or `Sec-Fetch-Site`) says another site sent it.
    Origin,
}

struct Session {
    csrf: String,
    ends: Instant,
}

struct State {
    /// The digest of the one login token not yet spent.
    pending: Digest,
    sessions: HashMap<Digest, Session>,
}

/// Login tokens, sessions, and the names the console answers to.
pub struct Gate {
    base: String,
    hosts: Vec<String>,
    origins: Vec<String>,
    ttl: Duration,
    rng: SystemRandom,
    state: Mutex<State>,
    announce: Box<dyn Fn(&str) + Send + Sync>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token or the sessions.
        f.debug_struct("Gate")
            .field("hosts", &self.hosts)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn hash(s: &str) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, s.as_bytes()).as_ref());
    out
}

// The system's generator failing is not something to serve through: an
// all-zero token would be guessable, so the process stops.
#[expect(clippy::panic, reason = "no safe way to go on without randomness")]
fn random(rng: &SystemRandom) -> String {
    let mut b = [0u8; 32];
    if rng.fill(&mut b).is_err() {
        panic!("the system's random number generator failed");
    }
    hex::encode(b)
}

impl Gate {
    /// A gate for a console bound at `bound`, with sessions lasting `ttl`;
    /// `announce` is given each login URL (the first one, and a fresh one
    /// whenever the last is spent).
    pub fn new(
        bound: SocketAddr,
        ttl: Duration,
        announce: impl Fn(&str) + Send + Sync + 'static,
    ) -> Self {
        let port = bound.port();
        let mut hosts = vec![
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
        ];
        let own = bound.to_string();
        if !hosts.contains(&own) {
            hosts.push(own.clone());
        }
        let origins = hosts.iter().map(|h| format!("http://{h}")).collect();
        let rng = SystemRandom::new();
        let gate = Self {
            base: format!("http://{own}"),
            hosts,
            origins,
            ttl,
            state: Mutex::new(State {
                pending: [0; 32],
                sessions: HashMap::new(),
            }),
            rng,
            announce: Box::new(announce),
        };
        gate.fresh_token();
        gate
    }

    /// Makes a new login token, forgets the old one, announces its URL.
    fn fresh_token(&self) {
        let token = random(&self.rng);
        if let Ok(mut st) = self.state.lock() {
            st.pending = hash(&token);
        }
        (self.announce)(&format!("{}/login?token={token}", self.base));
    }

    /// Refuses a request not addressed to the console by one of its names,
    /// or sent by another site.
    pub fn check_request(&self, headers: &http::HeaderMap) -> Result<(), Refusal> {
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if !self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            return Err(Refusal::Host);
        }
        if let Some(origin) = headers.get(http::header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            if !self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
                return Err(Refusal::Origin);
            }
        }
        if headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() == b"cross-site" || v.as_bytes() == b"same-site")
        {
            return Err(Refusal::Origin);
        }
        Ok(())
    }

    /// Spends the login token: a new session id if `token` is the pending
    /// one (and a fresh token announced), `None` otherwise.
    pub fn login(&self, token: &str) -> Option<String> {
        let sid = random(&self.rng);
        let csrf = random(&self.rng);
        {
            let mut st = self.state.lock().ok()?;
            if token.is_empty() || hash(token) != st.pending {
                return None;
            }
            let now = Instant::now();
            st.sessions.retain(|_, s| s.ends > now);
            st.sessions.insert(
                hash(&sid),
                Session {
                    csrf,
                    ends: now + self.ttl,
                },
            );
        }
        self.fresh_token();
        Some(sid)
    }

    /// The session's CSRF token if the request's cookie names a live session.
    pub fn session(&self, headers: &http::HeaderMap) -> Option<String> {
        let sid = cookie(headers)?;
        let st = self.state.lock().ok()?;
        let s = st.sessions.get(&hash(&sid))?;
        (s.ends > Instant::now()).then(|| s.csrf.clone())
    }

    /// Ends the request's session if `csrf` is its CSRF token.
    pub fn logout(&self, headers: &http::HeaderMap, csrf: &str) -> bool {
        let Some(sid) = cookie(headers) else {
            return false;
        };
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        let key = hash(&sid);
        let matches = st
            .sessions
            .get(&key)
            .is_some_and(|s| hash(&s.csrf) == hash(csrf));
        if matches {
            st.sessions.remove(&key);
        }
        matches
    }

    /// The `Set-Cookie` value for a new session.
    pub fn set_cookie(&self, sid: &str) -> String {
        format!(
            "{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            self.ttl.as_secs()
        )
    }
}

/// The session id in the request's `Cookie` header, if any.
fn cookie(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == COOKIE && !v.is_empty()).then(|| v.to_owned())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn gate(ttl: Duration) -> (Gate, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let g = Gate::new("127.0.0.1:9480".parse().unwrap(), ttl, move |url| {
            s.lock().unwrap().push(url.to_owned());
        });
        (g, seen)
    }

    fn token(url: &str) -> String {
        url.split_once("token=").unwrap().1.to_owned()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_login_token_works_once_and_a_fresh_one_is_announced() {
        let (g, seen) = gate(Duration::from_secs(60));
        let first = token(&seen.lock().unwrap()[0]);
        assert!(g.login("wrong").is_none());
        assert!(g.login("").is_none());
        let sid = g.login(&first).unwrap();
        assert!(g.login(&first).is_none(), "spent");
        let urls = seen.lock().unwrap().clone();
        assert_eq!(urls.len(), 2);
        assert!(urls[1].starts_with("http://127.0.0.1:9480/login?token="));
        assert_ne!(token(&urls[1]), first);
        let h = headers(&[("cookie", &format!("a=b; {COOKIE}={sid}"))]);
        let csrf = g.session(&h).unwrap();
        assert!(
            g.session(&headers(&[("cookie", "clawgate_console=x")]))
                .is_none()
        );
        assert!(!g.logout(&h, "not-the-csrf"));
        assert!(g.session(&h).is_some());
        assert!(g.logout(&h, &csrf));
        assert!(g.session(&h).is_none());
    }

    #[test]
    fn sessions_end() {
        let (g, seen) = gate(Duration::ZERO);
        let first = token(&seen.lock().unwrap()[0]);
        let sid = g.login(&first).unwrap();
        let h = headers(&[("cookie", &format!("{COOKIE}={sid}"))]);
        assert!(g.session(&h).is_none());
    }

    #[test]
    fn only_the_consoles_own_names_and_origins_are_answered() {
        let (g, _) = gate(Duration::from_secs(60));
        for host in [
            "127.0.0.1:9480",
            "localhost:9480",
            "LOCALHOST:9480",
            "[::1]:9480",
        ] {
            assert_eq!(g.check_request(&headers(&[("host", host)])), Ok(()));
        }
        for host in ["evil.example:9480", "127.0.0.1:80", "localhost", ""] {
            assert_eq!(
                g.check_request(&headers(&[("host", host)])),
                Err(Refusal::Host),
                "{host}"
            );
        }
        assert_eq!(g.check_request(&http::HeaderMap::new()), Err(Refusal::Host));
        let ok = [
            ("host", "127.0.0.1:9480"),
            ("origin", "http://127.0.0.1:9480"),
        ];
        assert_eq!(g.check_request(&headers(&ok)), Ok(()));
        let bad = [
            ("host", "127.0.0.1:9480"),
            ("origin", "http://evil.example"),
        ];
        assert_eq!(g.check_request(&headers(&bad)), Err(Refusal::Origin));
        let cross = [("host", "127.0.0.1:9480"), ("sec-fetch-site", "cross-site")];
        assert_eq!(g.check_request(&headers(&cross)), Err(Refusal::Origin));
        let typed = [("host", "127.0.0.1:9480"), ("sec-fetch-site", "none")];
        assert_eq!(g.check_request(&headers(&typed)), Ok(()));
    }
}
