//! What ships beside the code stays in step with it: CI builds the image from a prebuilt
//! binary, so nothing else would notice a Dockerfile whose dependency layer no longer matches
//! Cargo.toml, or a compose walk-through that mounts a file the repository lost.

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `path` of every `[[bench]]` and `[[bin]]` target, and `build` when set.
fn declared_paths(manifest: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut in_target = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_target = line == "[[bench]]" || line == "[[bin]]";
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if (in_target && key == "path") || key == "build" {
            paths.push(value.trim().trim_matches('"').to_string());
        }
    }
    paths
}

#[test]
fn the_dockerfile_dependency_layer_stubs_every_cargo_target() {
    let dockerfile = read("Dockerfile");
    let paths = declared_paths(&read("Cargo.toml"));
    assert!(
        paths.iter().any(|p| p.starts_with("bench/")),
        "no bench target found in Cargo.toml: {paths:?}"
    );
    let missing: Vec<_> = paths
        .iter()
        .filter(|p| {
            !dockerfile.contains(&format!("> {p}")) && !dockerfile.contains(&format!(" {p} \\"))
        })
        .collect();
    // Cargo runs build.rs without being told: the build that makes the binary needs it (the
    // dependency layer may build without one).
    if std::path::Path::new(ROOT).join("build.rs").exists() {
        let last_build = dockerfile.rfind("cargo build").expect("a cargo build");
        let copied = dockerfile.find("COPY build.rs").or_else(|| {
            dockerfile
                .lines()
                .find(|l| l.starts_with("COPY") && l.contains(" build.rs"))
                .and_then(|l| dockerfile.find(l))
        });
        assert!(
            copied.is_some_and(|at| at < last_build),
            "build.rs must be copied before the Dockerfile's last cargo build"
        );
    }
    assert!(
        missing.is_empty(),
        "the Dockerfile's dependency layer does not create {missing:?}: cargo cannot read the manifest without them"
    );
}

#[test]
fn the_compose_walk_through_mounts_files_that_exist() {
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&read("docker-compose.yaml")).expect("docker-compose.yaml parses");
    let services = compose["services"].as_mapping().expect("services");
    let mut mounts = 0;
    for (name, service) in services {
        let Some(volumes) = service["volumes"].as_sequence() else {
            continue;
        };
        for volume in volumes.iter().filter_map(|v| v.as_str()) {
            let Some(source) = volume.split(':').next().filter(|s| s.starts_with("./")) else {
                continue;
            };
            mounts += 1;
            assert!(
                std::path::Path::new(ROOT).join(source).is_file(),
                "service {name:?} mounts {source}, which is not in the repository"
            );
        }
    }
    assert!(
        mounts >= 3,
        "expected the relay's, the receiver's and Prometheus' files"
    );
}
