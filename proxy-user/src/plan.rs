//! From the desired state and what the dataplane holds to the smallest ordered
//! change set. Ids stay stable: a backend keeps its id as long as any
//! frontend uses it, a frontend keeps its revnat id while it exists, and both
//! are recovered from the dataplane after a restart.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use sluice_k8s::OrdMap;

use crate::model::{BackendAddr, Changed, DesiredState, Frontend, FrontendKey};

pub type BackendId = u32;
pub type RevNatId = u32;

/// One frontend as the dataplane holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammedFrontend {
    pub revnat_id: RevNatId,
    /// Backend ids in slot order (slot 1 is `slots[0]`).
    pub slots: Vec<BackendId>,
    pub affinity_timeout: Option<u32>,
}

/// Everything the dataplane holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    pub frontends: BTreeMap<FrontendKey, ProgrammedFrontend>,
    pub backends: BTreeMap<BackendId, BackendAddr>,
}

/// A frontend created or changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendChange {
    pub key: FrontendKey,
    pub old: Option<ProgrammedFrontend>,
    pub new: ProgrammedFrontend,
}

/// An ordered change set. A dataplane applies it in field order: new backends
/// first (so no slot ever names a missing backend), then frontends (each one
/// filling slots before shrinking its count), then removals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub backends_added: Vec<(BackendId, BackendAddr)>,
    pub frontends_changed: Vec<FrontendChange>,
    pub frontends_removed: Vec<(FrontendKey, ProgrammedFrontend)>,
    pub backends_removed: Vec<(BackendId, BackendAddr)>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.backends_added.is_empty()
            && self.frontends_changed.is_empty()
            && self.frontends_removed.is_empty()
            && self.backends_removed.is_empty()
    }

    /// Number of map entries this diff writes or deletes (for metrics and tests).
    pub fn entry_writes(&self) -> usize {
        let slot_writes: usize = self
            .frontends_changed
            .iter()
            .map(|c| {
                let old = c.old.as_ref().map_or(&[][..], |o| &o.slots[..]);
                let changed = c.new.slots.iter().enumerate().filter(|(i, id)| old.get(*i) != Some(id)).count();
                changed + old.len().saturating_sub(c.new.slots.len()) + 1
            })
            .sum();
        self.backends_added.len()
            + slot_writes
            + self.frontends_removed.iter().map(|(_, f)| f.slots.len() + 1).sum::<usize>()
            + self.backends_removed.len()
    }
}

/// Keeps every surviving backend in its slot, puts new ones in the holes, and
/// moves tail entries into the remaining holes, so a one-endpoint change
/// rewrites O(1) slots.
pub fn assign_slots(old: &[BackendId], new: &BTreeSet<BackendId>) -> Vec<BackendId> {
    let mut slots: Vec<Option<BackendId>> =
        old.iter().map(|id| new.contains(id).then_some(*id)).collect();
    let kept: BTreeSet<BackendId> = slots.iter().flatten().copied().collect();
    let mut fresh = new.iter().filter(|id| !kept.contains(id)).copied();
    for slot in &mut slots {
        if slot.is_none() {
            *slot = fresh.next();
        }
    }
    slots.extend(fresh.map(Some));
    // Compact: fill remaining holes from the tail.
    let mut i = 0;
    while i < slots.len() {
        if slots[i].is_none() {
            while slots.last() == Some(&None) {
                slots.pop();
            }
            if i < slots.len() {
                slots.swap_remove(i);
            }
        }
        i += 1;
    }
    slots.into_iter().flatten().collect()
}

/// Map entries in use per family, kept up to date on every commit so the
/// fill-ratio metrics cost O(1) per update.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fill {
    /// Services map entries (frontend plus slots).
    pub svc4: usize,
    pub svc6: usize,
    /// Backends map entries.
    pub be4: usize,
    pub be6: usize,
}

impl Fill {
    fn of(p: &Programmed) -> Self {
        let mut f = Self::default();
        for (k, fe) in &p.frontends {
            f.frontend(k, fe, 1);
        }
        for be in p.backends.values() {
            f.backend(be, 1);
        }
        f
    }

    fn frontend(&mut self, key: &FrontendKey, fe: &ProgrammedFrontend, sign: isize) {
        let n = 1 + fe.slots.len();
        let slot = if key.addr.is_ipv4() { &mut self.svc4 } else { &mut self.svc6 };
        *slot = slot.saturating_add_signed(sign * n as isize);
    }

    fn backend(&mut self, be: &BackendAddr, sign: isize) {
        let slot = if be.addr.is_ipv4() { &mut self.be4 } else { &mut self.be6 };
        *slot = slot.saturating_add_signed(sign);
    }
}

