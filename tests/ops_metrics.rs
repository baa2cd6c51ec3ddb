//! `/metrics` of real routers, on every engine: every counter is there at 0 before anything
//! happened (so `rate()` alerts read 0, not no data), the build and process figures are
//! there, the request and store-call histograms fill with traffic, and `promtool check
//! metrics` finds nothing to complain about (skipped with a note when promtool is absent).

mod common;

use std::collections::BTreeMap;

use common::{
    Engine, Setup,
    prometheus::{Sample, exports, parse, promtool, scrape, scrape_after_traffic},
};
use presence_router::metrics;

/// The sample of `name` with exactly `labels`.
fn sample<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    samples.iter().find(|s| s.name == name && s.labels == labels)
}

async fn a_fresh_router_shows_every_counter_at_zero(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let text = scrape(&router).await;
    let samples = parse(&text);

    let zeroes = metrics::zero_series();
    for (name, labels) in &zeroes {
        let found = sample(&samples, name, labels).unwrap_or_else(|| panic!("{name}{labels:?} is missing:\n{text}"));
        assert_eq!(found.value, 0.0, "{name}{labels:?} before any event");
    }
    // The series the shipped alert rules watch, by name.
    for (name, labels) in [
        ("presence_transitions_total", &[("cause", "expired")][..]),
        ("presence_ttl_expirations_total", &[]),
        ("presence_disconnects_total", &[("reason", "slow consumer")]),
        ("presence_api_requests_total", &[("route", "/api/presence/status"), ("status", "503")]),
        ("presence_accept_errors_total", &[("kind", "fd_limit")]),
    ] {
        assert!(zeroes.iter().any(|(n, l)| *n == name && l == labels), "{name}{labels:?} is registered at 0");
    }

    // Gauges the shipped dashboard plots, and the group subscriptions, read 0, not "no
    // data", before their first change.
    for (name, labels) in [
        (metrics::CONNECTIONS, &[("role", "mobile")][..]),
        (metrics::CONNECTIONS, &[("role", "dashboard")]),
        (metrics::SNAPSHOT_MEMORY, &[]),
        (metrics::BROKER_GROUP_SUBSCRIPTIONS, &[]),
    ] {
        assert_eq!(
            sample(&samples, name, labels).map(|s| s.value),
            Some(0.0),
            "{name}{labels:?}:
{text}"
        );
    }
    let build = sample(&samples, metrics::BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))]);
    assert_eq!(build.map(|s| s.value), Some(1.0), "presence_build_info{{version}} is 1:\n{text}");
    for process in ["process_open_fds", "process_max_fds", "process_resident_memory_bytes", "process_cpu_seconds_total"]
    {
        assert!(exports(&samples, process), "{process} is exported:\n{text}");
    }
    promtool(&["check", "metrics"], &text);
}

async fn traffic_fills_the_latency_histograms(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let text = scrape_after_traffic(&router).await;
    let samples = parse(&text);

    let count = |name: &str, labels: &[(&str, &str)]| {
        sample(&samples, &format!("{name}_count"), labels).map_or(0.0, |s| s.value)
    };
    assert!(count(metrics::API_REQUEST_DURATION, &[("route", "/api/users/{id}/presence")]) >= 1.0, "{text}");
    for op in ["connect", "choice", "online", "ping"] {
        assert!(count(metrics::STORE_CALL_DURATION, &[("op", op)]) >= 1.0, "store call {op} timed:\n{text}");
    }
    assert!(count(metrics::UPDATE_LATENCY, &[]) >= 1.0, "{text}");
    promtool(&["check", "metrics"], &text);
}

on_every_engine!(a_fresh_router_shows_every_counter_at_zero, traffic_fills_the_latency_histograms);
