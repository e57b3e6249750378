//! tracefs: where it is mounted and whether a tracepoint exists. Optional:
//! raw tracepoints attach without it; when it is mounted, a missing
//! tracepoint is reported by name before anything is loaded.

#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;

/// Where tracefs is mounted on systems that mount it.
const MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// A mounted tracefs.
#[derive(Debug, Clone)]
pub(crate) struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// The first mount point that has an `events` folder.
    pub(crate) fn find() -> Option<Self> {
        MOUNTS.iter().map(PathBuf::from).find(|mount| mount.join("events").is_dir()).map(|root| Self { root })
    }

    #[cfg(test)]
    fn at(root: &Path) -> Self {
        Self { root: root.to_path_buf() }
    }

    /// Whether the running kernel has tracepoint `category/event`.
    pub(crate) fn has_event(&self, category: &str, event: &str) -> bool {
        self.root.join("events").join(category).join(event).is_dir()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn finds_events_by_folder() {
        let dir = std::env::temp_dir().join(format!("kernel-exporter-tracefs-{}", std::process::id()));
        fs::create_dir_all(dir.join("events/sched/sched_switch")).unwrap();
        let tracefs = Tracefs::at(&dir);
        assert!(tracefs.has_event("sched", "sched_switch"));
        assert!(!tracefs.has_event("sched", "sched_nothing"));
        assert!(!tracefs.has_event("nothing", "sched_switch"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
