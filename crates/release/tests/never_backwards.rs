//! Property: whatever sequence of commits, releases, branch switches and merges a real
//! repository goes through, each release is higher than every release already in its history.

mod common;

use common::TestRepo;
use gantry_release::ReleaseRepo;
use proptest::prelude::*;
use semver::Version;

#[derive(Debug, Clone)]
enum Op {
    Commit { kind: &'static str, breaking: bool },
    Release,
    Switch(&'static str),
    MergeBetaIntoMain,
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop::sample::select(vec!["feat", "fix", "perf", "docs", "chore"]);
    prop_oneof![
        4 => (kind, prop::bool::weighted(0.2)).prop_map(|(kind, breaking)| Op::Commit { kind, breaking }),
        3 => Just(Op::Release),
        1 => prop::sample::select(vec!["main", "beta"]).prop_map(Op::Switch),
        1 => Just(Op::MergeBetaIntoMain),
    ]
}

fn reachable_versions(repo: &TestRepo) -> Vec<Version> {
    repo.git(&["tag", "--merged", "HEAD"])
        .lines()
        .filter_map(|t| Version::parse(t.strip_prefix('v')?).ok())
        .collect()
}

proptest! {
    // Each case builds a repository with the git CLI: a few dozen cases keep this in seconds.
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn releases_never_go_backwards(ops in prop::collection::vec(op(), 1..25)) {
        let repo = TestRepo::new();
        repo.commit("feat: base");
        repo.git(&["branch", "beta"]);
        let mut n = 0;
        for op in ops {
            match op {
                Op::Commit { kind, breaking } => {
                    n += 1;
                    let bang = if breaking { "!" } else { "" };
                    repo.commit(&format!("{kind}{bang}: change {n}"));
                }
                Op::Switch(branch) => {
                    repo.git(&["switch", "--quiet", branch]);
                }
                Op::MergeBetaIntoMain => {
                    repo.git(&["switch", "--quiet", "main"]);
                    repo.git(&["merge", "--quiet", "--no-ff", "beta", "--message", "Merge branch 'beta'"]);
                }
                Op::Release => {
                    let before = reachable_versions(&repo);
                    let r = ReleaseRepo::open(repo.path()).unwrap();
                    let plan = r.plan(None).unwrap();
                    let Some(next) = plan.next.clone() else { continue };
                    for earlier in &before {
                        prop_assert!(&next > earlier, "{} after {} on {}", next, earlier, plan.branch);
                    }
                    prop_assert!(plan.channel.includes(&next));
                    r.tag(&plan, "release").unwrap();
                    // Released: planning again finds nothing to do.
                    prop_assert_eq!(r.plan(None).unwrap().next, None);
                }
            }
        }
    }
}
