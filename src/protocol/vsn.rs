//! `vsn` negotiation: which serializer a connection speaks.
//!
//! Phoenix parses `vsn` with Elixir's `Version` (strict SemVer 2.0.0) and
//! matches it against `~> 1.0.0` and `~> 2.0.0`. This module does the same
//! without a semver library: only the major/minor/patch and whether a
//! pre-release is present matter for those two requirements.

use crate::protocol::message::Serializer;

/// Why a `vsn` was refused; the server answers 403.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum VsnError {
    /// `vsn=` with nothing after it.
    #[error("vsn is empty; expected a version such as \"2.0.0\"")]
    Empty,
    /// Not a full `MAJOR.MINOR.PATCH` semantic version.
    #[error("vsn {0:?} is not a semantic version (MAJOR.MINOR.PATCH)")]
    NotSemver(String),
    /// A valid version that neither serializer accepts.
    #[error("vsn {0:?} is not supported; use 1.0.x or 2.0.x")]
    Unsupported(String),
}

/// Picks the serializer for a connect request's `vsn` parameter.
///
/// Absent → V1 (older and minimal clients rely on it); `1.0.x` → V1;
/// `2.0.x` → V2; anything else is an error.
pub fn negotiate(vsn: Option<&str>) -> Result<Serializer, VsnError> {
    let Some(vsn) = vsn else {
        return Ok(Serializer::V1);
    };
    if vsn.is_empty() {
        return Err(VsnError::Empty);
    }
    let version = parse(vsn).ok_or_else(|| VsnError::NotSemver(vsn.to_owned()))?;
    // `~> X.0.0` means `>= X.0.0 and < X.1.0`. A pre-release sorts below its
    // release, so `2.0.0-rc` is below the range while `2.0.1-rc` is inside it
    // (Elixir's `match?` allows pre-releases by default).
    let in_range = version.minor == "0" && !(version.patch == "0" && version.pre_release);
    match version.major {
        "1" if in_range => Ok(Serializer::V1),
        "2" if in_range => Ok(Serializer::V2),
        _ => Err(VsnError::Unsupported(vsn.to_owned())),
    }
}

/// The parts of a version that negotiation needs. Numbers stay text: they
/// may exceed any integer type, and only "is it exactly 0/1/2" is asked.
struct Version<'a> {
    major: &'a str,
    minor: &'a str,
    patch: &'a str,
    pre_release: bool,
}

/// Parses SemVer 2.0.0: `MAJOR.MINOR.PATCH[-PRE][+BUILD]`, where numbers
/// have no leading zeros and identifiers are non-empty `[0-9A-Za-z-]+`.
fn parse(text: &str) -> Option<Version<'_>> {
    let (rest, build) = match text.split_once('+') {
        Some((rest, build)) => (rest, Some(build)),
        None => (text, None),
    };
    if let Some(build) = build {
        if !build.split('.').all(is_identifier) {
            return None;
        }
    }
    let (core, pre) = match rest.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (rest, None),
    };
    if let Some(pre) = pre {
        // Numeric pre-release identifiers must not have leading zeros.
        let valid = |id: &str| is_identifier(id) && (!is_digits(id) || is_number(id));
        if !pre.split('.').all(valid) {
            return None;
        }
    }
    let mut parts = core.split('.');
    let (major, minor, patch) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || ![major, minor, patch].into_iter().all(is_number) {
        return None;
    }
    Some(Version {
        major,
        minor,
        patch,
        pre_release: pre.is_some(),
    })
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A SemVer numeric identifier: `0` or digits without a leading zero.
fn is_number(s: &str) -> bool {
    is_digits(s) && (s == "0" || !s.starts_with('0'))
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_is_v1() {
        assert_eq!(negotiate(None), Ok(Serializer::V1));
    }

    #[test]
    fn accepted_versions() {
        for v in ["1.0.0", "1.0.1", "1.0.99", "1.0.0+build.5", "1.0.3-rc.1"] {
            assert_eq!(negotiate(Some(v)), Ok(Serializer::V1), "{v}");
        }
        for v in [
            "2.0.0",
            "2.0.7",
            "2.0.0+sha-abc",
            "2.0.1-beta",
            "2.0.18446744073709551616",
        ] {
            assert_eq!(negotiate(Some(v)), Ok(Serializer::V2), "{v}");
        }
    }

    #[test]
    fn valid_but_unsupported() {
        for v in [
            "2.1.0",
            "3.0.0",
            "123.1.1",
            "0.0.1",
            "1.1.0",
            "2.0.0-rc.1",
            "1.0.0-dev",
        ] {
            assert_eq!(
                negotiate(Some(v)),
                Err(VsnError::Unsupported(v.into())),
                "{v}"
            );
        }
    }

    #[test]
    fn not_semver() {
        let bad = [
            "2",
            "2.0",
            "abc",
            "2.0.0.0",
            "+2.0.0",
            "v2.0.0",
            "02.0.0",
            "2.00.0",
            "2.0.01",
            " 2.0.0",
            "2.0.0 ",
            "2.0.0-",
            "2.0.0+",
            "2.0.0-01",
            "2.0.0-a..b",
            "2.0.0+a_b",
            "2..0",
            "2.0.x",
            "-2.0.0",
            "2.0.0-é",
        ];
        for v in bad {
            assert_eq!(
                negotiate(Some(v)),
                Err(VsnError::NotSemver(v.into())),
                "{v}"
            );
        }
        assert_eq!(negotiate(Some("")), Err(VsnError::Empty));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            negotiate(Some("2.1.0")).unwrap_err().to_string(),
            "vsn \"2.1.0\" is not supported; use 1.0.x or 2.0.x"
        );
        assert_eq!(
            negotiate(Some("2.0")).unwrap_err().to_string(),
            "vsn \"2.0\" is not a semantic version (MAJOR.MINOR.PATCH)"
        );
        assert!(negotiate(Some(""))
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }
}
