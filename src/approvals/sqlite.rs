//! Approvals kept beside the SQLite decision log (a table of their own in
//! the same file), so a restart keeps pending requests and grants. Each row
//! is the approval as the API shows it, plus its clock values.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};

use super::Approval;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    requested INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    usable_until INTEGER,
    decided INTEGER,
    window_ms INTEGER,
    told INTEGER NOT NULL,
    approval TEXT NOT NULL
);";

/// How long closed approvals stay in the table.
const KEEP: Duration = Duration::from_secs(24 * 3600);

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The table, behind one connection.
#[derive(Debug)]
pub(super) struct Db(Mutex<Connection>);

impl Db {
    /// Opens (or creates) the table in the database at `path`.
    pub(super) fn open(path: &Path) -> Result<Db, rusqlite::Error> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Db(Mutex::new(conn)))
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every approval not long closed, dropping older rows.
    pub(super) fn load(&self, now: SystemTime) -> Result<Vec<Approval>, rusqlite::Error> {
        let conn = self.conn();
        let cutoff = millis(now.checked_sub(KEEP).unwrap_or(UNIX_EPOCH));
        conn.execute("DELETE FROM approvals WHERE expires < ?1", params![cutoff])?;
        let mut stmt = conn.prepare(
            "SELECT requested, expires, usable_until, decided, window_ms, told, approval FROM approvals",
        )?;
        let rows = stmt.query_map([], |row| {
            let text: String = row.get(6)?;
            let mut approval: Approval = serde_json::from_str(&text).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    6,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?;
            approval.times.requested = time(row.get(0)?);
            approval.times.expires = time(row.get(1)?);
            approval.times.usable_until = row.get::<_, Option<i64>>(2)?.map(time);
            approval.times.decided = row.get::<_, Option<i64>>(3)?.map(time);
            approval.times.window = row
                .get::<_, Option<i64>>(4)?
                .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
            approval.told = row.get::<_, i64>(5)? != 0;
            Ok(approval)
        })?;
        rows.collect()
    }

    /// Writes `approval` as it stands now.
    pub(super) fn save(&self, approval: &Approval) {
        let Ok(text) = serde_json::to_string(approval) else {
            return;
        };
        let t = &approval.times;
        let saved = self.conn().execute(
            "INSERT OR REPLACE INTO approvals (id, requested, expires, usable_until, decided, window_ms, told, approval)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                approval.id,
                millis(t.requested),
                millis(t.expires),
                t.usable_until.map(millis),
                t.decided.map(millis),
                t.window.map(|w| i64::try_from(w.as_millis()).unwrap_or(i64::MAX)),
                i64::from(approval.told),
                text,
            ],
        );
        if let Err(e) = saved {
            tracing::error!(error = %e, approval = %approval.id, "approval not saved");
        }
    }

    /// Removes a request whose record could not be written.
    pub(super) fn delete(&self, id: &str) {
        if let Err(e) = self
            .conn()
            .execute("DELETE FROM approvals WHERE id = ?1", params![id])
        {
            tracing::error!(error = %e, approval = %id, "approval not deleted");
        }
    }
}
