//! The daemon's own kernel-side cost: run count and run time of each of
//! its BPF programs, from the kernel's run statistics (`BPF_ENABLE_STATS`,
//! held on by [`crate::kernel::bpf::Kernel`]), and how full its hash maps are
//! against their bounds.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use aya::maps::MapError;

use crate::exposition::self_families::{MAP_ENTRIES, MAP_MAX_ENTRIES, MAP_UPDATE_FAILURES, RUN_SECONDS, RUNS};
use crate::{
    collectors::Collector,
    exposition::encode::{Encoder, Series},
    kernel::bpf::Kernel,
};

/// Bound: one series per program in the object (a few dozen), only those
/// loaded.
pub(crate) struct ProgramStats {
    kernel: Arc<Kernel>,
    series: HashMap<String, (Series, Series)>,
    map_series: HashMap<String, (Series, Series)>,
    /// (name, seconds, runs) of the last scrape, kept for its capacity.
    scratch: Mutex<Vec<(String, f64, u64)>>,
    /// By map name; bound: the maps programs create entries in.
    failure_series: HashMap<&'static str, Series>,
}

impl ProgramStats {
    pub(crate) fn new(kernel: Arc<Kernel>) -> Self {
        let mut series = HashMap::new();
        kernel.program_stats(|name, _, _| {
            series.insert(
                name.to_owned(),
                (Series::new(&RUN_SECONDS, &[("program", name)]), Series::new(&RUNS, &[("program", name)])),
            );
        });
        let mut map_series = HashMap::new();
        kernel.map_names(|name| {
            map_series.insert(
                name.to_owned(),
                (Series::new(&MAP_ENTRIES, &[("map", name)]), Series::new(&MAP_MAX_ENTRIES, &[("map", name)])),
            );
        });
        let mut failure_series = HashMap::new();
        kernel.map_update_failures(|name, _| {
            failure_series.insert(name, Series::new(&MAP_UPDATE_FAILURES, &[("map", name)]));
        });
        Self { kernel, series, map_series, scratch: Mutex::new(Vec::new()), failure_series }
    }
}

impl Collector for ProgramStats {
    fn collect(&self, out: &mut Encoder<'_>) -> Result<(), MapError> {
        let mut rows = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
        // Names are reused across scrapes: only the numbers change.
        let mut filled = 0;
        let mut record = |name: &str, run_time: std::time::Duration, runs: u64| {
            if filled < rows.len() {
                let row = &mut rows[filled];
                if row.0 != name {
                    row.0.clear();
                    row.0.push_str(name);
                }
                row.1 = run_time.as_secs_f64();
                row.2 = runs;
            } else {
                rows.push((name.to_owned(), run_time.as_secs_f64(), runs));
            }
            filled += 1;
        };
        // Without run statistics the kernel would report zeros, which
        // would read as programs that never run: the families are left out.
        if self.kernel.run_stats_on() {
            self.kernel.program_stats(&mut record);
            rows.truncate(filled);
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            out.family(&RUN_SECONDS);
            for (name, seconds, _) in rows.iter() {
                if let Some((series, _)) = self.series.get(name) {
                    out.sample_f64(series, *seconds);
                }
            }
            out.family(&RUNS);
            for (name, _, runs) in rows.iter() {
                if let Some((_, series)) = self.series.get(name) {
                    out.sample(series, *runs);
                }
            }
        }
        // Reuse the scratch rows: (name, entries, bound).
        let mut filled = 0;
        self.kernel.map_entries(|name, entries, bound| {
            if filled < rows.len() {
                let row = &mut rows[filled];
                row.0.clear();
                row.0.push_str(name);
                row.1 = bound as f64;
                row.2 = entries;
            } else {
                rows.push((name.to_owned(), bound as f64, entries));
            }
            filled += 1;
        });
        rows.truncate(filled);
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        out.family(&MAP_ENTRIES);
        for (name, _, entries) in rows.iter() {
            if let Some((series, _)) = self.map_series.get(name) {
                out.sample(series, *entries);
            }
        }
        out.family(&MAP_MAX_ENTRIES);
        for (name, bound, _) in rows.iter() {
            if let Some((_, series)) = self.map_series.get(name) {
                out.sample(series, *bound as u64);
            }
        }
        out.family(&MAP_UPDATE_FAILURES);
        self.kernel.map_update_failures(|name, failures| {
            if let Some(series) = self.failure_series.get(name) {
                out.sample(series, failures);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_follow_the_rules() {
        assert!(RUN_SECONDS.is_valid());
        assert!(RUNS.is_valid());
        assert!(MAP_ENTRIES.is_valid());
        assert!(MAP_MAX_ENTRIES.is_valid());
        assert!(MAP_UPDATE_FAILURES.is_valid());
    }
}
