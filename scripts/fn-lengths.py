#!/usr/bin/env python3
"""The longest Rust functions outside `#[cfg(test)]` modules, in lines.

    scripts/fn-lengths.py $(git ls-files 'runtime/src/*.rs' 'trainer/src/*.rs')

TOP=N sets the number of rows (default 25). A brace-counting scan (comments, strings
and char literals blanked first): good enough for measuring, not a parser.
"""
import os
import pathlib
import re
import sys

FN = re.compile(
    r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+"[^"]*"\s+)?fn\s+(\w+)'
)


def spans(path):
    """(lines, name, first line) of every function with a body outside test modules."""
    out, stack = [], []  # stack: [name, first line, depth at the signature, body open]
    depth, test_depth, cfg_test = 0, None, False
    for idx, line in enumerate(pathlib.Path(path).read_text().splitlines()):
        code = re.sub(r'//.*', '', line)
        code = re.sub(r'"(\\.|[^"\\])*"', '""', code)
        code = re.sub(r"'(\\.|[^'\\])'", "''", code)
        if line.strip().startswith('#[cfg(test)]'):
            cfg_test = True
        m = FN.match(line)
        if m and test_depth is None:
            stack.append([m.group(7), idx + 1, depth, False])
        if cfg_test and re.match(r'^\s*(pub\s+)?mod\s+\w+\s*\{', line):
            test_depth, cfg_test = depth, False
        for ch in code:
            if ch == '{':
                depth += 1
                if stack and not stack[-1][3] and depth == stack[-1][2] + 1:
                    stack[-1][3] = True
            elif ch == '}':
                depth -= 1
                if test_depth is not None and depth == test_depth:
                    test_depth = None
                if stack and stack[-1][3] and depth == stack[-1][2]:
                    name, start, _, _ = stack.pop()
                    out.append((idx + 2 - start, name, start))
        if stack and not stack[-1][3] and code.rstrip().endswith(';') and depth == stack[-1][2]:
            stack.pop()  # a declaration without a body
    return out


rows = sorted(
    ((n, name, f"{p}:{start}") for p in sys.argv[1:] for n, name, start in spans(p)),
    reverse=True,
)
for n, name, loc in rows[: int(os.environ.get('TOP', '25'))]:
    print(f"{n:5d}  {name:30s} {loc}")
