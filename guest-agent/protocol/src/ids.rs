//! Container and exec identifiers: 1 to 64 characters of `[A-Za-z0-9_.-]`, not starting with '.'. They
//! become path components in the guest (`/run/hull/containers/<id>`, cgroup names), so both ends check them.

use thiserror::Error;

/// Longest identifier accepted.
pub const MAX_ID_LEN: usize = 64;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdError {
    #[error("identifier is empty")]
    Empty,
    #[error("identifier is {0} bytes long (at most {MAX_ID_LEN})")]
    TooLong(usize),
    #[error("identifier {0:?} may only hold letters, digits, '_', '-', '.' and may not start with '.'")]
    BadCharacter(String),
}

/// Checks a container id, or a non-empty exec id.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(id.len()));
    }
    if id.starts_with('.') || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
        return Err(IdError::BadCharacter(id.chars().take(MAX_ID_LEN).collect()));
    }
    Ok(())
}

/// Checks an exec id, where "" names the container's init process.
pub fn validate_exec_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        Ok(())
    } else {
        validate_id(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("c1").is_ok());
        assert!(validate_id("a-b_c.d").is_ok());
        assert_eq!(validate_id(""), Err(IdError::Empty));
        assert!(validate_id("..").is_err());
        assert!(validate_id("a/b").is_err());
        assert!(validate_id("a b").is_err());
        assert!(validate_id(&"x".repeat(65)).is_err());
        assert!(validate_exec_id("").is_ok());
        assert!(validate_exec_id("../x").is_err());
    }
}