/// Scratch state of one plan.
#[derive(Default)]
struct Work {
    diff: Diff,
    new_ids: HashMap<BackendAddr, BackendId>,
    new_id_set: HashSet<BackendId>,
    new_revnats: HashSet<RevNatId>,
    refs_delta: HashMap<BackendId, isize>,
}

/// Plans changes and tracks what has been applied.
#[derive(Debug, Default)]
pub struct Planner {
    programmed: Programmed,
    by_addr: HashMap<BackendAddr, BackendId>,
    refs: HashMap<BackendId, u32>,
    /// The desired frontends last committed, to skip unchanged ones cheaply
    /// in a full comparison (shares its structure with the translator's).
    last: OrdMap<FrontendKey, Frontend>,
    /// Revnat ids in use.
    revnats: HashSet<RevNatId>,
    next_backend: BackendId,
    next_revnat: RevNatId,
    /// The next plan compares everything (after adopting or a reset).
    full_pending: bool,
    fill: Fill,
}

impl Planner {
    /// Starts from what the dataplane already holds (empty on a fresh node).
    pub fn adopt(programmed: Programmed) -> Self {
        let by_addr = programmed.backends.iter().map(|(id, a)| (*a, *id)).collect();
        let mut refs = HashMap::new();
        for f in programmed.frontends.values() {
            for id in &f.slots {
                *refs.entry(*id).or_default() += 1;
            }
        }
        let next_backend = programmed.backends.keys().max().map_or(1, |m| m + 1);
        let next_revnat =
            programmed.frontends.values().map(|f| f.revnat_id).max().map_or(1, |m| m + 1);
        let revnats = programmed.frontends.values().map(|f| f.revnat_id).collect();
        let fill = Fill::of(&programmed);
        Self {
            programmed,
            by_addr,
            refs,
            last: OrdMap::new(),
            revnats,
            next_backend,
            next_revnat,
            full_pending: true,
            fill,
        }
    }

    pub fn programmed(&self) -> &Programmed {
        &self.programmed
    }

    /// Map entries in use, as of the last commit.
    pub fn fill(&self) -> Fill {
        self.fill
    }

    fn alloc_backend(&mut self, taken: &HashSet<BackendId>) -> BackendId {
        // Ids only grow (wrapping at u32::MAX), skipping ones in use.
        loop {
            let id = self.next_backend;
            self.next_backend = self.next_backend.checked_add(1).unwrap_or(1);
            if !self.programmed.backends.contains_key(&id) && !taken.contains(&id) {
                return id;
            }
        }
    }

    fn alloc_revnat(&mut self, taken: &HashSet<RevNatId>) -> RevNatId {
        loop {
            let id = self.next_revnat;
            self.next_revnat = self.next_revnat.checked_add(1).unwrap_or(1);
            if !taken.contains(&id) && !self.revnats.contains(&id) {
                return id;
            }
        }
    }

    /// The changes that take the dataplane from what it holds to `desired`,
    /// comparing every frontend.
    pub fn plan(&mut self, desired: &DesiredState) -> Diff {
        self.plan_changed(desired, &Changed::All)
    }

    /// The changes that take the dataplane from what it holds to `desired`,
    /// looking only at the frontends `changed` names (the translator vouches
    /// that the others are as last committed). The first plan after adopting
    /// or a reset compares everything whatever `changed` says.
    pub fn plan_changed(&mut self, desired: &DesiredState, changed: &Changed) -> Diff {
        let mut work = Work::default();
        match changed {
            Changed::Keys(keys) if !self.full_pending => {
                for key in keys {
                    match desired.frontends.get(key) {
                        Some(fe) => self.plan_one(key, fe, &mut work),
                        None => self.plan_removal(key, &mut work),
                    }
                }
            }
            _ => {
                for (key, fe) in &desired.frontends {
                    if self.programmed.frontends.contains_key(key) && self.last.get(key) == Some(fe) {
                        continue;
                    }
                    self.plan_one(key, fe, &mut work);
                }
                let gone: Vec<FrontendKey> = self
                    .programmed
                    .frontends
                    .keys()
                    .filter(|k| !desired.frontends.contains_key(*k))
                    .copied()
                    .collect();
                for key in &gone {
                    self.plan_removal(key, &mut work);
                }
                // Orphans (e.g. adopted backends no frontend uses) go too.
                for id in self.programmed.backends.keys() {
                    if self.refs.get(id).copied().unwrap_or(0) == 0 {
                        work.refs_delta.entry(*id).or_default();
                    }
                }
                self.full_pending = false;
            }
        }
        let mut diff = work.diff;
        for (id, delta) in work.refs_delta {
            let now = self.refs.get(&id).copied().unwrap_or(0) as isize + delta;
            if now <= 0 {
                if let Some(addr) = self.programmed.backends.get(&id) {
                    diff.backends_removed.push((id, *addr));
                }
            }
        }
        diff.backends_removed.sort_unstable();
        diff
    }

