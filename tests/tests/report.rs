//! The HTML report and comparison in a real browser: Debian's headless
//! Chromium renders the report of a recorded run with known alerts (the
//! fixture), takes a screenshot, and shows its DOM. The charts are there
//! (the SVG elements and their threshold lines, by id), drawn (the
//! thresholds' colours are in the screenshot's pixels), and nothing is
//! fetched from the network (every request would go through a proxy the
//! test runs, which must see none).

use std::{
    io::Read as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use probe_tests::{agent_bin, tempdir};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The fixture recording, unpacked.
fn recorded(dir: &Path) -> PathBuf {
    let mut text = String::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(fixtures().join("recorded.jsonl.gz")).unwrap(),
    )
    .read_to_string(&mut text)
    .unwrap();
    let p = dir.join("recorded.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

/// Headless Chromium (scripts/setup.sh installs Debian's
/// chromium-headless-shell; `chromium` does as well).
fn chromium() -> &'static str {
    for c in ["chromium-headless-shell", "chromium"] {
        if Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return c;
        }
    }
    panic!("no headless Chromium: run scripts/setup.sh (chromium-headless-shell)");
}

/// A proxy that only counts: every connection the browser would make to
/// the network comes here instead (and gets nothing).
fn counting_proxy() -> (String, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let n = Arc::new(AtomicU64::new(0));
    let seen = n.clone();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 512];
            let got = c.read(&mut buf).unwrap_or(0);
            eprintln!("the page fetched: {:?}", String::from_utf8_lossy(&buf[..got]));
            seen.fetch_add(1, Ordering::Relaxed);
        }
    });
    (addr, n)
}

/// Runs the browser on a local file with `what` (`--screenshot=...` or
/// `--dump-dom`); returns its stdout.
fn browse(page: &Path, what: &str, proxy: &str, profile: &Path) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=940,2600",
            // Every request, loopback included, through the counting proxy.
            &format!("--proxy-server=http://{proxy}"),
            "--proxy-bypass-list=<-loopback>",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(what)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("running headless Chromium");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A PNG's pixels as RGB (8-bit RGB or RGBA, as Chromium writes them).
fn png_rgb(path: &Path) -> (usize, usize, Vec<[u8; 3]>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (mut at, mut idat) = (8, Vec::new());
    let (mut w, mut h, mut channels) = (0, 0, 0);
    while at + 8 <= b.len() {
        let len = u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        let kind = &b[at + 4..at + 8];
        let data = &b[at + 8..at + 8 + len];
        match kind {
            b"IHDR" => {
                w = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
                h = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
                assert_eq!((data[8], data[12]), (8, 0), "8-bit, not interlaced");
                channels = match data[9] {
                    2 => 3,
                    6 => 4,
                    t => panic!("colour type {t}"),
                };
            }
            b"IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        at += 12 + len;
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..]).read_to_end(&mut raw).unwrap();
    let stride = w * channels;
    let mut prev = vec![0u8; stride];
    let mut px = Vec::with_capacity(w * h);
    for row in raw.chunks(stride + 1).take(h) {
        let (filter, line) = (row[0], &row[1..]);
        let mut cur = vec![0u8; stride];
        for i in 0..stride {
            let a = if i >= channels { cur[i - channels] } else { 0 };
            let (up, c) = (prev[i], if i >= channels { prev[i - channels] } else { 0 });
            let pred = match filter {
                0 => 0,
                1 => a,
                2 => up,
                3 => ((u16::from(a) + u16::from(up)) / 2) as u8,
                4 => {
                    let p = i16::from(a) + i16::from(up) - i16::from(c);
                    let (pa, pb, pc) = (
                        (p - i16::from(a)).abs(),
                        (p - i16::from(up)).abs(),
                        (p - i16::from(c)).abs(),
                    );
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        up
                    } else {
                        c
                    }
                }
                f => panic!("filter {f}"),
            };
            cur[i] = line[i].wrapping_add(pred);
        }
        px.extend(cur.chunks(channels).map(|p| [p[0], p[1], p[2]]));
        prev = cur;
    }
    (w, h, px)
}

/// Pixels within `tol` of a colour.
fn count(px: &[[u8; 3]], rgb: [u8; 3], tol: i16) -> usize {
    px.iter()
        .filter(|p| p.iter().zip(rgb).all(|(&a, b)| (i16::from(a) - i16::from(b)).abs() <= tol))
        .count()
}

