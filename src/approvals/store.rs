//! Where approvals live: this process's memory. Every step is also a
//! record in the decision log, which is where their history is read.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use super::{AnswerError, Approval, Found, State, when};

/// The approvals of this process, written through to SQLite when opened
/// on a file.
#[derive(Debug, Default)]
pub struct ApprovalStore {
    map: Mutex<HashMap<String, Approval>>,
    db: Option<super::sqlite::Db>,
    /// Approvals that lapsed on a path that cannot record them (`get`,
    /// `answer`): handed out by the next `list` or `find`, so every expiry
    /// becomes a record.
    lapsed: Mutex<Vec<Approval>>,
}

/// Who answers, as the admin API established it.
#[derive(Debug, Clone)]
pub struct Approver<'a> {
    /// The name written into the record (the certificate's first name).
    pub who: &'a str,
    /// Every name the certificate proves, as written in policy.
    pub names: Vec<String>,
    /// Whether the caller holds the admin role.
    pub is_admin: bool,
    /// The agent the caller's certificate proves, if any.
    pub agent: Option<&'a str>,
}

impl ApprovalStore {
    /// An empty store in memory.
    pub fn memory() -> ApprovalStore {
        ApprovalStore::default()
    }

    /// The store in the SQLite database at `path` (beside the decision
    /// log), with the approvals it already holds.
    pub fn open(path: &std::path::Path) -> Result<ApprovalStore, rusqlite::Error> {
        let db = super::sqlite::Db::open(path)?;
        let map = db
            .load(SystemTime::now())?
            .into_iter()
            .map(|a| (a.id.clone(), a))
            .collect();
        Ok(ApprovalStore {
            map: Mutex::new(map),
            db: Some(db),
            lapsed: Mutex::default(),
        })
    }

    fn save(&self, approval: &Approval) {
        if let Some(db) = &self.db {
            db.save(approval);
        }
    }

    /// Keeps an approval that lapsed where it cannot be recorded.
    fn keep_lapsed(&self, approval: &Approval) {
        self.lapsed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(approval.clone());
    }

    /// The approvals kept by [`ApprovalStore::keep_lapsed`], added to
    /// `expired`.
    fn with_lapsed(&self, mut expired: Vec<Approval>) -> Vec<Approval> {
        expired.append(
            &mut self
                .lapsed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        expired
    }

    /// How many approvals wait for an answer at `now`, without changing
    /// any (a metrics scrape must not lapse an approval unrecorded).
    pub fn pending_count(&self, now: SystemTime) -> usize {
        self.lock()
            .values()
            .filter(|a| a.state == State::Pending && now < a.times.expires)
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Approval>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps a new pending approval.
    pub fn insert(&self, approval: Approval) {
        self.save(&approval);
        self.lock().insert(approval.id.clone(), approval);
    }

    /// The approval `id`, as it stands at `now`.
    pub fn get(&self, id: &str, now: SystemTime) -> Option<Approval> {
        let mut map = self.lock();
        let approval = map.get_mut(id)?;
        if lapse(approval, now) {
            self.save(approval);
            self.keep_lapsed(approval);
        }
        Some(approval.clone())
    }

    /// What a call from `agent` with `digest` finds at `now`: a grant (one
    /// use spent), a pending request, a denial (until the request's ttl
    /// ends), an expiry not yet told, or nothing; and the approvals that expired just now (to record).
    pub fn find(&self, agent: &str, digest: &str, now: SystemTime) -> (Found, Vec<Approval>) {
        let mut map = self.lock();
        let (found, touched, expired) = find_in(&mut map, agent, digest, now);
        for a in &touched {
            self.save(a);
        }
        (found, self.with_lapsed(expired))
    }

    /// [`ApprovalStore::find`], and when it finds nothing, keeps the
    /// approval `new` makes (in the same step, so concurrent identical
    /// calls share one request): `Found::Pending` with `true`.
    pub fn find_or_request(
        &self,
        agent: &str,
        digest: &str,
        now: SystemTime,
        new: impl FnOnce() -> Approval,
    ) -> (Found, bool, Vec<Approval>) {
        let mut map = self.lock();
        let (found, touched, expired) = find_in(&mut map, agent, digest, now);
        for a in &touched {
            self.save(a);
        }
        if let Found::Nothing = found {
            let approval = new();
            self.save(&approval);
            map.insert(approval.id.clone(), approval.clone());
            return (Found::Pending(approval), true, self.with_lapsed(expired));
        }
        (found, false, self.with_lapsed(expired))
    }

    /// Takes back a request whose record could not be written.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
        if let Some(db) = &self.db {
            db.delete(id);
        }
    }

    /// What [`ApprovalStore::answer`] would make of approval `id`, without
    /// applying it (so the answer is recorded before it takes effect).
    pub fn check_answer(
        &self,
        id: &str,
        approver: &Approver<'_>,
        deny: Option<&str>,
        now: SystemTime,
    ) -> Result<Approval, AnswerError> {
        let mut approval = self
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| AnswerError::NotFound(id.to_owned()))?;
        lapse(&mut approval, now);
        settle(&mut approval, approver, deny, now)?;
        Ok(approval)
    }

