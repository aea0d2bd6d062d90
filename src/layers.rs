//! The module layering, checked: a module may import only modules of its own or a lower
//! layer (see the chart in the crate docs). Reads the sources, so it fails on a new upward
//! `crate::` path whether or not it would compile.

use std::collections::BTreeMap;
use std::path::Path;

/// Layers from the bottom; a module may use its own layer's modules only when listed before
/// it in that layer (so a layer has no cycle either).
const LAYERS: &[&[&str]] = &[
    &[
        "aggregate",
        "random",
        "trace",
        "worker",
        "background",
        "body",
        "consumer",
        "ctx",
        "error",
        "view",
        "proxy_protocol",
        "h2frame",
        "config",
        "cluster",
        "health",
    ],
    &["observe", "admission", "tls", "pool"],
    &["routing", "balance", "plugins"],
    &["runtime"],
    &["proxy", "l4"],
    &["admin", "server", "route_tests", "cli", "bench", "fuzz"],
];

/// (layer, position in it) of a top-level module.
fn place(module: &str) -> Option<(usize, usize)> {
    LAYERS.iter().enumerate().find_map(|(layer, names)| {
        names
            .iter()
            .position(|n| *n == module)
            .map(|at| (layer, at))
    })
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("the source folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its unit tests (tests may reach anywhere).
fn code(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    }
}

#[test]
fn every_import_points_down() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&root).expect("under src");
        let rel_text = rel.to_string_lossy().into_owned();
        if rel_text.ends_with("tests.rs")
            || ["lib.rs", "main.rs", "layers.rs"].contains(&&*rel_text)
        {
            continue;
        }
        let module = rel_text
            .split('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".rs")
            .to_owned();
        let Some(from) = place(&module) else {
            wrong
                .entry(module)
                .or_default()
                .push("is in no layer".into());
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("a source file");
        for (at, _) in code(&text).match_indices("crate::") {
            let used: String = text[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if used == module || used.is_empty() {
                continue;
            }
            let ok =
                place(&used).is_some_and(|to| to.0 < from.0 || (to.0 == from.0 && to.1 < from.1));
            if !ok {
                wrong
                    .entry(rel_text.clone())
                    .or_default()
                    .push(format!("uses `{used}`"));
            }
        }
    }
    for list in wrong.values_mut() {
        list.sort();
        list.dedup();
    }
    assert!(wrong.is_empty(), "imports against the layering: {wrong:#?}");
}
