//! How the daemon's interchange addresses are written, the same way on both
//! ends: the daemon advertises a list of entries, a worker dials them.
//!
//! An entry is a host (an IP literal or a name) with an optional port:
//! `10.1.2.3`, `login1.example.org`, `10.1.2.3:7000`, `[fd00::5]:7000`,
//! `fd00::5`. Without a port the daemon's interchange port applies; with one
//! the entry names a forwarded port (an SSH tunnel, a NAT rule). Lists are
//! joined with commas.

use std::net::IpAddr;

/// One address a worker may dial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port, when it differs from the interchange port.
    pub port: Option<u16>,
}

/// An entry that is not a host with an optional port.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{entry}` is not an address: {why}")]
pub struct BadAddress {
    /// The entry as written.
    pub entry: String,
    /// What is wrong.
    pub why: String,
}

impl Endpoint {
    /// Parses one entry.
    pub fn parse(entry: &str) -> Result<Endpoint, BadAddress> {
        let bad = |why: &str| BadAddress {
            entry: entry.to_owned(),
            why: why.to_owned(),
        };
        let text = entry.trim();
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        if text.parse::<IpAddr>().is_ok() {
            return Ok(Endpoint {
                host: text.to_owned(),
                port: None,
            });
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| bad("`[` without `]`"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("only IPv6 literals go in brackets"));
            }
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("expected `:PORT` after `]`"))?,
                    ),
                ),
            }
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host, Some(port)),
                Some(_) => return Err(bad("write an IPv6 address with a port as [ADDR]:PORT")),
                None => (text, None),
            }
        };
        let port = match port {
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad(&format!("`{p}` is not a port (1-65535)")))?,
            ),
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
        {
            return Err(bad("a host is an IP address or a DNS name"));
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port,
        })
    }

    /// Parses a comma-separated list.
    pub fn parse_list(list: &str) -> Result<Vec<Endpoint>, BadAddress> {
        list.split(',')
            .filter(|e| !e.trim().is_empty())
            .map(Endpoint::parse)
            .collect()
    }

    /// `host:port` as a socket address string, brackets for IPv6,
    /// `default_port` unless the entry has its own.
    pub fn with_port(&self, default_port: u16) -> String {
        host_port(&self.host, self.port.unwrap_or(default_port))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => f.write_str(&host_port(&self.host, port)),
            None => f.write_str(&self.host),
        }
    }
}

/// `host:port`, with brackets around an IPv6 host.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(host: &str, port: Option<u16>) -> Endpoint {
        Endpoint {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn entries_parse_with_and_without_ports() {
        assert_eq!(Endpoint::parse("10.0.0.1").unwrap(), ep("10.0.0.1", None));
        assert_eq!(
            Endpoint::parse("10.0.0.1:7000").unwrap(),
            ep("10.0.0.1", Some(7000))
        );
        assert_eq!(Endpoint::parse("fd00::5").unwrap(), ep("fd00::5", None));
        assert_eq!(
            Endpoint::parse("[fd00::5]:7000").unwrap(),
            ep("fd00::5", Some(7000))
        );
        assert_eq!(
            Endpoint::parse(" login1.example.org ").unwrap(),
            ep("login1.example.org", None)
        );
        assert_eq!(
            Endpoint::parse_list("a,b:9,,[::1]:3").unwrap(),
            [ep("a", None), ep("b", Some(9)), ep("::1", Some(3))]
        );
    }

    #[test]
    fn bad_entries_say_why() {
        for (entry, why) in [
            ("", "empty"),
            ("host:0", "not a port"),
            ("host:http", "not a port"),
            ("[login1]:5", "only IPv6"),
            ("fd00::5:x:y", "[ADDR]:PORT"),
            ("bad host", "DNS name"),
        ] {
            let err = Endpoint::parse(entry).unwrap_err().to_string();
            assert!(err.contains(why), "{entry}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for entry in [
            "10.0.0.1",
            "10.0.0.1:7000",
            "[fd00::5]:7000",
            "fd00::5",
            "login1",
        ] {
            assert_eq!(Endpoint::parse(entry).unwrap().to_string(), entry);
        }
        assert_eq!(ep("fd00::5", None).with_port(80), "[fd00::5]:80");
        assert_eq!(ep("h", Some(9)).with_port(80), "h:9");
    }
}
