//! ARM ids, role references and globs from arbitrary bytes: never a panic, and whatever is
//! accepted is canonical (re-parses to itself, equal ignoring case).
#![no_main]

use dbx_identity_operator::azure::{ResourceId, RoleRef};
use dbx_identity_operator::policy::glob::Glob;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = ResourceId::parse(text) {
        let again = ResourceId::parse(&id.to_string()).expect("a formatted id re-parses");
        assert_eq!(again, id);
        assert_eq!(id.normalized(), text.to_ascii_lowercase());
        assert!(id.contains(&id));
    }
    if let Ok(role) = RoleRef::parse(text) {
        let again = RoleRef::parse(&role.to_string()).expect("a formatted role reference re-parses");
        assert_eq!(again.to_string().to_ascii_lowercase(), role.to_string().to_ascii_lowercase());
    }
    // First line a pattern, the rest a path.
    let (pattern, path) = text.split_once('\n').unwrap_or((text, text));
    if let Ok(glob) = Glob::parse(pattern) {
        let _ = glob.matches(path);
        if ResourceId::parse(pattern).is_ok() {
            assert!(glob.matches(pattern), "a literal pattern matches itself");
        }
    }
});
