//! The Loc-RIB and the decision process (RFC 4271 §9.1, the eBGP subset).
//!
//! Every candidate path of a prefix is kept; the best set is recomputed
//! when a candidate changes. Paths compare by, in order: originated here,
//! higher LOCAL_PREF, shorter AS_PATH, lower ORIGIN, lower MED (compared
//! across neighbouring ASes too: all neighbours are one operator's
//! gateways). Paths equal on all of these form the equal-cost set; the
//! first of the set (lowest source index) is "the" best path.

use crate::wire::Attrs;
use ipnet::IpNet;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::Instant;

/// A neighbour of this router: its place in the config's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NeighborId(pub usize);

impl std::fmt::Display for NeighborId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "neighbor[{}]", self.0)
    }
}

/// Where a path comes from: a neighbour, or this router. Neighbours sort
/// first, in config order; the local path last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Neighbor(NeighborId),
    Local,
}

pub const LOCAL: Source = Source::Local;

const DEFAULT_LOCAL_PREF: u32 = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub source: Source,
    /// Shared: the prefixes of one UPDATE have the same attributes, and
    /// a path is held in the Adj-RIB-In, the candidates and the best set.
    pub attrs: std::sync::Arc<Attrs>,
}

#[derive(Debug, Clone)]
pub struct Best {
    /// The equal-cost set, best first.
    pub paths: Vec<Path>,
    /// When the best set last changed.
    pub since: Instant,
}

/// The GRACEFUL_SHUTDOWN community (RFC 8326), 65535:0.
pub const GRACEFUL_SHUTDOWN: u32 = 0xFFFF_0000;

/// Orders two paths: `Less` means `a` is preferred.
pub fn compare(a: &Path, b: &Path) -> Ordering {
    let rank = |p: &Path| {
        (
            p.source != LOCAL,
            // RFC 8326: a path its neighbour is about to take down ranks
            // as LOCAL_PREF 0, so traffic moves before the session ends.
            std::cmp::Reverse(if p.attrs.communities.contains(&GRACEFUL_SHUTDOWN) {
                0
            } else {
                p.attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF)
            }),
            p.attrs.as_path.len(),
            p.attrs.origin,
            p.attrs.med.unwrap_or(0),
        )
    };
    rank(a).cmp(&rank(b))
}

#[derive(Debug, Default)]
pub struct Rib {
    candidates: BTreeMap<IpNet, Vec<Path>>,
    best: BTreeMap<IpNet, Best>,
}

impl Rib {
    /// Adds or replaces the path of `path.source` for `prefix`; true when
    /// the best set changed.
    pub fn upsert(&mut self, prefix: IpNet, path: Path, now: Instant) -> bool {
        let c = self.candidates.entry(prefix).or_default();
        match c.iter_mut().find(|p| p.source == path.source) {
            Some(p) if *p == path => return false,
            Some(p) => *p = path,
            None => c.push(path),
        }
        self.recompute(prefix, now)
    }

    /// Removes the path of `source` for `prefix`; true when the best set
    /// changed.
    pub fn remove(&mut self, prefix: IpNet, source: Source, now: Instant) -> bool {
        let Some(c) = self.candidates.get_mut(&prefix) else {
            return false;
        };
        let before = c.len();
        c.retain(|p| p.source != source);
        if c.len() == before {
            return false;
        }
        if c.is_empty() {
            self.candidates.remove(&prefix);
        }
        self.recompute(prefix, now)
    }

    /// Removes every path of `source`; returns the prefixes whose best set
    /// changed.
    pub fn remove_source(&mut self, source: Source, now: Instant) -> Vec<IpNet> {
        let prefixes: Vec<IpNet> = self
            .candidates
            .iter()
            .filter(|(_, c)| c.iter().any(|p| p.source == source))
            .map(|(k, _)| *k)
            .collect();
        prefixes
            .into_iter()
            .filter(|p| self.remove(*p, source, now))
            .collect()
    }

    fn recompute(&mut self, prefix: IpNet, now: Instant) -> bool {
        let Some(c) = self.candidates.get(&prefix) else {
            return self.best.remove(&prefix).is_some();
        };
        let mut sorted = c.clone();
        sorted.sort_by(|a, b| compare(a, b).then(a.source.cmp(&b.source)));
        let first = sorted[0].clone();
        sorted.retain(|p| compare(p, &first) == Ordering::Equal);
        match self.best.get_mut(&prefix) {
            Some(b) if b.paths == sorted => false,
            Some(b) => {
                b.paths = sorted;
                b.since = now;
                true
            }
            None => {
                self.best.insert(
                    prefix,
                    Best {
                        paths: sorted,
                        since: now,
                    },
                );
                true
            }
        }
    }

    pub fn best(&self, prefix: &IpNet) -> Option<&Best> {
        self.best.get(prefix)
    }

    pub fn iter_best(&self) -> impl Iterator<Item = (&IpNet, &Best)> {
        self.best.iter()
    }

    pub fn candidates(&self, prefix: &IpNet) -> &[Path] {
        self.candidates.get(prefix).map_or(&[], |v| v.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(n: usize) -> Source {
        Source::Neighbor(NeighborId(n))
    }

    impl From<usize> for Source {
        fn from(n: usize) -> Source {
            src(n)
        }
    }

    fn path(source: impl Into<Source>, as_path: &[u32]) -> Path {
        Path {
            source: source.into(),
            attrs: std::sync::Arc::new(Attrs {
                as_path: as_path.to_vec(),
                ..Attrs::default()
            }),
        }
    }

    #[test]
    fn shorter_as_path_wins_and_equal_ones_share() {
        let now = Instant::now();
        let mut r = Rib::default();
        let p: IpNet = "10.77.2.11/32".parse().unwrap();
        assert!(r.upsert(p, path(2, &[3, 1]), now));
        assert!(r.upsert(p, path(0, &[1]), now));
        assert_eq!(r.best(&p).unwrap().paths.len(), 1);
        assert_eq!(r.best(&p).unwrap().paths[0].source, src(0));
        assert!(r.upsert(p, path(1, &[2]), now));
        let srcs: Vec<_> = r.best(&p).unwrap().paths.iter().map(|p| p.source).collect();
        assert_eq!(srcs, vec![src(0), src(1)]);
        // Same path again: nothing changes.
        assert!(!r.upsert(p, path(1, &[2]), now));
        // Losing both short paths falls back to the long one.
        assert!(r.remove(p, src(0), now));
        assert_eq!(r.remove_source(src(1), now), vec![p]);
        assert_eq!(r.best(&p).unwrap().paths[0].source, src(2));
        assert!(r.remove(p, src(2), now));
        assert!(r.best(&p).is_none());
    }

    #[test]
    fn local_beats_everything_then_local_pref_then_origin_then_med() {
        let a = path(LOCAL, &[1, 2, 3]);
        let b = path(0, &[]);
        assert_eq!(compare(&a, &b), Ordering::Less);
        let mut hi = path(1, &[1, 2]);
        std::sync::Arc::make_mut(&mut hi.attrs).local_pref = Some(200);
        assert_eq!(compare(&hi, &path(0, &[1])), Ordering::Less);
        let mut egp = path(0, &[1]);
        std::sync::Arc::make_mut(&mut egp.attrs).origin = 1;
        assert_eq!(compare(&path(1, &[2]), &egp), Ordering::Less);
        let mut med = path(0, &[1]);
        std::sync::Arc::make_mut(&mut med.attrs).med = Some(10);
        assert_eq!(compare(&path(1, &[2]), &med), Ordering::Less);
    }
}