    fn plan_one(&mut self, key: &FrontendKey, fe: &Frontend, work: &mut Work) {
        let old = self.programmed.frontends.get(key).cloned();
        let old = old.as_ref();
        let mut ids = BTreeSet::new();
        for addr in fe.backends.iter() {
            let id = match self.by_addr.get(addr).or_else(|| work.new_ids.get(addr)) {
                Some(id) => *id,
                None => {
                    let id = self.alloc_backend(&work.new_id_set);
                    work.new_ids.insert(*addr, id);
                    work.new_id_set.insert(id);
                    work.diff.backends_added.push((id, *addr));
                    id
                }
            };
            ids.insert(id);
        }
        let old_slots = old.map_or(&[][..], |o| &o.slots[..]);
        let slots = assign_slots(old_slots, &ids);
        let revnat_id = match old {
            Some(o) => o.revnat_id,
            None => {
                let id = self.alloc_revnat(&work.new_revnats);
                work.new_revnats.insert(id);
                id
            }
        };
        let new = ProgrammedFrontend { revnat_id, slots, affinity_timeout: fe.affinity_timeout };
        if old == Some(&new) {
            return;
        }
        for id in old_slots {
            *work.refs_delta.entry(*id).or_default() -= 1;
        }
        for id in &new.slots {
            *work.refs_delta.entry(*id).or_default() += 1;
        }
        work.diff.frontends_changed.push(FrontendChange { key: *key, old: old.cloned(), new });
    }

    fn plan_removal(&mut self, key: &FrontendKey, work: &mut Work) {
        if let Some(old) = self.programmed.frontends.get(key) {
            for id in &old.slots {
                *work.refs_delta.entry(*id).or_default() -= 1;
            }
            work.diff.frontends_removed.push((*key, old.clone()));
        }
    }