#[test]
fn html_report_of_a_recorded_run_renders_in_chromium() {
    let dir = tempdir("report-html");
    let rec = recorded(&dir);
    let page = dir.join("report.html");
    let out = Command::new(agent_bin())
        .arg("report")
        .arg(&rec)
        .arg("--config")
        .arg(fixtures().join("recorded.config.toml"))
        .arg("--html")
        .arg(&page)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let md = String::from_utf8(out.stdout).unwrap();
    assert!(md.starts_with("# probe KPI report") && md.contains("## Stakeholder script"), "{md}");
    let html = std::fs::read_to_string(&page).unwrap();
    // One file: nothing it would load from anywhere.
    for bad in ["<script", "http:", "https:", "src=", "url(", "@import", "<link", "<img"] {
        assert!(!html.contains(bad), "the page has {bad}");
    }

    let (proxy, fetched) = counting_proxy();
    let shot = dir.join("report.png");
    browse(&page, &format!("--screenshot={}", shot.display()), &proxy, &dir.join("profile-1"));
    let dom = browse(&page, "--dump-dom", &proxy, &dir.join("profile-2"));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(fetched.load(Ordering::Relaxed), 0, "the page fetched something from the network");

    // The browser parsed a chart per focus KPI that has data, each with
    // its threshold lines, and the latency chart shades its alerts.
    for id in [
        "chart-requests-latency_ms-avg",
        "chart-requests-latency_ms-avg-investigate",
        "chart-requests-latency_ms-avg-escalate",
        "chart-requests-latency_ms-avg-alert-0",
        "chart-requests-error_rate_pct-investigate",
        "chart-requests-rate_per_s",
        "chart-cpu-utilization_pct-investigate",
        "chart-cpu-utilization_pct-escalate",
        "chart-cpu-utilization_pct-alert-0",
        // Cost is not configured in the fixture: said, not drawn.
        "chart-cost-over_budget_pct-empty",
        "script",
        "red-flags",
        "alerts-table",
        "offenders",
    ] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "no #{id} in the DOM");
    }
    assert_eq!(dom.matches("<svg").count(), 4, "four charts: latency, errors, rate, CPU");
    assert!(dom.matches("<polyline").count() >= 4);
    assert!(dom.contains("CPU utilization 98.2% on host vm is above 95.0%: escalate"));

    // And drew them: the threshold lines' colours, and the escalate shading.
    let (w, h, px) = png_rgb(&shot);
    assert_eq!((w, h), (940, 2600));
    let amber = count(&px, [217, 119, 6], 2);
    let red = count(&px, [220, 38, 38], 2);
    let shaded = count(&px, [250, 223, 223], 6);
    eprintln!("screenshot: {amber} investigate-line pixels, {red} escalate, {shaded} shaded");
    assert!(amber > 1000 && red > 1000, "threshold lines drawn: {amber} / {red}");
    assert!(shaded > 1000, "alert periods shaded: {shaded}");
    if std::env::var_os("PROBE_DOCS").is_some() {
        // The README's example: PROBE_DOCS=1 cargo test -p probe-tests --test report
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::copy(&shot, docs.join("report.png")).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn html_comparison_draws_each_focus_kpi_before_and_after() {
    let dir = tempdir("compare-html");
    let base = recorded(&dir);
    // The same run with every request 40% faster.
    let faster: String = std::fs::read_to_string(&base)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(lat) = v["requests"]["latency_ms"].as_object_mut() {
                for x in lat.values_mut() {
                    if let Some(n) = x.as_f64() {
                        *x = serde_json::json!(n * 0.6);
                    }
                }
            }
            v.to_string() + "\n"
        })
        .collect();
    let cur = dir.join("faster.jsonl");
    std::fs::write(&cur, faster).unwrap();
    let page = dir.join("compare.html");
    let out = Command::new(agent_bin())
        .arg("compare")
        .args([&base, &cur])
        .arg("--html")
        .arg(&page)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let md = String::from_utf8(out.stdout).unwrap();
    assert!(
        md.contains("- average request latency on host vm fell 40% (367 ms to 220 ms)."),
        "{md}"
    );
    let (proxy, fetched) = counting_proxy();
    let dom = browse(&page, "--dump-dom", &proxy, &dir.join("profile"));
    assert_eq!(fetched.load(Ordering::Relaxed), 0);
    for id in [
        "compare-requests-latency_ms-avg",
        "compare-requests-latency_ms-avg-investigate",
        "compare-requests-latency_ms-avg-escalate",
        "compare-cpu-utilization_pct",
    ] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "no #{id}");
    }
    assert!(dom.contains("fell 40% (367 ms to 220 ms)"));
    let _ = std::fs::remove_dir_all(&dir);
}
