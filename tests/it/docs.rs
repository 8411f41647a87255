//! Keeps the documentation true: every metric the gateway exposes is in
//! docs/metrics.md (and nothing there is stale), every flag of `--help` is
//! in docs/configuration.md, `--help` is grouped, and the README's links and
//! commands point at things that exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::metrics::scrape;
use crate::support::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(REPO).join(relative))
        .unwrap_or_else(|error| panic!("cannot read {relative}: {error}"))
}

/// Names of the form `arcp_gateway_…` in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("arcp_gateway_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn every_metric_is_documented_and_every_documented_metric_exists() {
    // One job and one request, so the families keyed by agent and route
    // have a series; every other family exists from the start.
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let job = server
        .submit_ok(
            &session.session_id,
            ALICE_TOKEN,
            serde_json::json!({"agent": "echo"}),
        )
        .await;
    server
        .wait_for_job(&session.session_id, &job, ALICE_TOKEN, |job| {
            job["status"] == "success"
        })
        .await;
    let scrape = scrape(&server).await;
    let docs = read("docs/metrics.md");
    let mut exposed = BTreeSet::new();
    for line in scrape.text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split(' ');
        let (family, kind) = (words.next().unwrap(), words.next().unwrap());
        let sample = match kind {
            "counter" => format!("{family}_total"),
            "info" => format!("{family}_info"),
            _ => family.to_owned(),
        };
        assert!(
            docs.contains(&format!("| `{sample}` | {kind} |")),
            "docs/metrics.md has no table row for `{sample}` ({kind})"
        );
        exposed.insert(sample);
    }
    assert!(exposed.len() >= 20, "{exposed:?}");
    assert_eq!(exposed.len(), scrape.families().len());
    // (The bare prefix is named once, as the prefix.)
    for name in metric_names(&docs)
        .into_iter()
        .filter(|name| name != "arcp_gateway_")
    {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        assert!(
            exposed.contains(base),
            "docs/metrics.md names `{name}`, which the gateway does not expose"
        );
    }
}

/// The binary's help output for `flag` (`-h` or `--help`).
fn help(flag: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_arcp-gateway"))
        .arg(flag)
        .output()
        .expect("run arcp-gateway");
    assert!(output.status.success(), "{flag} exits 0");
    String::from_utf8(output.stdout).expect("utf-8 help")
}

/// Every `--long-flag` in a text.
fn long_flags(text: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for (index, _) in text.match_indices("--") {
        let tail = &text[index + 2..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '-'))
            .unwrap_or(tail.len());
        let name = tail[..end].trim_end_matches('-');
        let preceded_by_word = text[..index]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-');
        if !name.is_empty() && !preceded_by_word {
            flags.insert(format!("--{name}"));
        }
    }
    flags
}

#[test]
fn help_is_grouped_the_way_operators_look_for_things() {
    let long = help("--help");
    let headings = [
        "Listen:",
        "Auth:",
        "Storage:",
        "Agents:",
        "Limits and timing:",
        "Browser and proxy:",
        "Logging and metrics:",
    ];
    let mut at = 0;
    for heading in headings {
        let found = long[at..]
            .find(&format!("\n{heading}\n"))
            .unwrap_or_else(|| {
                panic!("--help has no {heading:?} section after byte {at}:\n{long}")
            });
        at += found + heading.len();
    }
    // `--data-dir` and `--agents` come before the tuning flags.
    let position = |flag: &str| {
        long.find(flag)
            .unwrap_or_else(|| panic!("{flag} in --help"))
    };
    assert!(position("--data-dir") < position("--resume-window-sec"));
    assert!(position("--agents") < position("--max-events-per-session"));
    for text in [&long, &help("-h")] {
        assert!(text.contains("ARCP_GATEWAY_LOG"), "{text}");
        assert!(text.contains("docs/configuration.md"), "{text}");
    }
    assert!(help("-h").len() < long.len());
}

#[test]
fn every_flag_in_help_is_in_the_configuration_reference() {
    let reference = read("docs/configuration.md");
    let flags = long_flags(&help("--help"));
    assert!(flags.len() >= 25, "{flags:?}");
    for flag in flags {
        if flag == "--help" || flag == "--version" {
            continue;
        }
        assert!(
            reference.contains(&format!("`{flag}`")),
            "docs/configuration.md does not describe {flag}"
        );
    }
}

