//! routed's side of overlayd's control socket: the route feed (best paths
//! into overlayd's forwarding table, as increments) and the attach/detach
//! events routed announces hosts from.
//!
//! The feed keeps one connection. On connect it resyncs the whole table in
//! chunks of [`ROUTE_CHUNK`] routes between `route_sync_begin` and
//! `route_sync_end`, so no table size meets the request-line limit; after
//! that it sends only what changed. While routed is still learning after
//! its start (not `ready`), it adds and never removes: the sync is left
//! open (overlayd removes nothing then) and withdrawals wait; when routed
//! becomes ready it resyncs once more, ending it, and stale entries go. A
//! failed request drops the connection, and the next push starts over.
//!
//! Every request to overlayd gives up after [`OVERLAYD_CALL`]: an overlayd
//! that stopped reading (stuck, or stopped with SIGSTOP) costs the feed a
//! reconnect and a resync, never the task that also keeps the kernel's
//! routes (audit L12). Events are waited for as long as it takes.

use cubenet_api::overlayd::{self as api, Request, Route, Updated, ROUTE_CHUNK};
use cubenet_api::{CallError, Client, Empty};
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one request to overlayd may take, connecting included: a
/// resync chunk of [`ROUTE_CHUNK`] routes takes milliseconds.
pub const OVERLAYD_CALL: Duration = Duration::from_secs(10);

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pushed {
    /// A full resync was sent (new connection, or routed became ready).
    pub resynced: bool,
    pub added: usize,
    pub withdrawn: usize,
    /// overlayd's routed entries afterwards.
    pub routes: usize,
    /// Routes overlayd refused (a gateway it does not know), each with its
    /// prefix and why; they are sent again with the next push.
    pub refused: Vec<api::Refused>,
}

pub struct RouteFeed {
    path: PathBuf,
    conn: Option<Client>,
    /// What overlayd holds from this feed, as last acknowledged.
    sent: HashMap<IpNet, Vec<String>>,
    /// The last sync was ended (overlayd's table is `sent`, plus perhaps
    /// older entries of `unsure`).
    owner: bool,
    /// Prefixes whose last add overlayd refused: it may still hold an
    /// older entry of theirs, to withdraw if routed drops them. Never in
    /// `sent` at the same time.
    unsure: HashSet<IpNet>,
}

impl RouteFeed {
    pub fn new(path: &Path) -> Self {
        RouteFeed {
            path: path.to_path_buf(),
            conn: None,
            sent: HashMap::new(),
            owner: false,
            unsure: HashSet::new(),
        }
    }

    /// Brings overlayd's table to `table`. `ready`: routed owns the table
    /// (entries not in `table` are removed); else only adds.
    pub async fn push(
        &mut self,
        table: &[(IpNet, Vec<String>)],
        ready: bool,
    ) -> Result<Pushed, CallError> {
        let r = self.push_inner(table, ready).await;
        if r.is_err() {
            // Start over on a new connection next time.
            self.conn = None;
            self.owner = false;
        }
        r
    }

    async fn push_inner(
        &mut self,
        table: &[(IpNet, Vec<String>)],
        ready: bool,
    ) -> Result<Pushed, CallError> {
        if self.conn.is_none() {
            let c = tokio::time::timeout(OVERLAYD_CALL, Client::connect(&self.path))
                .await
                .map_err(|_| CallError::TimedOut {
                    path: self.path.clone(),
                    after: OVERLAYD_CALL,
                })??;
            self.conn = Some(c.with_deadline(OVERLAYD_CALL));
            return self.resync(table, ready).await;
        }
        if ready && !self.owner {
            return self.resync(table, ready).await;
        }
        let want: HashSet<&IpNet> = table.iter().map(|(p, _)| p).collect();
        let add: Vec<Route> = table
            .iter()
            .filter(|(p, via)| self.sent.get(p) != Some(via))
            .map(route)
            .collect();
        let withdraw: Vec<IpNet> = if ready {
            self.sent
                .keys()
                .chain(&self.unsure)
                .filter(|p| !want.contains(p))
                .copied()
                .collect()
        } else {
            Vec::new()
        };
        let mut out = Pushed::default();
        let conn = self.conn.as_mut().ok_or(CallError::Closed {
            path: self.path.clone(),
        })?;
        // An empty update still goes: it tells whether overlayd is still
        // there (a restarted one needs the whole table again).
        let req = Request::RouteUpdate {
            add,
            withdraw,
            more: false,
        };
        out.add(conn.call(&req).await?);
        let Request::RouteUpdate { add, withdraw, .. } = req else {
            unreachable!("built just above")
        };
        for p in withdraw {
            self.sent.remove(&p);
            self.unsure.remove(&p);
        }
        for r in add {
            self.unsure.remove(&r.prefix);
            self.sent.insert(r.prefix, r.via);
        }
        self.forget_refused(&out.refused);
        Ok(out)
    }

