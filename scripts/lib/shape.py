#!/usr/bin/env python3
"""The two shape checks of scripts/check-shape.sh over a Rust source tree (default src/).

  shape.py [--limit N] [--top N] [--report] [--max-cycles N] [SRC]

Function length: every `fn` with a body, counted from the line of `fn` to the line of its
closing brace, comments and blank lines included (attributes and doc comments above it are
not). Functions longer than --limit (default 80) are listed, longest first; --top N also lists
the N longest whatever their length.

Import cycles: a module is a file (`SRC/a/b.rs` and `SRC/a/b/mod.rs` are `a::b`, `SRC/lib.rs`
is `crate`). A module depends on another when it names it through a path that starts with
`crate::`, `super::` or `self::` (in `use` declarations, expressions and types alike), or with
the name of a child module the file declares (`mod x;` then `x::f()`), each resolved to the
longest module file that path names, and on through a `use` there that binds the next name
(`super::Conn` where the parent has `pub use conn::Conn` names `conn`). `$crate::` in macros and paths in comments and strings do
not count; `SRC/main.rs` is a separate crate and takes no part. Cycles are checked twice: between
module files, and rolled up to the top-level modules (`a::b` counts as `a`).

Exit status: 1 when a function is over the limit or there is a cycle, 0 otherwise or with
--report; 2 on a usage error. Nothing but the standard library.
"""
import argparse
import os
import signal
import sys
from collections import defaultdict

# ---------------------------------------------------------------------------------------------
# Lexer: identifiers, numbers, punctuation and literals, with their line; comments skipped.


def lex(text):
    """Tokens of Rust source as (kind, text, line); kind is id, num, lit or punct."""
    toks = []
    i, n, line = 0, len(text), 1

    def ident_start(c):
        return c.isalpha() or c == "_"

    def ident_char(c):
        return c.isalnum() or c == "_"

    def skip_quoted(j, quote):
        """Index just past the closing quote of a literal whose opening quote is at j - 1."""
        nonlocal line
        while j < n:
            c = text[j]
            if c == "\\":
                if j + 1 < n and text[j + 1] == "\n":
                    line += 1
                j += 2
                continue
            if c == "\n":
                line += 1
            if c == quote:
                return j + 1
            j += 1
        return j

    def skip_raw(j, hashes):
        """Index just past `"###` closing a raw string whose body starts at j."""
        nonlocal line
        close = '"' + "#" * hashes
        end = text.find(close, j)
        end = n if end < 0 else end + len(close)
        line += text.count("\n", j, end)
        return end

    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    if text[j] == "\n":
                        line += 1
                    j += 1
            i = j
        elif ident_start(c):
            j = i
            while j < n and ident_char(text[j]):
                j += 1
            word, start_line = text[i:j], line
            if word in ("r", "br", "cr") and j < n and text[j] in '#"':
                k = j
                while k < n and text[k] == "#":
                    k += 1
                if k < n and text[k] == '"':
                    i = skip_raw(k + 1, k - j)
                    toks.append(("lit", "str", start_line))
                    continue
                if word == "r" and k == j + 1 and k < n and ident_start(text[k]):
                    m = k
                    while m < n and ident_char(text[m]):
                        m += 1
                    toks.append(("id", text[k:m], start_line))
                    i = m
                    continue
            if word in ("b", "c") and j < n and text[j] == '"':
                i = skip_quoted(j + 1, '"')
                toks.append(("lit", "str", start_line))
                continue
            if word == "b" and j < n and text[j] == "'":
                i = skip_quoted(j + 1, "'")
                toks.append(("lit", "char", start_line))
                continue
            toks.append(("id", word, start_line))
            i = j
        elif c.isdigit():
            j = i
            while j < n and ident_char(text[j]):
                j += 1
            toks.append(("num", text[i:j], line))
            i = j
        elif c == '"':
            start_line = line
            i = skip_quoted(i + 1, '"')
            toks.append(("lit", "str", start_line))
        elif c == "'":
            # A char literal ('x', '\n', '{') or a lifetime / loop label ('a, 'static).
            if i + 1 < n and text[i + 1] == "\\":
                i = skip_quoted(i + 2, "'")
                toks.append(("lit", "char", line))
            elif i + 2 < n and text[i + 2] == "'":
                i += 3
                toks.append(("lit", "char", line))
            else:
                j = i + 1
                while j < n and ident_char(text[j]):
                    j += 1
                toks.append(("lifetime", text[i:j], line))
                i = j
        elif text.startswith("::", i):
            toks.append(("punct", "::", line))
            i += 2
        elif text.startswith("->", i) or text.startswith("=>", i):
            toks.append(("punct", text[i : i + 2], line))
            i += 2
        else:
            toks.append(("punct", c, line))
            i += 1
    return toks


