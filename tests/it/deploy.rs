//! `deploy/arcp-gateway.service`, checked by systemd's own tools:
//! `systemd-analyze verify` (every key known and parsed, the binary
//! executable) must print nothing, and `systemd-analyze security --offline`
//! must rate its exposure at 2.0 or better. Both run without a running
//! systemd, so they work in containers; scripts/test installs the `systemd`
//! package when `systemd-analyze` is missing.

use std::path::Path;
use std::process::Command;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/arcp-gateway.service");

fn systemd_analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze").args(args).output().expect(
        "systemd-analyze must be installed (Debian package `systemd`; scripts/test installs it)",
    )
}

/// The unit, with `ExecStart` pointing at the binary under test (verify
/// checks that the program exists and is executable).
fn unit_under_test(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(UNIT).expect("read deploy/arcp-gateway.service");
    assert!(text.contains("ExecStart=/usr/local/bin/arcp-gateway\n"));
    let text = text.replace(
        "ExecStart=/usr/local/bin/arcp-gateway\n",
        &format!("ExecStart={}\n", env!("CARGO_BIN_EXE_arcp-gateway")),
    );
    let path = dir.join("arcp-gateway.service");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    let output = systemd_analyze(&["verify", "--man=no", unit.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    // Unknown keys and unparsable values are only warnings: none allowed.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned: {stderr}"
    );
}

#[test]
fn the_systemd_unit_is_hardened() {
    let text = std::fs::read_to_string(UNIT).unwrap();
    for directive in [
        "DynamicUser=yes",
        "User=arcp-gateway",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=arcp-gateway",
        "Environment=ARCP_GATEWAY_DATA_DIR=%S/arcp-gateway",
        "LimitNOFILE=",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(text.contains(directive), "the unit lacks {directive:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    // The threshold is on systemd's 0-100 scale: 20 is an exposure of 2.0.
    let output = systemd_analyze(&[
        "security",
        "--offline=true",
        "--threshold=20",
        "--no-pager",
        unit.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "exposure above 2.0:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn the_units_environment_variables_are_real_flags() {
    let text = std::fs::read_to_string(UNIT).unwrap();
    let help = Command::new(env!("CARGO_BIN_EXE_arcp-gateway"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for line in text
        .lines()
        .filter_map(|line| line.strip_prefix("Environment="))
    {
        let name = line.split('=').next().unwrap();
        if name == "ARCP_GATEWAY_LOG" {
            continue; // the log filter, named in the help's epilogue
        }
        assert!(help.contains(name), "{name} is not a gateway variable");
    }
}
