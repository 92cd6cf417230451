//! The status page in a real browser: headless Chromium driven through
//! chromedriver (WebDriver). The page lists the running pipelines, plots
//! the last seconds, shows a failed pipeline's error, pauses and resumes a
//! pipeline (checked through the API), and opens a pipeline's partitions.
//! A screenshot under load is kept as an artifact.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use ferry_tests::*;
use serde_json::{Value, json};

/// A chromedriver of this test's own, on a free port; killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/services installs chromium-driver)");
        assert!(
            wait_until(Duration::from_secs(20), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "chromedriver did not listen"
        );
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// Polls `check` every 200 ms for at most `secs` seconds.
async fn eventually<F: AsyncFnMut() -> bool>(secs: u64, mut check: F) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn text_of(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn state_via_api(base: &str, name: &str) -> String {
    let (_, body) = http(base, "GET", &format!("/pipelines/{name}"), None);
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    v["state"]["name"].as_str().unwrap_or("").to_string()
}

/// Where test artifacts go: beside the build, not in the clone.
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let dir = target.join("test-artifacts");
    fs::create_dir_all(&dir).expect("artifacts folder");
    dir
}

fn pipelines(d: &Path) {
    fs::write(
        d.join("busy.yaml"),
        "name: busy\nsource:\n  type: generate\n  rate: 800\nsink:\n  type: file\n  path: out/busy.jsonl\ndelivery:\n  flush_interval: 100ms\n",
    )
    .unwrap();
    fs::write(
        d.join("trickle.yaml"),
        "name: trickle\nsource:\n  type: generate\n  rate: 100\n  count: 1000000\nsink:\n  type: file\n  path: out/trickle.jsonl\ndelivery:\n  flush_interval: 100ms\n",
    )
    .unwrap();
    fs::write(
        d.join("broken.yaml"),
        format!(
            "name: broken\nsource:\n  type: generate\n  count: 1\nsink:\n  type: postgres\n  url: {}\n  table: no_such_table_for_the_page\n",
            pg_url()
        ),
    )
    .unwrap();
}

#[test]
fn the_status_page_shows_and_steers_the_pipelines() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pipelines(d);
    let mut f = Ferry::start(d, &["run", "busy.yaml", "trickle.yaml", "broken.yaml"]);
    assert!(wait_until(Duration::from_secs(20), || d
        .join("data/api.addr")
        .exists()));
    let addr = fs::read_to_string(d.join("data/api.addr")).unwrap();
    let base = format!("http://{}", addr.trim());
    let driver = Driver::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let c = browser(&driver).await;
        c.goto(&format!("{base}/")).await.expect("the page loads");

        // Every pipeline has its row; the failed one says why.
        assert!(
            eventually(20, async || text_of(&c, r#"tr[data-pipeline="busy"]"#)
                .await
                .contains("running"))
            .await
        );
        assert!(
            text_of(&c, r#"tr[data-pipeline="trickle"]"#)
                .await
                .contains("running")
        );
        assert!(
            eventually(20, async || {
                let row = text_of(&c, r#"tr[data-pipeline="broken"]"#).await;
                row.contains("failed") && row.contains("no_such_table_for_the_page")
            })
            .await
        );
        assert!(text_of(&c, "#summary").await.contains("3 pipelines"));

        // The plot has points for the last seconds.
        assert!(
            eventually(20, async || {
                let Ok(line) = c
                    .find(Locator::Css(r#"polyline[data-pipeline="busy"]"#))
                    .await
                else {
                    return false;
                };
                let points = line
                    .attr("data-points")
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                points.parse::<usize>().unwrap_or(0) >= 4
            })
            .await,
            "no plot"
        );
        let shot = c.screenshot().await.expect("a screenshot");
        let path = artifacts().join("status-page.png");
        fs::write(&path, &shot).unwrap();
        eprintln!("screenshot: {}", path.display());

        // Pause, then resume, with the page's buttons.
        let pause = c
            .find(Locator::Css(
                r#"tr[data-pipeline="busy"] button[data-action="pause"]"#,
            ))
            .await
            .expect("a pause button");
        pause.click().await.unwrap();
        assert!(wait_until(Duration::from_secs(20), || state_via_api(
            &base, "busy"
        ) == "paused"));
        assert!(
            eventually(10, async || text_of(&c, r#"tr[data-pipeline="busy"]"#)
                .await
                .contains("paused"))
            .await
        );
        let resume = c
            .find(Locator::Css(
                r#"tr[data-pipeline="busy"] button[data-action="resume"]"#,
            ))
            .await
            .expect("a resume button once paused");
        resume.click().await.unwrap();
        assert!(wait_until(Duration::from_secs(20), || state_via_api(
            &base, "busy"
        ) == "running"));

        // A pipeline's own view: its partitions with their lag.
        c.find(Locator::Css(r#"tr[data-pipeline="trickle"] a"#))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        assert!(
            eventually(20, async || {
                text_of(&c, "#detail-title").await == "trickle"
                    && text_of(&c, "#partitions tbody").await.contains("records")
            })
            .await,
            "no partitions: {}",
            text_of(&c, "#detail").await
        );
        c.close().await.unwrap();
    });
    // Exit 1: a pipeline failed (as it should).
    f.signal(libc::SIGTERM);
    let status = f.wait_for_exit(Duration::from_secs(20)).expect("stops");
    assert_eq!(status.code(), Some(1), "{}", f.log_text());
}
