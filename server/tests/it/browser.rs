//! The web page in a real headless browser (Debian's `chromium`): load `/?selftest=1`,
//! which fetches the server's sample picture and submits it like a person would, and
//! check that the overlay and the legend appear; then, with the project's default
//! model, check the layout at a desktop (1280x900) and a phone (390x844) size: no two
//! of the header, the drop zone, the image view and the legend overlap, the picture is
//! shown large, the legend sits beside it (below it on the phone), nothing scrolls
//! sideways; and keep a screenshot of each for a person to look at
//! (`target/tmp/page-desktop.png`, `target/tmp/page-phone.png`). Set
//! `LSE_SKIP_BROWSER=1` to skip where no chromium can be installed; otherwise a
//! missing browser fails the test.

use crate::common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn find_browser() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LSE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in [
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
        ] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// The value of attribute `attr` on the element whose opening tag contains `marker`.
fn attr_of(dom: &str, marker: &str, attr: &str) -> Option<String> {
    let at = dom.find(marker)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let tag = &dom[start..end];
    let key = format!("{attr}=\"");
    let v = tag.find(&key)? + key.len();
    Some(tag[v..v + tag[v..].find('"')?].to_string())
}

/// The browser, or `None` when the test is to be skipped (`LSE_SKIP_BROWSER=1`).
fn browser_or_skip() -> Option<PathBuf> {
    if let Some(b) = find_browser() {
        return Some(b);
    }
    if std::env::var("LSE_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("LSE_SKIP_BROWSER=1: skipping the browser test (no chromium found)");
        return None;
    }
    panic!(
        "chromium not found: install it (`apt-get install -y chromium`; scripts/test.sh does) \
         or set LSE_SKIP_BROWSER=1 to skip this test"
    );
}

/// Runs headless chromium on `url` with a window of `size` and `extra` arguments
/// (`--dump-dom`, `--screenshot=...`), in a fresh profile.
fn chromium(browser: &Path, url: &str, size: (u32, u32), extra: &[String]) -> Output {
    let profile = tempfile::tempdir().unwrap();
    Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--window-size={},{}", size.0, size.1))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", browser.display()))
}

#[test]
fn page_shows_overlay_and_legend_in_headless_chromium() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let server = Server::start(&[]);
    let url = format!("http://{}/?selftest=1", server.addr);
    let out = chromium(&browser, &url, (1280, 900), &["--dump-dom".into()]);
    let dom = String::from_utf8_lossy(&out.stdout);
    let ctx = || {
        format!(
            "browser exit {}; DOM:\n{dom}\nbrowser stderr:\n{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            server.log_text()
        )
    };
    assert!(out.status.success(), "{}", ctx());
    assert_eq!(
        attr_of(&dom, "<body", "data-state").as_deref(),
        Some("done"),
        "{}",
        ctx()
    );
    // The class-colour image is shown at the sample's size (64 x 48).
    let src = attr_of(&dom, "id=\"overlay\"", "src").unwrap_or_default();
    assert!(src.starts_with("blob:"), "overlay src {src:?}\n{}", ctx());
    assert_eq!(
        attr_of(&dom, "id=\"overlay\"", "data-width").as_deref(),
        Some("64"),
        "{}",
        ctx()
    );
    assert_eq!(
        attr_of(&dom, "id=\"overlay\"", "data-height").as_deref(),
        Some("48"),
        "{}",
        ctx()
    );

    // The legend lists the classes the server reports for the same picture, by name.
    let sample = get(server.addr, "/v1/sample.png").unwrap();
    let js = post(server.addr, "/v1/segment?output=json", &sample.body).json();
    let classes = js["classes"].as_array().unwrap();
    assert!(!classes.is_empty());
    assert_eq!(
        dom.matches("<tr class=\"class\"").count(),
        classes.len(),
        "{}",
        ctx()
    );
    for c in classes {
        let name = c["name"].as_str().unwrap();
        assert!(
            dom.contains(&format!("<td class=\"name\">{name}</td>")),
            "no legend row for {name}\n{}",
            ctx()
        );
        let [r, g, b] = [0, 1, 2].map(|k| c["color"][k].as_u64().unwrap());
        assert!(
            dom.contains(&format!("rgb({r}, {g}, {b})")),
            "no swatch rgb({r}, {g}, {b})\n{}",
            ctx()
        );
    }
    assert!(dom.contains(" %</td>"), "no shares\n{}", ctx());
}

/// A box of the page, in CSS pixels.
#[derive(Debug, Clone, Copy)]
struct Rect {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

impl Rect {
    fn right(&self) -> f64 {
        self.x + self.w
    }
    fn bottom(&self) -> f64 {
        self.y + self.h
    }
    /// Whether two boxes share an area (touching edges do not count).
    fn overlaps(&self, o: &Rect) -> bool {
        const EPS: f64 = 0.5;
        self.x + EPS < o.right()
            && o.x + EPS < self.right()
            && self.y + EPS < o.bottom()
            && o.y + EPS < self.bottom()
    }
}

/// Parses the page's layout report `vw W vh H sw S;NAME X Y W H;...`.
fn parse_layout(text: &str) -> (f64, f64, f64, Vec<(String, Rect)>) {
    let mut parts = text.split(';');
    let head: Vec<f64> = parts
        .next()
        .unwrap()
        .split(' ')
        .filter_map(|t| t.parse().ok())
        .collect();
    let rects = parts
        .map(|p| {
            let f: Vec<&str> = p.split(' ').collect();
            let n: Vec<f64> = f[1..].iter().map(|v| v.parse().unwrap()).collect();
            (
                f[0].to_string(),
                Rect {
                    x: n[0],
                    y: n[1],
                    w: n[2],
                    h: n[3],
                },
            )
        })
        .collect();
    (head[0], head[1], head[2], rects)
}

/// Serves `page` as HTML to every request on a loopback port, from a thread that
/// lives as long as the test process.
fn serve_page(page: String) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut head = [0u8; 8192];
            let _ = s.read(&mut head);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    addr
}

