//! Images built FROM other managed images: the dependency graph, its build
//! order, and cycles (refused at config load, spelled out).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One image as the graph sees it.
#[derive(Debug, Clone)]
pub struct Node {
    /// The image's name.
    pub name: String,
    /// Its repository (`registry/repository`, no tag).
    pub repository: String,
    /// The repositories of its bases (no tag or digest).
    pub bases: Vec<String>,
}

/// A dependency cycle, e.g. `a -> b -> a`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CycleError {
    /// The images on the cycle, the first repeated at the end.
    pub cycle: Vec<String>,
}

impl fmt::Display for CycleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dependency cycle: {} (each builds FROM the repository of the next's parent)",
            self.cycle.join(" -> ")
        )
    }
}

/// The graph: edges from an image to the images built FROM its repository.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    names: Vec<String>,
    parents: Vec<BTreeSet<usize>>,
    children: Vec<BTreeSet<usize>>,
    order: Vec<usize>,
}

impl Graph {
    /// Builds the graph; refuses cycles.
    pub fn new(nodes: &[Node]) -> Result<Self, CycleError> {
        let by_repo: BTreeMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.repository.as_str(), i))
            .collect();
        let n = nodes.len();
        let mut parents = vec![BTreeSet::new(); n];
        let mut children = vec![BTreeSet::new(); n];
        for (i, node) in nodes.iter().enumerate() {
            for base in &node.bases {
                if let Some(&p) = by_repo.get(base.as_str()) {
                    parents[i].insert(p);
                    children[p].insert(i);
                }
            }
        }
        // Kahn's algorithm, taking ready images in config order.
        let mut indegree: Vec<usize> = parents.iter().map(BTreeSet::len).collect();
        let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &c in &children[i] {
                indegree[c] -= 1;
                if indegree[c] == 0 {
                    ready.insert(c);
                }
            }
        }
        if order.len() < n {
            let cycle = find_cycle(&parents, &indegree)
                .into_iter()
                .map(|i| nodes[i].name.clone())
                .collect();
            return Err(CycleError { cycle });
        }
        Ok(Self {
            names: nodes.iter().map(|n| n.name.clone()).collect(),
            parents,
            children,
            order,
        })
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Every image, parents before children (config order among equals).
    pub fn order(&self) -> Vec<&str> {
        self.order.iter().map(|&i| self.names[i].as_str()).collect()
    }

    /// Images built directly FROM `name`'s repository.
    pub fn children(&self, name: &str) -> Vec<&str> {
        self.index(name)
            .map(|i| {
                self.children[i]
                    .iter()
                    .map(|&c| self.names[c].as_str())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Managed images `name` is built FROM, directly.
    pub fn parents(&self, name: &str) -> Vec<&str> {
        self.index(name)
            .map(|i| {
                self.parents[i]
                    .iter()
                    .map(|&p| self.names[p].as_str())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every managed image `name` depends on, at any depth.
    pub fn ancestors(&self, name: &str) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        let mut stack: Vec<usize> = self
            .index(name)
            .map(|i| self.parents[i].iter().copied().collect())
            .unwrap_or_default();
        while let Some(p) = stack.pop() {
            if out.insert(self.names[p].as_str()) {
                stack.extend(self.parents[p].iter().copied());
            }
        }
        out
    }
}

/// A cycle among the nodes Kahn's algorithm could not order.
fn find_cycle(parents: &[BTreeSet<usize>], indegree: &[usize]) -> Vec<usize> {
    let Some(start) = (0..parents.len()).find(|&i| indegree[i] > 0) else {
        return Vec::new();
    };
    // Walk parent edges among unordered nodes until a node repeats.
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let Some(&next) = parents[cur].iter().find(|&&p| indegree[p] > 0) else {
            return path;
        };
        if let Some(pos) = path.iter().position(|&x| x == next) {
            let mut cycle: Vec<usize> = path[pos..].to_vec();
            // path follows child -> parent; spell it parent -> child.
            cycle.reverse();
            cycle.push(cycle[0]);
            return cycle;
        }
        path.push(next);
        cur = next;
    }
}

/// A graph from `(image, [parent images])`, repositories `r/NAME` (tests).
#[cfg(test)]
pub(crate) fn test_graph(edges: &[(&str, &[&str])]) -> Graph {
    let nodes: Vec<Node> = edges
        .iter()
        .map(|(n, b)| Node {
            name: n.to_string(),
            repository: format!("r/{n}"),
            bases: b.iter().map(|x| format!("r/{x}")).collect(),
        })
        .collect();
    Graph::new(&nodes).expect("acyclic")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, bases: &[&str]) -> Node {
        Node {
            name: name.to_owned(),
            repository: format!("reg/{name}"),
            bases: bases.iter().map(|b| format!("reg/{b}")).collect(),
        }
    }

    #[test]
    fn order_puts_parents_first() {
        // config order: c (FROM b), b (FROM a), a (FROM upstream)
        let g = Graph::new(&[
            node("c", &["b"]),
            node("b", &["a"]),
            node("a", &["upstream"]),
        ])
        .expect("acyclic");
        assert_eq!(g.order(), ["a", "b", "c"]);
        assert_eq!(g.children("a"), ["b"]);
        assert_eq!(g.parents("c"), ["b"]);
        assert_eq!(g.ancestors("c").into_iter().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn diamond() {
        let g = Graph::new(&[
            node("d", &["b", "c"]),
            node("b", &["a"]),
            node("c", &["a"]),
            node("a", &["x"]),
        ])
        .expect("acyclic");
        let order = g.order();
        let pos = |n: &str| order.iter().position(|x| *x == n).expect("present");
        assert!(
            pos("a") < pos("b")
                && pos("a") < pos("c")
                && pos("b") < pos("d")
                && pos("c") < pos("d")
        );
        assert_eq!(g.ancestors("d").len(), 3);
    }

    #[test]
    fn cycles_are_spelled_out() {
        let e = Graph::new(&[
            node("a", &["c"]),
            node("b", &["a"]),
            node("c", &["b"]),
            node("free", &[]),
        ])
        .expect_err("cycle");
        assert_eq!(e.cycle.len(), 4);
        assert_eq!(e.cycle.first(), e.cycle.last());
        let text = e.to_string();
        assert!(text.contains(" -> "), "{text}");
        for n in ["a", "b", "c"] {
            assert!(e.cycle.contains(&n.to_owned()), "{text}");
        }
        assert!(!e.cycle.contains(&"free".to_owned()));
        // the cycle follows real edges, parent -> child
        let g_edges = [("a", "b"), ("b", "c"), ("c", "a")];
        for w in e.cycle.windows(2) {
            assert!(g_edges.contains(&(w[0].as_str(), w[1].as_str())), "{text}");
        }
    }

    #[test]
    fn self_reference_is_a_cycle() {
        let e = Graph::new(&[node("a", &["a"])]).expect_err("cycle");
        assert_eq!(e.cycle, ["a", "a"]);
    }
}
