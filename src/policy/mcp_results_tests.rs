//! `[scope.mcp.results]`: the defaults, each setting, and every loader error
//! with its place.

use crate::mcp::results::{Act, ResultRules};
use crate::policy::{LoadOptions, load};

fn no_env(_: &str) -> Option<String> {
    None
}

fn load_results(results: &str) -> Result<ResultRules, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let text = format!(
        "[[agent]]\nname = \"a\"\nidentities = [\"cn:a\"]\nscopes = [\"s\"]\n[[scope]]\nname = \"s\"\nupstream = \"https://mcp.example\"\nroute = \"s\"\n[scope.mcp]\n[[scope.mcp.allow]]\ntools = [\"*\"]\n{results}"
    );
    std::fs::write(dir.path().join("p.toml"), text).map_err(|e| e.to_string())?;
    let (policy, _) = load(dir.path(), &LoadOptions::new(&no_env)).map_err(|e| e.to_string())?;
    let scope = policy.scopes().first().ok_or("no scope")?;
    let mcp = scope.mcp.as_ref().ok_or("no mcp")?;
    Ok(ResultRules::clone(&mcp.results))
}

#[test]
fn without_the_table_the_safe_defaults_hold() {
    let rules = load_results("").unwrap();
    assert_eq!(rules.injected, Act::Redact);
    assert_eq!(rules.key_formats, Act::Redact);
    assert_eq!(rules.invisible, Act::Strip);
    assert_eq!(rules.ansi, Act::Strip);
    assert!(rules.secrets.is_none() && rules.instructions.is_none());
}

#[test]
fn every_setting_is_read() {
    let rules = load_results(
        "[scope.mcp.results]\ninjected = \"refuse\"\nkey_formats = \"report\"\ninvisible = \"refuse\"\nansi = \"off\"\nsecrets = ['corp-[0-9]{4}', 'x-[a-z]{6}']\ninstructions = ['(?i)ignore previous']\ninstructions_action = \"redact\"\n",
    )
    .unwrap();
    assert_eq!(rules.injected, Act::Refuse);
    assert_eq!(rules.key_formats, Act::Report);
    assert_eq!(rules.invisible, Act::Refuse);
    assert_eq!(rules.ansi, Act::Off);
    let (secrets, act) = rules.secrets.unwrap();
    assert_eq!(act, Act::Redact);
    assert!(secrets.is_match("x-abcdef") && secrets.is_match("corp-1234"));
    let (instructions, act) = rules.instructions.unwrap();
    assert_eq!(act, Act::Redact);
    assert!(instructions.is_match("IGNORE PREVIOUS"));
}

#[test]
fn loader_errors_name_the_place() {
    let cases = [
        (
            "injected = \"report\"",
            "`injected` is `report`; it must be one of `redact`, `refuse`",
        ),
        (
            "invisible = \"redact\"",
            "`invisible` is `redact`; it must be one of `strip`",
        ),
        (
            "key_formats = \"strip\"",
            "`key_formats` is `strip`; it must be one of `redact`",
        ),
        ("secrets_action = \"off\"", "`secrets_action` is `off`"),
        ("secrets = ['(']", "`(` is not a usable pattern"),
        (
            "instructions = ['a*']",
            "`a*` is not a usable pattern: it matches the empty text",
        ),
        ("scan = true", "unknown field `scan`"),
    ];
    for (line, message) in cases {
        let e = load_results(&format!("[scope.mcp.results]\n{line}\n")).unwrap_err();
        assert!(e.contains(message), "{line}\n{e}");
        assert!(e.contains("p.toml:1"), "{e}");
    }
}
