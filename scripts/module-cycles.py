#!/usr/bin/env python3
"""Fails when, inside any crate of the workspace, a module imports one that imports it back.

The module graph is built from the source text, one node per module (a file, or an inline
`mod name { ... }` block counted as part of its file): an edge A -> B for every path in A that
names B or something in it (`use crate::b::X`, `super::X`, `self::b::f()`, `b::f()` with `b`
a child module, the braces of a use tree expanded). Declaring a child (`mod b;`) is not an
import; test modules (`#[cfg(test)] mod tests`, files named tests.rs or under a tests/ folder
of src/) are left out, since a test reads the module it tests by nature. A cycle is a strongly
connected component of more than one module; each is printed with the lines that make it.

Usage: scripts/module-cycles.py [crate-dir ...]   (default: every crate of the workspace)
"""
import os
import re
import subprocess
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def crate_dirs(root):
    out = subprocess.run(
        ["git", "ls-files", "*Cargo.toml"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    return sorted(os.path.dirname(p) or "." for p in out if os.path.isdir(os.path.join(root, os.path.dirname(p), "src")))


def strip_comments_and_strings(text):
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def module_files(src):
    """Map module path (tuple) -> file, for every non-test file reachable from lib.rs/main.rs."""
    modules = {}
    roots = [f for f in ("lib.rs", "main.rs") if os.path.exists(os.path.join(src, f))]
    stack = [((), os.path.join(src, r)) for r in roots[:1]]
    # binaries under src/bin are crates of their own; left out.
    while stack:
        path, file = stack.pop()
        if path in modules:
            continue
        modules[path] = file
        text = strip_comments_and_strings(open(file, encoding="utf-8").read())
        base = os.path.dirname(file)
        stem = os.path.splitext(os.path.basename(file))[0]
        if stem not in ("lib", "main", "mod"):
            base = os.path.join(base, stem)
        for m in re.finditer(r"((?:#\[[^\]]*\]\s*)*)(?:pub(?:\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*;", text):
            attrs, name = m.group(1), m.group(2)
            if "cfg(test)" in attrs or name == "tests":
                continue
            explicit = re.search(r'#\[path\s*=\s*"([^"]+)"\]', attrs)
            candidates = [os.path.join(base, name + ".rs"), os.path.join(base, name, "mod.rs")]
            for c in candidates:
                if os.path.exists(c):
                    stack.append((path + (name,), c))
                    break
    return modules


def inline_modules(text):
    """Names of inline `mod x {` blocks (their paths are resolved as the file's own)."""
    return set(re.findall(r"\bmod\s+(" + IDENT + r")\s*\{", text))


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']"""
    tree = re.sub(r"\s+", "", tree)
    out = []

    def walk(prefix, s):
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            cur += ch
        if cur:
            parts.append(cur)
        for p in parts:
            i = p.find("{")
            if i >= 0 and p.endswith("}"):
                walk(prefix + p[:i], p[i + 1:-1])
            else:
                out.append(prefix + p)

    walk("", tree)
    return out


def references(text):
    """Every path mentioned: use trees expanded, then bare paths in the code."""
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        paths.extend(expand_use_tree(m.group(1)))
    body = re.sub(r"\buse\s+[^;]+;", "", text)
    paths.extend(re.findall(r"\b(?:" + IDENT + r"::)+" + IDENT, body))
    return [re.sub(r"\s+as\s+.*$", "", p) for p in paths]


def resolve(path, here, modules):
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    if segs[0] == "crate":
        cur, segs = (), segs[1:]
    elif segs[0] in ("self", "super"):
        cur = here
        while segs and segs[0] in ("self", "super"):
            if segs[0] == "super":
                cur = cur[:-1]
            segs = segs[1:]
    elif here + (segs[0],) in modules:
        cur = here
    else:
        return None
    target = cur
    for s in segs:
        if target + (s,) in modules:
            target = target + (s,)
        else:
            break
    return target


def cycles_in(crate, root):
    src = os.path.join(root, crate, "src")
    modules = module_files(src)
    edges = {m: {} for m in modules}
    for mod, file in modules.items():
        text = strip_comments_and_strings(open(file, encoding="utf-8").read())
        # Leave out inline test modules: from `#[cfg(test)] mod x {` to the end of the file.
        cut = re.search(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*mod\s+" + IDENT + r"\s*\{", text)
        if cut:
            text = text[: cut.start()]
        for p in references(text):
            t = resolve(p, mod, modules)
            if t is not None and t != mod:
                edges[mod].setdefault(t, p)
    return modules, edges, scc(edges)


def scc(edges):
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def name(crate, mod):
    return crate + ":" + ("::".join(mod) or "(root)")


def main():
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True).stdout.strip()
    crates = sys.argv[1:] or crate_dirs(root)
    found = 0
    for crate in crates:
        modules, edges, comps = cycles_in(crate, root)
        for comp in comps:
            found += 1
            print(f"cycle in {crate}: " + ", ".join(name(crate, m) for m in comp))
            members = set(comp)
            for m in comp:
                for t, p in sorted(edges[m].items()):
                    if t in members:
                        print(f"    {'::'.join(m) or '(root)'} -> {'::'.join(t) or '(root)'}  ({p})")
    if found:
        print(f"{found} module cycle(s): a module imports one that imports it back", file=sys.stderr)
        return 1
    print(f"no module cycles in {len(crates)} crates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
