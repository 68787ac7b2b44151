//! The TUN's addresses, MTU, state and routes, set over rtnetlink (never by
//! running `ip`). An rtnetlink connection acts in the network namespace of
//! the thread that opened it: open it from the daemon's own thread.

use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};
use std::net::IpAddr;

fn exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
}

/// Brings `ifname` up with `mtu`, the node's addresses and routes to the
/// overlay networks.
pub async fn configure(
    ifname: &str,
    mtu: u16,
    addresses: &[IpNet],
    routes: &[IpNet],
) -> Result<(), String> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))?;
    tokio::spawn(conn);
    let index = cubenet_daemon::netlink::interface_index(&handle, ifname).await?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .mtu(mtu as u32)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|e| format!("{ifname}: setting MTU {mtu} and up: {e}"))?;
    for a in addresses {
        let mut req = handle.address().add(index, a.addr(), a.prefix_len());
        if a.addr().is_ipv6() {
            // The overlay's addresses are unique by certificate: skip DAD so
            // they are usable at once.
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => {}
            Err(e) if exists(&e) => {}
            Err(e) => return Err(format!("{ifname}: adding address {a}: {e}")),
        }
    }
    for r in routes {
        let r = r.trunc();
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.addr(), r.prefix_len())
            .map_err(|e| format!("route {r}: {e}"))?
            .output_interface(index)
            .build();
        match handle.route().add(msg).execute().await {
            Ok(()) => {}
            Err(e) if exists(&e) => {}
            Err(e) => return Err(format!("{ifname}: adding route {r}: {e}")),
        }
    }
    Ok(())
}
