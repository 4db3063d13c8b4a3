use std::fs;
use std::path::{Path, PathBuf};

use super::{check_links, collect_pages, heading_id, parse_page};

#[test]
fn heading_ids_follow_mdbooks_rule() {
    // Lowercase, whitespace to '-', punctuation dropped, code marks and
    // link targets removed; '-' and '_' kept.
    assert_eq!(heading_id("Getting started"), "getting-started");
    assert_eq!(heading_id("`classifier check`"), "classifier-check");
    assert_eq!(
        heading_id("Operate: check, metrics, upgrade, uninstall"),
        "operate-check-metrics-upgrade-uninstall"
    );
    assert_eq!(heading_id("Linkerd's resources"), "linkerds-resources");
    assert_eq!(
        heading_id("`d208d66` (2026-11-25): full run"),
        "d208d66-2026-11-25-full-run"
    );
    assert_eq!(
        heading_id("Trying it: `explain --policy`"),
        "trying-it-explain---policy"
    );
    assert_eq!(heading_id("snake_case and CAPS"), "snake_case-and-caps");
    assert_eq!(
        heading_id("See [the contract](contract.md)"),
        "see-the-contract"
    );
    assert_eq!(heading_id("Custom {#my-id}"), "my-id");
}

#[test]
fn repeated_headings_are_numbered_and_code_blocks_are_skipped() {
    let page = parse_page(
        "# A\n## Notes\n## Notes\n```text\n# not a heading [x](nowhere.md)\n```\n`[y](code.md)` [z](real.md)\n",
    );
    let ids: Vec<&str> = page.ids.iter().map(String::as_str).collect();
    assert_eq!(ids, ["a", "notes", "notes-1"]);
    let targets: Vec<(usize, &str)> = page
        .links
        .iter()
        .map(|l| (l.line, l.target.as_str()))
        .collect();
    assert_eq!(targets, [(7, "real.md")]);
}

/// A scratch repository with README.md and docs/src, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(files: &[(&str, &str)]) -> Self {
        let root = std::env::temp_dir().join(format!(
            "xtask-docs-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&root);
        for (path, text) in files {
            let p = root.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        Scratch(root)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_broken_link_is_reported_with_file_line_and_target() {
    let repo = Scratch::new(&[
        ("README.md", "# Readme\n\nSee [the guide](docs/src/guide.md#set-up).\n"),
        (
            "docs/src/guide.md",
            "# Guide\n\n## Set up\n\nFine: [top](#guide), [readme](intro.md).\nBroken: [gone](missing.md)\nand [bad anchor](intro.md#nowhere), [out](../../README.md).\n",
        ),
        ("docs/src/intro.md", "# Intro\n"),
    ]);
    let pages = collect_pages(&repo.0).unwrap();
    let report: Vec<String> = check_links(&repo.0, &pages)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        report,
        [
            "docs/src/guide.md:6: missing.md: docs/src/missing.md does not exist",
            "docs/src/guide.md:7: intro.md#nowhere: no heading in docs/src/intro.md has the id `nowhere`",
            "docs/src/guide.md:7: ../../README.md: README.md is outside docs/src, so the built book does not contain it",
        ]
    );
    assert!(Path::new(&repo.0).join("README.md").exists());
}
