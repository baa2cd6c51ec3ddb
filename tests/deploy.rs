//! The files in `deploy/`, checked as far as a machine without Docker can: the alert rules
//! pass their `promtool` unit tests and the Prometheus config loads them; every query of
//! the Grafana dashboard is valid PromQL and, like every alert, reads only metrics a
//! router that has seen a little traffic exports; the compose file mounts the configs this
//! repository tests (not copies) and wires the routers to nginx and Prometheus; the
//! Dockerfile copies files that exist; `systemd-analyze verify` accepts the unit.
//! promtool and systemd-analyze checks are skipped with a note when the tool is absent.

mod common;

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use common::{
    Engine, Setup,
    prometheus::{exports, parse, promtool, scrape_after_traffic},
};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)
}

fn read(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &str) -> Yaml {
    let mut value: Yaml = serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    value.apply_merge().unwrap();
    value
}

/// Every `expr` of the dashboard's panels, and its variable's query, with where it is.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Json = serde_json::from_str(&read("deploy/grafana/presence-router.json")).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default();
            queries.push((format!("panel {title:?}"), target["expr"].as_str().expect("a PromQL expr").to_owned()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let query = variable["query"]["query"].as_str().unwrap();
        // label_values(metric, label): the metric is the query.
        let metric = query.strip_prefix("label_values(").and_then(|q| q.split(',').next()).unwrap();
        queries.push((format!("variable {}", variable["name"]), metric.to_owned()));
    }
    assert!(queries.len() > 20, "the dashboard has its panels");
    queries
}

/// Every alert's `expr`, with its name.
fn alert_queries() -> Vec<(String, String)> {
    let rules = yaml("deploy/prometheus/alerts.yml");
    let mut queries = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = format!("alert {}", rule["alert"].as_str().unwrap());
            queries.push((name, rule["expr"].as_str().unwrap().to_owned()));
        }
    }
    queries
}

/// Grafana's variables replaced by what Prometheus would be sent.
fn as_sent(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
}