    /// Records that `diff` was applied and `desired` is now programmed.
    pub fn commit(&mut self, diff: &Diff, desired: DesiredState) {
        for (id, addr) in &diff.backends_added {
            self.fill.backend(addr, 1);
            self.programmed.backends.insert(*id, *addr);
            self.by_addr.insert(*addr, *id);
        }
        for c in &diff.frontends_changed {
            if let Some(old) = &c.old {
                for id in &old.slots {
                    if let Some(n) = self.refs.get_mut(id) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
            for id in &c.new.slots {
                *self.refs.entry(*id).or_default() += 1;
            }
            if let Some(old) = &c.old {
                self.fill.frontend(&c.key, old, -1);
            }
            self.fill.frontend(&c.key, &c.new, 1);
            self.revnats.insert(c.new.revnat_id);
            self.programmed.frontends.insert(c.key, c.new.clone());
        }
        for (key, old) in &diff.frontends_removed {
            for id in &old.slots {
                if let Some(n) = self.refs.get_mut(id) {
                    *n = n.saturating_sub(1);
                }
            }
            self.fill.frontend(key, old, -1);
            self.revnats.remove(&old.revnat_id);
            self.programmed.frontends.remove(key);
        }
        for (id, addr) in &diff.backends_removed {
            self.fill.backend(addr, -1);
            self.programmed.backends.remove(id);
            self.by_addr.remove(addr);
            self.refs.remove(id);
        }
        // A persistent map: this shares the translator's structure.
        self.last = desired.frontends;
    }

    /// Forgets the shortcut of unchanged frontends (after a failed apply the
    /// dataplane is re-read and everything is compared again).
    pub fn reset(&mut self, programmed: Programmed) {
        *self = Self::adopt(programmed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Proto, Scope};
    use sluice_k8s::ObjectKey;
    use std::net::{IpAddr, Ipv4Addr};

    fn fk(last: u8) -> FrontendKey {
        FrontendKey { addr: IpAddr::V4(Ipv4Addr::new(198, 19, 0, last)), port: 80, proto: Proto::Tcp, scope: Scope::Cluster }
    }

    fn be(last: u8) -> BackendAddr {
        BackendAddr { addr: IpAddr::V4(Ipv4Addr::new(198, 18, 1, last)), port: 8080, proto: Proto::Tcp }
    }

    fn desired(fes: &[(u8, &[u8])]) -> DesiredState {
        DesiredState {
            frontends: fes
                .iter()
                .map(|(f, bes)| {
                    (
                        fk(*f),
                        Frontend {
                            service: ObjectKey::new("default", format!("s{f}")),
                            port_name: String::new(),
                            backends: bes.iter().map(|b| be(*b)).collect(),
                            affinity_timeout: None,
                        },
                    )
                })
                .collect(),
        }
    }

    fn step(p: &mut Planner, d: &DesiredState) -> Diff {
        let diff = p.plan(d);
        p.commit(&diff, d.clone());
        diff
    }

    #[test]
    fn assign_slots_keeps_survivors_in_place() {
        let cases: &[(&[u32], &[u32], &[u32])] = &[
            (&[], &[1, 2, 3], &[1, 2, 3]),
            (&[1, 2, 3], &[1, 2, 3], &[1, 2, 3]),
            (&[1, 2, 3], &[1, 3], &[1, 3]),
            (&[1, 2, 3], &[2, 3], &[3, 2]),
            (&[1, 2, 3], &[1, 2, 3, 4], &[1, 2, 3, 4]),
            (&[1, 2, 3], &[1, 4, 3], &[1, 4, 3]),
            (&[1, 2, 3, 4, 5], &[5], &[5]),
            (&[1, 2], &[], &[]),
        ];
        for (old, new, want) in cases {
            let new: BTreeSet<u32> = new.iter().copied().collect();
            assert_eq!(&assign_slots(old, &new)[..], *want, "old={old:?} new={new:?}");
        }
    }

    #[test]
    fn first_sync_adds_backends_before_frontends_and_shares_backends() {
        let mut p = Planner::adopt(Programmed::default());
        let diff = step(&mut p, &desired(&[(1, &[1, 2]), (2, &[2])]));
        assert_eq!(diff.backends_added.len(), 2, "a backend shared by two services is one entry");
        assert_eq!(diff.frontends_changed.len(), 2);
        assert!(diff.backends_removed.is_empty());
    }

    #[test]
    fn one_endpoint_change_at_scale_writes_a_constant_number_of_entries() {
        let mut p = Planner::adopt(Programmed::default());
        let many: Vec<(u8, Vec<u8>)> = (1..=200).map(|f| (f, (1..=10).collect())).collect();
        let d: Vec<(u8, &[u8])> = many.iter().map(|(f, b)| (*f, &b[..])).collect();
        step(&mut p, &desired(&d));
        let mut changed = many.clone();
        changed[7].1 = vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 11];
        let d2: Vec<(u8, &[u8])> = changed.iter().map(|(f, b)| (*f, &b[..])).collect();
        let diff = step(&mut p, &desired(&d2));
        assert_eq!(diff.frontends_changed.len(), 1);
        assert_eq!(diff.backends_added.len(), 1);
        // backend 10 is still used by the other 199 frontends
        assert!(diff.backends_removed.is_empty());
        assert!(diff.entry_writes() <= 3, "expected O(1) writes, saw {}", diff.entry_writes());
        assert_eq!(p.fill(), Fill::of(p.programmed()), "kept fill counts equal a recount");
    }

    #[test]
    fn removing_the_last_user_of_a_backend_removes_it_and_ids_stay_stable() {
        let mut p = Planner::adopt(Programmed::default());
        step(&mut p, &desired(&[(1, &[1, 2]), (2, &[3])]));
        let revnat_2 = p.programmed().frontends[&fk(2)].revnat_id;
        let id_1 = p.by_addr[&be(1)];
        let diff = step(&mut p, &desired(&[(1, &[1]), (2, &[3])]));
        assert_eq!(diff.backends_removed, vec![(p_id(&diff), be(2))]);
        assert_eq!(p.programmed().frontends[&fk(2)].revnat_id, revnat_2);
        assert_eq!(p.by_addr[&be(1)], id_1);
        let diff = step(&mut p, &desired(&[(2, &[3])]));
        assert_eq!(diff.frontends_removed.len(), 1);
        assert_eq!(diff.backends_removed.len(), 1);
    }

    fn p_id(d: &Diff) -> BackendId {
        d.backends_removed[0].0
    }

    #[test]
    fn adopting_programmed_state_plans_nothing_for_the_same_desired_state() {
        let mut p = Planner::adopt(Programmed::default());
        let d = desired(&[(1, &[1, 2]), (2, &[2, 3])]);
        step(&mut p, &d);
        let mut restarted = Planner::adopt(p.programmed().clone());
        assert!(restarted.plan(&d).is_empty(), "a restarted agent must not rewrite what is there");
    }

    #[test]
    fn adopted_orphan_backends_are_removed() {
        let mut programmed = Programmed::default();
        programmed.backends.insert(7, be(7));
        let mut p = Planner::adopt(programmed);
        let diff = p.plan(&desired(&[]));
        assert_eq!(diff.backends_removed, vec![(7, be(7))]);
    }
}
