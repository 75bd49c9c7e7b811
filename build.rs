//! Build facts for `hookrelay_build_info`: the git commit (short) and the rustc version, each
//! "unknown" when the build cannot ask (an image build has no `.git`). `HOOKRELAY_COMMIT` in
//! the environment names the commit instead (the Dockerfile's build argument).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=HOOKRELAY_COMMIT");
    println!("cargo:rerun-if-env-changed=RUSTC");
    let commit = std::env::var("HOOKRELAY_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| run("git", &["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    // A new commit moves HEAD or the branch it names: rebuild the label then.
    for path in [
        run("git", &["rev-parse", "--git-path", "HEAD"]),
        run("git", &["symbolic-ref", "-q", "HEAD"])
            .and_then(|head| run("git", &["rev-parse", "--git-path", &head])),
        run("git", &["rev-parse", "--git-path", "packed-refs"]),
    ]
    .into_iter()
    .flatten()
    // A missing path would make cargo rerun this (and rebuild the crate) every time.
    .filter(|path| std::path::Path::new(path).exists())
    {
        println!("cargo:rerun-if-changed={path}");
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let version = run(&rustc, &["--version"]).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=HOOKRELAY_COMMIT={commit}");
    println!("cargo:rustc-env=HOOKRELAY_RUSTC={version}");
}

/// The first line `program args` prints, or `None` when it cannot run or fails.
fn run(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}
