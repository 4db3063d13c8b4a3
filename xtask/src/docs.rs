//! `cargo xtask docs`: build the book (`mdbook build docs`) and check that
//! every relative link and heading anchor in `docs/` and `README.md`
//! resolves.
//!
//! Anchors are computed the way mdbook makes heading ids (see
//! [`heading_id`]); after a build the computed ids are also compared with
//! the `id`s in the HTML mdbook wrote, so a change in mdbook's rule shows up
//! as an error here rather than as dead anchors in the published book.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::cargo::{cargo, workspace_root};
use crate::util::{cargo_bin_dir, find_on_path, is_executable, run_checked, step};

/// mdbook release to install when none is found (builds with rustc 1.88+).
pub const MDBOOK_VERSION: &str = "0.5.4";

/// Build the book with mdbook and check every relative link and anchor.
///
/// Checks every Markdown file under docs/src and README.md: a link to a
/// file must name one that exists (inside docs/src for the book's pages,
/// since the built book holds nothing else), and a `#anchor` must name a
/// heading of the target page. A broken link is reported as
/// `FILE:LINE: TARGET: why`. mdbook is installed with `cargo install` when
/// it is missing. Example: `cargo xtask docs`
#[derive(clap::Args, Default)]
pub struct Options {
    /// Only check the links; do not build the book (needs no mdbook).
    #[arg(long)]
    no_build: bool,
}

pub fn docs(Options { no_build }: Options) -> Result<()> {
    let root = workspace_root();
    if !no_build {
        let mdbook = ensure_mdbook()?;
        let mut cmd = Command::new(&mdbook);
        cmd.args(["build", "docs"]).current_dir(&root);
        run_checked(&mut cmd, "mdbook build docs")?;
        step!("built the book in docs/book/");
    }
    let pages = collect_pages(&root)?;
    let broken = check_links(&root, &pages);
    let mut problems: Vec<String> = broken.iter().map(ToString::to_string).collect();
    if !no_build {
        problems.extend(compare_with_html(&root, &pages)?);
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        bail!(
            "{} broken link(s) or anchor(s) in docs/ and README.md (listed above as FILE:LINE: TARGET)",
            problems.len()
        );
    }
    let links: usize = pages.values().map(|p| p.links.len()).sum();
    step!("{links} links in {} pages resolve", pages.len());
    Ok(())
}

/// Find mdbook on PATH or in ~/.cargo/bin, installing it when missing.
fn ensure_mdbook() -> Result<PathBuf> {
    let locate = || {
        find_on_path("mdbook").or_else(|| {
            let p = cargo_bin_dir()?.join("mdbook");
            is_executable(&p).then_some(p)
        })
    };
    if let Some(p) = locate() {
        return Ok(p);
    }
    step!("mdbook not found; installing mdbook {MDBOOK_VERSION} (a few minutes)...");
    run_checked(
        cargo().args([
            "install",
            &format!("mdbook@{MDBOOK_VERSION}"),
            "--locked",
            "--no-default-features",
            "--features",
            "search",
        ]),
        "cargo install mdbook",
    )?;
    locate()
        .context("`cargo install mdbook` succeeded but mdbook is not on PATH nor in ~/.cargo/bin")
}

/// A Markdown page: its heading ids and its links.
#[derive(Debug, Default)]
pub(crate) struct Page {
    pub(crate) ids: BTreeSet<String>,
    pub(crate) links: Vec<Link>,
}

/// A link as written: 1-based line and the target between the parentheses.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) line: usize,
    pub(crate) target: String,
}

/// A link that does not resolve.
#[derive(Debug)]
pub(crate) struct Broken {
    pub(crate) file: PathBuf,
    pub(crate) line: usize,
    pub(crate) target: String,
    pub(crate) why: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (file, line, target, why) = (self.file.display(), self.line, &self.target, &self.why);
        write!(f, "{file}:{line}: {target}: {why}")
    }
}

/// README.md and every `.md` under docs/src, keyed by path relative to `root`.
pub(crate) fn collect_pages(root: &Path) -> Result<BTreeMap<PathBuf, Page>> {
    let mut files = vec![PathBuf::from("README.md")];
    let mut dirs = vec![PathBuf::from("docs/src")];
    while let Some(dir) = dirs.pop() {
        let entries = fs::read_dir(root.join(&dir))
            .with_context(|| format!("reading {}", root.join(&dir).display()))?;
        for entry in entries {
            let name = PathBuf::from(entry?.file_name());
            let rel = dir.join(&name);
            if root.join(&rel).is_dir() {
                dirs.push(rel);
            } else if name.extension().is_some_and(|e| e == "md") {
                files.push(rel);
            }
        }
    }
    let mut pages = BTreeMap::new();
    for rel in files {
        let text = fs::read_to_string(root.join(&rel))
            .with_context(|| format!("reading {}", root.join(&rel).display()))?;
        pages.insert(rel, parse_page(&text));
    }
    Ok(pages)
}

