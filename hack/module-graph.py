#!/usr/bin/env python3
"""The import graph between the top-level modules of one crate (default src, the bindlet
crate; src/agent for bindlet-agent), skipping folders that are crates of their own, from
`crate::<module>` paths outside comments. Prints
every edge with the files that make it, then the cycles (strongly connected components of
more than one module). Exit status 1 when there is a cycle.

Crates of the workspace are kept apart by Cargo itself (`cargo tree`); this covers the
modules inside the one crate that is not split further.

    hack/module-graph.py [CRATE_DIR]
"""
import collections
import pathlib
import re
import sys

SRC = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "src")
MEMBER_CRATES = {p.parent.name for p in SRC.glob("*/Cargo.toml")}


def top_module(path: pathlib.Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".rs")


def _strip():
    """long-functions.py's stripper (comments, strings and chars blanked): one of them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "long_functions", pathlib.Path(__file__).with_name("long-functions.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.strip


code = _strip()


def main() -> int:
    modules = set()
    edges = collections.defaultdict(set)
    for path in SRC.rglob("*.rs"):
        top = top_module(path)
        if top in MEMBER_CRATES or top in ("lib", "main"):
            continue
        modules.add(top)
        text = code(path.read_text())
        # `use crate::{a, b::c}` and `crate::x::y` anywhere.
        targets = set(re.findall(r"\bcrate::(\w+)", text))
        for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
            targets |= set(re.findall(r"(?:^|,)\s*(\w+)", group))
        for t in targets:
            if t != top:
                edges[(top, t)].add(str(path))
    graph = collections.defaultdict(set)
    for (a, b) in edges:
        if b in modules:
            graph[a].add(b)
    for (a, b), files in sorted(edges.items()):
        if b in modules:
            print(f"{a} -> {b}   ({', '.join(sorted(files))})")

    # Tarjan's strongly connected components.
    index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(comp)

    for v in sorted(modules):
        if v not in index:
            visit(v)
    cycles = [sorted(c) for c in sccs if len(c) > 1]
    for c in cycles:
        print("cycle: " + " <-> ".join(c))
    print(f"{len(modules)} modules, {sum(len(s) for s in graph.values())} edges, {len(cycles)} cycles")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
