//! Strict GUID parsing.
//!
//! Azure writes GUIDs in the hyphenated 8-4-4-4-12 form. `uuid::Uuid::parse_str` also accepts
//! braces, `urn:uuid:` prefixes and the 32-digit simple form; accepting those in ids and
//! principal ids would let two spellings of one value slip past comparisons, so we only take the
//! hyphenated form.

use uuid::Uuid;

/// Parses a hyphenated GUID (any letter case). Returns `None` for every other spelling.
pub fn parse_guid(text: &str) -> Option<Uuid> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let well_formed = bytes.iter().enumerate().all(|(i, b)| match i {
        8 | 13 | 18 | 23 => *b == b'-',
        _ => b.is_ascii_hexdigit(),
    });
    if !well_formed {
        return None;
    }
    Uuid::parse_str(text).ok()
}

/// True when `text` is a hyphenated GUID.
pub fn is_guid(text: &str) -> bool {
    parse_guid(text).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_hyphenated_form() {
        assert!(is_guid("ba92f5b4-2d11-453d-a403-e96b0029c9fe"));
        assert!(is_guid("BA92F5B4-2D11-453D-A403-E96B0029C9FE"));
        assert!(!is_guid("ba92f5b42d11453da403e96b0029c9fe"));
        assert!(!is_guid("{ba92f5b4-2d11-453d-a403-e96b0029c9fe}"));
        assert!(!is_guid("urn:uuid:ba92f5b4-2d11-453d-a403-e96b0029c9fe"));
        assert!(!is_guid("ba92f5b4-2d11-453d-a403-e96b0029c9fg"));
        assert!(!is_guid("ba92f5b4-2d11-453d-a403_e96b0029c9fe"));
        assert!(!is_guid(""));
    }
}
