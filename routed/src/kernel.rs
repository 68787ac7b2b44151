//! Learned site prefixes in the kernel: routes into the overlay interface
//! (or via a LAN router that offered them) with routed's own route protocol
//! number, so they are ours to reconcile
//! at start and remove at exit (and `ip route show proto 201` shows them).

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::RouteMessageBuilder;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn destination(m: &RouteMessage) -> Option<IpNet> {
    let len = m.header.destination_prefix_length;
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => IpNet::new((*a).into(), len).ok(),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => IpNet::new((*a).into(), len).ok(),
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

/// Makes the kernel's routes of `protocol` exactly `want`: each prefix via
/// a gateway address, or (`None`) into `ifname`. Without `prune` it only
/// adds what is missing and removes nothing (while routed is still
/// learning after a start).
pub async fn reconcile(
    ifname: &str,
    protocol: u8,
    want: &[(IpNet, Option<IpAddr>)],
    prune: bool,
) -> Result<(), String> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))?;
    tokio::spawn(conn);
    let proto = RouteProtocol::from(protocol);
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
            if m.header.protocol == proto {
                have.push(m);
            }
        }
    }
    let mut want: BTreeSet<(IpNet, Option<IpAddr>)> =
        want.iter().map(|(p, g)| (p.trunc(), *g)).collect();
    if !prune {
        // A prefix the kernel routes already (by a route of before the
        // start) stays as it is: adding a second route for it would fail.
        let routed: BTreeSet<IpNet> = have.iter().filter_map(destination).collect();
        want.retain(|(p, _)| !routed.contains(p));
    }
    let mut present = BTreeSet::new();
    for m in have {
        match destination(&m).map(|p| (p, gateway(&m))) {
            Some(k) if want.contains(&k) => {
                present.insert(k);
            }
            _ if prune => {
                handle
                    .route()
                    .del(m)
                    .execute()
                    .await
                    .map_err(|e| format!("removing a stale route: {e}"))?;
            }
            _ => {}
        }
    }
    if want.len() == present.len() {
        return Ok(());
    }
    let index = cubenet_daemon::netlink::interface_index(&handle, ifname).await?;
    for (p, gw) in want.difference(&present) {
        let b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(p.addr(), p.prefix_len())
            .map_err(|e| format!("route {p}: {e}"))?
            .protocol(proto);
        let msg = match gw {
            Some(g) => b
                .gateway(*g)
                .map_err(|e| format!("route {p} via {g}: {e}"))?,
            None => b.output_interface(index),
        }
        .build();
        handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(|e| match gw {
                Some(g) => format!("adding route {p} via {g}: {e}"),
                None => format!("adding route {p} dev {ifname}: {e}"),
            })?;
    }
    Ok(())
}
