//! Path globs over ARM ids, as GrantPolicy `identities` and `scopes` use them.
//!
//! - Matching is segment-wise and anchored at both ends: `/…/rg-lake/**` never matches
//!   `/…/rg-lake-evil`.
//! - `*` matches any run of characters within one segment (`rg-*`, or a whole segment).
//! - `**` as a whole segment matches zero or more segments, so `/…/rg-lake/**` matches the
//!   resource group itself and everything in it (a role at the group reaches the same
//!   resources).
//! - Comparison ignores ASCII case, as Azure does for ids.
//!
//! Patterns are checked as strictly as ids (no `..`, `//`, trailing `/`, `%`, white space …),
//! and they are matched against ids that [`crate::azure::ResourceId`] already normalised, so an
//! id cannot be spelled to slip past a pattern.

use std::fmt;

use crate::azure::permissions::wildcard_match;

/// Longest pattern accepted.
pub const MAX_PATTERN_LEN: usize = 1024;

/// Why a pattern is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("is empty")]
    Empty,
    #[error("is {len} characters long; the limit is {MAX_PATTERN_LEN}")]
    TooLong { len: usize },
    #[error("must start with '/'")]
    MissingLeadingSlash,
    #[error("must not end with '/'")]
    TrailingSlash,
    #[error("must not contain '//'")]
    EmptySegment,
    #[error("must not contain '..' or a '.' segment")]
    DotSegment,
    #[error("contains {0:?}, which never appears in an Azure resource id")]
    InvalidCharacter(char),
    #[error("uses '**' inside segment '{0}'; '**' must be a whole segment")]
    PartialDoubleStar(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`
    AnyDepth,
    /// Literal text with optional `*` wildcards, lower-cased.
    Wildcard(String),
}

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    segments: Vec<Segment>,
}

impl Glob {
    pub fn parse(pattern: &str) -> Result<Self, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(GlobError::TooLong { len: pattern.len() });
        }
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(GlobError::MissingLeadingSlash);
        };
        if pattern.contains("..") {
            return Err(GlobError::DotSegment);
        }
        if let Some(c) = pattern.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '/' | '*' | '-' | '_' | '.' | '(' | ')' | '~' | '+' | '@'))
        }) {
            return Err(GlobError::InvalidCharacter(c));
        }
        if pattern.ends_with('/') {
            return Err(GlobError::TrailingSlash);
        }
        let mut segments = Vec::new();
        for seg in rest.split('/') {
            if seg.is_empty() {
                return Err(GlobError::EmptySegment);
            }
            if seg == "." {
                return Err(GlobError::DotSegment);
            }
            if seg == "**" {
                // Consecutive `**` add nothing.
                if segments.last() != Some(&Segment::AnyDepth) {
                    segments.push(Segment::AnyDepth);
                }
            } else if seg.contains("**") {
                return Err(GlobError::PartialDoubleStar(seg.to_owned()));
            } else {
                segments.push(Segment::Wildcard(seg.to_ascii_lowercase()));
            }
        }
        Ok(Glob { source: pattern.to_owned(), segments })
    }

    /// True when the whole of `path` (an id such as `ResourceId::to_string()`) matches.
    pub fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let lower = rest.to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        match_segments(&self.segments, &parts)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Segment matching with `**` backtracking. Patterns are short (bounded length, consecutive
/// `**` collapsed), so the dynamic programme below is small: O(pattern × path).
fn match_segments(pattern: &[Segment], path: &[&str]) -> bool {
    // reachable[j]: pattern prefix processed so far can consume exactly path[..j].
    let mut reachable = vec![false; path.len() + 1];
    reachable[0] = true;
    for seg in pattern {
        let mut next = vec![false; path.len() + 1];
        match seg {
            Segment::AnyDepth => {
                let mut any = false;
                for j in 0..=path.len() {
                    any |= reachable[j];
                    next[j] = any;
                }
            }
            Segment::Wildcard(w) => {
                for j in 0..path.len() {
                    if reachable[j] && wildcard_match(w.as_bytes(), path[j].as_bytes()) {
                        next[j + 1] = true;
                    }
                }
            }
        }
        reachable = next;
    }
    reachable[path.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SUB: &str = "6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f";

    fn g(p: &str) -> Glob {
        Glob::parse(p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn anchored_segment_wise_case_insensitive() {
        let lake = g(&format!("/subscriptions/{SUB}/resourceGroups/rg-lake/**"));
        assert!(lake.matches(&format!("/subscriptions/{SUB}/resourceGroups/rg-lake")));
        assert!(lake.matches(&format!(
            "/subscriptions/{SUB}/resourceGroups/RG-LAKE/providers/Microsoft.Storage/storageAccounts/x"
        )));
        assert!(!lake.matches(&format!("/subscriptions/{SUB}/resourceGroups/rg-lake-evil")));
        assert!(!lake.matches(&format!("/subscriptions/{SUB}/resourceGroups/rg-lake-evil/providers/a/b/c")));
        assert!(!lake.matches(&format!("/subscriptions/{SUB}")));

        let one = g("/subscriptions/*/resourceGroups/rg-analytics/providers/Microsoft.Databricks/*/*");
        assert!(one.matches(&format!(
            "/subscriptions/{SUB}/resourceGroups/rg-analytics/providers/Microsoft.Databricks/workspaces/w1"
        )));
        assert!(!one.matches(&format!(
            "/subscriptions/{SUB}/resourceGroups/rg-analytics/providers/Microsoft.Databricks/workspaces/w1/x/y"
        )));
        assert!(!one.matches(&format!(
            "/subscriptions/{SUB}/resourceGroups/rg-other/providers/Microsoft.Databricks/workspaces/w1"
        )));

        let prefix = g("/subscriptions/*/resourceGroups/rg-team-*");
        assert!(prefix.matches(&format!("/subscriptions/{SUB}/resourceGroups/rg-team-a")));
        assert!(!prefix.matches(&format!("/subscriptions/{SUB}/resourceGroups/rg-other")));

        let mid = g("/**/providers/Microsoft.KeyVault/vaults/*");
        assert!(mid.matches(&format!("/subscriptions/{SUB}/resourceGroups/r/providers/Microsoft.KeyVault/vaults/kv")));
        assert!(!mid.matches(&format!(
            "/subscriptions/{SUB}/resourceGroups/r/providers/Microsoft.KeyVault/vaults/kv/secrets/s"
        )));
    }

    #[test]
    fn rejects_bad_patterns() {
        assert_eq!(Glob::parse(""), Err(GlobError::Empty));
        assert_eq!(Glob::parse("subscriptions/*"), Err(GlobError::MissingLeadingSlash));
        assert_eq!(Glob::parse("/subscriptions/*/"), Err(GlobError::TrailingSlash));
        assert_eq!(Glob::parse("/subscriptions//x"), Err(GlobError::EmptySegment));
        assert_eq!(Glob::parse("/subscriptions/../x"), Err(GlobError::DotSegment));
        assert_eq!(Glob::parse("/subscriptions/a%2Fb"), Err(GlobError::InvalidCharacter('%')));
        assert_eq!(Glob::parse("/subscriptions/a**"), Err(GlobError::PartialDoubleStar("a**".into())));
        assert!(matches!(Glob::parse(&"/a".repeat(600)), Err(GlobError::TooLong { .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn a_literal_pattern_matches_exactly_itself(
            segs in prop::collection::vec("[a-zA-Z0-9-]{1,8}", 1..6),
            other in prop::collection::vec("[a-zA-Z0-9-]{1,8}", 1..6),
        ) {
            let path = format!("/{}", segs.join("/"));
            let other_path = format!("/{}", other.join("/"));
            let glob = Glob::parse(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(glob.matches(&path.to_ascii_uppercase()));
            prop_assert_eq!(glob.matches(&other_path), path.eq_ignore_ascii_case(&other_path));
        }

        #[test]
        fn double_star_suffix_matches_exactly_the_subtree(
            base in prop::collection::vec("[a-z0-9-]{1,6}", 1..4),
            path in prop::collection::vec("[a-z0-9-]{1,6}", 1..7),
        ) {
            let glob = Glob::parse(&format!("/{}/**", base.join("/"))).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let inside = path.len() >= base.len() && path[..base.len()] == base[..];
            prop_assert_eq!(glob.matches(&format!("/{}", path.join("/"))), inside);
        }

        #[test]
        fn junk_never_panics(pattern in "\\PC{0,40}|(/[a-z*.%-]{0,5}){0,8}", path in "\\PC{0,40}|(/[a-z*-]{0,5}){0,8}") {
            if let Ok(glob) = Glob::parse(&pattern) {
                let _ = glob.matches(&path);
            }
        }
    }
}
