//! Learned site prefixes in the kernel: routes into the overlay interface
//! (or via a LAN router that offered them) with routed's own route protocol
//! number, so they are ours to reconcile
//! at start and remove at exit (and `ip route show proto 201` shows them).

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A route routed wants in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Want {
    pub prefix: IpNet,
    /// Via this address of a router; `None`: into the overlay interface.
    pub via: Option<IpAddr>,
    /// The interface index of a link-local `via` (RFC 2545): the kernel
    /// needs it to tell which link the address is on.
    pub dev: Option<u32>,
}

impl Want {
    pub fn overlay(prefix: IpNet) -> Want {
        Want {
            prefix,
            via: None,
            dev: None,
        }
    }
}

fn destination(m: &RouteMessage) -> Option<IpNet> {
    let len = m.header.destination_prefix_length;
    let dst = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => IpNet::new((*a).into(), len).ok(),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => IpNet::new((*a).into(), len).ok(),
        _ => None,
    });
    // A default route carries no destination.
    match (dst, len, m.header.address_family) {
        (Some(d), _, _) => Some(d),
        (None, 0, AddressFamily::Inet) => IpNet::new(Ipv4Addr::UNSPECIFIED.into(), 0).ok(),
        (None, 0, AddressFamily::Inet6) => IpNet::new(Ipv6Addr::UNSPECIFIED.into(), 0).ok(),
        _ => None,
    }
}

/// The table a route is in (above 255 the header says 252 and an
/// attribute the real one).
fn table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn oif(m: &RouteMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn gateway(m: &RouteMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(a)) => Some((*a).into()),
        RouteAttribute::Gateway(RouteAddress::Inet6(a)) => Some((*a).into()),
        _ => None,
    })
}

/// Makes the kernel's routes of `protocol` in the main table exactly
/// `want`: each prefix via a gateway address, or (`None`) into `ifname`.
/// Routes of other tables are never looked at (the kernel's route dump is
/// not filtered, so they are skipped here), nor routes of the protocol
/// that are neither into `ifname` nor via a gateway: routed makes no
/// other kind. Without `prune` it only adds
/// what is missing and removes nothing (while routed is still learning
/// after a start). A route the kernel refuses does not stop the others:
/// every failure is in the error.
pub async fn reconcile(
    ifname: &str,
    protocol: u8,
    want: &[Want],
    prune: bool,
) -> Result<(), String> {
    let devs: std::collections::BTreeMap<(IpNet, Option<IpAddr>), u32> = want
        .iter()
        .filter_map(|w| Some(((w.prefix.trunc(), w.via), w.dev?)))
        .collect();
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))?;
    tokio::spawn(conn);
    let proto = RouteProtocol::from(protocol);
    let overlay = cubenet_daemon::netlink::interface_index(&handle, ifname)
        .await
        .ok();
    let mut have: Vec<RouteMessage> = Vec::new();
    for req in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let mut s = handle.route().get(req).execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| format!("listing routes: {e}"))?
        {
            let ours = gateway(&m).is_some() || (overlay.is_some() && oif(&m) == overlay);
            if m.header.protocol == proto
                && table(&m) == u32::from(RouteHeader::RT_TABLE_MAIN)
                && ours
            {
                have.push(m);
            }
        }
    }
    let mut want: BTreeSet<(IpNet, Option<IpAddr>)> =
        want.iter().map(|w| (w.prefix.trunc(), w.via)).collect();
    if !prune {
        // A prefix the kernel routes already (by a route of before the
        // start) stays as it is: adding a second route for it would fail.
        let routed: BTreeSet<IpNet> = have.iter().filter_map(destination).collect();
        want.retain(|(p, _)| !routed.contains(p));
    }
    let mut present = BTreeSet::new();
    let mut errors = Vec::new();
    for m in have {
        match destination(&m).map(|p| (p, gateway(&m))) {
            Some(k) if want.contains(&k) => {
                present.insert(k);
            }
            k if prune => {
                if let Err(e) = handle.route().del(m).execute().await {
                    let what = k.map_or("a stale route".to_string(), |(p, _)| p.to_string());
                    errors.push(format!("removing {what}: {e}"));
                }
            }
            _ => {}
        }
    }
    if want.len() == present.len() {
        return done(errors);
    }
    let index = cubenet_daemon::netlink::interface_index(&handle, ifname).await?;
    for (p, gw) in want.difference(&present) {
        let what = match gw {
            Some(g) => format!("{p} via {g}"),
            None => format!("{p} dev {ifname}"),
        };
        let b = match RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(p.addr(), p.prefix_len())
        {
            Ok(b) => b.protocol(proto),
            Err(e) => {
                errors.push(format!("route {what}: {e}"));
                continue;
            }
        };
        let msg = match gw {
            Some(g) => match b.gateway(*g) {
                Ok(b) => match devs.get(&(*p, *gw)) {
                    Some(dev) => b.output_interface(*dev).build(),
                    None => b.build(),
                },
                Err(e) => {
                    errors.push(format!("route {what}: {e}"));
                    continue;
                }
            },
            None => b.output_interface(index).build(),
        };
        if let Err(e) = handle.route().add(msg).execute().await {
            errors.push(format!("adding route {what}: {e}"));
        }
    }
    done(errors)
}

fn done(errors: Vec<String>) -> Result<(), String> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}