# ---------------------------------------------------------------------------------------------
# One pass over a file's tokens: functions with their span, and the module paths it names.

# Tokens after which `impl`, `trait` and `mod` start an item rather than a type (`-> impl Fn`).
ITEM_BEFORE = {"}", ";", "{", "]", "unsafe", "default", "pub", ")", None}


def is_(tok, kind, text=None):
    return tok is not None and tok[0] == kind and (text is None or tok[1] == text)


def skip_angles(toks, k):
    """Index past the `<...>` that opens at k (k must be `<`)."""
    depth = 0
    while k < len(toks):
        t = toks[k][1] if toks[k][0] == "punct" else None
        if t == "<":
            depth += 1
        elif t == ">":
            depth -= 1
            if depth == 0:
                return k + 1
        elif t in ("{", ";"):
            return k
        k += 1
    return k


def impl_name(toks, k):
    """Name of the type an `impl` at k is for, and the index of its `{` (or None)."""
    k += 1
    if is_(toks[k] if k < len(toks) else None, "punct", "<"):
        k = skip_angles(toks, k)
    name, depth = None, 0
    while k < len(toks):
        kind, t, _ = toks[k]
        if kind == "punct" and t == "<":
            depth += 1
        elif kind == "punct" and t == ">":
            depth -= 1
        elif kind == "punct" and t in ("{", ";") and depth <= 0:
            return name or "impl", (k if t == "{" else None)
        elif kind == "id" and depth <= 0:
            if t == "where":
                name = name or "impl"
                while k < len(toks) and toks[k][1] not in ("{", ";"):
                    k += 1
                continue
            if t == "for":
                name = None
            elif t not in ("dyn", "mut", "const", "unsafe"):
                name = t
        k += 1
    return name or "impl", None


def body_open(toks, k):
    """Index of the `{` opening the body of the fn whose name is at k, or None (`;` first)."""
    paren = 0
    while k < len(toks):
        kind, t, _ = toks[k]
        if kind == "punct":
            if t in "([":
                paren += 1
            elif t in ")]":
                paren -= 1
            elif t == "{" and paren == 0:
                return k
            elif t == ";" and paren == 0:
                return None
        k += 1
    return None


def use_paths(toks, k):
    """Paths of the `use` tree starting at k, as (segments, line, the name it binds), and the
    index past `;`."""
    paths = []

    def tree(k, prefix):
        segs = list(prefix)
        line = toks[k][2] if k < len(toks) else 0
        while k < len(toks):
            kind, t, ln = toks[k]
            if kind == "id" or (kind == "punct" and t == "*"):
                segs.append(t)
                line = ln
                k += 1
                if k < len(toks) and toks[k][1] == "::":
                    k += 1
                    continue
                alias = segs[-2] if t == "self" and len(segs) > 1 else t
                if k + 1 < len(toks) and toks[k][1] == "as":
                    alias, k = toks[k + 1][1], k + 2
                paths.append((segs, line, alias))
                return k
            if kind == "punct" and t == "{":
                k += 1
                while k < len(toks) and toks[k][1] != "}":
                    k = tree(k, segs)
                    if k < len(toks) and toks[k][1] == ",":
                        k += 1
                return k + 1
            if kind == "punct" and t == "::":
                k += 1
                continue
            return k
        return k

    k = tree(k + 1, [])
    while k < len(toks) and toks[k][1] != ";":
        k += 1
    return paths, k + 1


