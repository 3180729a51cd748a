//! Where workers can reach the daemon: the addresses it tells them to dial,
//! and the ones it listens on.
//!
//! Login nodes have several interfaces (Ethernet, the high-speed network,
//! loopback) and the one compute nodes can route to is rarely the one the
//! host name resolves to. So `[interchange] address` may name more than one
//! address, an interface, or `auto` (every interface), and workers try them
//! all at once (see the worker's connect module).

use std::net::IpAddr;

use flotilla_protocol::address::Endpoint;
use serde::{Deserialize, Serialize};

/// `[interchange] address`: one entry or a list.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum AddressSetting {
    /// `address = "auto"`, `"hsn0"`, `"10.1.2.3"`, `"login1"`.
    One(String),
    /// `address = ["10.1.2.3", "login1:7000"]`.
    Many(Vec<String>),
}

impl AddressSetting {
    /// The entries as written.
    pub fn entries(&self) -> Vec<&str> {
        match self {
            AddressSetting::One(one) => vec![one.as_str()],
            AddressSetting::Many(many) => many.iter().map(String::as_str).collect(),
        }
    }
}

/// One address of one local interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    /// Interface name (`lo`, `eth0`, `hsn0`).
    pub name: String,
    /// Its address.
    pub ip: IpAddr,
}

/// What the daemon advertises and where it listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Entries workers dial, in order of preference.
    pub advertise: Vec<Endpoint>,
    /// Local addresses to listen on (with the interchange port).
    pub listen: Vec<IpAddr>,
}

impl Plan {
    /// The advertised entries, comma-joined (the worker's `--address`).
    pub fn advertised(&self) -> String {
        self.advertise
            .iter()
            .map(Endpoint::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// An address setting that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdvertiseError {
    /// An entry is malformed.
    #[error("interchange.address: {0}")]
    Bad(#[from] flotilla_protocol::address::BadAddress),
    /// A `bind` entry is not an IP literal.
    #[error("interchange.bind: `{0}` is not an IP address (use \"0.0.0.0\" for every interface)")]
    BadBind(String),
    /// An interface entry carries a port.
    #[error("interchange.address: `{0}` names an interface, which cannot carry a port")]
    InterfaceWithPort(String),
    /// A host name does not resolve here.
    #[error(
        "interchange.address: cannot resolve `{host}` to listen on it: {why}; set interchange.bind to the local address"
    )]
    Unresolved {
        /// The name.
        host: String,
        /// The resolver's answer.
        why: String,
    },
    /// Nothing to advertise (an interface with no usable address).
    #[error("interchange.address: {0}")]
    Empty(String),
}

fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => true,
        // Link-local IPv6 needs a scope id no worker would know.
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
    }
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// Works out the plan for `entries` on a machine with `interfaces`,
/// resolving host names with `resolve`.
pub fn plan(
    entries: &[&str],
    bind: &[String],
    interfaces: &[InterfaceAddress],
    resolve: impl Fn(&str) -> Result<Vec<IpAddr>, String>,
) -> Result<Plan, AdvertiseError> {
    let mut advertise = Vec::new();
    let mut listen = Vec::new();
    let add_ip = |ip: IpAddr, advertise: &mut Vec<Endpoint>, listen: &mut Vec<IpAddr>| {
        push_unique(
            advertise,
            Endpoint {
                host: ip.to_string(),
                port: None,
            },
        );
        push_unique(listen, ip);
    };
    for entry in entries {
        let entry = entry.trim();
        if entry == "auto" {
            let usable: Vec<IpAddr> = interfaces.iter().map(|i| i.ip).filter(usable).collect();
            for ip in usable.iter().filter(|ip| !ip.is_loopback()) {
                add_ip(*ip, &mut advertise, &mut listen);
            }
            for ip in usable.iter().filter(|ip| ip.is_loopback()) {
                add_ip(*ip, &mut advertise, &mut listen);
            }
            continue;
        }
        let endpoint = Endpoint::parse(entry)?;
        let on_interface: Vec<IpAddr> = interfaces
            .iter()
            .filter(|i| i.name == endpoint.host)
            .map(|i| i.ip)
            .filter(usable)
            .collect();
        if let Ok(ip) = endpoint.host.parse::<IpAddr>() {
            match endpoint.port {
                None => add_ip(ip, &mut advertise, &mut listen),
                // A forwarded port: advertised, listened on elsewhere.
                Some(_) => push_unique(&mut advertise, endpoint),
            }
        } else if interfaces.iter().any(|i| i.name == endpoint.host) {
            if endpoint.port.is_some() {
                return Err(AdvertiseError::InterfaceWithPort(entry.to_owned()));
            }
            if on_interface.is_empty() {
                return Err(AdvertiseError::Empty(format!(
                    "interface `{}` has no usable address",
                    endpoint.host
                )));
            }
            for ip in on_interface {
                add_ip(ip, &mut advertise, &mut listen);
            }
        } else {
            if endpoint.port.is_none() {
                let ips = resolve(&endpoint.host).map_err(|why| AdvertiseError::Unresolved {
                    host: endpoint.host.clone(),
                    why,
                })?;
                for ip in ips {
                    push_unique(&mut listen, ip);
                }
            }
            push_unique(&mut advertise, endpoint);
        }
    }
    if !bind.is_empty() {
        listen = bind
            .iter()
            .map(|b| {
                b.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| AdvertiseError::BadBind(b.clone()))
            })
            .collect::<Result<_, _>>()?;
    }
    if advertise.is_empty() {
        return Err(AdvertiseError::Empty("no address to give workers".into()));
    }
    if listen.is_empty() {
        return Err(AdvertiseError::Empty(
            "every address has its own (forwarded) port, so there is nothing to listen on here; set interchange.bind".into(),
        ));
    }
    Ok(Plan { advertise, listen })
}

