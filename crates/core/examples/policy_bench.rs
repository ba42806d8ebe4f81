//! The ImagePolicy choice over a large tag list: time and heap allocations per choice.
//!
//! Run through `cargo xtask bench policy` (which builds this in release mode), or directly:
//! `cargo run --release -p gantry-core --example policy_bench -- [TAGS] [RUNS]`.
//! Allocations are counted by wrapping the system allocator (stats_alloc) and reading its
//! counters around one choice; the tag list itself is built before that.

use std::alloc::System;
use std::time::{Duration, Instant};

use gantry_core::image::policy::{Order, Policy, TagFilter, choose};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

// A repository's worth of tags in the shapes CI pushes: releases with and without `v`,
// release candidates, `main-<sha>-<unix time>` builds and a few floating tags.
fn tags(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let (major, minor, patch) = (i / 10_000, (i / 100) % 100, i % 100);
            match i % 5 {
                0 => format!("{major}.{minor}.{patch}"),
                1 => format!("v{major}.{minor}.{patch}"),
                2 => format!("{major}.{minor}.{patch}-rc.{}", i % 7),
                3 => format!(
                    "main-{:07x}-{}",
                    (i as u64).wrapping_mul(2_654_435_761) & 0xfff_ffff,
                    1_700_000_000 + i
                ),
                _ if i % 1000 == 4 => "latest".to_owned(),
                _ => format!("{major}.{minor}.{patch}+build.{i}"),
            }
        })
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map_or(100_000, |a| a.parse().expect("TAGS: a number"));
    let runs: usize = args
        .next()
        .map_or(7, |a| a.parse().expect("RUNS: a number"));
    let tags = tags(n);
    let bytes: usize = tags.iter().map(String::len).sum();
    println!(
        "{n} tags ({:.1} MiB of tag text), {runs} runs each, release build",
        bytes as f64 / (1024.0 * 1024.0)
    );
    let builds = TagFilter::new(r"^main-[a-f0-9]+-(?P<ts>[0-9]+)$", "$ts").unwrap();
    let releases = TagFilter::new(r"^v?(?P<version>[0-9].*)$", "$version").unwrap();
    let cases: Vec<(&str, Policy, Option<&TagFilter>)> = vec![
        (
            "semver '>=1.0.0 <8.0.0'",
            Policy::semver(">=1.0.0 <8.0.0").unwrap(),
            None,
        ),
        (
            "semver '^9.0.0-0 || ~3.4'",
            Policy::semver("^9.0.0-0 || ~3.4").unwrap(),
            None,
        ),
        (
            "semver '*' + filter extracting $version",
            Policy::semver("*").unwrap(),
            Some(&releases),
        ),
        ("alphabetical asc", Policy::Alphabetical(Order::Asc), None),
        ("alphabetical desc", Policy::Alphabetical(Order::Desc), None),
        (
            "numerical asc + filter extracting $ts",
            Policy::Numerical(Order::Asc),
            Some(&builds),
        ),
    ];
    for (name, policy, filter) in &cases {
        // Warm up (and the answer, for the record).
        let chosen = choose(policy, *filter, tags.iter().map(String::as_str)).unwrap();
        let mut times: Vec<Duration> = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            let c = choose(policy, *filter, tags.iter().map(String::as_str)).unwrap();
            times.push(t.elapsed());
            assert_eq!(c, chosen);
        }
        let region = Region::new(GLOBAL);
        let _ = choose(policy, *filter, tags.iter().map(String::as_str)).unwrap();
        let stats = region.change();
        times.sort();
        println!(
            "{name:<42} -> {chosen:<26} min {:>7.2} ms  median {:>7.2} ms  allocations {:>6} ({} bytes, {} reallocations)",
            times[0].as_secs_f64() * 1e3,
            times[times.len() / 2].as_secs_f64() * 1e3,
            stats.allocations,
            stats.bytes_allocated,
            stats.reallocations,
        );
    }
}