/// Markdown link targets (`](target)`) of a text.
fn link_targets(text: &str) -> Vec<String> {
    text.match_indices("](")
        .filter_map(|(index, _)| {
            let tail = &text[index + 2..];
            tail.find(')').map(|end| tail[..end].to_owned())
        })
        .collect()
}

/// The heading anchors of a Markdown file, as GitHub makes them.
fn anchors(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix('#'))
        .map(|heading| {
            heading
                .trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

/// Checks every relative link of `file`: the target exists and, with a
/// `#fragment` into Markdown, the heading does.
fn check_links(file: &str) {
    let text = read(file);
    let directory = Path::new(file).parent().unwrap_or(Path::new(""));
    for target in link_targets(&text) {
        if target.starts_with("http://") || target.starts_with("https://") {
            continue;
        }
        let (path, fragment) = match target.split_once('#') {
            Some((path, fragment)) => (path, Some(fragment)),
            None => (target.as_str(), None),
        };
        let resolved: PathBuf = if path.is_empty() {
            PathBuf::from(file)
        } else {
            directory.join(path)
        };
        let full = Path::new(REPO).join(&resolved);
        assert!(
            full.exists(),
            "{file} links to {target}, which does not exist"
        );
        if let (Some(fragment), true) = (fragment, resolved.extension().is_some_and(|e| e == "md"))
        {
            let text = std::fs::read_to_string(&full).unwrap();
            assert!(
                anchors(&text).contains(fragment),
                "{file} links to {target}: no such heading"
            );
        }
    }
}

#[test]
fn the_readme_is_a_front_door_whose_links_and_commands_exist() {
    let readme = read("README.md");
    let size = readme.len();
    assert!(
        (10 * 1024..=15 * 1024).contains(&size),
        "README.md is {size} bytes; keep it between 10 and 15 KB"
    );
    assert!(
        readme.contains("https://"),
        "the README links the ARCP spec"
    );
    // The two quick-start commands.
    assert!(readme.contains("cargo run --release"));
    assert!(readme.contains("bash scripts/test"));
    assert!(Path::new(REPO).join("scripts/test").is_file());
    // Every flag it names exists.
    let flags = long_flags(&help("--help"));
    // (Cargo's own flags aside.)
    let cargo_flags = ["--release", "--bench", "--all-targets", "--check"];
    for flag in long_flags(&readme) {
        if cargo_flags.contains(&flag.as_str()) {
            continue;
        }
        assert!(
            flags.contains(&flag),
            "README.md names {flag}, which is not a flag"
        );
    }
    // Every repository path it names in backticks exists.
    for (index, _) in readme.match_indices('`') {
        let tail = &readme[index + 1..];
        let Some(end) = tail.find('`') else { break };
        let word = &tail[..end];
        let is_path = [
            "scripts/",
            "examples/",
            "deploy/",
            "docs/",
            "tests/",
            "web/",
            "benches/",
        ]
        .iter()
        .any(|prefix| word.starts_with(prefix))
            && !word.contains(' ');
        if is_path {
            assert!(
                Path::new(REPO).join(word).exists(),
                "README.md names {word}, which does not exist"
            );
        }
    }
    check_links("README.md");
}

#[test]
fn links_between_the_documents_resolve() {
    let mut files = vec!["ARCHITECTURE.md".to_owned(), "CONFORMANCE.md".to_owned()];
    for entry in std::fs::read_dir(Path::new(REPO).join("docs")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") {
            files.push(format!("docs/{name}"));
        }
    }
    for file in files {
        check_links(&file);
    }
}

#[test]
fn architecture_is_a_map_not_a_benchmark_report() {
    let text = read("ARCHITECTURE.md");
    assert!(
        text.len() < 20 * 1024,
        "ARCHITECTURE.md is {} bytes",
        text.len()
    );
    for figure in ["events/s", "MB/s", "p99", "measured", "RSS"] {
        assert!(
            !text.contains(figure),
            "ARCHITECTURE.md quotes a measurement ({figure}); those belong in docs/performance.md"
        );
    }
}