/// PromQL words that are not metric names: keywords, and aggregations that may be
/// followed by a grouping clause before their parenthesis (`sum by (le) (...)`).
const NOT_METRICS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
];
/// Words whose parenthesised list that follows holds label names.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The metric names a PromQL expression reads: the identifiers left once strings, label
/// matchers (`{...}`), ranges (`[...]`), label lists (`by (...)`), numbers, durations,
/// functions (an identifier before `(`) and keywords are set aside.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let (mut names, mut i, mut label_list) = (BTreeSet::new(), 0, false);
    let skip_to = |from: usize, close: char| {
        let mut j = from + 1;
        let mut quote = None;
        while j < chars.len() {
            match (quote, chars[j]) {
                (Some(_), '\\') => j += 1,
                (Some(q), c) if c == q => quote = None,
                (None, '"' | '\'' | '`') => quote = Some(chars[j]),
                (None, c) if c == close => break,
                _ => {}
            }
            j += 1;
        }
        j + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_to(i, '}');
        } else if c == '[' {
            i = skip_to(i, ']');
        } else if c == '(' && label_list {
            label_list = false;
            i = skip_to(i, ')');
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_to(i, c);
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' || c == '$' || c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':' | '$' | '.')) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if c.is_ascii_digit() || c == '$' || next == Some(&'(') && !LABEL_LISTS.contains(&word.as_str()) {
                continue; // a number, a duration, a variable or a function
            }
            if LABEL_LISTS.contains(&word.as_str()) {
                label_list = true;
            } else if !NOT_METRICS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_read_out_of_promql() {
    let names = |expr: &str| metric_names(expr).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, op) (rate(a_bucket{op="x", instance=~"$instance"}[$__rate_interval])))"#
        ),
        ["a_bucket"]
    );
    assert_eq!(names("process_open_fds / process_max_fds > 0.8"), ["process_max_fds", "process_open_fds"]);
    assert_eq!(names("sum(rate(b_total[5m])) > 4 * sum(rate(b_total[1h] offset 5m)) and up == 0"), ["b_total", "up"]);
    assert_eq!(names(r#"c / on (instance) group_left (version) d{reason=~"a|b"}"#), ["c", "d"]);
}

#[test]
fn the_alert_rules_pass_their_unit_tests_and_the_prometheus_config_loads_them() {
    let config = deploy("prometheus/prometheus.yml");
    if promtool(&["check", "config", config.to_str().unwrap()], "") {
        promtool(&["test", "rules", deploy("prometheus/alerts_test.yml").to_str().unwrap()], "");
    }
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // Checked as recording rules: promtool parses each expression.
    let rules: Vec<Json> = dashboard_queries()
        .into_iter()
        .enumerate()
        .map(|(n, (_, expr))| serde_json::json!({ "record": format!("dashboard:query_{n}"), "expr": as_sent(&expr) }))
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = std::env::temp_dir().join(format!("presence-router-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("queries.yml");
    std::fs::write(&path, serde_yaml_ng::to_string(&file).unwrap()).unwrap();
    promtool(&["check", "rules", path.to_str().unwrap()], "");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_read_only_metrics_a_router_exports() {
    let setup = Setup::new(Engine::Redis).await;
    let router = setup.router(&[]).await;
    let text = scrape_after_traffic(&router).await;
    let samples = parse(&text);
    for (place, expr) in dashboard_queries().into_iter().chain(alert_queries()) {
        let names = metric_names(&as_sent(&expr));
        assert!(!names.is_empty(), "{place} reads no metric: {expr}");
        for name in names {
            // `up` is Prometheus' own series for each scrape target.
            assert!(name == "up" || exports(&samples, &name), "{place} reads {name}, which the router does not export");
        }
    }
}

/// `host:port` strings of each `server` line of an nginx upstream.
fn nginx_upstreams(conf: &str) -> BTreeSet<String> {
    conf.lines()
        .filter_map(|line| line.trim().strip_prefix("server ")?.strip_suffix(';'))
        .map(|addr| addr.split_whitespace().next().unwrap().to_owned())
        .collect()
}

#[test]
fn compose_mounts_the_tested_configs_and_wires_routers_to_nginx_and_prometheus() {
    let compose = yaml("deploy/compose.yaml");
    let services = compose["services"].as_mapping().expect("services");
    let mut mounts = BTreeSet::new();
    for (name, service) in services {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            assert!(deploy(source).exists(), "{name:?} mounts {source}, which does not exist");
            mounts.insert(source.to_owned());
        }
    }
    for tested in ["../redis.conf", "../nginx/presence-router.conf", "./grafana/presence-router.json"] {
        assert!(mounts.contains(tested), "compose mounts {tested} itself: {mounts:?}");
    }
    assert!(mounts.contains("./prometheus/alerts.yml"), "{mounts:?}");

    let routers: Vec<&Yaml> =
        services.iter().filter(|(name, _)| name.as_str().unwrap().starts_with("router")).map(|(_, s)| s).collect();
    assert_eq!(routers.len(), 2, "two routers, as the README starts");
    let env =
        |router: &Yaml, key: &str| router["environment"][key].as_str().unwrap_or_else(|| panic!("{key}")).to_owned();
    let public: BTreeSet<String> = routers.iter().map(|r| format!("127.0.0.1:{}", env(r, "PORT"))).collect();
    let scraped: BTreeSet<String> = routers.iter().map(|r| env(r, "METRICS_ADDR")).collect();
    assert_eq!(nginx_upstreams(&read("nginx/presence-router.conf")), public, "nginx's upstreams are the routers");
    let prometheus = yaml("deploy/prometheus/prometheus.yml");
    let targets: BTreeSet<String> = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(targets, scraped, "Prometheus scrapes every router's METRICS_ADDR");
    for router in routers {
        assert_eq!(env(router, "REDIS_HOST"), "127.0.0.1", "the redis.conf of this repository binds loopback");
    }
}

#[test]
fn the_dockerfile_copies_files_that_exist_and_checks_liveness() {
    let dockerfile = read("deploy/Dockerfile");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from=")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for source in &words[1..words.len() - 1] {
            assert!(root.join(source).exists(), "{line}: {source} does not exist");
        }
    }
    let healthcheck = dockerfile.lines().skip_while(|l| !l.starts_with("HEALTHCHECK")).take(2).collect::<String>();
    assert!(healthcheck.contains("/livez"), "the HEALTHCHECK probes liveness: {healthcheck}");
    assert!(dockerfile.lines().any(|l| l.starts_with("USER ") && !l.contains("root")), "runs as a non-root user");
}

#[test]
fn systemd_accepts_the_unit() {
    let unit = read("deploy/presence-router.service")
        .replace("/usr/local/bin/presence-router", env!("CARGO_BIN_EXE_presence-router"))
        .replace("/etc/presence-router/presence-router.env", deploy("presence-router.env").to_str().unwrap());
    let dir = std::env::temp_dir().join(format!("presence-router-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("presence-router.service");
    std::fs::write(&path, unit).unwrap();
    let output = match Command::new("systemd-analyze").arg("verify").arg(&path).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("note: systemd-analyze is not installed: skipped verifying deploy/presence-router.service");
            return;
        }
        Err(e) => panic!("systemd-analyze: {e}"),
    };
    std::fs::remove_dir_all(dir).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.trim().is_empty(), "systemd-analyze verify:\n{stderr}");
}
