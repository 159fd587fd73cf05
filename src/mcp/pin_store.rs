//! First-use pins kept beside the decision log (SQLite), so that a restart
//! does not forget them: a definition the log recorded as changed stays
//! changed, and its tool stays hidden and refused.
//!
//! Invariants:
//! - The store is written only from its own thread: the response path hands
//!   a sighting over a channel and never waits for the disk.
//! - A row is (scope, tool, first, last): the first hash stays the pin; only
//!   `last` moves.
//! - What cannot be read at start is an error that stops `serve`: a pin
//!   store that silently came up empty would re-pin rug-pulled tools.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, params};

/// One tool's pin in a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinRow {
    /// The scope.
    pub scope: String,
    /// The tool.
    pub tool: String,
    /// The first hash seen: the pin.
    pub first: String,
    /// The last hash seen.
    pub last: String,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mcp_pins (
    scope TEXT NOT NULL,
    tool TEXT NOT NULL,
    first TEXT NOT NULL,
    last TEXT NOT NULL,
    PRIMARY KEY (scope, tool)
);";

/// Opens (or creates) the pin table in the database at `path`, reads every
/// row, and starts the thread that writes sightings; returns the rows and
/// the channel to that thread.
pub fn open(path: &Path) -> Result<(Vec<PinRow>, mpsc::Sender<PinRow>), rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    let rows = {
        let mut statement = conn.prepare("SELECT scope, tool, first, last FROM mcp_pins")?;
        let rows = statement.query_map([], |r| {
            Ok(PinRow {
                scope: r.get(0)?,
                tool: r.get(1)?,
                first: r.get(2)?,
                last: r.get(3)?,
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    let (tx, rx) = mpsc::channel::<PinRow>();
    std::thread::Builder::new()
        .name("clawgate-pins".into())
        .spawn(move || write_all(&conn, &rx))
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    Ok((rows, tx))
}

/// Sets `tool` in `scope` to `hash` (first and last) in the table at
/// `path`, now and durably: an admin's accept, before it takes effect.
pub fn accept(path: &Path, scope: &str, tool: &str, hash: &str) -> Result<(), rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute(
        "INSERT INTO mcp_pins (scope, tool, first, last) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT (scope, tool) DO UPDATE SET first = excluded.first, last = excluded.last",
        params![scope, tool, hash],
    )?;
    Ok(())
}

/// Deletes the row of `tool` in `scope` from the table at `path`: an
/// admin's forget, before it takes effect.
pub fn forget(path: &Path, scope: &str, tool: &str) -> Result<(), rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute(
        "DELETE FROM mcp_pins WHERE scope = ?1 AND tool = ?2",
        params![scope, tool],
    )?;
    Ok(())
}

/// Writes each sighting as it comes, until every sender is gone.
fn write_all(conn: &Connection, rx: &mpsc::Receiver<PinRow>) {
    for row in rx {
        let written = conn.execute(
            "INSERT INTO mcp_pins (scope, tool, first, last) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (scope, tool) DO UPDATE SET last = excluded.last",
            params![row.scope, row.tool, row.first, row.last],
        );
        if let Err(e) = written {
            // The pin still holds in memory; only a restart would forget it.
            tracing::error!(error = %e, scope = %row.scope, "an MCP pin could not be stored");
        }
    }
}

#[cfg(test)]
#[path = "pin_store_tests.rs"]
mod tests;
