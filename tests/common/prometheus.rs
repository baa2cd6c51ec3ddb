//! Reading a router's `/metrics` as Prometheus does, and running `promtool` on files and
//! scrapes when it is installed (`make deps` installs it; without it those checks are
//! skipped with a note on stderr).

use std::{
    collections::BTreeMap,
    io::Write,
    process::{Command, Stdio},
};

use super::Router;

/// The body of `router`'s `/metrics`.
pub async fn scrape(router: &Router) -> String {
    let response = router.metrics().await;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).expect("an HTTP response")
}

/// The body of `router`'s `/metrics` after a little of everything: a dashboard watching, a
/// mobile coming online (the dashboard receives its update) and heartbeating, an API
/// lookup.
pub async fn scrape_after_traffic(router: &Router) -> String {
    let (mut dashboard, _) = router.dashboard("ops-dashboard").await;
    let mobile = router.mobile_in("ops-mobile", &["ops"]).await;
    assert_eq!(dashboard.next_update().await["userId"].as_str(), Some("ops-mobile"));
    router.user("ops-mobile").await;
    let text = scrape(router).await;
    mobile.close().await;
    dashboard.close().await;
    text
}

/// One sample line of the text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a Prometheus text exposition. Panics on a line it cannot read: the
/// router's output must be well formed.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter(|line| !line.is_empty() && !line.starts_with('#')).map(parse_line).collect()
}

fn parse_line(line: &str) -> Sample {
    let end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value: {line}"));
    let (name, mut rest) = line.split_at(end);
    let mut labels = BTreeMap::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = inner.split_once("=\"").unwrap_or_else(|| panic!("bad label: {line}"));
            let (mut value, mut chars) = (String::new(), after.char_indices());
            let close = loop {
                match chars.next() {
                    Some((_, '\\')) => value.push(chars.next().map(|(_, c)| if c == 'n' { '\n' } else { c }).unwrap()),
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value: {line}"),
                }
            };
            labels.insert(key.trim_start_matches(',').to_owned(), value);
            inner = after[close + 1..].trim_start_matches(',');
        }
    }
    let value = rest.trim().split(' ').next().unwrap();
    let value = value.parse().unwrap_or_else(|_| panic!("bad value {value:?}: {line}"));
    Sample { name: name.to_owned(), labels, value }
}

/// The value of one series in Prometheus text: `series` is the metric's name with its
/// labels as the router writes them (`name{label="value"}`), or its bare name. Counters
/// are exported at 0 from the start, so a test that something was counted checks for a
/// value above 0, not for the series.
pub fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Whether `samples` hold a series of `metric`: its own name, or a histogram's
/// `_bucket`, `_sum` and `_count` series.
pub fn exports(samples: &[Sample], metric: &str) -> bool {
    samples.iter().any(|s| {
        s.name == metric
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| s.name.strip_suffix(suffix) == Some(metric))
    })
}

/// Runs `promtool args…` with `stdin`, asserting it succeeds; `false` (and a note) when
/// promtool is not installed.
pub fn promtool(args: &[&str], stdin: &str) -> bool {
    let child =
        Command::new("promtool").args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("note: promtool is not on PATH (make deps installs it): skipped `promtool {}`", args.join(" "));
            return false;
        }
        Err(e) => panic!("starting promtool: {e}"),
    };
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {} failed:\n{stdout}\n{stderr}", args.join(" "));
    true
}
