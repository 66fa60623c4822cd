//! The web page in a real headless browser (Debian's `chromium`): load `/?selftest=1`,
//! which fetches the server's sample picture and submits it like a person would, and
//! check that the overlay and the legend appear. Set `LSE_SKIP_BROWSER=1` to skip
//! where no chromium can be installed; otherwise a missing browser fails the test.

mod common;

use std::path::PathBuf;
use std::process::Command;

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

#[test]
fn page_shows_overlay_and_legend_in_headless_chromium() {
    let Some(browser) = find_browser() else {
        if std::env::var("LSE_SKIP_BROWSER").as_deref() == Ok("1") {
            eprintln!("LSE_SKIP_BROWSER=1: skipping the browser test (no chromium found)");
            return;
        }
        panic!(
            "chromium not found: install it (`apt-get install -y chromium`; scripts/test.sh does) \
             or set LSE_SKIP_BROWSER=1 to skip this test"
        );
    };
    let server = Server::start(&[]);
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/?selftest=1", server.addr);
    let out = Command::new(&browser)
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
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", browser.display()));
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
    // The overlay image is shown at the sample's size (64 x 48).
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
