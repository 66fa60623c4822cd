#!/usr/bin/env python3
"""Import circles between the top-level modules of a crate's library.

    scripts/module-cycles.py runtime/src server/src trainer/src

For each `SRC` folder: the modules are its `*.rs` files (and folders with a `mod.rs` or
a same-named file), `lib.rs` and the `bin/` tree left out; module A uses module B when
A's code (outside `#[cfg(test)]` modules and comments) names `crate::B`.
Prints every group of modules that reach each other (strongly connected components of
more than one module) and exits 1 if there is one. A text scan, not a parser: `crate::B`
in a string counts too, which errs on the side of reporting.
"""
import pathlib
import re
import sys

USE = re.compile(r"\bcrate::(\w+)")
USE_GROUP = re.compile(r"\bcrate::\{([^}]*)\}", re.S)


def code(text):
    """The text before the first `#[cfg(test)]` (test modules close the files here),
    comments (doc links included) removed."""
    i = text.find("#[cfg(test)]")
    text = text if i < 0 else text[:i]
    return re.sub(r"//[^\n]*", "", text)


def modules(src):
    """{module: [files]} of a library's top-level modules."""
    mods = {}
    for f in sorted(src.rglob("*.rs")):
        rel = f.relative_to(src)
        if rel.parts[0] == "bin" or rel.name == "lib.rs":
            continue
        mods.setdefault(rel.parts[0].removesuffix(".rs"), []).append(f)
    return mods


def graph(src):
    mods = modules(src)
    edges = {}
    for m, files in mods.items():
        text = "".join(code(f.read_text()) for f in files)
        used = set(USE.findall(text))
        for group in USE_GROUP.findall(text):
            used |= {g.strip().split("::")[0] for g in group.split(",") if g.strip()}
        edges[m] = sorted(u for u in used if u in mods and u != m)
    return edges


def cycles(edges):
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    found = False
    for arg in sys.argv[1:]:
        src = pathlib.Path(arg)
        comps = cycles(graph(src))
        for comp in comps:
            print(f"{src}: import circle among {', '.join(comp)}")
        if not comps:
            print(f"{src}: no import circles")
        found = found or bool(comps)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
