//! The firewall on this node's own traffic: verdicts, drop logs, reload,
//! status.

use super::forward::Back;
use super::*;

impl Node {
    /// The flow table; see [`Control`] for the lock order.
    pub(super) fn fw(&self) -> MutexGuard<'_, Firewall> {
        lock(&self.firewall)
    }

    /// Runs the firewall on a packet this node receives or sends itself.
    pub(super) fn firewall_passes(&self, dir: Direction, pkt: &[u8], now: Instant) -> bool {
        self.firewall_drop(dir, pkt, now).is_none()
    }

    /// The firewall's verdict on a packet it drops (logged), and whether
    /// the policy rejects (`reject`); `None` when it passes.
    fn firewall_drop(&self, dir: Direction, pkt: &[u8], now: Instant) -> Option<(Verdict, bool)> {
        if !self.firewall_on.load(Ordering::Relaxed) {
            return None;
        }
        let (v, reject) = {
            let lookup = |a: IpAddr| self.identity_lookup(a, now);
            let mut fw = self.fw();
            (fw.check(dir, pkt, now, &lookup), fw.policy.reject)
        };
        if v == Verdict::Pass {
            return None;
        }
        self.log_drop(dir, pkt, v, now);
        Some((v, reject))
    }

    /// The firewall on a packet from `peer` for this node; with `reject`
    /// on, a packet a rule or the default denies gets administratively
    /// prohibited back through the tunnel it came by.
    pub(super) fn firewall_admits(
        &self,
        peer: &Arc<Peer>,
        pkt: &[u8],
        now: Instant,
        out: &mut Outbox,
    ) -> bool {
        let Some((v, reject)) = self.firewall_drop(Direction::Inbound, pkt, now) else {
            return true;
        };
        if reject && matches!(v, Verdict::Deny(_)) {
            self.send_error(
                icmp::Error::AdminProhibited,
                pkt,
                Back::Peer(peer),
                now,
                out,
            );
        }
        false
    }

    /// Logs a firewall drop, at most one line a second.
    pub(super) fn log_drop(&self, dir: Direction, pkt: &[u8], v: Verdict, now: Instant) {
        let sec = now.saturating_duration_since(self.started).as_secs();
        // The first drop of a second logs; the others that second count.
        if self.drop_log_sec.swap(sec, Ordering::Relaxed) == sec {
            bump(&self.drop_log_skipped);
            return;
        }
        let skipped = self.drop_log_skipped.swap(0, Ordering::Relaxed);
        let p = firewall::parse(pkt);
        let why = match v {
            Verdict::Deny(Some(i)) => format!("rule {}[{i}]", dir.as_str()),
            Verdict::Deny(None) => format!("{} default", dir.as_str()),
            Verdict::Malformed => "malformed".into(),
            Verdict::TableFull => "flow table full".into(),
            Verdict::RemoteFull => "flows of this remote at their limit".into(),
            Verdict::OrphanFragment => "fragment without its first".into(),
            Verdict::Pass => "pass".into(),
        };
        tracing::info!(
            direction = dir.as_str(),
            src = ?p.map(|p| p.src),
            dst = ?p.map(|p| p.dst),
            proto = ?p.map(|p| p.proto),
            dport = ?p.map(|p| p.dport),
            skipped_since_last = skipped,
            "firewall drop: {why}"
        );
    }

    /// New firewall rules (SIGHUP): flows they deny are cut at once.
    pub fn reload_firewall(&self, policy: firewall::Policy, on: bool, now: Instant) -> usize {
        self.firewall_on.store(on, Ordering::Relaxed);
        let lookup = |a: IpAddr| self.identity_lookup(a, now);
        let cut = self.fw().reload(policy, now, &lookup);
        if cut > 0 {
            tracing::info!(flows = cut, "firewall reload cut flows the new rules deny");
        }
        cut
    }

    pub(super) fn firewall_status(&self) -> api::FirewallStatus {
        if !self.firewall_on.load(Ordering::Relaxed) {
            return api::FirewallStatus {
                enabled: false,
                detail: None,
            };
        }
        let fw = self.fw();
        let (identities_learned, identities_wanted) = {
            let c = self.ctl();
            (c.remote_ids.len(), c.wanted.len())
        };
        let rules = |dir: Direction, rs: &[firewall::Rule], hits: &[u64]| -> Vec<api::RuleHits> {
            rs.iter()
                .enumerate()
                .map(|(i, r)| api::RuleHits {
                    index: i,
                    direction: dir.as_str().to_string(),
                    rule: r.text.clone(),
                    hits: hits.get(i).copied().unwrap_or(0),
                })
                .collect()
        };
        let c = &fw.counters;
        api::FirewallStatus {
            enabled: true,
            detail: Some(api::FirewallDetail {
                identities_learned,
                identities_wanted,
                inbound_default: fw.policy.inbound_default.as_str().to_string(),
                outbound_default: fw.policy.outbound_default.as_str().to_string(),
                inbound: rules(Direction::Inbound, &fw.policy.inbound, &c.inbound_hits),
                outbound: rules(Direction::Outbound, &fw.policy.outbound, &c.outbound_hits),
                inbound_default_hits: c.inbound_default,
                outbound_default_hits: c.outbound_default,
                tracked_flows: fw.flows(),
                tracked_pass: c.tracked_pass,
                dropped: c.dropped,
                malformed: c.malformed,
                table_full: c.table_full,
                cut_by_reload: c.cut_by_reload,
                orphan_fragments: c.orphan_fragments,
                identity_pending: c.identity_pending,
                remote_full: c.remote_full,
                evicted: c.evicted,
            }),
        }
    }
}
