//! Browsers and reverse proxies, end to end: headless Chromium loads a page
//! from a real nginx that proxies the real gateway binary, all on loopback.
//! This file starts the gateway and nginx (with the location block of
//! `deploy/nginx.conf`, verbatim), then runs `tests/e2e/resume.mjs`, which
//! drives the browser and checks what it saw. See docs/browser-e2e.md.
//!
//! These tests need nginx, Chromium at /usr/bin/chromium, Node.js and
//! `tests/e2e/node_modules`; `scripts/test` installs them. Without them the
//! tests fail (they never skip): a test that cannot run must not look green.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// The gateway is mounted under this prefix, as in deploy/nginx.conf.
const BASE_PATH: &str = "/arcp";
/// The longest a whole browser scenario may take (each takes 15–40 s).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(150);
/// The longest the gateway or nginx may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(15);
const LOCATION_BEGIN: &str = "# BEGIN arcp-gateway location";
const LOCATION_END: &str = "# END arcp-gateway location";

/// The external programs the browser tests drive.
struct Tools {
    nginx: PathBuf,
    node: PathBuf,
    chromium: PathBuf,
}

fn find_program(name: &str, extra_dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra_dirs.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The major version `node --version` reports (`v20.1.0` is 20).
fn node_major_version(node: &Path) -> Option<u32> {
    let output = std::process::Command::new(node)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    text.trim()
        .strip_prefix('v')?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Finds every tool or fails, naming what is missing and how to install it.
fn tools() -> Tools {
    let mut missing = Vec::new();
    let nginx = find_program("nginx", &["/usr/sbin", "/usr/local/sbin", "/sbin"]);
    if nginx.is_none() {
        missing.push("nginx: apt-get install nginx-light (or nginx)".to_owned());
    }
    let chromium = std::env::var_os("ARCP_E2E_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !is_executable(&chromium) {
        missing.push(format!(
            "Chromium at {}: apt-get install chromium",
            chromium.display()
        ));
    }
    let node = find_program("node", &[]);
    match node.as_deref().map(node_major_version) {
        None => missing.push("node: Node.js 20 or newer (with npm)".to_owned()),
        Some(Some(major)) if major >= 20 => {}
        Some(found) => missing.push(format!(
            "node: Node.js 20 or newer, which playwright-core needs (found major version {})",
            found.map_or_else(|| "unknown".to_owned(), |major| major.to_string())
        )),
    }
    let playwright = Path::new(REPO).join("tests/e2e/node_modules/playwright-core/package.json");
    if !playwright.is_file() {
        missing.push("tests/e2e/node_modules: npm ci --prefix tests/e2e".to_owned());
    }
    if !missing.is_empty() {
        let required = std::env::var_os("CI").is_some_and(|value| !value.is_empty())
            || std::env::var("ARCP_E2E_REQUIRED").as_deref() == Ok("1");
        panic!(
            "the browser end-to-end tests cannot run; missing:\n  - {}\n\
             `scripts/test` installs all of these (apt-get as root, npm ci) and then runs \
             the whole suite.\n{}",
            missing.join("\n  - "),
            if required {
                "CI or ARCP_E2E_REQUIRED=1 is set, and these tests are required."
            } else {
                "These tests never skip: a test that cannot run must not look green."
            }
        );
    }
    Tools {
        nginx: nginx.unwrap(),
        node: node.unwrap(),
        chromium,
    }
}

/// A fresh directory for one scenario's configuration, logs and pid file.
/// nginx's workers may run as `nobody`, so it must be traversable. With
/// `ARCP_E2E_KEEP=1` it is left behind for inspection.
fn scenario_dir() -> tempfile::TempDir {
    let keep = std::env::var("ARCP_E2E_KEEP").as_deref() == Ok("1");
    let dir = tempfile::Builder::new()
        .prefix("arcp-browser-e2e-")
        .disable_cleanup(keep)
        .tempdir()
        .expect("create a temporary directory");
    if keep {
        println!("keeping {}", dir.path().display());
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("make the temporary directory traversable");
    dir
}

fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

// ------------------------------------------------------------------ gateway

struct Gateway {
    child: Child,
    /// `IP:PORT`
    address: String,
    dev_token: String,
    log: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts the real binary on an ephemeral loopback port, mounted under
/// [`BASE_PATH`] behind a trusted proxy on 127.0.0.1, and reads the bound
/// address and the generated dev token from its standard output. Its log
/// (stream starts and ends at debug level) goes to `gateway.log`.
async fn start_gateway(dir: &Path, extra: &[&str]) -> Gateway {
    let log = dir.join("gateway.log");
    let stderr = std::fs::File::create(&log).expect("create the gateway log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_arcp-gateway"));
    command
        .args(["--listen", "127.0.0.1:0", "--base-path", BASE_PATH])
        .args(["--trusted-proxy", "127.0.0.1"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ARCP_GATEWAY_") {
            command.env_remove(name);
        }
    }
    command.env("ARCP_GATEWAY_LOG", "info,arcp_gateway::http::sse=debug");
    let mut child = command.spawn().expect("the gateway binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut address, mut dev_token) = (None, None);
    let banner = async {
        while address.is_none() || dev_token.is_none() {
            let Some(line) = lines.next_line().await.expect("read stdout") else {
                break;
            };
            if let Some(rest) = line.strip_prefix("arcp-gateway listening on http://") {
                address = Some(rest.trim().to_owned());
            }
            if let Some(rest) = line.strip_prefix("dev api token (principal `dev`): ") {
                dev_token = Some(rest.trim().to_owned());
            }
        }
    };
    if tokio::time::timeout(START_TIMEOUT, banner).await.is_err() {
        panic!(
            "the gateway printed no start-up banner within {START_TIMEOUT:?}; its log:\n{}",
            tail(&log, 40)
        );
    }
    let (Some(address), Some(dev_token)) = (address, dev_token) else {
        panic!(
            "the gateway exited before its banner; its log:\n{}",
            tail(&log, 40)
        );
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Gateway {
        child,
        address,
        dev_token,
        log,
    }
}

// -------------------------------------------------------------------- nginx

/// A port that was free a moment ago (nginx binds it next; a lost race is
/// retried by [`start_nginx`]).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The `location /arcp/ { ... }` block of deploy/nginx.conf, verbatim, with
/// `proxy_read_timeout` replaced when `read_timeout` is given.
fn deploy_location_block(read_timeout: Option<&str>) -> String {
    let path = Path::new(REPO).join("deploy/nginx.conf");
    let text = std::fs::read_to_string(&path).expect("read deploy/nginx.conf");
    let start = text
        .find(LOCATION_BEGIN)
        .unwrap_or_else(|| panic!("deploy/nginx.conf lacks the line `{LOCATION_BEGIN}`"));
    let end = text[start..]
        .find(LOCATION_END)
        .map(|offset| start + offset)
        .unwrap_or_else(|| panic!("deploy/nginx.conf lacks the line `{LOCATION_END}`"));
    let block = &text[start..end];
    assert!(
        block.contains("proxy_pass http://arcp_gateway;"),
        "the deploy location must proxy to the `arcp_gateway` upstream"
    );
    match read_timeout {
        None => block.to_owned(),
        Some(timeout) => {
            let lines: Vec<String> = block
                .lines()
                .map(|line| {
                    if line.trim_start().starts_with("proxy_read_timeout ") {
                        let indent = &line[..line.len() - line.trim_start().len()];
                        format!("{indent}proxy_read_timeout {timeout};  # shortened by the test")
                    } else {
                        line.to_owned()
                    }
                })
                .collect();
            let replaced = lines.join("\n");
            assert!(
                replaced.contains("shortened by the test"),
                "deploy/nginx.conf's location sets no proxy_read_timeout"
            );
            replaced
        }
    }
}

fn nginx_config(dir: &Path, port: u16, upstream: &str, location: &str) -> String {
    let dir = dir.display();
    let e2e = Path::new(REPO).join("tests/e2e");
    let e2e = e2e.display();
    format!(
        r#"# Written by tests/it/browser.rs for one browser scenario.
daemon off;
master_process on;
worker_processes 1;
pid "{dir}/nginx.pid";
error_log "{dir}/error.log" notice;
events {{
    worker_connections 256;
}}
http {{
    access_log "{dir}/access.log";
    client_body_temp_path "{dir}/client_body";
    proxy_temp_path "{dir}/proxy";
    fastcgi_temp_path "{dir}/fastcgi";
    uwsgi_temp_path "{dir}/uwsgi";
    scgi_temp_path "{dir}/scgi";
    types {{
        text/html html;
        text/javascript js mjs;
    }}
    default_type application/octet-stream;

    upstream arcp_gateway {{
        server {upstream};
        keepalive 32;
    }}

    server {{
        listen 127.0.0.1:{port};
        server_name localhost;

        # From deploy/nginx.conf:
        {location}

        # The test pages, on the same origin as the proxied API.
        location = /e2e/page.html {{
            alias "{e2e}/page.html";
        }}
        location = /e2e/client.html {{
            alias "{e2e}/client.html";
        }}
        location = /favicon.ico {{
            return 204;
        }}
    }}
}}
"#
    )
}

struct Nginx {
    child: Child,
    port: u16,
    bin: PathBuf,
    conf: PathBuf,
    prefix: PathBuf,
    pid_file: PathBuf,
    error_log: PathBuf,
}

/// Live children of `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            process_stat(*pid).is_some_and(|(state, ppid)| ppid == parent && state != 'Z')
        })
        .collect()
}

/// `(state, parent pid)` of a process.
fn process_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn is_alive(pid: u32) -> bool {
    process_stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

fn send_signal(pid: u32, signal: &str) {
    // The shell's builtin `kill`, so procps need not be installed.
    let _ = std::process::Command::new("sh")
        .args([
            "-c",
            "kill -s \"$1\" \"$2\" 2>/dev/null",
            "sh",
            signal,
            &pid.to_string(),
        ])
        .status();
}

impl Nginx {
    /// Every nginx master serving this configuration: the one started here
    /// and any the scenario restarted (named by the pid file).
    fn masters(&self) -> Vec<u32> {
        let mut masters: Vec<u32> = self.child.id().into_iter().collect();
        let from_pid_file = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok());
        if let Some(pid) = from_pid_file {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let ours = String::from_utf8_lossy(&cmdline).contains(&*self.conf.to_string_lossy());
            if ours && !masters.contains(&pid) {
                masters.push(pid);
            }
        }
        masters.into_iter().filter(|pid| is_alive(*pid)).collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets each master stop its workers; SIGKILL whatever is left.
        let masters = self.masters();
        let workers: Vec<u32> = masters.iter().flat_map(|pid| children_of(*pid)).collect();
        for pid in &masters {
            send_signal(*pid, "TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while masters.iter().chain(&workers).any(|pid| is_alive(*pid)) && Instant::now() < deadline
        {
            let _ = self.child.try_wait();
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in masters.iter().chain(&workers) {
            if is_alive(*pid) {
                send_signal(*pid, "KILL");
            }
        }
        let _ = self.child.start_kill();
        let _ = self.child.try_wait();
    }
}

/// Starts nginx in the foreground in front of `gateway`, serving the test
/// pages, and waits until it accepts connections.
async fn start_nginx(
    tools: &Tools,
    dir: &Path,
    gateway: &Gateway,
    read_timeout: Option<&str>,
) -> Nginx {
    let location = deploy_location_block(read_timeout);
    let conf = dir.join("nginx.conf");
    let mut failures = Vec::new();
    for _attempt in 0..3 {
        let port = free_port();
        std::fs::write(&conf, nginx_config(dir, port, &gateway.address, &location))
            .expect("write nginx.conf");
        let stderr = std::fs::File::create(dir.join("nginx.stderr")).expect("nginx.stderr");
        let prefix = format!("{}/", dir.display());
        let mut child = Command::new(&tools.nginx)
            .arg("-c")
            .arg(&conf)
            .args(["-p", &prefix])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", tools.nginx.display()));
        let deadline = Instant::now() + START_TIMEOUT;
        let exited = loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break None;
            }
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not accept connections on port {port} within {START_TIMEOUT:?}:\n{}",
                tail(&dir.join("error.log"), 20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let Some(status) = exited else {
            return Nginx {
                child,
                port,
                bin: tools.nginx.clone(),
                conf: conf.clone(),
                prefix: dir.to_owned(),
                pid_file: dir.join("nginx.pid"),
                error_log: dir.join("error.log"),
            };
        };
        let mut message = String::new();
        let _ = std::fs::File::open(dir.join("nginx.stderr"))
            .and_then(|mut file| file.read_to_string(&mut message));
        message.push_str(&tail(&dir.join("error.log"), 20));
        if !message.contains("Address already in use") {
            panic!("nginx exited at start-up ({status}):\n{message}");
        }
        failures.push(message);
    }
    panic!(
        "nginx could not bind a free port in 3 attempts:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------- scenarios

/// Runs `node tests/e2e/resume.mjs --scenario <scenario>` against nginx and
/// fails with its JSON summary, its progress lines and the logs unless
/// every check passed.
async fn run_scenario(
    tools: &Tools,
    scenario: &str,
    gateway: &Gateway,
    nginx: &Nginx,
    extra: &[&str],
) -> Value {
    let base_url = format!("http://127.0.0.1:{}", nginx.port);
    let gateway_url = format!("http://{}", gateway.address);
    let started = Instant::now();
    let child = Command::new(&tools.node)
        .current_dir(REPO)
        .arg("tests/e2e/resume.mjs")
        .args(["--scenario", scenario])
        .args(["--base-url", &base_url, "--base-path", BASE_PATH])
        .args(["--gateway-url", &gateway_url])
        .arg("--chromium")
        .arg(&tools.chromium)
        .arg("--nginx-bin")
        .arg(&nginx.bin)
        .arg("--nginx-conf")
        .arg(&nginx.conf)
        .arg("--nginx-prefix")
        .arg(format!("{}/", nginx.prefix.display()))
        .arg("--nginx-pid-file")
        .arg(&nginx.pid_file)
        .arg("--nginx-error-log")
        .arg(&nginx.error_log)
        .arg("--gateway-log")
        .arg(&gateway.log)
        .args(extra)
        .env("ARCP_E2E_TOKEN", &gateway.dev_token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let output = match tokio::time::timeout(SCENARIO_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.expect("wait for node"),
        Err(_) => panic!(
            "scenario {scenario} did not finish within {SCENARIO_TIMEOUT:?}\n\
             --- nginx error log ---\n{}\n--- gateway log ---\n{}",
            tail(&nginx.error_log, 30),
            tail(&gateway.log, 30)
        ),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary: Option<Value> = serde_json::from_str(&stdout).ok();
    let passed = output.status.success()
        && summary.as_ref().is_some_and(|summary| {
            summary["ok"] == true
                && summary["scenario"] == scenario
                && summary["checks"].as_array().is_some_and(|checks| {
                    !checks.is_empty() && checks.iter().all(|c| c["ok"] == true)
                })
        });
    if !passed {
        panic!(
            "browser scenario `{scenario}` failed ({}) after {:.1} s\n\
             --- summary (stdout) ---\n{stdout}\n--- progress (stderr) ---\n{stderr}\n\
             --- nginx error log ---\n{}\n--- gateway log ---\n{}",
            output.status,
            started.elapsed().as_secs_f64(),
            tail(&nginx.error_log, 30),
            tail(&gateway.log, 30)
        );
    }
    println!(
        "browser scenario `{scenario}` passed in {:.1} s\n{stderr}{stdout}",
        started.elapsed().as_secs_f64()
    );
    summary.unwrap_or_default()
}

/// Native `EventSource`, no client code: the stream is cut by nginx's
/// proxy_read_timeout (2 s, shorter than the 5 s heartbeat, on purpose), by
/// the gateway's own --max-stream-duration-sec (4 s), and by killing nginx's
/// worker mid-stream. The browser reconnects by itself with Last-Event-ID and
/// the HttpOnly cookie, and sees every event exactly once, in order.
#[tokio::test]
async fn native_event_source_resumes_exactly_once_through_nginx_across_drops() {
    let tools = tools();
    let dir = scenario_dir();
    let gateway = start_gateway(
        dir.path(),
        &[
            "--heartbeat-interval-sec",
            "5",
            "--max-stream-duration-sec",
            "4",
            "--retry-ms",
            "500",
        ],
    )
    .await;
    let nginx = start_nginx(&tools, dir.path(), &gateway, Some("2s")).await;
    let summary = run_scenario(&tools, "resume", &gateway, &nginx, &[]).await;
    assert!(summary["observed"]["reconnects"].as_u64().unwrap_or(0) >= 3);
}

/// /v1/client.js behind nginx: cut off from the gateway (nginx stopped) for
/// longer than a 3 s resume window, the page reports RESUME_WINDOW_EXPIRED
/// and the `expired` status once nginx is back, and stops reconnecting.
#[tokio::test]
async fn client_js_reports_an_expired_resume_window_and_stops() {
    let tools = tools();
    let dir = scenario_dir();
    let gateway = start_gateway(
        dir.path(),
        &[
            "--resume-window-sec",
            "3",
            "--heartbeat-interval-sec",
            "1",
            "--retry-ms",
            "500",
        ],
    )
    .await;
    let nginx = start_nginx(&tools, dir.path(), &gateway, None).await;
    let summary = run_scenario(
        &tools,
        "expiry",
        &gateway,
        &nginx,
        &["--resume-window-sec", "3"],
    )
    .await;
    assert_eq!(
        summary["observed"]["fatal"][0]["code"],
        "RESUME_WINDOW_EXPIRED"
    );
}
