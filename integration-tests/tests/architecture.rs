//! The shape of the workspace (ARCHITECTURE.md): services never depend on services,
//! libraries never depend on services, and only the read side spells its schema.
//! Read from `cargo metadata` and the sources, so a new dependency or query that breaks
//! the shape fails here, not in review.

#![expect(clippy::unwrap_used, reason = "a test panics with the failing value")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The composition root: the one crate that depends on every service.
const COMPOSITION_ROOT: &str = "linkwork";

struct Package {
    name: String,
    /// `services` or `crates` (or another top-level folder).
    kind: String,
    /// Every dependency, whatever its kind (normal, dev, build).
    dependencies: Vec<String>,
}

fn workspace() -> (PathBuf, Vec<Package>) {
    let root = linkwork_testkit::workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    let members: Vec<Package> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|package| {
            let manifest = Path::new(package["manifest_path"].as_str().unwrap());
            let relative = manifest.strip_prefix(&root).unwrap_or(manifest);
            Package {
                name: package["name"].as_str().unwrap().to_owned(),
                kind: relative
                    .components()
                    .next()
                    .map(|first| first.as_os_str().to_string_lossy().into_owned())
                    .unwrap_or_default(),
                dependencies: package["dependencies"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|dependency| dependency["name"].as_str().unwrap().to_owned())
                    .collect(),
            }
        })
        .collect();
    (root, members)
}

/// Every (crate, dependency) pair in which `crate` passes `from` and `dependency` is a
/// service.
fn dependencies_on_services(from: impl Fn(&Package) -> bool) -> Vec<(String, String)> {
    let (_, packages) = workspace();
    let services: Vec<&str> = packages
        .iter()
        .filter(|package| package.kind == "services" && package.name != COMPOSITION_ROOT)
        .map(|package| package.name.as_str())
        .collect();
    assert!(
        services.len() >= 4,
        "the services are found (ingest, router, projector, metrics): {services:?}"
    );
    packages
        .iter()
        .filter(|package| from(package))
        .flat_map(|package| {
            package
                .dependencies
                .iter()
                .filter(|dependency| services.contains(&dependency.as_str()))
                .map(|dependency| (package.name.clone(), dependency.clone()))
        })
        .collect()
}

#[test]
fn no_service_library_depends_on_another_service() {
    let found = dependencies_on_services(|package| {
        package.kind == "services" && package.name != COMPOSITION_ROOT
    });
    assert!(
        found.is_empty(),
        "services must share through libraries in crates/, not depend on each other: {found:?}"
    );
}

#[test]
fn no_library_depends_on_a_service() {
    let found = dependencies_on_services(|package| package.kind == "crates");
    assert!(
        found.is_empty(),
        "libraries in crates/ must not depend on services: {found:?}"
    );
}

#[test]
fn only_the_composition_root_depends_on_every_service() {
    let (_, packages) = workspace();
    let root = packages
        .iter()
        .find(|package| package.name == COMPOSITION_ROOT)
        .expect("the linkwork binary crate");
    for service in packages
        .iter()
        .filter(|package| package.kind == "services" && package.name != COMPOSITION_ROOT)
    {
        assert!(
            root.dependencies.contains(&service.name),
            "{COMPOSITION_ROOT} composes {}",
            service.name
        );
    }
}

#[test]
fn the_production_binary_carries_no_demo_and_no_synthetic_borough() {
    let (_, packages) = workspace();
    let root = packages
        .iter()
        .find(|package| package.name == COMPOSITION_ROOT)
        .expect("the linkwork binary crate");
    let demo = packages
        .iter()
        .find(|package| package.name == "linkwork-demo")
        .expect("the demo crate");
    assert!(
        demo.dependencies
            .iter()
            .any(|name| name == "linkwork-borough"),
        "the demo tells the synthetic borough's story: {:?}",
        demo.dependencies
    );
    let carried: Vec<&String> = root
        .dependencies
        .iter()
        .filter(|name| ["linkwork-demo", "linkwork-borough"].contains(&name.as_str()))
        .collect();
    assert!(
        carried.is_empty(),
        "the demo and its borough live beside the production binary, not in it: {carried:?}"
    );
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            into.push(path);
        }
    }
}

#[test]
fn only_the_read_side_names_the_read_model_tables_in_sql() {
    let (root, packages) = workspace();
    let mut offenders: BTreeMap<String, usize> = BTreeMap::new();
    for package in packages
        .iter()
        .filter(|package| package.kind == "services" && package.name != COMPOSITION_ROOT)
    {
        let folder = root
            .join("services")
            .join(package.name.trim_start_matches("linkwork-"));
        let mut files = Vec::new();
        rust_files(&folder.join("src"), &mut files);
        assert!(!files.is_empty(), "{} has sources", folder.display());
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let hits = text.matches("projection.").count()
                + text.matches("pending_provider_events").count()
                + text.matches("projection_meta").count();
            if hits > 0 {
                offenders.insert(
                    file.strip_prefix(&root).unwrap().display().to_string(),
                    hits,
                );
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "the read models' tables are read and written through linkwork-projection only: {offenders:?}"
    );
}
