//! The level-triggered loop body: snapshot -> desired state -> diff -> apply.

use std::time::Instant;

use sluice_k8s::Snapshot;
use tracing::{debug, info, warn};

use crate::{
    dataplane::Dataplane,
    model::{NodeInfo, Translator},
    plan::Planner,
};

/// What one reconcile did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub frontends: usize,
    pub backends: usize,
    pub entry_writes: usize,
    pub changed_frontends: usize,
    pub micros: u128,
}

pub struct Reconciler<D: Dataplane> {
    dataplane: D,
    planner: Planner,
    translator: Translator,
    node_name: String,
    /// Warnings that hold now (the invalid-objects gauge).
    invalid: usize,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    after_apply: Option<AfterApply>,
}

/// Called with every diff once the dataplane holds it, and the programmed
/// state after it (e.g. [`crate::sockdestroy::after_apply`]).
pub type AfterApply = Box<dyn FnMut(&crate::plan::Diff, &crate::plan::Programmed) + Send>;

impl<D: Dataplane> Reconciler<D> {
    /// Adopts whatever the dataplane already holds.
    pub fn new(dataplane: D, node_name: impl Into<String>) -> Result<Self, D::Error> {
        let programmed = dataplane.programmed()?;
        if !programmed.frontends.is_empty() {
            info!(
                frontends = programmed.frontends.len(),
                backends = programmed.backends.len(),
                "adopted programmed state"
            );
        }
        Ok(Self {
            dataplane,
            planner: Planner::adopt(programmed),
            translator: Translator::new(),
            node_name: node_name.into(),
            invalid: 0,
            metrics: None,
            after_apply: None,
        })
    }

    /// What the dataplane holds, as last applied.
    pub fn programmed(&self) -> &crate::plan::Programmed {
        self.planner.programmed()
    }

    /// Map entries in use (for the fill-ratio metrics).
    pub fn fill(&self) -> crate::plan::Fill {
        self.planner.fill()
    }

    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    /// For work a dataplane does beside diffs (e.g. IPVS deleting drained real servers).
    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dataplane
    }

    /// Export sync and programming-latency metrics.
    pub fn set_metrics(&mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) {
        self.metrics = Some(metrics);
    }

    /// Runs `hook` after every successfully applied, non-empty diff.
    pub fn set_after_apply(&mut self, hook: AfterApply) {
        self.after_apply = Some(hook);
    }

    /// Also program external frontends (NodePort, LB IPs, ExternalIPs).
    pub fn set_external(&mut self, cfg: Option<crate::external::ExternalConfig>) {
        self.translator.set_external(cfg);
    }

    /// Converges the dataplane to `snap`. On a failed apply the dataplane is
    /// read back so the next call compares against what is really there.
    pub fn reconcile(&mut self, snap: &Snapshot) -> Result<Stats, D::Error> {
        let start = Instant::now();
        let node = NodeInfo::from_snapshot(&self.node_name, snap);
        let computed = self.translator.compute(snap, &node);
        for w in &computed.new_warnings {
            warn!("{w}");
        }
        self.invalid = computed.warning_count;
        let desired = computed.state;
        let translated = start.elapsed();
        let diff = self.planner.plan_changed(&desired, &computed.changed);
        let planned = start.elapsed();
        let mut stats = Stats {
            frontends: desired.frontends.len(),
            entry_writes: diff.entry_writes(),
            changed_frontends: diff.frontends_changed.len() + diff.frontends_removed.len(),
            ..Default::default()
        };
        if !diff.is_empty() {
            if let Err(e) = self.dataplane.apply(&diff) {
                match self.dataplane.programmed() {
                    Ok(p) => self.planner.reset(p),
                    Err(e2) => warn!(error = %e2, "reading the dataplane back failed"),
                }
                if let Some(m) = &self.metrics {
                    m.error("apply");
                }
                return Err(e);
            }
        }
        let applied = start.elapsed();
        self.planner.commit(&diff, desired);
        if !diff.is_empty() {
            if let Some(hook) = self.after_apply.as_mut() {
                hook(&diff, self.planner.programmed());
            }
        }
        stats.backends = self.planner.programmed().backends.len();
        stats.micros = start.elapsed().as_micros();
        if let Some(m) = &self.metrics {
            self.observe(m, snap, &stats, self.invalid);
        }
        self.translator.forget_recomputed();
        if stats.entry_writes > 0 {
            info!(
                frontends = stats.frontends,
                backends = stats.backends,
                changed = stats.changed_frontends,
                writes = stats.entry_writes,
                micros = stats.micros as u64,
                translate_us = translated.as_micros() as u64,
                plan_us = (planned - translated).as_micros() as u64,
                write_us = (applied - planned).as_micros() as u64,
                "dataplane synced"
            );
        } else {
            debug!(micros = stats.micros as u64, "nothing to change");
        }
        Ok(stats)
    }

    fn observe(&self, m: &crate::metrics::Metrics, snap: &Snapshot, stats: &Stats, invalid: usize) {
        m.sync_duration.observe(stats.micros as f64 / 1e6);
        m.frontends.set(stats.frontends as i64);
        m.backends.set(stats.backends as i64);
        m.invalid_objects.set(invalid as i64);
        if stats.entry_writes > 0 {
            let now = std::time::SystemTime::now();
            for key in self.translator.recomputed() {
                for slice in snap.slices_of(key) {
                    let trigger = slice
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("endpoints.kubernetes.io/last-change-trigger-time"))
                        .and_then(|t| crate::metrics::trigger_time(t));
                    if let Some(latency) = trigger.and_then(|t| now.duration_since(t).ok()) {
                        m.programming_latency.observe(latency.as_secs_f64());
                    }
                }
            }
        }
        if snap.synced {
            m.set_ready();
        }
    }
}
