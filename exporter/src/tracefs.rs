//! tracefs: where it is mounted, whether a tracepoint exists, and where a
//! field sits in a tracepoint's record (from its `format` file).

use std::{
    fs,
    path::{Path, PathBuf},
};

/// Where tracefs is mounted on systems that mount it.
const MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// A mounted tracefs.
#[derive(Debug, Clone)]
pub(crate) struct Tracefs {
    root: PathBuf,
}

/// Where a field lies in a tracepoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field {
    pub(crate) offset: u32,
    pub(crate) size: u32,
}

impl Tracefs {
    /// The first mount point that has an `events` folder.
    pub(crate) fn find() -> Option<Self> {
        MOUNTS.iter().map(PathBuf::from).find(|mount| mount.join("events").is_dir()).map(|root| Self { root })
    }

    #[cfg(test)]
    pub(crate) fn at(root: &Path) -> Self {
        Self { root: root.to_path_buf() }
    }

    fn event_dir(&self, category: &str, event: &str) -> PathBuf {
        self.root.join("events").join(category).join(event)
    }

    /// Whether the running kernel has tracepoint `category/event`.
    pub(crate) fn has_event(&self, category: &str, event: &str) -> bool {
        self.event_dir(category, event).is_dir()
    }

    /// The field `name` of `category/event`, or `None` if the format file
    /// cannot be read or has no such field.
    pub(crate) fn field(&self, category: &str, event: &str, name: &str) -> Option<Field> {
        let format = fs::read_to_string(self.event_dir(category, event).join("format")).ok()?;
        parse_field(&format, name)
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }
}

/// Finds `name` in a format file's lines such as
/// `field:pid_t prev_pid;	offset:24;	size:4;	signed:1;`.
fn parse_field(format: &str, name: &str) -> Option<Field> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let declaration = parts.next()?.strip_prefix("field:")?;
        // The name is the last word, without an array suffix.
        let declared = declaration.rsplit(' ').next()?;
        let declared = declared.split('[').next()?;
        if declared != name {
            return None;
        }
        let mut offset = None;
        let mut size = None;
        for part in parts {
            if let Some(value) = part.strip_prefix("offset:") {
                offset = value.parse().ok();
            } else if let Some(value) = part.strip_prefix("size:") {
                size = value.parse().ok();
            }
        }
        Some(Field { offset: offset?, size: size? })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHED_SWITCH: &str = "name: sched_switch\nID: 326\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
        \tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;\n\
        \tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;\n\n\
        print fmt: \"prev_comm=%s\"\n";

    #[test]
    fn parses_offsets_and_sizes() {
        assert_eq!(parse_field(SCHED_SWITCH, "prev_pid"), Some(Field { offset: 24, size: 4 }));
        assert_eq!(parse_field(SCHED_SWITCH, "next_pid"), Some(Field { offset: 56, size: 4 }));
        assert_eq!(parse_field(SCHED_SWITCH, "prev_comm"), Some(Field { offset: 8, size: 16 }));
        assert_eq!(parse_field(SCHED_SWITCH, "pid"), None);
        assert_eq!(parse_field(SCHED_SWITCH, "common"), None);
    }

    #[test]
    fn reads_the_format_file() {
        let dir = std::env::temp_dir().join(format!("kernel-exporter-tracefs-{}", std::process::id()));
        let event = dir.join("events/sched/sched_switch");
        fs::create_dir_all(&event).unwrap();
        fs::write(event.join("format"), SCHED_SWITCH).unwrap();
        let tracefs = Tracefs::at(&dir);
        assert!(tracefs.has_event("sched", "sched_switch"));
        assert!(!tracefs.has_event("sched", "sched_nothing"));
        assert_eq!(tracefs.field("sched", "sched_switch", "next_pid").map(|f| f.offset), Some(56));
        assert_eq!(tracefs.field("sched", "sched_nothing", "next_pid"), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
