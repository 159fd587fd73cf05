//! The page's filters: what the operator narrows the records to, read from
//! the query string and passed on to the admin API's `/v1/audit`.

use std::fmt::Write as _;

use super::{enc, esc};

/// The filters' names, as the query string and the API spell them.
pub(super) const NAMES: [&str; 7] = [
    "agent", "scope", "reason", "decision", "source", "since", "until",
];

/// The filters of one page view; an empty value filters nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Filters {
    values: [String; 7],
}

impl Filters {
    /// The filters in `query` (other parameters are ignored).
    pub(super) fn parse(query: &str) -> Self {
        let mut f = Self::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if let Some(i) = NAMES.iter().position(|n| *n == k) {
                f.values[i] = v.trim().to_owned();
            }
        }
        f
    }

    fn get(&self, name: &str) -> &str {
        NAMES
            .iter()
            .position(|n| *n == name)
            .map_or("", |i| self.values[i].as_str())
    }

    /// Whether any filter is set.
    pub(super) fn any(&self) -> bool {
        self.values.iter().any(|v| !v.is_empty())
    }

    /// The window's start for the page: the `since` filter, else `dflt`.
    pub(super) fn since_or<'a>(&'a self, dflt: &'a str) -> &'a str {
        match self.get("since") {
            "" => dflt,
            s => s,
        }
    }

    /// `name=value&…` of the filters set (URL-encoded), for the API.
    pub(super) fn query(&self) -> String {
        let mut q = String::new();
        for (name, v) in NAMES.iter().zip(&self.values) {
            if !v.is_empty() {
                let _ = write!(q, "&{name}={}", enc(v));
            }
        }
        q
    }

    /// `&since=…&until=…` of the time range alone (URL-encoded).
    pub(super) fn time_query(&self) -> String {
        let mut q = String::new();
        for name in ["since", "until"] {
            let v = self.get(name);
            if !v.is_empty() {
                let _ = write!(q, "&{name}={}", enc(v));
            }
        }
        q
    }

    /// The filter form (a plain GET form: no script needed).
    pub(super) fn form(&self) -> String {
        let mut o = String::from("<form method=get id=filters>");
        for (name, v) in NAMES.iter().zip(&self.values) {
            let hint = match *name {
                "decision" => "allow or deny",
                "source" => "client address",
                "since" | "until" => "RFC 3339 or 2h",
                _ => "",
            };
            let _ = write!(
                o,
                "<label>{name} <input name={name} size=12 placeholder=\"{hint}\" value=\"{}\"></label> ",
                esc(v)
            );
        }
        o.push_str("<button>filter</button> <a href=\"/\">clear</a></form>");
        o
    }
}
