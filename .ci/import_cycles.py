#!/usr/bin/env python3
"""Import cycles between the modules of one crate (default: edge/src).

Reads every .rs file of the library (not main.rs), drops `#[cfg(test)]`
modules, and collects which module each file refers to: `crate::a::b` paths
(in `use` lines, braces expanded, and inline), `super::` paths, and child
modules named as `child::` by their parent. A path is resolved to the longest
module prefix it names. Prints every strongly connected component of more
than one module, at file level and at top level (a module with its children),
and exits 1 if there is any.
"""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "edge/src"


def module_of(path):
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    if rel == ["lib"]:
        return ()
    if rel[-1] == "mod":
        rel = rel[:-1]
    return tuple(rel)


def strip_tests(src):
    m = re.search(r"#\[cfg\(test\)\]\s*(pub\s+)?mod\s+\w+\s*\{", src)
    return src[: m.start()] if m else src


def strip_comments(src):
    src = re.sub(r"//[^\n]*", "", src)
    return re.sub(r"/\*.*?\*/", "", src, flags=re.S)


def expand_use(body):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    body = body.strip()
    i = body.find("{")
    if i < 0:
        return [body.split(" as ")[0].strip()]
    prefix, inner = body[:i], body[i + 1 : body.rfind("}")]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if p.strip():
            out += [prefix + q for q in expand_use(p)]
    return out


files = {}
for d, _, names in os.walk(root):
    for n in names:
        if n.endswith(".rs") and not (d == root and n == "main.rs"):
            p = os.path.join(d, n)
            files[module_of(p)] = strip_comments(strip_tests(open(p).read()))
modules = set(files)


def resolve(path):
    segs = tuple(s for s in path.split("::") if s)
    for k in range(len(segs), -1, -1):
        if segs[:k] in modules:
            return segs[:k]
    return ()


edges = {m: set() for m in modules}
for m, src in files.items():
    paths = []
    for u in re.finditer(r"\buse\s+([^;]+);", src):
        paths += expand_use(u.group(1))
    paths += re.findall(r"\b((?:crate|super|self)(?:::\w+)+)", src)
    children = set(re.findall(r"\bmod\s+(\w+)\s*;", src))
    for c in children:
        if re.search(r"(?<![:\w])" + c + r"::", src):
            edges[m].add(m + (c,))
    for p in paths:
        segs = p.split("::")
        if segs[0] == "crate":
            target = resolve("::".join(segs[1:]))
        elif segs[0] in ("super", "self"):
            base = m
            while segs and segs[0] in ("super", "self"):
                if segs[0] == "super":
                    base = base[:-1]
                segs = segs[1:]
            target = resolve("::".join(base + tuple(segs)))
        else:
            continue
        if target != m:
            edges[m].add(target)


def sccs(graph):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def name(m):
    return "crate::" + "::".join(m) if m else "crate (lib.rs)"


top = {}
for m, ts in edges.items():
    a = m[:1]
    for t in ts:
        b = t[:1]
        if a != b:
            top.setdefault(a, set()).add(b)

bad = 0
for label, graph in (("file-level", edges), ("top-level", top)):
    comps = sccs(graph)
    print(f"{label}: {len(graph)} modules, {len(comps)} cycle(s)")
    for c in comps:
        bad += 1
        members = set(c)
        print("  cycle: " + ", ".join(sorted(name(x) for x in c)))
        for a in sorted(c):
            for b in sorted(graph[a] & members):
                print(f"    {name(a)} -> {name(b)}")
sys.exit(1 if bad else 0)
