//! External tools that the deploy tests run: find them, or skip or fail.
//!
//! On a developer machine a missing tool makes its test print a message and
//! return early. With `KEYGATE_REQUIRE_DEPLOY_TOOLS=1`, as `.ci/run` sets, it
//! fails the test instead, so CI cannot pass by skipping.

use std::process::{Command, Stdio};

/// Returns whether missing tools fail the test instead of skipping it.
pub fn tools_required() -> bool {
    std::env::var("KEYGATE_REQUIRE_DEPLOY_TOOLS").is_ok_and(|value| value == "1")
}

/// Reports that `tool` is missing and returns false: prints a skip message,
/// or panics when tools are required.
pub fn skip_or_fail(tool: &str, fix: &str) -> bool {
    let message = format!("{tool} is not available here; {fix}");
    if tools_required() {
        panic!("{message} (KEYGATE_REQUIRE_DEPLOY_TOOLS=1)");
    }
    eprintln!("skipping: {message}");
    false
}

/// Returns whether `program` runs with `args` and exits 0. When it does not, skips
/// or fails as [`skip_or_fail`] does, with `fix` telling how to install it.
pub fn have_tool(program: &str, args: &[&str], fix: &str) -> bool {
    let runs = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    runs || skip_or_fail(program, fix)
}

/// Returns whether the test runs as root, which `chroot` and `unshare` need.
pub fn have_root(purpose: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    root || skip_or_fail("root", &format!("run the tests as root to {purpose}"))
}
