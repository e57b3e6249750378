//! Documents that cannot drift: every metric the README's sample output
//! shows is one a real scrape serves.

use std::path::Path;

use kernel_exporter_tests::served_metric_names;

/// The metric names in the README's `## Sample output` section: those of
/// `# HELP` and `# TYPE` lines and of sample lines, in the blocks that show
/// a scrape (the other block is `cargo xtask run`'s log).
fn sample_output_metric_names(readme: &str) -> Vec<String> {
    let section = readme.split("\n## Sample output\n").nth(1).expect("README has a ## Sample output section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut names = Vec::new();
    for block in section.split("```").skip(1).step_by(2) {
        if !block.lines().any(|line| line.starts_with("# TYPE ")) {
            continue;
        }
        for line in block.lines().skip(1).filter(|line| !line.starts_with('$') && !line.is_empty()) {
            let name = match line.strip_prefix("# ") {
                Some(comment) => comment.split_whitespace().nth(1).unwrap_or_default(),
                None => line.split(['{', ' ']).next().unwrap_or_default(),
            };
            names.push(name.to_owned());
        }
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_metric_in_the_readmes_sample_output_is_served() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).expect("README");
    let shown = sample_output_metric_names(&readme);
    assert!(shown.len() >= 4, "the sample output shows metrics: {shown:?}");
    let served = served_metric_names();
    let unknown: Vec<&String> = shown.iter().filter(|name| !served.contains(*name)).collect();
    assert!(unknown.is_empty(), "README's sample output shows metrics the exporter does not serve: {unknown:?}");
}
