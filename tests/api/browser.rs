//! The dashboard in a real browser: Debian's Chromium, headless, driven over the
//! Chrome DevTools Protocol on `--remote-debugging-pipe` (file descriptors 3 and 4,
//! NUL-separated JSON). The pipe needs no WebSocket client and no Node.js, only
//! `serde_json` and two `dup2`s — a CDP crate or Playwright would bring a WebSocket
//! stack or an npm install for the five commands used here.
//!
//! `EDGECACHE_TEST_CHROMIUM` names the browser (default `/usr/bin/chromium`;
//! `scripts/test.sh` installs it with apt-get); without it the test fails and says so.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::dashboard::dashboard_settings;
use crate::helpers::{sessions_in_arm, spawn_app, Client, Store};

fn chromium() -> PathBuf {
    let path = PathBuf::from(
        std::env::var("EDGECACHE_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    assert!(
        path.exists(),
        "Chromium is missing ({}): scripts/test.sh installs it (apt-get install chromium), \
         or set EDGECACHE_TEST_CHROMIUM",
        path.display()
    );
    path
}

/// A pipe whose ends close on exec (the child gets its end by `dup2`).
fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    (fds[0], fds[1])
}

/// A headless Chromium and the DevTools session of one page in it.
struct Browser {
    child: Child,
    commands: File,
    messages: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Self {
        let profile = tempfile::tempdir().unwrap();
        // Chromium reads commands from fd 3 and writes answers and events to fd 4.
        let (cmd_read, cmd_write) = pipe();
        let (msg_read, msg_write) = pipe();
        let mut command = Command::new(chromium());
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl) on
        // descriptors this process owns.
        unsafe {
            command.pre_exec(move || {
                for (from, to) in [(cmd_read, 3), (msg_write, 4)] {
                    if libc::dup2(from, to) < 0 || libc::fcntl(to, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("Chromium starts");
        // SAFETY: each descriptor is ours, open, and wrapped once; the child's ends are
        // closed here after the spawn.
        let (commands, answers) = unsafe {
            libc::close(cmd_read);
            libc::close(msg_write);
            (File::from_raw_fd(cmd_write), File::from_raw_fd(msg_read))
        };
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(answers);
            let mut buf = Vec::new();
            while reader.read_until(0, &mut buf).is_ok_and(|n| n > 0) {
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(message) = serde_json::from_slice::<Value>(&buf) {
                    if tx.send(message).is_err() {
                        break;
                    }
                }
                buf.clear();
            }
        });
        Self {
            child,
            commands,
            messages,
            next_id: 0,
            session: None,
            _profile: profile,
        }
    }

    /// Sends `method` (to the page once attached) and waits for its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .expect("Chromium takes the command");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self
                .messages
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer from Chromium to {method}"));
            if message["id"] == id {
                assert!(
                    message.get("error").is_none(),
                    "{method} failed: {}",
                    message["error"]
                );
                return message["result"].clone();
            }
        }
    }

    /// Opens a page and attaches to it: later commands go to the page.
    fn open_page(&mut self) {
        let target = self.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = self.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        self.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
    }

    fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        );
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
    }

    /// The value of `expression` in the page (JSON-serialisable).
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page, at most 20 s.
    fn wait_for(&mut self, expression: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.eval(&format!("document.readyState === 'complete' && !!({expression})")) != json!(true) {
            assert!(Instant::now() < deadline, "the page never showed `{expression}`");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the page at `path`: all of it, or what the viewport shows.
    fn screenshot(&mut self, path: &Path, whole: bool) {
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": whole}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the test reads off the rendered page.
const FACTS: &str = r#"JSON.stringify({
  login: !!document.querySelector('form#login'),
  tables: document.querySelectorAll('table').length,
  arms: [...document.querySelectorAll('tr.arm')].map(r => ({
    flag: r.dataset.flag, arm: r.dataset.arm,
    reads: Number(r.querySelector('.reads').textContent),
    checks: Number(r.querySelector('.checks').textContent),
    nines: r.querySelector('.nines').textContent })),
  charts: [...document.querySelectorAll('svg.chart')].map(s => s.dataset.flag + '/' + s.dataset.metric),
  lines: document.querySelectorAll('svg.chart path.line').length,
  overflow: document.documentElement.scrollWidth > window.innerWidth,
  height: document.documentElement.scrollHeight })"#;

fn facts(browser: &mut Browser) -> Value {
    serde_json::from_str(browser.eval(FACTS).as_str().expect("the facts as JSON")).unwrap()
}

#[actix_web::test]
async fn the_dashboard_renders_both_arms_and_a_chart_per_metric_in_chromium() {
    chromium();
    let store = Store::new();
    let settings = dashboard_settings("[flags.consistency_checks]\nsample = 1.0\n");
    let a = spawn_app(&store, &settings);
    let b = spawn_app(&store, &settings);

    // Traffic in both arms of a 50% read-your-writes rollout, over a few snapshot
    // intervals: writes through A, reads through B, which has the items cached, so
    // the off arm reads its own writes stale.
    for round in 0..6 {
        for on in [true, false] {
            for (i, id) in sessions_in_arm("edgecache.read-your-writes", on, &format!("b{round}"), 8)
                .iter()
                .enumerate()
            {
                let item = format!("/v1/articles/r{round}-{on}-{i}");
                assert_eq!(
                    Client::new().put(&a, &item, json!({"title": "v1"})).await.status,
                    201
                );
                assert_eq!(Client::new().get(&b, &item).await.status, 200);
                let mut user = Client::with_id(id);
                assert_eq!(user.put(&a, &item, json!({"title": "v2"})).await.status, 200);
                for _ in 0..3 {
                    assert_eq!(user.get(&b, &item).await.status, 200);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let base = b.address.clone();
    let token = crate::dashboard::TOKEN;
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let (laptop, phone) = (
        screenshots.join("dashboard.png"),
        screenshots.join("dashboard-phone.png"),
    );
    let (laptop_path, phone_path) = (laptop.clone(), phone.clone());
    // The browser is driven from a thread of its own: the nodes' background tasks
    // (the dashboard's snapshots among them) run on this test's runtime.
    let (refused, page, phone_facts) = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::start();
        browser.open_page();
        browser.viewport(1280, 900, false);

        // Without the token: the log-in form, nothing of the dashboard.
        browser.navigate(&format!("{base}/admin/dashboard"));
        browser.wait_for("document.querySelector('form#login')");
        let refused = facts(&mut browser);

        // Log in through the form; the cookie it sets opens the dashboard.
        browser.eval(&format!(
            "document.querySelector('#token').value = '{token}'; document.querySelector('form#login').submit(); true"
        ));
        browser.wait_for("document.querySelectorAll('tr.arm').length > 0");
        let page = facts(&mut browser);
        let height = page["height"].as_u64().unwrap_or(900).clamp(900, 8000) as u32;
        browser.viewport(1280, height, false);
        browser.screenshot(&laptop_path, true);

        browser.viewport(390, 844, true);
        browser.navigate(&format!("{base}/admin/dashboard"));
        browser.wait_for("document.querySelectorAll('tr.arm').length > 0");
        let phone_facts = facts(&mut browser);
        browser.screenshot(&phone_path, false);
        (refused, page, phone_facts)
    })
    .await
    .expect("the browser session");

    assert_eq!(refused["login"], true, "{refused}");
    assert_eq!(refused["tables"], 0, "nothing of the dashboard without the token");
    assert!(refused["arms"].as_array().unwrap().is_empty());

    let arms = page["arms"].as_array().unwrap();
    for arm in ["on", "off"] {
        let row = arms
            .iter()
            .find(|r| r["flag"] == "read-your-writes" && r["arm"] == arm)
            .unwrap_or_else(|| panic!("a row for the {arm} arm: {page}"));
        assert!(row["reads"].as_u64().unwrap() > 0, "{row}");
        assert!(row["checks"].as_u64().unwrap() > 0, "{row}");
    }
    let charts: Vec<&str> = page["charts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for metric in [
        "reads",
        "hit_ratio",
        "stale_own_rate",
        "regressions",
        "p50",
        "p99",
    ] {
        let name = format!("read-your-writes/{metric}");
        assert_eq!(
            charts.iter().filter(|c| **c == name).count(),
            1,
            "one chart of {name}"
        );
    }
    for metric in [
        "cache_hit_ratio",
        "cache_bytes",
        "live_sessions",
        "origin_reads",
        "forwards",
    ] {
        let name = format!("node/{metric}");
        assert_eq!(
            charts.iter().filter(|c| **c == name).count(),
            1,
            "one chart of {name}"
        );
    }
    assert!(page["lines"].as_u64().unwrap() > 0, "the charts have lines");
    assert_eq!(
        phone_facts["overflow"], false,
        "the page fits a phone's width: {phone_facts}"
    );
    assert!(
        std::fs::metadata(&laptop).unwrap().len() > 10_000,
        "{}",
        laptop.display()
    );
    assert!(
        std::fs::metadata(&phone).unwrap().len() > 10_000,
        "{}",
        phone.display()
    );
    a.stop().await;
    b.stop().await;
}
