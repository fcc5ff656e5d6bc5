//! `docs/development.md`'s "Every file" names each source file of the crates, and only files
//! that exist: the map stays the tree as it is.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, relative to it, with `/` separators.
fn sources(dir: &Path, under: &Path, found: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, under, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(under).unwrap();
            found.insert(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

#[test]
fn the_map_names_every_file_and_only_files_that_exist() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let page = std::fs::read_to_string(root.join("docs/development.md")).unwrap();
    let map = &page[page.find("\n## Every file").expect("the section")..];
    let mut named = BTreeSet::new();
    let mut crate_dir: Option<String> = None;
    for line in map.lines() {
        if let Some(heading) = line.strip_prefix("### `") {
            crate_dir = Some(heading.trim_end_matches('`').to_string());
        } else if let (Some(dir), Some(item)) = (&crate_dir, line.strip_prefix("- `")) {
            let file = item.split('`').next().unwrap();
            named.insert(format!("{dir}/{file}"));
        }
    }
    let mut on_disk = BTreeSet::new();
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let src = entry.unwrap().path().join("src");
        let mut found = BTreeSet::new();
        sources(&src, &src, &mut found);
        let name = src.parent().unwrap().file_name().unwrap().to_string_lossy();
        on_disk.extend(found.into_iter().map(|f| format!("crates/{name}/src/{f}")));
    }
    let missing: Vec<_> = on_disk.difference(&named).collect();
    let gone: Vec<_> = named.difference(&on_disk).collect();
    assert!(
        missing.is_empty(),
        "files the map does not name: {missing:?}"
    );
    assert!(
        gone.is_empty(),
        "files the map names that do not exist: {gone:?}"
    );
}