/// This machine's interface addresses.
pub fn local_interfaces() -> Vec<InterfaceAddress> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| {
            let storage = a.address?;
            let ip = if let Some(v4) = storage.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else {
                IpAddr::V6(storage.as_sockaddr_in6()?.ip())
            };
            Some(InterfaceAddress {
                name: a.interface_name,
                ip,
            })
        })
        .collect()
}

/// Resolves a host name with the system resolver.
pub fn resolve(host: &str) -> Result<Vec<IpAddr>, String> {
    use std::net::ToSocketAddrs;
    let addrs = (host, 0).to_socket_addrs().map_err(|e| e.to_string())?;
    let mut ips = Vec::new();
    for a in addrs {
        push_unique(&mut ips, a.ip());
    }
    Ok(ips)
}

/// The nng URL to listen on `ip`.
pub fn listen_url(ip: IpAddr, port: u16) -> String {
    format!(
        "tcp://{}",
        flotilla_protocol::address::host_port(&ip.to_string(), port)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interfaces() -> Vec<InterfaceAddress> {
        [
            ("lo", "127.0.0.1"),
            ("lo", "::1"),
            ("eth0", "192.168.1.10"),
            ("eth0", "fe80::1"),
            ("hsn0", "10.100.0.7"),
            ("hsn0", "fd00::7"),
        ]
        .iter()
        .map(|(n, ip)| InterfaceAddress {
            name: (*n).into(),
            ip: ip.parse().unwrap(),
        })
        .collect()
    }

    fn no_dns(host: &str) -> Result<Vec<IpAddr>, String> {
        match host {
            "login1" => Ok(vec!["192.168.1.10".parse().unwrap()]),
            _ => Err("Name or service not known".into()),
        }
    }

    fn strings(plan: &Plan) -> (String, Vec<String>) {
        (
            plan.advertised(),
            plan.listen.iter().map(IpAddr::to_string).collect(),
        )
    }

    #[test]
    fn auto_is_every_interface_then_loopback_without_link_local() {
        let p = plan(&["auto"], &[], &interfaces(), no_dns).unwrap();
        assert_eq!(
            strings(&p),
            (
                "192.168.1.10,10.100.0.7,fd00::7,127.0.0.1,::1".into(),
                ["192.168.1.10", "10.100.0.7", "fd00::7", "127.0.0.1", "::1"]
                    .map(String::from)
                    .to_vec()
            )
        );
    }

    #[test]
    fn an_interface_name_means_its_addresses() {
        let p = plan(&["hsn0"], &[], &interfaces(), no_dns).unwrap();
        assert_eq!(p.advertised(), "10.100.0.7,fd00::7");
        assert_eq!(
            plan(&["hsn0:7000"], &[], &interfaces(), no_dns),
            Err(AdvertiseError::InterfaceWithPort("hsn0:7000".into()))
        );
    }

    #[test]
    fn literals_names_and_forwarded_ports() {
        let p = plan(
            &[
                "10.100.0.7",
                "login1",
                "gateway.example.org:7000",
                "10.100.0.7",
            ],
            &[],
            &interfaces(),
            no_dns,
        )
        .unwrap();
        assert_eq!(
            strings(&p),
            (
                "10.100.0.7,login1,gateway.example.org:7000".into(),
                vec!["10.100.0.7".into(), "192.168.1.10".into()]
            )
        );
        let err = plan(&["nowhere.invalid"], &[], &interfaces(), no_dns).unwrap_err();
        assert!(
            err.to_string().contains("cannot resolve `nowhere.invalid`"),
            "{err}"
        );
    }

    #[test]
    fn bind_overrides_where_to_listen() {
        let p = plan(
            &["gateway:7000"],
            &["0.0.0.0".into()],
            &interfaces(),
            no_dns,
        )
        .unwrap();
        assert_eq!(strings(&p), ("gateway:7000".into(), vec!["0.0.0.0".into()]));
        let err = plan(&["gateway:7000"], &[], &interfaces(), no_dns).unwrap_err();
        assert!(err.to_string().contains("set interchange.bind"), "{err}");
        let err = plan(&["auto"], &["eth0".into()], &interfaces(), no_dns).unwrap_err();
        assert_eq!(err, AdvertiseError::BadBind("eth0".into()));
    }

    #[test]
    fn this_machine_has_loopback() {
        let here = local_interfaces();
        assert!(here.iter().any(|i| i.ip.is_loopback()), "{here:?}");
        let p = plan(&["auto"], &[], &here, resolve).unwrap();
        assert!(p.advertised().contains("127.0.0.1"), "{}", p.advertised());
    }
}