/// Loads `url` in a frame of exactly `size` CSS pixels (headless chromium's window
/// has a minimum width and loses some height to the window, so the frame fixes the
/// viewport), returns the selftest's state and layout report as the page posted them
/// to the host page, and writes a screenshot of the frame's area to `png`. The host
/// page is served over loopback HTTP too (chromium keeps a `file://` page from
/// framing a loopback server).
fn framed(browser: &Path, url: &str, size: (u32, u32), png: &Path) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let host = serve_page(format!(
        "<!doctype html><meta charset=\"utf-8\">\
         <style>html,body{{margin:0;background:#fff}}</style>\
         <iframe src=\"{url}\" style=\"width:{}px;height:{}px;border:0;display:block\"></iframe>\
         <script>addEventListener('message',(e)=>{{if(e.data&&e.data.lse){{\
         document.body.dataset.state=e.data.state;document.body.dataset.layout=e.data.layout;}}}});\
         </script>",
        size.0, size.1
    ));
    let host_url = format!("http://{host}/");
    let window = (size.0.max(600) + 40, size.1 + 300);
    let out = chromium(browser, &host_url, window, &["--dump-dom".into()]);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "browser exit {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let state = attr_of(&dom, "<body", "data-state").unwrap_or_default();
    let layout = attr_of(&dom, "<body", "data-layout").unwrap_or_default();

    let full = dir.path().join("full.png");
    let out = chromium(
        browser,
        &host_url,
        window,
        &[format!("--screenshot={}", full.display())],
    );
    assert!(
        out.status.success() && full.is_file(),
        "no screenshot ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let img = image::open(&full).unwrap();
    assert!(
        img.width() >= size.0 && img.height() >= size.1,
        "screenshot {}x{} smaller than the frame {size:?}",
        img.width(),
        img.height()
    );
    img.crop_imm(0, 0, size.0, size.1).save(png).unwrap();
    (state, layout)
}

/// The layout with the project's default model (its long model line included) at a
/// desktop and a phone size, and a screenshot of each under target/tmp.
#[test]
fn page_layout_has_no_overlaps_at_desktop_and_phone_size() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let default_model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
        .join("default")
        .join("model.onnx");
    let model = if default_model.is_file() {
        default_model
    } else {
        model().to_path_buf()
    };
    let model_arg = model.display().to_string();
    let server = Server::start_in(None, false, &["--model", &model_arg]);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"));
    for (name, size, mode) in [
        ("desktop", (1280, 900), "overlay"),
        ("phone", (390, 844), "overlay"),
        ("desktop-swipe", (1280, 900), "swipe"),
        ("phone-side", (390, 844), "side"),
    ] {
        let url = format!(
            "http://{}/?selftest=1&sample=512x256&mode={mode}",
            server.addr
        );
        let png = shots.join(format!("page-{name}.png"));
        let _ = std::fs::remove_file(&png);
        let (state, layout) = framed(&browser, &url, size, &png);
        let ctx = || {
            format!(
                "{name}: state {state:?}, layout {layout:?}\nserver log:\n{}",
                server.log_text()
            )
        };
        assert_eq!(state, "done", "{}", ctx());
        let (vw, vh, scroll_w, rects) = parse_layout(&layout);
        let rect = |n: &str| {
            rects
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, r)| *r)
                .unwrap_or_else(|| panic!("no `{n}` in {layout}"))
        };
        assert_eq!(
            (vw, vh),
            (f64::from(size.0), f64::from(size.1)),
            "{}",
            ctx()
        );
        assert!(
            scroll_w <= vw,
            "{name}: the page scrolls sideways: {layout}"
        );
        let boxes = ["header", "drop", "view", "legend"];
        for (i, a) in boxes.iter().enumerate() {
            let ra = rect(a);
            assert!(ra.w > 0.0 && ra.h > 0.0, "{name}: {a} is empty: {layout}");
            assert!(
                ra.x >= 0.0 && ra.right() <= vw + 0.5,
                "{name}: {a} leaves the page: {layout}"
            );
            for b in &boxes[i + 1..] {
                assert!(!ra.overlaps(&rect(b)), "{name}: {a} overlaps {b}: {layout}");
            }
        }
        // The picture is large and the legend beside it (desktop) or below it (phone).
        let (view, stage, legend) = (rect("view"), rect("stage"), rect("legend"));
        assert!(
            stage.x >= view.x - 0.5 && stage.right() <= view.right() + 0.5,
            "{name}: the picture leaves its view: {layout}"
        );
        if size.0 >= 1000 {
            assert!(stage.w >= 700.0, "{name}: the picture is small: {layout}");
            assert!(
                legend.x >= view.right() && legend.y < view.bottom(),
                "{name}: the legend is not beside the picture: {layout}"
            );
            // The header, the drop zone and the picture fit the first screen.
            assert!(
                stage.bottom() <= vh,
                "{name}: the picture does not fit the window: {layout}"
            );
        } else {
            assert!(
                stage.w >= 0.9 * vw,
                "{name}: the picture is small: {layout}"
            );
            assert!(
                legend.y >= view.bottom(),
                "{name}: the legend is not below the picture: {layout}"
            );
        }
        eprintln!("{name}: screenshot {}", png.display());
    }
}
