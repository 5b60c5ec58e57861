//! The snapshot state file: a fixed header, the state as JSON, and a CRC-64 over both.
//!
//! ```text
//! 0   magic "HULLSNAP"
//! 8   format version: major, minor, patch (u16 LE each), 2 reserved bytes
//! 16  payload length (u64 LE), at most MAX_PAYLOAD
//! 24  payload: the microVM state as JSON
//! ..  CRC-64/XZ of every byte before it (u64 LE)
//! ```
//!
//! A reader takes the file as hostile: it checks the magic, that the major version is the one it
//! writes and the minor not newer, that the length fits both the limit and the file exactly, and the
//! checksum, before it parses anything; then serde parses the JSON strictly into typed state.

use std::io::Read;
use std::path::Path;

/// First bytes of every hull snapshot state file.
pub const MAGIC: [u8; 8] = *b"HULLSNAP";
/// The format hull writes: a new major is not read by older hulls, a new minor only adds optional parts.
pub const FORMAT_VERSION: Version = Version {
    major: 1,
    minor: 0,
    patch: 0,
};
/// Largest state payload read back (a guest's vCPU and device state is tens of KiB).
pub const MAX_PAYLOAD: u64 = 64 << 20;
const HEADER_LEN: usize = 24;
const CRC_LEN: usize = 8;
const CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

/// A snapshot format version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A state file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot read the snapshot file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not a hull snapshot state file (bad magic)")]
    Magic { path: String },
    #[error("{path} is truncated: {have} bytes, the header announces {want}")]
    Truncated { path: String, have: u64, want: u64 },
    #[error("{path} has {extra} bytes past its checksum")]
    Trailing { path: String, extra: u64 },
    #[error("{path}: its state of {len} bytes is larger than the {MAX_PAYLOAD} this hull reads")]
    TooLarge { path: String, len: u64 },
    #[error("{path} has snapshot format {found}; this hull reads {FORMAT_VERSION} (same major, minor up to {})", FORMAT_VERSION.minor)]
    Version { path: String, found: Version },
    #[error("{path} is corrupt: checksum {found:#018x}, its contents give {computed:#018x}")]
    Checksum { path: String, found: u64, computed: u64 },
}

fn header(version: Version, len: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&version.major.to_le_bytes());
    h[10..12].copy_from_slice(&version.minor.to_le_bytes());
    h[12..14].copy_from_slice(&version.patch.to_le_bytes());
    h[16..24].copy_from_slice(&len.to_le_bytes());
    h
}

/// The whole file for `payload` in the current format.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    encode_with_version(payload, FORMAT_VERSION)
}

/// The whole file for `payload` stamped with `version` (tests write other versions with it).
pub fn encode_with_version(payload: &[u8], version: Version) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + CRC_LEN);
    out.extend_from_slice(&header(version, payload.len() as u64));
    out.extend_from_slice(payload);
    let crc = CRC.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn parse_header(path: &str, h: &[u8; HEADER_LEN]) -> Result<(Version, u64), FormatError> {
    if h[..8] != MAGIC {
        return Err(FormatError::Magic { path: path.into() });
    }
    let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
    let version = Version {
        major: u16_at(8),
        minor: u16_at(10),
        patch: u16_at(12),
    };
    let mut len = [0u8; 8];
    len.copy_from_slice(&h[16..24]);
    Ok((version, u64::from_le_bytes(len)))
}

fn io(path: &str) -> impl FnOnce(std::io::Error) -> FormatError + '_ {
    move |source| FormatError::Io {
        path: path.into(),
        source,
    }
}

/// The format version a state file says it has (`--describe-snapshot`); checks only the header.
pub fn read_version(path: &Path) -> Result<Version, FormatError> {
    let name = path.display().to_string();
    let mut file = std::fs::File::open(path).map_err(io(&name))?;
    let mut h = [0u8; HEADER_LEN];
    file.read_exact(&mut h).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FormatError::Truncated {
            path: name.clone(),
            have: 0,
            want: HEADER_LEN as u64,
        },
        _ => FormatError::Io {
            path: name.clone(),
            source: e,
        },
    })?;
    Ok(parse_header(&name, &h)?.0)
}

/// Reads and checks a state file; returns its payload.
pub fn read(path: &Path) -> Result<Vec<u8>, FormatError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(io(&name))?;
    let size = file.metadata().map_err(io(&name))?.len();
    let mut bytes = Vec::new();
    // Never read more than the largest valid file, whatever the file's size says.
    file.take(HEADER_LEN as u64 + MAX_PAYLOAD + CRC_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io(&name))?;
    decode(&name, &bytes, size)
}

/// Checks `bytes` (the whole file, of `size` bytes on disk) and returns the payload.
pub fn decode(path: &str, bytes: &[u8], size: u64) -> Result<Vec<u8>, FormatError> {
    let truncated = |want: u64| FormatError::Truncated {
        path: path.into(),
        have: size,
        want,
    };
    let h: &[u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| truncated(HEADER_LEN as u64))?;
    let (version, len) = parse_header(path, h)?;
    if version.major != FORMAT_VERSION.major || version.minor > FORMAT_VERSION.minor {
        return Err(FormatError::Version {
            path: path.into(),
            found: version,
        });
    }
    if len > MAX_PAYLOAD {
        return Err(FormatError::TooLarge { path: path.into(), len });
    }
    let want = HEADER_LEN as u64 + len + CRC_LEN as u64;
    if size < want || (bytes.len() as u64) < want {
        return Err(truncated(want));
    }
    if size > want {
        return Err(FormatError::Trailing {
            path: path.into(),
            extra: size - want,
        });
    }
    let body_end = HEADER_LEN + len as usize;
    let mut crc = [0u8; 8];
    crc.copy_from_slice(&bytes[body_end..body_end + CRC_LEN]);
    let found = u64::from_le_bytes(crc);
    let computed = CRC.checksum(&bytes[..body_end]);
    if found != computed {
        return Err(FormatError::Checksum {
            path: path.into(),
            found,
            computed,
        });
    }
    Ok(bytes[HEADER_LEN..body_end].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bytes: &[u8]) -> Result<Vec<u8>, FormatError> {
        decode("s", bytes, bytes.len() as u64)
    }

    #[test]
    fn a_file_round_trips_and_every_damage_is_named() {
        let file = encode(b"{\"a\":1}");
        assert_eq!(check(&file).unwrap(), b"{\"a\":1}");

        let e = check(&file[..file.len() - 1]).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        assert!(check(&file[..10]).unwrap_err().to_string().contains("truncated"));

        let mut corrupt = file.clone();
        corrupt[HEADER_LEN + 2] ^= 1;
        assert!(check(&corrupt).unwrap_err().to_string().contains("checksum"));

        let mut magic = file.clone();
        magic[0] = b'X';
        assert!(check(&magic).unwrap_err().to_string().contains("magic"));

        let newer = encode_with_version(
            b"{}",
            Version {
                major: 2,
                minor: 0,
                patch: 0,
            },
        );
        let e = check(&newer).unwrap_err().to_string();
        assert!(e.contains("format v2.0.0") && e.contains("reads v1.0.0"), "{e}");

        let mut longer = file.clone();
        longer.push(0);
        assert!(check(&longer).unwrap_err().to_string().contains("past its checksum"));

        let mut huge = file.clone();
        huge[16..24].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert!(check(&huge).unwrap_err().to_string().contains("larger than"));
    }
}
