//! One problem never hides another, and never invents one.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::time::{Duration, SystemTime};

use super::super::{LoadError, LoadOptions, load, rfc3339};

fn problems(files: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let no_env = |_: &str| None;
    let err: LoadError = load(dir.path(), &LoadOptions::new(&no_env))
        .map(|_| ())
        .unwrap_err();
    err.problems
        .iter()
        .map(|p| {
            let text = p.to_string();
            let dir = format!("{}/", dir.path().display());
            text.strip_prefix(&dir).unwrap_or(&text).to_owned()
        })
        .collect()
}

#[test]
fn three_independent_errors_in_one_file_are_all_reported() {
    // An unknown field in one scope, a bad rate in another, an unknown
    // scope in an agent: three problems, three messages, nothing else.
    let text = r#"
[[agent]]
name = "a"
identities = ["cn:a"]
scopes = ["one", "two", "ghost"]

[[scope]]
name = "one"
upstream = "https://one.example"
colour = "red"

[[scope]]
name = "two"
upstream = "https://two.example"
rate = "often"
"#;
    let found = problems(&[("p.toml", text)]);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(
        found[0].starts_with("p.toml:5:")
            && found[0].contains("unknown scope `ghost` in agent `a`"),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with("p.toml:10:1: unknown field `colour`"),
        "{found:#?}"
    );
    assert!(found[2].starts_with("p.toml:15:8: "), "{found:#?}");
}

#[test]
fn an_unknown_field_leaves_no_knock_on_errors() {
    // Before: the unknown field made the whole file unreadable, so the agent
    // in the other file got "unknown scope `s`" as well.
    let scope = "[[scope]]\nname = \"s\"\nupstream = \"https://s.example\"\nupstrem = \"typo\"\n";
    let agent = "[[agent]]\nname = \"a\"\nidentities = [\"cn:a\"]\nscopes = [\"s\"]\n";
    let found = problems(&[("a.toml", agent), ("s.toml", scope)]);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("s.toml:4:1: unknown field `upstrem`"),
        "{found:#?}"
    );
}

#[test]
fn two_unknown_fields_in_one_entry_are_both_reported_with_its_other_errors() {
    let text = "[[scope]]\nname = \"s\"\nupstream = \"ftp://s.example\"\nfoo = 1\n[[scope.allow]]\npaths = [\"/a\"]\nbar = 2\n";
    let found = problems(&[("p.toml", text)]);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(
        found[0].contains("upstream `ftp://s.example` must start with"),
        "{found:#?}"
    );
    assert!(found[1].contains("unknown field `foo`"), "{found:#?}");
    assert!(found[2].contains("unknown field `bar`"), "{found:#?}");
}

#[test]
fn a_scope_that_cannot_be_read_is_not_also_unknown_to_its_agents() {
    // A missing field gives the scope up, but its name stays known.
    let expires = rfc3339(SystemTime::now() + Duration::from_secs(3600));
    let text = format!(
        "[[agent]]\nname = \"a\"\nidentities = [\"cn:a\"]\nscopes = [\"s\"]\n\
         [[scope]]\nname = \"s\"\n\
         [[exception]]\nid = \"e\"\nagent = \"b\"\nscopes = [\"s\"]\nreason = \"r\"\napproved_by = \"x\"\nexpires = \"{expires}\"\n\
         [[agent]]\nname = \"b\"\nidentities = 5\n"
    );
    let text = text.as_str();
    let found = problems(&[("p.toml", text)]);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].contains("missing field `upstream`"), "{found:#?}");
    assert!(found[1].contains("invalid type"), "{found:#?}");
}

#[test]
fn a_syntax_error_hides_nothing_else_and_marks_possible_consequences() {
    let broken = "[[agent]\nname = \"x\"\n";
    let other = "[[agent]]\nname = \"a\"\nidentities = [\"cn:a\"]\nscopes = [\"elsewhere\"]\n\
                 [[scope]]\nname = \"s\"\nupstream = \"https://s.example\"\nmode = \"audit\"\n";
    let found = problems(&[("a.toml", broken), ("b.toml", other)]);
    assert!(
        found[0].starts_with("a.toml:1:9: unclosed array table"),
        "{found:#?}"
    );
    // What the parser recovered may be wrong: marked, not taken at face value.
    assert!(
        found[1].starts_with("a.toml:2:1: unknown field `name`")
            && found[1].ends_with("(may be a consequence of the syntax error in `a.toml`)"),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.contains("mode `audit` must be `enforce` or `report`")),
        "{found:#?}"
    );
    let unknown = found
        .iter()
        .find(|p| p.contains("unknown scope `elsewhere`"))
        .unwrap();
    assert!(
        unknown.ends_with("(may be a consequence of the syntax error in `a.toml`)"),
        "{found:#?}"
    );
}