def scan(toks):
    """Functions as (qualified name, first line, last line) and paths as (segments, line, inline
    module stack) for one file."""
    funcs, paths = [], []
    scopes = []  # (kind, name, brace depth inside the scope)
    depth = paren = 0
    pending = None  # (kind, name) for the next `{`
    i = 0
    while i < len(toks):
        kind, t, line = toks[i]
        prev = toks[i - 1] if i else None
        prev_t = prev[1] if prev else None
        if kind == "punct" and t == "{":
            depth += 1
            if pending:
                scopes.append((pending[0], pending[1], depth))
                pending = None
        elif kind == "punct" and t == "}":
            if scopes and scopes[-1][2] == depth:
                scopes.pop()
            depth -= 1
        elif kind == "punct" and t in "([":
            paren += 1
        elif kind == "punct" and t in ")]":
            paren -= 1
        elif kind == "punct" and t == ";" and paren <= 0:
            pending = None
        elif kind == "id" and t == "fn" and is_(toks[i + 1] if i + 1 < len(toks) else None, "id"):
            name = toks[i + 1][1]
            open_at = body_open(toks, i + 2)
            if open_at is not None:
                level, end = 0, open_at
                while end < len(toks):
                    if toks[end][1] == "{" and toks[end][0] == "punct":
                        level += 1
                    elif toks[end][1] == "}" and toks[end][0] == "punct":
                        level -= 1
                        if level == 0:
                            break
                    end += 1
                end_line = toks[min(end, len(toks) - 1)][2]
                qual = "::".join([s[1] for s in scopes] + [name])
                funcs.append((qual, line, end_line))
                pending = ("fn", name)
            i += 2
            continue
        elif kind == "id" and t == "impl" and prev_t in ITEM_BEFORE:
            name, _ = impl_name(toks, i)
            pending = ("impl", name)
        elif kind == "id" and t in ("trait", "mod") and prev_t in ITEM_BEFORE | {"auto"}:
            if i + 1 < len(toks) and toks[i + 1][0] == "id":
                pending = (t, toks[i + 1][1])
                if t == "mod" and i + 2 < len(toks) and toks[i + 2][1] == ";" and not inline(scopes):
                    paths.append((["mod", toks[i + 1][1]], line, []))
        elif kind == "id" and t == "use" and prev_t in ITEM_BEFORE:
            found, nxt = use_paths(toks, i)
            for segs, ln, alias in found:
                paths.append((segs, ln, inline(scopes)))
                if not inline(scopes) and alias != "*":
                    paths.append((["use", alias] + segs, ln, []))
            i = nxt
            continue
        elif kind == "id" and prev_t not in ("$", "::", "in") and is_(
            toks[i + 1] if i + 1 < len(toks) else None, "punct", "::"
        ):
            segs, k = [t], i + 1
            while k + 1 < len(toks) and toks[k][1] == "::" and toks[k + 1][0] == "id":
                segs.append(toks[k + 1][1])
                k += 2
            paths.append((segs, line, inline(scopes)))
            i = k
            continue
        i += 1
    return funcs, paths


def inline(scopes):
    return [s[1] for s in scopes if s[0] == "mod"]


# ---------------------------------------------------------------------------------------------
# Modules and their dependencies.


def module_of(rel):
    """Module path of a file relative to SRC (a tuple; () is the crate root), or None for
    main.rs and src/bin/, which belong to other crates."""
    parts = rel[:-3].split(os.sep)
    if parts in (["main"],) or parts[0] == "bin":
        return None
    if parts == ["lib"]:
        return ()
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def show_mod(m):
    return "::".join(m) if m else "crate"


def absolute(segs, here, inline_mods, children):
    """The segments of a path from the crate root, or None when it leaves this crate."""
    cur = list(here) + inline_mods
    head = segs[0]
    if head == "crate":
        full = segs[1:]
    elif head == "self":
        full = cur + segs[1:]
    elif head == "super":
        base, rest = cur, list(segs)
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
        full = base + rest
    elif not inline_mods and head in children.get(here, ()):
        full = list(here) + segs
    else:
        return None
    return [s for s in full if s != "self"]


def locate(full, modules, bound, children, hops=0):
    """The module file a path from the root names: the longest module prefix, followed through
    a `use` in that module that binds the next segment (`super::Conn` where the parent has
    `pub use conn::Conn` names `conn`)."""
    for cut in range(len(full), -1, -1):
        m = tuple(full[:cut])
        if m in modules:
            break
    if cut < len(full) and hops < 8 and full[cut] in bound.get(m, {}):
        again = absolute(bound[m][full[cut]], m, [], children)
        if again is not None:
            return locate(again + full[cut + 1 :], modules, bound, children, hops + 1)
    return m


def show_path(segs):
    return "::".join(s for s in segs if s != "self")