    /// Answers approval `id`: grant (`deny` is `None`) or deny with a
    /// reason. The agent whose call it is never may; otherwise the ask
    /// rule's approvers may.
    pub fn answer(
        &self,
        id: &str,
        approver: &Approver<'_>,
        deny: Option<&str>,
        now: SystemTime,
    ) -> Result<Approval, AnswerError> {
        let mut map = self.lock();
        let approval = map
            .get_mut(id)
            .ok_or_else(|| AnswerError::NotFound(id.to_owned()))?;
        let lapsed = lapse(approval, now);
        let settled = settle(approval, approver, deny, now);
        if lapsed || settled.is_ok() {
            self.save(approval);
        }
        if lapsed {
            self.keep_lapsed(approval);
        }
        settled.map(|()| approval.clone())
    }

    /// Every approval at `now` (pending only unless `all`), oldest first,
    /// and those that expired since last looked at (to be recorded).
    pub fn list(&self, now: SystemTime, all: bool) -> (Vec<Approval>, Vec<Approval>) {
        let mut map = self.lock();
        let mut expired = Vec::new();
        let mut out = Vec::new();
        for approval in map.values_mut() {
            if lapse(approval, now) {
                self.save(approval);
                expired.push(approval.clone());
            }
            if all || approval.state == State::Pending {
                out.push(approval.clone());
            }
        }
        // Closed approvals are kept in memory a day, for `show` and retries.
        let cutoff = now.checked_sub(std::time::Duration::from_secs(24 * 3600));
        map.retain(|_, a| {
            matches!(a.state, State::Pending | State::Granted)
                || cutoff.is_none_or(|c| a.times.decided.unwrap_or(a.times.expires) > c)
        });
        out.sort_by_key(|a| a.times.requested);
        (out, self.with_lapsed(expired))
    }
}

fn find_in(
    map: &mut HashMap<String, Approval>,
    agent: &str,
    digest: &str,
    now: SystemTime,
) -> (Found, Vec<Approval>, Vec<Approval>) {
    let mut pending = None;
    let mut told = None;
    let mut expired = Vec::new();
    let mut touched = Vec::new();
    // Grants first, then the newest open request.
    let mut mine: Vec<&mut Approval> = map
        .values_mut()
        .filter(|a| a.agent == agent && a.digest == digest)
        .collect();
    mine.sort_by_key(|a| a.times.requested);
    for approval in mine {
        if lapse(approval, now) {
            expired.push(approval.clone());
            touched.push(approval.clone());
        }
        match approval.state {
            State::Granted => {
                approval.uses_left = approval.uses_left.saturating_sub(1);
                if approval.uses_left == 0 {
                    approval.state = State::Used;
                }
                touched.push(approval.clone());
                return (Found::Granted(approval.clone()), touched, expired);
            }
            State::Pending => pending = Some(approval.clone()),
            // A denial holds for the request's ttl: the same call is
            // refused, not asked again, until then.
            State::Denied if now < approval.times.expires => told = Some(approval.clone()),
            State::Expired if !approval.told => {
                approval.told = true;
                told = Some(approval.clone());
                touched.push(approval.clone());
            }
            State::Denied | State::Expired | State::Used => {}
        }
    }
    let found = match (pending, told) {
        (Some(p), _) => Found::Pending(p),
        (None, Some(a)) if a.state == State::Denied => Found::Denied(a),
        (None, Some(a)) => Found::Expired(a),
        (None, None) => Found::Nothing,
    };
    (found, touched, expired)
}

/// Checks the approver, then grants or denies a pending approval.
fn settle(
    approval: &mut Approval,
    approver: &Approver<'_>,
    deny: Option<&str>,
    now: SystemTime,
) -> Result<(), AnswerError> {
    if approver.agent == Some(approval.agent.as_str()) {
        return Err(AnswerError::OwnCall);
    }
    let named = (approver.is_admin && approval.approvers.iter().any(|a| a == "admins"))
        || approver
            .names
            .iter()
            .any(|n| approval.approvers.contains(n));
    if !named {
        return Err(AnswerError::NotApprover(approval.rule.clone()));
    }
    if approval.state != State::Pending {
        return Err(AnswerError::NotPending(
            approval.id.clone(),
            approval.state.as_str(),
        ));
    }
    approval.decided_by = Some(approver.who.to_owned());
    approval.times.decided = Some(now);
    approval.decided_at = when(Some(now));
    match deny {
        Some(reason) => {
            approval.state = State::Denied;
            approval.deny_reason = Some(reason.to_owned());
            approval.uses_left = 0;
        }
        None => {
            approval.state = State::Granted;
            let until = approval
                .times
                .window
                .map_or(approval.times.expires, |w| now + w);
            approval.times.usable_until = Some(until);
            approval.usable_until = when(Some(until));
        }
    }
    Ok(())
}

/// Moves a pending request past its ttl, or a grant past its window, to
/// expired; `true` when it did so now.
fn lapse(approval: &mut Approval, now: SystemTime) -> bool {
    let due = match approval.state {
        State::Pending => now >= approval.times.expires,
        State::Granted => approval
            .times
            .usable_until
            .is_some_and(|until| now >= until),
        State::Denied | State::Expired | State::Used => false,
    };
    if due {
        approval.state = State::Expired;
    }
    due
}
