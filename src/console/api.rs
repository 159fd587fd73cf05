//! The console's reads of the admin API, with the operator's certificate.
//! Every answer is data to escape, never markup.

use super::AdminConn;

/// A JSON answer, or why there is none.
pub(super) type Answer = Result<serde_json::Value, String>;
/// A JSON-lines answer (records), or why there is none.
pub(super) type Lines = Result<Vec<serde_json::Value>, String>;

/// `GET path` as one JSON value.
pub(super) async fn get_json(admin: &AdminConn, path: &str) -> Answer {
    let (status, body) =
        crate::admin::client::get(&admin.base, path, &admin.ca, &admin.cert, &admin.key)
            .await
            .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!(
            "admin api answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))
}

/// `GET path` as JSON lines.
pub(super) async fn get_lines(admin: &AdminConn, path: &str) -> Lines {
    let (status, body) =
        crate::admin::client::get(&admin.base, path, &admin.ca, &admin.cert, &admin.key)
            .await
            .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!(
            "admin api answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}
