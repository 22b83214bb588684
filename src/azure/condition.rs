//! Azure ABAC role-assignment conditions.
//!
//! Azure parses conditions itself and answers 400 InvalidRequest for bad ones; we only catch
//! what is certainly wrong before a request is made (unbalanced parentheses or quotes, control
//! characters, an empty expression), so a typo surfaces in the grant's status at once instead of
//! after a round trip — and the full grammar stays Azure's to judge.

/// The only condition version Azure accepts.
pub const CONDITION_VERSION: &str = "2.0";

/// Why a condition is certainly malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("is empty")]
    Empty,
    #[error("is {len} characters long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("contains the control character {0:?}")]
    ControlCharacter(char),
    #[error("has a ')' at character {0} with no matching '('")]
    UnmatchedClose(usize),
    #[error("has {0} '(' without a matching ')'")]
    UnclosedParen(usize),
    #[error("has a quoted string starting at character {0} that is never closed")]
    UnclosedQuote(usize),
}

/// Checks a condition's shape: non-empty, bounded, printable, balanced `()` outside quotes and
/// closed `'…'` quotes (Azure's string literals; `''` inside is an escaped quote).
pub fn check_condition(expression: &str, max_len: usize) -> Result<(), ConditionError> {
    let len = expression.chars().count();
    if expression.trim().is_empty() {
        return Err(ConditionError::Empty);
    }
    if len > max_len {
        return Err(ConditionError::TooLong { len, max: max_len });
    }
    if let Some(c) = expression.chars().find(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        return Err(ConditionError::ControlCharacter(c));
    }
    let mut depth = 0usize;
    let mut quote_start: Option<usize> = None;
    for (i, c) in expression.chars().enumerate() {
        match (quote_start, c) {
            // A doubled quote inside a string is an escape; toggling twice handles it.
            (Some(_), '\'') => quote_start = None,
            (Some(_), _) => {}
            (None, '\'') => quote_start = Some(i + 1),
            (None, '(') => depth += 1,
            (None, ')') => depth = depth.checked_sub(1).ok_or(ConditionError::UnmatchedClose(i + 1))?,
            (None, _) => {}
        }
    }
    if let Some(start) = quote_start {
        return Err(ConditionError::UnclosedQuote(start));
    }
    if depth > 0 {
        return Err(ConditionError::UnclosedParen(depth));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTAINER_ONLY: &str = "((!(ActionMatches{'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read'})) OR (@Resource[Microsoft.Storage/storageAccounts/blobServices/containers:name] StringEquals 'curated'))";

    #[test]
    fn accepts_real_conditions() {
        assert_eq!(check_condition(CONTAINER_ONLY, 8192), Ok(()));
        assert_eq!(check_condition("@Resource[x:name] StringEquals 'it''s'", 8192), Ok(()));
    }

    #[test]
    fn rejects_certainly_broken_ones() {
        assert_eq!(check_condition("  ", 8192), Err(ConditionError::Empty));
        assert_eq!(check_condition("(a", 8192), Err(ConditionError::UnclosedParen(1)));
        assert_eq!(check_condition("a)", 8192), Err(ConditionError::UnmatchedClose(2)));
        assert_eq!(check_condition("x StringEquals 'abc", 8192), Err(ConditionError::UnclosedQuote(16)));
        assert_eq!(check_condition("a\0", 8192), Err(ConditionError::ControlCharacter('\0')));
        assert_eq!(check_condition("(')')", 8192), Ok(()));
        assert!(matches!(check_condition(&"a".repeat(10), 5), Err(ConditionError::TooLong { len: 10, max: 5 })));
    }
}
