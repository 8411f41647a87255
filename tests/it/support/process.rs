//! The real `arcp-gateway` binary as a child process, started as a user
//! would and killed on drop.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::within;

pub struct GatewayProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT`, as printed at start-up.
    pub base: String,
    /// The generated dev token, when no `--token` was given.
    pub dev_token: Option<String>,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl GatewayProcess {
    /// Starts `arcp-gateway --listen 127.0.0.1:0 ARGS` and reads the bound
    /// address (and the dev token, if one is printed) from standard output.
    pub async fn start(args: &[&str]) -> GatewayProcess {
        let generates_token = !args.contains(&"--token");
        let mut child = Command::new(env!("CARGO_BIN_EXE_arcp-gateway"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("ARCP_GATEWAY_TOKENS")
            .env_remove("ARCP_GATEWAY_SECRETS")
            .env_remove("ARCP_GATEWAY_DATA_DIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the gateway binary starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut base, mut dev_token) = (None, None);
        within("the start-up banner", async {
            while base.is_none() || (generates_token && dev_token.is_none()) {
                let line = lines
                    .next_line()
                    .await
                    .expect("read stdout")
                    .expect("the gateway exited during start-up");
                if let Some(address) = line.strip_prefix("arcp-gateway listening on ") {
                    base = Some(address.trim().to_owned());
                }
                if let Some(rest) = line.strip_prefix("dev api token (principal `dev`): ") {
                    dev_token = Some(rest.trim().to_owned());
                }
            }
        })
        .await;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        GatewayProcess {
            child,
            base: base.unwrap_or_default(),
            dev_token,
        }
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = within("the killed gateway to exit", self.child.wait()).await;
    }
}
