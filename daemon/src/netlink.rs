//! What both daemons ask rtnetlink alike.

use futures::TryStreamExt;

/// The index of the interface named `ifname`, or an error that names it.
pub async fn interface_index(handle: &rtnetlink::Handle, ifname: &str) -> Result<u32, String> {
    let link = handle
        .link()
        .get()
        .match_name(ifname.to_string())
        .execute()
        .try_next()
        .await
        .map_err(|e| format!("finding interface {ifname}: {e}"))?
        .ok_or_else(|| format!("interface {ifname} not found"))?;
    Ok(link.header.index)
}
