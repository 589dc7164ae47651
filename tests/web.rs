//! The web client in a real browser: `clients/web/tests/browser.mjs` drives headless
//! Chromium (playwright-core) against `natter serve`. Needs node, `npm ci` in
//! `clients/web/tests` and /usr/bin/chromium (scripts/setup installs them): without them
//! the test is skipped, except under `CI`, where it fails.

mod common;

use std::{path::Path, process::Stdio, time::Duration};

use common::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn missing_tools(web: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        missing.push("node".to_owned());
    }
    if !web.join("tests/node_modules/playwright-core").is_dir() {
        missing.push("clients/web/tests/node_modules (npm ci)".to_owned());
    }
    if !Path::new(CHROMIUM).exists() {
        missing.push(CHROMIUM.to_owned());
    }
    missing
}

#[tokio::test]
async fn web_client_chats_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let web = root.join("clients/web");
    let missing = missing_tools(&web);
    if !missing.is_empty() {
        let what = missing.join(", ");
        if std::env::var_os("CI").is_some() {
            panic!("the browser test needs {what}: run scripts/setup");
        }
        println!("skipped: the browser test needs {what} (run scripts/setup)");
        return;
    }

    let server = Server::start().await;
    // The moderation steps call the admin API with the token `natter serve` wrote.
    let token_file = std::fs::read_to_string(server.data_dir().join("admin.token"))
        .expect("natter serve writes <data-dir>/admin.token");
    let admin_token = token_file
        .trim()
        .strip_prefix("admin:")
        .expect("admin:<token>")
        .to_owned();
    let artifacts = root.join("target/web-artifacts");
    std::fs::create_dir_all(&artifacts).expect("the artifact directory");
    let run = tokio::process::Command::new("node")
        .arg(web.join("tests/browser.mjs"))
        .arg(server.base_url())
        .arg(&artifacts)
        .env("NATTER_ADMIN_TOKEN", admin_token)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(SCRIPT_TIMEOUT, run).await {
        Ok(output) => output.expect("node runs"),
        Err(_) => panic!(
            "the browser test did not finish within {} s",
            SCRIPT_TIMEOUT.as_secs()
        ),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed ({}); screenshots in {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- natter log ---\n{}",
        output.status,
        artifacts.display(),
        server.log_tail(40)
    );
    print!("{stdout}");
}
