//! MMDS session tokens (V2, and V1's optional sessions): `PUT /latest/api/token` with a time to live of 1
//! to 21600 s yields a random token; `GET`s present it in `X-metadata-token`.
//!
//! Owns: the live tokens (at most [`MAX_TOKENS`]; the one closest to expiry makes room for a new one, so a
//! guest that asks for tokens in a loop cannot grow hull's memory). A token is 32 bytes from the kernel's
//! random source, hex-encoded; what a guest presents is only compared against live tokens.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Bounds of `X-metadata-token-ttl-seconds`.
pub const MIN_TTL_SECS: u32 = 1;
pub const MAX_TTL_SECS: u32 = 21_600;
/// Live tokens kept at once.
pub const MAX_TOKENS: usize = 1024;
/// Longest token string accepted for a lookup (ours are 64 characters).
const MAX_TOKEN_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("Invalid time to live value provided for token: {0}. Please provide a value between {MIN_TTL_SECS} and {MAX_TTL_SECS}.")]
    InvalidTtl(String),
    #[error("Cannot generate a token: the random source failed.")]
    Random,
}

#[derive(Debug, Default)]
pub struct TokenAuthority {
    live: HashMap<String, Instant>,
}

impl TokenAuthority {
    /// A new token valid for `ttl` (the header's text, validated here).
    pub fn generate(&mut self, ttl: &str) -> Result<String, TokenError> {
        let secs: u32 = ttl
            .trim()
            .parse()
            .ok()
            .filter(|s| (MIN_TTL_SECS..=MAX_TTL_SECS).contains(s))
            .ok_or_else(|| TokenError::InvalidTtl(ttl.chars().take(32).collect()))?;
        let mut bytes = [0u8; 32];
        fill_random(&mut bytes).map_err(|_| TokenError::Random)?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        self.live.retain(|_, expiry| *expiry > now);
        if self.live.len() >= MAX_TOKENS {
            if let Some(oldest) = self.live.iter().min_by_key(|(_, e)| **e).map(|(t, _)| t.clone()) {
                self.live.remove(&oldest);
            }
        }
        self.live
            .insert(token.clone(), now + Duration::from_secs(u64::from(secs)));
        Ok(token)
    }

    /// Whether `token` was issued here and has not expired.
    pub fn is_valid(&self, token: &str) -> bool {
        token.len() <= MAX_TOKEN_LEN && self.live.get(token).is_some_and(|expiry| *expiry > Instant::now())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.live.len()
    }
}

/// Fills `buf` from getrandom(2) (allowed to every hull thread by the seccomp policy).
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom writes at most `len` bytes into the buffer it is given, which is ours.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_checked() {
        let mut auth = TokenAuthority::default();
        let a = auth.generate("60").unwrap();
        let b = auth.generate(" 21600 ").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(auth.is_valid(&a) && auth.is_valid(&b));
        assert!(!auth.is_valid("nope"));
        assert!(!auth.is_valid(&"a".repeat(10_000)));
    }

    #[test]
    fn ttl_must_be_1_to_21600() {
        let mut auth = TokenAuthority::default();
        for bad in ["0", "21601", "-1", "x", "", "99999999999999999999"] {
            assert!(matches!(auth.generate(bad), Err(TokenError::InvalidTtl(_))), "{bad}");
        }
    }

    #[test]
    fn live_tokens_are_bounded() {
        let mut auth = TokenAuthority::default();
        let first = auth.generate("1").unwrap();
        for _ in 0..MAX_TOKENS + 10 {
            auth.generate("100").unwrap();
        }
        assert_eq!(auth.len(), MAX_TOKENS);
        assert!(!auth.is_valid(&first), "the token closest to expiry made room");
    }
}
