#!/usr/bin/env python3
"""Cycles among the files of a crate, drawn from their imports.

`python3 scripts/file-cycles.py crates/trainers crates/cli … [--allow crate:file,file …]` reads every `.rs` file under each
crate's `src/`, takes each `use crate::…`, `use super::…` and path `crate::…` / `super::…` outside
comments and test modules as an arrow from the file to the module it names (re-exports
included; a file's arrow to its own parent module is not counted), and prints each set of files
that reach one another. Exit status 1 when a crate has one, unless `--allow` names that exact
set (a cycle by design, which its files say why).
"""

import os
import re
import sys


def modules(src):
    """Module path (`method::opd`, `` for lib.rs) → the file's code, comments and tests cut."""
    out = {}
    for folder, _, names in os.walk(src):
        for name in names:
            if not name.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(folder, name), src)[:-3]
            path = rel.replace("/mod", "").replace("/", "::")
            path = "" if path in ("lib", "main") else path
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                code = re.sub(r"//[^\n]*", "", f.read())
            cut = code.find("#[cfg(test)]\nmod tests")
            out[path] = code if cut < 0 else code[:cut]
    return out


def target(known, current, path):
    """The module of `known` that `path` (`crate::a::b`, `super::c`) names from `current`."""
    parts = path.split("::")
    if parts[0] == "crate":
        base, parts = [], parts[1:]
    else:
        base = current.split("::")[:-1] if current else []
        parts = parts[1:]
        while parts and parts[0] == "super":
            base, parts = base[:-1], parts[1:]
    for i in range(len(parts), 0, -1):
        name = "::".join(base + parts[:i])
        if name in known:
            return name
    name = "::".join(base)
    return name if name in known else None


def paths(code):
    """Every `crate::…` / `super::…` path, `use` groups expanded one level."""
    found = []
    for use in re.finditer(r"\buse\s+((?:crate|super)::[^;]+);", code, re.S):
        text = " ".join(use.group(1).split())
        group = re.match(r"((?:\w+::)+)\{(.*)\}$", text)
        if not group:
            found.append(text)
            continue
        depth, item, items = 0, "", []
        for ch in group.group(2):
            depth += ch == "{"
            depth -= ch == "}"
            if ch == "," and depth == 0:
                items.append(item)
                item = ""
            else:
                item += ch
        items.append(item)
        for item in items:
            item = re.sub(r"\{.*", "", item.strip()).rstrip(":").split(" as ")[0]
            if item:
                found.append(group.group(1) + item)
    found += [m.group(0) for m in re.finditer(r"\b(?:crate|super)(?:::\w+)+", code)]
    return found


def cycles(src):
    files = modules(src)
    arrows = {m: set() for m in files}
    for current, code in files.items():
        for path in paths(code):
            to = target(files, current, path)
            if to and to != current and not current.startswith(to + "::"):
                arrows[current].add(to)
    # Tarjan's strongly connected components.
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in arrows[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in files:
        if v not in index:
            visit(v)
    return found


def main():
    args, allowed = sys.argv[1:], set()
    while "--allow" in args:
        i = args.index("--allow")
        crate, files = args[i + 1].split(":")
        allowed.add((crate.rstrip("/"), tuple(sorted(files.split(",")))))
        del args[i : i + 2]
    bad = False
    for crate in args:
        for component in cycles(os.path.join(crate, "src")):
            if (crate.rstrip("/"), tuple(component)) in allowed:
                print(f"{crate}: files in a cycle by design: {', '.join(component)}")
                continue
            bad = True
            print(f"{crate}: files in a cycle: {', '.join(component)}")
    if not bad:
        print(f"no other file cycles in {', '.join(args)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
