//! The WebSocket `Origin` check, like Phoenix's `check_origin`.
//!
//! Browsers send the page's origin with every WebSocket upgrade; without a
//! check, any site a user visits could open a socket with the user's cookies
//! or stored tokens. Requests without an `Origin` header come from non-browser
//! clients and pass, as in Phoenix.

use serde::Deserialize;

/// `[socket] check_origin` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum CheckOriginSetting {
    /// `true`: the origin's host must equal the request's `Host`;
    /// `false`: no check.
    Enabled(bool),
    /// `["https://app.example.com", "//*.example.com"]`: allowed origins.
    List(Vec<String>),
}

/// One allowed origin: `scheme://host[:port]`, `//host`, with `*.` allowed
/// as the first label of the host (any subdomain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin {
    scheme: Option<String>,
    host: String,
    port: Option<u16>,
}

/// The compiled check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OriginPolicy {
    /// Every origin passes.
    #[default]
    Off,
    /// The origin's host must be the request's `Host` host.
    SameHost,
    /// The origin must match one entry.
    Allow(Vec<AllowedOrigin>),
}

/// The parts of an origin or allow-list entry.
fn split(text: &str) -> Option<(Option<String>, String, Option<u16>)> {
    let (scheme, rest) = match text.split_once("//") {
        Some(("", rest)) => (None, rest),
        Some((scheme, rest)) => (Some(scheme.strip_suffix(':')?.to_ascii_lowercase()), rest),
        None => (None, text),
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return None;
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (address, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        (&rest[..address.len() + 2], port)
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port.parse().ok()?)),
            None => (rest, None),
        }
    };
    Some((scheme, host.to_ascii_lowercase(), port))
}

impl AllowedOrigin {
    /// Parses an allow-list entry.
    pub fn parse(entry: &str) -> Result<AllowedOrigin, String> {
        let (scheme, host, port) = split(entry).ok_or_else(|| {
            format!("{entry:?} is not an origin like \"https://host\" or \"//*.host\"")
        })?;
        if host.is_empty() || host.strip_prefix("*.").unwrap_or(&host).contains('*') {
            return Err(format!(
                "{entry:?}: '*' may only be the first label (\"//*.example.com\")"
            ));
        }
        Ok(AllowedOrigin { scheme, host, port })
    }

    fn matches(&self, scheme: Option<&str>, host: &str, port: Option<u16>) -> bool {
        if self.scheme.is_some() && self.scheme.as_deref() != scheme {
            return false;
        }
        if self.port.is_some() && self.port != port {
            return false;
        }
        match self.host.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => self.host == host,
        }
    }
}

impl OriginPolicy {
    /// Compiles the setting; `loopback` says whether the server binds to a
    /// loopback address, where the check is off unless configured.
    pub fn from_setting(
        setting: Option<&CheckOriginSetting>,
        loopback: bool,
    ) -> Result<OriginPolicy, String> {
        match setting {
            None if loopback => Ok(OriginPolicy::Off),
            None | Some(CheckOriginSetting::Enabled(true)) => Ok(OriginPolicy::SameHost),
            Some(CheckOriginSetting::Enabled(false)) => Ok(OriginPolicy::Off),
            Some(CheckOriginSetting::List(list)) if list.is_empty() => Err(
                "an empty list would refuse every browser; use false to turn the check off".into(),
            ),
            Some(CheckOriginSetting::List(list)) => list
                .iter()
                .map(|e| AllowedOrigin::parse(e))
                .collect::<Result<_, _>>()
                .map(OriginPolicy::Allow),
        }
    }

    /// Whether an upgrade with this `Origin` (and `Host`) header may proceed.
    pub fn allows(&self, origin: Option<&str>, host_header: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if matches!(self, OriginPolicy::Off) {
            return true;
        }
        let Some((scheme, host, port)) = split(origin.trim()) else {
            return false;
        };
        match self {
            OriginPolicy::Off => true,
            OriginPolicy::SameHost => host_header
                .and_then(|h| split(h.trim()))
                .is_some_and(|(_, request_host, _)| request_host == host),
            OriginPolicy::Allow(list) => list
                .iter()
                .any(|a| a.matches(scheme.as_deref(), &host, port)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(entries: &[&str]) -> OriginPolicy {
        let list = CheckOriginSetting::List(entries.iter().map(|s| s.to_string()).collect());
        OriginPolicy::from_setting(Some(&list), false).unwrap()
    }

    #[test]
    fn allow_list_with_schemes_ports_and_wildcards() {
        let policy = allow(&[
            "https://app.example.com",
            "//*.example.org",
            "http://localhost:3000",
        ]);
        assert!(policy.allows(Some("https://app.example.com"), None));
        assert!(!policy.allows(Some("http://app.example.com"), None));
        assert!(policy.allows(Some("https://a.b.example.org"), None));
        assert!(policy.allows(Some("http://x.example.org:8080"), None));
        assert!(!policy.allows(Some("https://example.org"), None));
        assert!(!policy.allows(Some("https://evilexample.org"), None));
        assert!(policy.allows(Some("http://localhost:3000"), None));
        assert!(!policy.allows(Some("http://localhost:3001"), None));
        assert!(!policy.allows(Some("null"), None));
        assert!(
            policy.allows(None, None),
            "non-browser clients send no Origin"
        );
    }

    #[test]
    fn same_host_and_defaults() {
        let same = OriginPolicy::from_setting(None, false).unwrap();
        assert_eq!(same, OriginPolicy::SameHost);
        assert!(same.allows(
            Some("https://push.example.com"),
            Some("push.example.com:4000")
        ));
        assert!(!same.allows(Some("https://evil.com"), Some("push.example.com")));
        assert_eq!(
            OriginPolicy::from_setting(None, true).unwrap(),
            OriginPolicy::Off
        );
        let off =
            OriginPolicy::from_setting(Some(&CheckOriginSetting::Enabled(false)), false).unwrap();
        assert!(off.allows(Some("https://evil.com"), None));
        assert!(OriginPolicy::from_setting(Some(&CheckOriginSetting::List(vec![])), true).is_err());
        assert!(AllowedOrigin::parse("//ex*ample.com").is_err());
        assert!(AllowedOrigin::parse("https://a.com/path").is_err());
        let v6 = allow(&["http://[::1]:4000"]);
        assert!(v6.allows(Some("http://[::1]:4000"), None));
        assert!(!v6.allows(Some("http://[::1]"), None));
    }
}
