//! The status page in a real headless Chromium (Debian's `chromium` and `chromium-driver`),
//! driven over WebDriver with fantoccini: the page loads, follows a monitor going down and up
//! again, renders names as text, and leaves screenshots under `target/uptime-status-page/`.

mod common;

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{info, sample, serve};
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use gantry_uptime_store::{Location, State, Store, StoreConfig, now_ms};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free loopback port, in its own process group so that it and every browser
/// process it started are stopped together on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Self {
        for program in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                std::path::Path::new(program).exists(),
                "{program} is missing: install Debian's `chromium` and `chromium-driver` \
                 (`cargo xtask prerequisites` does)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let driver = Driver { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    async fn client(&self) -> Client {
        let mut caps = Capabilities::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1200,1600", "--no-first-run", "--disable-sync",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-default-apps", "--disable-extensions",
                    // Loopback only: anything else goes to a proxy that is not there.
                    "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1",
                ],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a WebDriver session in headless Chromium")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = self.child.id();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "kill -TERM -{group}; sleep 1; kill -KILL -{group} 2>/dev/null"
            ))
            .status();
        let _ = self.child.wait();
    }
}

/// `target/uptime-status-page/`, next to the test binary's `target/<profile>/deps`.
fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let dir = target.join("uptime-status-page");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Reloads until the monitor shows `state`.
async fn wait_for_state(browser: &Client, monitor: &str, state: &str) {
    let selector = format!("article[data-monitor=\"{monitor}\"]");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        browser.refresh().await.unwrap();
        let shown = browser
            .find(Locator::Css(&selector))
            .await
            .unwrap()
            .attr("data-state")
            .await
            .unwrap();
        if shown.as_deref() == Some(state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{monitor} still shows {shown:?}, not {state}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn text_of(browser: &Client, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_a_monitor_going_down_and_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(
        Location::from_flags(dir.path(), None).unwrap(),
    ))
    .await
    .unwrap();
    store.upsert_monitor(info("web", "Web <b>shop</b>", "Public"));
    store.upsert_monitor(info("api", "API", "Public"));
    store.upsert_monitor(info("db", "Database", "Internal"));
    let t0 = now_ms() - 10 * 60_000;
    for i in 0..10 {
        for name in ["web", "api", "db"] {
            store.record(sample(name, t0 + i * 30_000, State::Up));
        }
    }
    store.flush().await.unwrap();
    let (addr, _stop) = serve(store.clone()).await;

    let driver = Driver::start();
    let browser = driver.client().await;
    browser.goto(&format!("http://{addr}/")).await.unwrap();
    assert_eq!(browser.title().await.unwrap(), "Example <Status>");
    assert_eq!(
        text_of(&browser, "#overall").await,
        "All systems operational"
    );
    // The hostile display name is text, not markup.
    assert_eq!(
        text_of(&browser, "article[data-monitor=\"prod/web\"] h3").await,
        "Web <b>shop</b>"
    );
    let groups: Vec<String> = {
        let mut out = Vec::new();
        for h2 in browser
            .find_all(Locator::Css("section.group h2"))
            .await
            .unwrap()
        {
            out.push(h2.text().await.unwrap());
        }
        out
    };
    assert_eq!(groups, ["Internal", "Public"]);
    // The bars and the chart are drawn (inline SVG, no script).
    let bars = browser
        .find(Locator::Css("article[data-monitor=\"prod/web\"] svg.bars"))
        .await
        .unwrap();
    assert!(
        !bars
            .find_all(Locator::Css("rect"))
            .await
            .unwrap()
            .is_empty()
    );
    browser
        .find(Locator::Css(
            "article[data-monitor=\"prod/web\"] svg.chart path.mean",
        ))
        .await
        .unwrap();
    let up_png = browser.screenshot().await.unwrap();

    // Down.
    store.record(sample("web", t0 + 330_000, State::Down));
    store.flush().await.unwrap();
    wait_for_state(&browser, "prod/web", "DOWN").await;
    assert_eq!(text_of(&browser, "#overall").await, "1 monitor is down");
    let incident = text_of(&browser, "#incidents li.incident.open").await;
    assert!(incident.contains("Web <b>shop</b>"), "{incident}");
    assert!(
        incident.contains("web: HTTP 502 <bad gateway>"),
        "{incident}"
    );
    let down_png = browser.screenshot().await.unwrap();

    // Up again: the incident is resolved with its duration.
    store.record(sample("web", t0 + 390_000, State::Up));
    store.flush().await.unwrap();
    wait_for_state(&browser, "prod/web", "UP").await;
    assert_eq!(
        text_of(&browser, "#overall").await,
        "All systems operational"
    );
    let resolved = text_of(&browser, "#incidents li.incident").await;
    assert!(resolved.contains("resolved, 1m 0s"), "{resolved}");
    assert!(browser.find(Locator::Css("#database-error")).await.is_err());
    let recovered_png = browser.screenshot().await.unwrap();
    browser.close().await.unwrap();

    let out = artifacts();
    for (name, png) in [
        ("up.png", up_png),
        ("down.png", down_png),
        ("recovered.png", recovered_png),
    ] {
        assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
        std::fs::write(out.join(name), png).unwrap();
    }
    eprintln!("screenshots in {}", out.display());
}
