"""Lines per module and the longest functions of the package (what a newcomer has to read).

    python benchmarks/code_shape.py [--rev GIT_REV] [--name NAME]

Reads the package at a git revision (default: the working tree), prints lines per module and the
ten longest functions, and saves them to ``benchmarks/results/code_shape_<name>.json``.
"""
from __future__ import annotations

import argparse
import ast
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sources(rev: str | None) -> dict[str, str]:
    if rev is None:
        return {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "mobilenets").rglob("*.py"))}
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", rev, "mobilenets"],
                           capture_output=True, text=True, check=True).stdout.split()
    return {n: subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{n}"], capture_output=True, text=True,
                              check=True).stdout for n in names if n.endswith(".py")}


def functions(path: str, text: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append((node.end_lineno - node.lineno + 1, f"{path}:{node.name}"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default=None)
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    src = sources(args.rev)
    lines = {p: len(t.splitlines()) for p, t in src.items()}
    funcs = sorted((f for p, t in src.items() for f in functions(p, t)), reverse=True)[:10]
    result = {"rev": args.rev or "working tree", "modules": len(lines), "total_lines": sum(lines.values()),
              "lines_per_module": dict(sorted(lines.items(), key=lambda kv: -kv[1])),
              "longest_functions": [{"function": n, "lines": k} for k, n in funcs]}
    print(f"{result['rev']}: {result['modules']} modules, {result['total_lines']} lines")
    for p, n in list(result["lines_per_module"].items())[:15]:
        print(f"  {n:5d}  {p}")
    print("longest functions:")
    for f in result["longest_functions"]:
        print(f"  {f['lines']:5d}  {f['function']}")
    out = ROOT / "benchmarks" / "results" / f"code_shape_{args.name or (args.rev or 'now')}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"saved {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
