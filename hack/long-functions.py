#!/usr/bin/env python3
"""Lists the non-test functions of the Rust sources under src/ that are longer than a limit
(80 lines by default), counting from the `fn` line to its closing brace.

Test code is skipped: files named tests.rs or under a tests/ folder, and `#[cfg(test)]`
modules. Strings, chars and comments are stripped before braces are counted; raw strings
with hashes are handled, which is all this code base uses.

    hack/long-functions.py [LIMIT]
"""
import pathlib
import re
import sys

FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"C\"\s+)?fn\s+(\w+)")


def strip(src: str) -> str:
    """The source with comments, strings and char literals blanked (newlines kept)."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    out.append("\n" if src[i] == "\n" else "")
                    i += 1
        elif c == "r" and re.match(r'r#*"', src[i:i + 10]) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', src[i:]).group(1)
            end = src.find('"' + hashes, i + 2 + len(hashes))
            end = n if end < 0 else end + 1 + len(hashes)
            out.append("\n" * src.count("\n", i, end))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append("\n" * src.count("\n", i, j))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'|'\\x[0-9a-fA-F]{2}'", src[i:i + 12]):
            m = re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'|'\\x[0-9a-fA-F]{2}'", src[i:i + 12])
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def functions(path: pathlib.Path):
    lines = strip(path.read_text()).split("\n")
    skip_until = -1
    depth = 0
    i = 0
    pending_cfg_test = False
    while i < len(lines):
        line = lines[i]
        if i <= skip_until:
            i += 1
            continue
        if re.search(r"#\[cfg\(test\)\]", line):
            pending_cfg_test = True
        m = FN.match(line)
        if m or (pending_cfg_test and re.match(r"^\s*(pub\s+)?mod\s+\w+\s*\{", line)):
            # Find the body: the first `{` at or after this line, then its match.
            d, start, end, opened = 0, i, None, False
            for j in range(i, len(lines)):
                for ch in lines[j]:
                    if ch == "{":
                        d, opened = d + 1, True
                    elif ch == "}":
                        d -= 1
                    elif ch == ";" and not opened:
                        end = j  # a declaration without a body
                        break
                    if opened and d == 0:
                        end = j
                        break
                if end is not None:
                    break
            if end is None:
                end = len(lines) - 1
            if m and not pending_cfg_test and opened:
                yield m.group(7), start + 1, end - start + 1
            if pending_cfg_test:
                skip_until = end
            pending_cfg_test = False if (m or pending_cfg_test) else pending_cfg_test
            i += 1 if m and not pending_cfg_test else 1
            continue
        if line.strip() and not line.strip().startswith("#"):
            pending_cfg_test = False
        i += 1


def main():
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 80
    long = []
    for path in sorted(pathlib.Path("src").rglob("*.rs")):
        if path.name == "tests.rs" or "tests" in path.parts[:-1]:
            continue
        for name, line, length in functions(path):
            if length > limit:
                long.append((length, f"{path}:{line}", name))
    for length, where, name in sorted(long, reverse=True):
        print(f"{length:5} {where} {name}")
    print(f"{len(long)} non-test functions over {limit} lines")


if __name__ == "__main__":
    main()
