//! `cargo xtask lint`'s architecture checks on the library's sources
//! (`crates/mediamem/src`):
//!
//! * **`unsafe` stays in its places**: `sys/` (kernel interfaces), the
//!   mapping primitive (`mapping.rs`) and the memory core's storage
//!   (`memory/`). Elsewhere an `unsafe` block or `unsafe impl` is an error,
//!   except `unsafe impl MemoryBackend for` (the promise a backend makes
//!   about the pointers its mapping returns) and `unsafe fn` declarations
//!   (contracts for the caller, with no unsafe operation inside).
//! * **Layers read bottom-up**: each module has a layer, and a module may
//!   only name modules of lower layers (`crate::x`), so the import graph has
//!   no cycle and the memory core imports no allocator kind.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Layer of each top-level module; a module may use strictly lower layers.
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("sys", 0),
    ("memory", 1),
    ("mapping", 1),
    ("kind", 2),
    ("fd", 2),
    ("shm", 3),
    ("dmabuf", 3),
    ("udmabuf", 4),
    ("heap", 4),
    ("drm", 4),
    ("phys", 5),
    ("layout", 5),
    // Fences: uses dmabuf for the memory's fd and drm to find vgem.
    ("sync", 5),
    ("pool", 6),
    ("ipc", 6),
    ("provider", 6),
    ("probe", 7),
    // Uses ipc's receive policy and fd admission.
    ("unixfd", 7),
    ("gst_bridge", 7),
    // Uses dma-buf memory, layouts and pools.
    ("v4l2", 7),
];

/// Names re-exported at the crate root that are modules of the core.
const ALIASES: &[(&str, &str)] = &[("allocator", "memory"), ("system", "memory")];

/// Top-level paths where `unsafe` may appear.
const UNSAFE_PLACES: &[&str] = &["sys/", "mapping.rs", "memory/"];

fn rs_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`None` for `lib.rs`).
fn module_of(rel: &str) -> Option<String> {
    let first = rel.split('/').next()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_owned())
}

/// Code lines: comments and doc comments dropped.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let code = line.split("//").next().unwrap_or("");
        (!code.trim().is_empty()).then_some((i + 1, code))
    })
}

/// The modules a line names as `crate::name`.
fn named_modules(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
            .collect();
        if !name.is_empty() {
            let name = ALIASES
                .iter()
                .find(|(alias, _)| *alias == name)
                .map_or(name.clone(), |(_, real)| (*real).to_owned());
            out.push(name);
        }
    }
    out
}

fn unsafe_violation(code: &str) -> bool {
    let mut rest = code;
    while let Some(at) = rest.find("unsafe") {
        let before = rest[..at].chars().last();
        let after = &rest[at + "unsafe".len()..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // part of a longer word (`undocumented_unsafe_blocks`)
        }
        let after = after.trim_start();
        if after.starts_with('{') {
            return true;
        }
        if let Some(imp) = after.strip_prefix("impl") {
            let mut imp = imp.trim_start();
            if imp.starts_with('<') {
                // Skip the generics: `impl<B: MemoryBackend> ...`.
                let mut depth = 0;
                let end = imp
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '<' => 1,
                            '>' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map_or(imp.len(), |(i, _)| i + 1);
                imp = imp[end..].trim_start();
            }
            if !imp.starts_with("MemoryBackend for") {
                return true;
            }
        }
    }
    false
}

/// Every violation in the sources under `src`, as lines of text.
pub fn check(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rs_files(src, &mut files);
    files.sort();
    let layers: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let mut problems = Vec::new();
    for path in files {
        let rel = path
            .strip_prefix(src)
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        let Ok(text) = fs::read_to_string(&path) else {
            problems.push(format!("{rel}: unreadable"));
            continue;
        };
        let allowed_unsafe = UNSAFE_PLACES.iter().any(|p| rel.starts_with(p));
        let module = module_of(&rel);
        let layer = module.as_deref().map(|m| layers.get(m).copied());
        if let (Some(m), Some(None)) = (&module, layer) {
            problems.push(format!(
                "{rel}: module `{m}` has no layer: add it to LAYERS in xtask/src/arch.rs"
            ));
        }
        for (n, code) in code_lines(&text) {
            if !allowed_unsafe && unsafe_violation(code) {
                problems.push(format!(
                    "{rel}:{n}: `unsafe` outside sys/, mapping.rs and memory/: {}",
                    code.trim()
                ));
            }
            let (Some(m), Some(Some(own))) = (&module, layer) else {
                continue;
            };
            for used in named_modules(code) {
                if &used == m {
                    continue;
                }
                match layers.get(used.as_str()) {
                    Some(&l) if l < own => {}
                    Some(&l) => problems.push(format!(
                        "{rel}:{n}: `{m}` (layer {own}) uses `{used}` (layer {l}): \
                         modules may only use lower layers"
                    )),
                    None => {} // a crate-root item (`crate::Memory`), checked by its module
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_detection() {
        assert!(unsafe_violation("let x = unsafe { f() };"));
        assert!(unsafe_violation("unsafe impl Send for X {}"));
        assert!(!unsafe_violation(
            "unsafe impl MemoryBackend for FdBackend {"
        ));
        assert!(!unsafe_violation("pub unsafe fn alloc_unowned("));
        assert!(!unsafe_violation("undocumented_unsafe_blocks = 1"));
    }

    #[test]
    fn modules_and_aliases() {
        assert_eq!(module_of("memory/lock.rs").as_deref(), Some("memory"));
        assert_eq!(module_of("fd.rs").as_deref(), Some("fd"));
        assert_eq!(module_of("lib.rs"), None);
        assert_eq!(
            named_modules("use crate::allocator::X; crate::fd::f(crate::Memory)"),
            vec!["memory".to_owned(), "fd".to_owned()]
        );
    }

    #[test]
    fn the_library_passes() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("crates/mediamem/src");
        let problems = check(&src);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}