    async fn resync(
        &mut self,
        table: &[(IpNet, Vec<String>)],
        ready: bool,
    ) -> Result<Pushed, CallError> {
        let conn = self.conn.as_mut().ok_or(CallError::Closed {
            path: self.path.clone(),
        })?;
        let mut out = Pushed {
            resynced: true,
            ..Default::default()
        };
        let _: Empty = conn.call(&Request::RouteSyncBegin).await?;
        // Every chunk but the last says more follow: overlayd makes the
        // table its workers use whole once, after the last.
        let chunks = table.len().div_ceil(ROUTE_CHUNK);
        for (i, chunk) in table.chunks(ROUTE_CHUNK).enumerate() {
            let add = chunk.iter().map(route).collect();
            out.add(update(conn, add, i + 1 < chunks).await?);
        }
        if table.is_empty() {
            out.add(update(conn, Vec::new(), false).await?);
        }
        if ready {
            // The end removes every entry not installed since the begin.
            let u: Updated = conn.call(&Request::RouteSyncEnd).await?;
            out.add(u);
            self.sent = table.iter().cloned().collect();
            self.unsure.clear();
        } else {
            // Merged: overlayd keeps what it had besides these.
            for (p, via) in table {
                self.unsure.remove(p);
                self.sent.insert(*p, via.clone());
            }
        }
        self.owner = ready;
        self.forget_refused(&out.refused);
        Ok(out)
    }

    /// Refused routes are not in overlayd: forget them, so the next push
    /// offers them again (the gateway they name may have come up since).
    fn forget_refused(&mut self, refused: &[api::Refused]) {
        for r in refused {
            self.sent.remove(&r.prefix);
            self.unsure.insert(r.prefix);
        }
    }
}

impl Pushed {
    fn add(&mut self, u: Updated) {
        self.added += u.added;
        self.withdrawn += u.withdrawn;
        self.routes = u.routes;
        self.refused.extend(u.refused);
    }
}

/// One chunk of a resync: adds only; `more` when another follows.
async fn update(conn: &mut Client, add: Vec<Route>, more: bool) -> Result<Updated, CallError> {
    let withdraw = Vec::new();
    conn.call(&Request::RouteUpdate {
        add,
        withdraw,
        more,
    })
    .await
}

fn route((prefix, via): &(IpNet, Vec<String>)) -> Route {
    Route {
        prefix: *prefix,
        via: via.clone(),
    }
}

/// The hosts attached to overlayd now.
pub async fn attached_hosts(path: &Path) -> Result<Vec<std::net::IpAddr>, CallError> {
    let a: api::AttachedPeers =
        cubenet_api::client::call_within(path, &Request::Attached, OVERLAYD_CALL).await?;
    Ok(a.peers
        .into_iter()
        .filter(|h| h.role == api::Role::Host)
        .flat_map(|h| h.addresses)
        .collect())
}

/// overlayd's tunnels to the gateways it keeps up: name, and whether its
/// probes find the tunnel up now.
pub async fn gateway_tunnels(path: &Path) -> Result<Vec<(String, bool)>, CallError> {
    let s: api::Status =
        cubenet_api::client::call_within(path, &Request::Status, OVERLAYD_CALL).await?;
    Ok(s.peers
        .into_iter()
        .filter(|p| p.configured && p.role == api::PeerRole::Gateway)
        .map(|p| (p.name, p.healthy))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An overlayd that takes the connection and never answers (stuck, or
    /// stopped): the push gives up after [`OVERLAYD_CALL`] instead of
    /// holding the feed (and the kernel routes after it) forever, and the
    /// next push starts over on a new connection.
    #[tokio::test(start_paused = true)]
    async fn a_stuck_overlayd_times_the_feed_out_and_the_next_push_reconnects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overlayd.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let stuck = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(s);
            }
        });
        let mut feed = RouteFeed::new(&path);
        let table = vec![("10.77.1.11/32".parse().unwrap(), vec!["gw".to_string()])];
        let t0 = tokio::time::Instant::now();
        let r = feed.push(&table, true).await;
        assert!(matches!(r, Err(CallError::TimedOut { .. })), "{r:?}");
        assert!(t0.elapsed() >= OVERLAYD_CALL, "{:?}", t0.elapsed());
        assert!(feed.conn.is_none(), "the stuck connection is kept");
        let r = feed.push(&table, true).await;
        assert!(matches!(r, Err(CallError::TimedOut { .. })), "{r:?}");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        stuck.abort();
    }
}
