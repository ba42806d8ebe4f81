//! Dependency cycles among objects that wait for each other (`dependsOn`).
//!
//! Waiting on a cycle would never end, so a cycle is found and reported instead, naming every
//! member in order, before any waiting starts.

use std::collections::HashSet;
use std::hash::Hash;

/// Returns the cycle reachable from `start` through `deps`, as the path that closes it
/// (`[a, b, c, a]`), or `None` when following dependencies from `start` terminates.
/// `deps` is asked only for nodes reachable from `start`.
pub fn find_cycle<N, F, I>(start: &N, mut deps: F) -> Option<Vec<N>>
where
    N: Clone + Eq + Hash,
    F: FnMut(&N) -> I,
    I: IntoIterator<Item = N>,
{
    // Iterative DFS keeping the current path, so deep chains cannot overflow the stack.
    let mut done: HashSet<N> = HashSet::new();
    let mut path: Vec<N> = vec![start.clone()];
    let mut on_path: HashSet<N> = HashSet::from([start.clone()]);
    let mut pending: Vec<std::vec::IntoIter<N>> =
        vec![deps(start).into_iter().collect::<Vec<_>>().into_iter()];
    while let Some(iter) = pending.last_mut() {
        match iter.next() {
            Some(next) => {
                if on_path.contains(&next) {
                    let from = path.iter().position(|n| *n == next).unwrap_or(0);
                    let mut cycle = path[from..].to_vec();
                    cycle.push(next);
                    return Some(cycle);
                }
                if done.contains(&next) {
                    continue;
                }
                let children: Vec<N> = deps(&next).into_iter().collect();
                on_path.insert(next.clone());
                path.push(next);
                pending.push(children.into_iter());
            }
            None => {
                pending.pop();
                if let Some(finished) = path.pop() {
                    on_path.remove(&finished);
                    done.insert(finished);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn graph(edges: &[(&'static str, &'static str)]) -> HashMap<&'static str, Vec<&'static str>> {
        let mut g: HashMap<&str, Vec<&str>> = HashMap::new();
        for (from, to) in edges {
            g.entry(from).or_default().push(to);
        }
        g
    }

    fn cycle(
        edges: &[(&'static str, &'static str)],
        start: &'static str,
    ) -> Option<Vec<&'static str>> {
        let g = graph(edges);
        find_cycle(&start, |n| g.get(n).cloned().unwrap_or_default())
    }

    #[test]
    fn chains_and_diamonds_have_no_cycle() {
        assert_eq!(cycle(&[("a", "b"), ("b", "c")], "a"), None);
        assert_eq!(
            cycle(&[("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")], "a"),
            None
        );
        assert_eq!(cycle(&[], "a"), None);
    }

    #[test]
    fn cycles_are_reported_in_order() {
        assert_eq!(cycle(&[("a", "a")], "a"), Some(vec!["a", "a"]));
        assert_eq!(
            cycle(&[("a", "b"), ("b", "a")], "a"),
            Some(vec!["a", "b", "a"])
        );
        assert_eq!(
            cycle(
                &[("apps", "infra"), ("infra", "crds"), ("crds", "infra")],
                "apps"
            ),
            Some(vec!["infra", "crds", "infra"])
        );
    }

    #[test]
    fn a_long_chain_does_not_overflow() {
        let names: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
        let found = find_cycle(&0usize, |n| {
            if *n + 1 < names.len() {
                vec![*n + 1]
            } else {
                vec![]
            }
        });
        assert_eq!(found, None);
    }
}