def sccs(nodes, edges):
    """Strongly connected components (Tarjan), each a sorted list."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
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
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def cycles_in(comp, edges, cap):
    """Elementary cycles inside one component, shortest first, at most cap of them (each
    starts at its smallest node), and whether the cap cut the list short."""
    members = set(comp)
    found = []
    for s in comp:
        stack = [(s, [s])]
        while stack:
            v, path = stack.pop()
            for w in sorted(edges.get(v, ()), reverse=True):
                if w not in members or w < s:
                    continue
                if w == s:
                    found.append(path + [s])
                elif w not in path:
                    stack.append((w, path + [w]))
            if len(found) > 50 * cap:
                break
    found.sort(key=lambda c: (len(c), c))
    return found[:cap], len(found) > cap


def report_cycles(title, nodes, edges, sites, cap, name):
    """Prints each tangle (modules that all reach each other), its cycles and the place each
    step is taken; returns the number of tangles."""
    comps = [c for c in sccs(nodes, edges) if len(c) > 1]
    if not comps:
        print(f"{title}: none")
        return 0
    print(f"{title}:")
    for comp in comps:
        cyc, more = cycles_in(comp, edges, cap)
        print(f"  tangle of {len(comp)} modules: {', '.join(name(m) for m in comp)}")
        for c in cyc:
            print("    cycle: " + " -> ".join(name(m) for m in c))
        if more:
            print(f"    ... more cycles through these modules (first {cap} shown; --max-cycles)")
        print("    where each step is taken (first place; how many places):")
        for a in comp:
            for b in sorted(edges.get(a, ())):
                if b in comp:
                    where = sites[(a, b)]
                    print(f"      {name(a)} -> {name(b)}: {where[0]} ({len(where)})")
    return len(comps)


# ---------------------------------------------------------------------------------------------


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the output quietly
    ap = argparse.ArgumentParser(prog="check-shape.sh", description=__doc__.split("\n")[0])
    ap.add_argument("src", nargs="?", help="source tree (default: this repository's src)")
    ap.add_argument("--limit", type=int, default=80, help="longest a function may be (lines)")
    ap.add_argument("--top", type=int, default=0, metavar="N", help="also list the N longest")
    ap.add_argument("--max-cycles", type=int, default=20, metavar="N",
                    help="cycles printed per tangle (default 20)")
    ap.add_argument("--report", action="store_true", help="print only; exit 0 whatever is found")
    args = ap.parse_args()
    if args.src is None:
        os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
        args.src = "src"
    if not os.path.isdir(args.src):
        ap.error(f"{args.src}: not a directory")

    files = []
    for root, dirs, names in os.walk(args.src):
        dirs.sort()
        files += [os.path.join(root, f) for f in sorted(names) if f.endswith(".rs")]

    funcs, per_file = [], {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            fns, paths = scan(lex(f.read()))
        funcs += [(last - first + 1, f"{path}:{first}", name) for name, first, last in fns]
        per_file[path] = paths

    # Function length.
    funcs.sort(key=lambda f: (-f[0], f[1]))
    over = [f for f in funcs if f[0] > args.limit]
    print(f"Functions over {args.limit} lines: {len(over)} (of {len(funcs)} in {args.src})")
    for n, where, name in over:
        print(f"  {n:5}  {where}  {name}")
    if args.top:
        print(f"The {min(args.top, len(funcs))} longest functions:")
        for n, where, name in funcs[: args.top]:
            print(f"  {n:5}  {where}  {name}")

    # Import cycles.
    mods = {}
    for path in files:
        m = module_of(os.path.relpath(path, args.src))
        if m is not None:
            mods[path] = m
    modules = set(mods.values())
    children, bound = {}, {}
    for path, here in mods.items():
        children[here] = {p[0][1] for p in per_file[path] if p[0][0] == "mod"}
        bound[here] = {p[0][1]: p[0][2:] for p in per_file[path] if p[0][0] == "use"}
    edges, sites = defaultdict(set), defaultdict(list)
    top_edges, top_sites = defaultdict(set), defaultdict(list)
    for path, here in mods.items():
        for segs, line, inline_mods in per_file[path]:
            if segs[0] in ("mod", "use"):
                continue
            full = absolute(segs, here, inline_mods, children)
            if full is None:
                continue
            to = locate(full, modules, bound, children)
            if to == here:
                continue
            at = f"{path}:{line} {show_path(segs)}"
            edges[here].add(to)
            sites[(here, to)].append(at)
            a, b = here[:1], to[:1]
            if a != b:
                top_edges[a].add(b)
                top_sites[(a, b)].append(at)
    print()
    n = report_cycles("Import cycles between modules", modules, edges, sites,
                      args.max_cycles, show_mod)
    tops = {m[:1] for m in modules}
    n_top = report_cycles("Import cycles between top-level modules", tops, top_edges,
                          top_sites, args.max_cycles, show_mod)
    print()
    print(f"check-shape: {len(over)} functions over {args.limit} lines; import cycles in {n} "
          f"tangles of modules, {n_top} of top-level modules")
    return 0 if args.report or not (over or n or n_top) else 1


if __name__ == "__main__":
    sys.exit(main())
