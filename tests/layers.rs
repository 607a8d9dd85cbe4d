//! The library's layers import only the layers before them (the map in `src/lib.rs`): this reads every source
//! file's code (comments aside) for `crate::<layer>` paths and fails on one that points the wrong way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each layer and the layers it may use. Keep in step with the `# Layout` list of `src/lib.rs`.
const ALLOWED: &[(&str, &[&str])] = &[
    ("protocol", &[]),
    ("auth", &[]),
    ("cluster", &[]),
    ("transport", &["protocol"]),
    ("connection", &["protocol", "auth", "transport"]),
    ("mesh", &["protocol", "cluster", "connection"]),
    ("hub", &["protocol", "auth", "transport", "connection", "mesh"]),
    (
        "node",
        &["protocol", "auth", "transport", "connection", "cluster", "mesh", "hub"],
    ),
    ("demo", &["protocol", "hub"]),
    (
        "testing",
        &[
            "protocol",
            "auth",
            "transport",
            "connection",
            "cluster",
            "mesh",
            "hub",
            "node",
            "demo",
        ],
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The layer a file under `src/` belongs to: its first path component, without `.rs`.
fn layer_of(src: &Path, file: &Path) -> Option<String> {
    let first = file.strip_prefix(src).ok()?.components().next()?;
    Some(first.as_os_str().to_str()?.trim_end_matches(".rs").to_owned())
}

/// The `crate::<name>` paths named in a file's code, comments left out.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

#[test]
fn layers_import_only_the_layers_before_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 50,
        "found only {} source files under {}",
        files.len(),
        src.display()
    );
    let mut wrong = Vec::new();
    for file in &files {
        let Some(layer) = layer_of(&src, file) else { continue };
        let Some(may_use) = allowed.get(layer.as_str()) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for used in crate_paths(&text) {
            if used != layer && allowed.contains_key(used.as_str()) && !may_use.contains(&used.as_str()) {
                wrong.push(format!("{} ({layer}) uses crate::{used}", file.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layer map:\n{}", wrong.join("\n"));
}

#[test]
fn every_layer_of_the_library_is_in_the_map() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let known: BTreeSet<&str> = ALLOWED.iter().map(|(layer, _)| *layer).collect();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&src).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().trim_end_matches(".rs").to_owned();
        if entry.path().extension().is_some_and(|ext| ext == "rs") && name != "lib" && !known.contains(name.as_str()) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "layers missing from the map in tests/layers.rs: {missing:?}"
    );
}
