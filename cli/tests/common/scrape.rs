//! Reading a process's `/metrics` as the metrics test does: over HTTP, as OpenMetrics (what
//! Prometheus asks for) and as the classic text format, which `promtool check metrics` —
//! Prometheus' own parser and linter — must accept; and the series names a dashboard or a rules
//! file uses, to check against what was scraped.

use std::{
    collections::{BTreeSet, HashMap},
    io::Write as _,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use waybill_test_kit::metrics_http::get_metrics;

/// One scrape of an endpoint: the OpenMetrics text and its samples by series (name and labels
/// as written); the classic-format scrape taken with it passed `promtool check metrics`.
pub struct Scrape {
    pub what: &'static str,
    pub text: String,
    samples: HashMap<String, f64>,
    /// Every name the classic format declares (`# TYPE`) or samples, with the `_bucket`,
    /// `_sum` and `_count` of each histogram.
    pub names: BTreeSet<String>,
}

impl Scrape {
    pub fn value(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("{}: no series {series} in:\n{}", self.what, self.text))
    }

    pub fn get(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }
}

/// Scrapes `addr` twice — as Prometheus does (OpenMetrics) and as a classic scraper does
/// (`text/plain`, judged by `promtool check metrics`, which must pass).
pub async fn scrape(what: &'static str, addr: SocketAddr) -> Scrape {
    let (head, text) = get_metrics(addr, None).await;
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{what}: {head}"
    );
    assert!(text.ends_with("# EOF\n"), "{what}: {text}");
    let samples = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse::<f64>().unwrap())
        })
        .collect();
    let (head, classic) = get_metrics(addr, Some("text/plain;version=0.0.4;q=1")).await;
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{what}: {head}"
    );
    promtool_check_metrics(what, &classic);
    let mut names = BTreeSet::new();
    for line in classic.lines() {
        if let Some((name, kind)) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.split_once(' '))
        {
            names.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    Scrape {
        what,
        text,
        samples,
        names,
    }
}

/// `promtool check metrics` on `exposition`: Prometheus' parser and linter must accept it.
fn promtool_check_metrics(what: &str, exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics refused {what}'s exposition ({}):\n{}{}\n{exposition}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Scrapes `addr` until `done` holds (at most `within`); the scrape that satisfied it.
pub async fn scrape_until(
    what: &'static str,
    addr: SocketAddr,
    within: Duration,
    done: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + within;
    loop {
        let now = scrape(what, addr).await;
        if done(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not there within {within:?}:\n{}",
            now.text
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every `expr` of the dashboard's panels.
pub fn dashboard_expressions(dashboard: &str) -> Vec<String> {
    let model: serde_json::Value = serde_json::from_str(dashboard).unwrap();
    let mut out = Vec::new();
    let mut stack = vec![&model];
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                    out.push(expr.clone());
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    out
}

/// The series names in `text` (words starting `waybill_` or `process_`), and the patterns of
/// `__name__=~"…"` matchers.
pub fn series_named(text: &str) -> (BTreeSet<String>, Vec<String>) {
    let mut patterns = Vec::new();
    let mut rest = String::with_capacity(text.len());
    let mut remaining = text;
    while let Some(at) = remaining.find("__name__=~\"") {
        rest.push_str(&remaining[..at]);
        let after = &remaining[at + "__name__=~\"".len()..];
        let end = after.find('"').unwrap();
        patterns.push(after[..end].to_owned());
        remaining = &after[end + 1..];
    }
    rest.push_str(remaining);
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let bytes = rest.as_str();
    let mut index = 0;
    while index < bytes.len() {
        let word_start = index == 0 || !bytes[..index].ends_with(is_name);
        let tail = &bytes[index..];
        if word_start && (tail.starts_with("waybill_") || tail.starts_with("process_")) {
            let end = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            index += end;
        } else {
            index += tail.chars().next().map_or(1, char::len_utf8);
        }
    }
    (names, patterns)
}

/// Whether `name` matches `pattern`, a metric-name regex of literals and `.+`/`.*` (what the
/// alert rules use; anything else fails the test, to be taught here).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    assert!(
        !pattern.contains(['|', '[', '(', '?', '\\', '^', '$']),
        "teach name_matches {pattern:?}"
    );
    fn go(pattern: &str, name: &str) -> bool {
        if let Some(rest) = pattern.strip_prefix(".+") {
            return (1..=name.len()).any(|n| go(rest, &name[n..]));
        }
        if let Some(rest) = pattern.strip_prefix(".*") {
            return (0..=name.len()).any(|n| go(rest, &name[n..]));
        }
        match (pattern.chars().next(), name.chars().next()) {
            (None, None) => true,
            (Some(p), Some(c)) if p == c => go(&pattern[1..], &name[1..]),
            _ => false,
        }
    }
    go(pattern, name)
}

/// `promtool check rules` on the dashboard's expressions (Grafana's `$__rate_interval` as
/// `5m`), each a recording rule: every one must parse as PromQL.
pub fn promtool_check_expressions(dir: &Path, expressions: &[String]) {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, expr) in expressions.iter().enumerate() {
        let expr = expr.replace("$__rate_interval", "5m");
        rules.push_str(&format!(
            "      - record: dashboard:expression_{n}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let file = dir.join("dashboard-rules.yml");
    std::fs::write(&file, rules).unwrap();
    let output = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the dashboard's expressions do not all parse:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