/// Heading ids and links of one page, skipping fenced code blocks and
/// inline code spans.
pub(crate) fn parse_page(text: &str) -> Page {
    let mut page = Page::default();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut fence: Option<&str> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if let Some(f) = fence {
            if trimmed.starts_with(f) {
                fence = None;
            }
            continue;
        }
        if let Some(f) = ["```", "~~~"].into_iter().find(|f| trimmed.starts_with(f)) {
            fence = Some(f);
            continue;
        }
        if let Some(heading) = atx_heading(raw) {
            // mdbook numbers repeated ids: `x`, `x-1`, `x-2`...
            let id = heading_id(heading);
            let n = seen.entry(id.clone()).or_insert(0);
            page.ids.insert(if *n == 0 {
                id.clone()
            } else {
                format!("{id}-{n}")
            });
            *n += 1;
        }
        let line = mask_code_spans(raw);
        page.links
            .extend(link_targets(&line).into_iter().map(|target| Link {
                line: i + 1,
                target,
            }));
    }
    page
}

/// The text of an ATX heading (`## Text`), if `line` is one.
fn atx_heading(line: &str) -> Option<&str> {
    let hashes = line.len() - line.trim_start_matches('#').len();
    if !(1..=6).contains(&hashes) {
        return None;
    }
    let rest = &line[hashes..];
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    Some(rest.trim().trim_end_matches('#').trim())
}

/// The id mdbook gives a heading: an explicit `{#id}` if there is one, else
/// the heading's text (link targets, code marks and emphasis removed),
/// lowercased, with whitespace turned into `-` and every character that is
/// not alphanumeric, `_` or `-` dropped.
pub(crate) fn heading_id(heading: &str) -> String {
    if let Some(start) = heading.rfind("{#") {
        if let Some(id) = heading[start + 2..].strip_suffix('}') {
            return id.to_string();
        }
    }
    let text = link_text_only(heading);
    text.chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                Some(c.to_lowercase().next().unwrap_or(c))
            } else if c.is_whitespace() {
                Some('-')
            } else {
                None
            }
        })
        .collect()
}

/// `[text](target)` -> `text`, so that a link's target does not become part
/// of a heading's id.
fn link_text_only(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("](") {
        let Some(end) = rest[i + 2..].find(')') else {
            break;
        };
        out.push_str(&rest[..i]);
        rest = &rest[i + 2 + end + 1..];
    }
    out.push_str(rest);
    out
}

/// `line` with the contents of inline code spans replaced by spaces.
fn mask_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
            out.push(c);
        } else {
            out.push(if in_code { ' ' } else { c });
        }
    }
    out
}

/// The targets of the inline links (`[text](target "title")`) and reference
/// definitions (`[label]: target`) on one line.
fn link_targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].split_whitespace().next().unwrap_or("");
        out.push(target.trim_matches(|c| c == '<' || c == '>').to_string());
        rest = &after[end..];
    }
    let t = line.trim_start();
    if let (true, Some(i)) = (t.starts_with('['), t.find("]: ")) {
        if let Some(target) = t[i + 3..].split_whitespace().next() {
            out.push(target.to_string());
        }
    }
    out
}

/// Every link of every page that does not resolve.
pub(crate) fn check_links(root: &Path, pages: &BTreeMap<PathBuf, Page>) -> Vec<Broken> {
    let mut broken = Vec::new();
    for (file, page) in pages {
        for link in &page.links {
            if let Err(why) = resolve(root, file, &link.target, pages) {
                broken.push(Broken {
                    file: file.clone(),
                    line: link.line,
                    target: link.target.clone(),
                    why,
                });
            }
        }
    }
    broken
}

/// Whether `target`, written in `file`, resolves; if not, why.
fn resolve(
    root: &Path,
    file: &Path,
    target: &str,
    pages: &BTreeMap<PathBuf, Page>,
) -> std::result::Result<(), String> {
    if target.is_empty() {
        return Err("empty link target".into());
    }
    if target.contains("://") || target.starts_with("mailto:") || target.starts_with("//") {
        return Ok(()); // not a relative link
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let dest = if path.is_empty() {
        file.to_path_buf()
    } else {
        normalize(&file.parent().unwrap_or(Path::new("")).join(path))
            .ok_or_else(|| "points above the repository root".to_string())?
    };
    if !root.join(&dest).exists() {
        return Err(format!("{} does not exist", dest.display()));
    }
    if file.starts_with("docs/src") && !dest.starts_with("docs/src") {
        return Err(format!(
            "{} is outside docs/src, so the built book does not contain it",
            dest.display()
        ));
    }
    let Some(anchor) = anchor else { return Ok(()) };
    let Some(page) = pages.get(&dest) else {
        return Err(format!(
            "an anchor into {}, which is not a checked page",
            dest.display()
        ));
    };
    if page.ids.contains(anchor) {
        Ok(())
    } else {
        Err(format!(
            "no heading in {} has the id `{anchor}`",
            dest.display()
        ))
    }
}

/// `a/b/../c` -> `a/c`; `None` if it climbs above the start.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// Every heading id computed for a book page must be an `id` in the HTML
/// mdbook wrote for it (docs/book/PAGE.html).
fn compare_with_html(root: &Path, pages: &BTreeMap<PathBuf, Page>) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for (file, page) in pages {
        let Ok(rel) = file.strip_prefix("docs/src") else {
            continue;
        };
        if rel == Path::new("SUMMARY.md") {
            continue;
        }
        let html_path = root.join("docs/book").join(rel).with_extension("html");
        let html = fs::read_to_string(&html_path)
            .with_context(|| format!("reading {} (written by mdbook)", html_path.display()))?;
        for id in &page.ids {
            if !html.contains(&format!("id=\"{id}\"")) {
                problems.push(format!(
                    "{}: heading id `{id}` computed here is not in {}: mdbook's id rule changed, update docs::heading_id",
                    file.display(),
                    html_path.display()
                ));
            }
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests;
