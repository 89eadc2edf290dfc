#!/usr/bin/env python3
"""Prints the resources ptxas reported for lstm_ext's own kernels in a build log (the CUDA build passes
-Xptxas=-v,-warn-spills,-warn-lmem-usage,-Werror, so spills already fail the build): registers, stack,
spills and static shared memory (the persistent kernels' dynamic shared memory is sized per launch by
csrc/cuda/persistent_launch.h's plan, so ptxas does not see it). Exits non-zero when the log holds no
lstm_ext kernel, i.e. the CUDA sources were not compiled."""

import re
import shutil
import subprocess
import sys

ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
USAGE = re.compile(r"Used (\d+) registers")
SHARED = re.compile(r"(\d+) bytes smem")
SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def demangle(names):
    if not names or not shutil.which("c++filt"):
        return names
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
    return out.splitlines()


def main(path):
    rows, current = [], None
    for line in open(path, errors="replace"):
        if m := ENTRY.search(line):
            current = {"mangled": m.group(1), "arch": m.group(2)}
        elif current and (m := SPILLS.search(line)):
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current and (m := USAGE.search(line)):
            current["registers"] = int(m.group(1))
            current["smem"] = int(s.group(1)) if (s := SHARED.search(line)) else 0
            if "lstm_ext" in current["mangled"]:
                rows.append(current)
            current = None
    if not rows:
        print(f"no lstm_ext kernels in {path}: the CUDA sources were not compiled", file=sys.stderr)
        return 1
    names = demangle([r["mangled"] for r in rows])
    print(f"{'arch':6} {'regs':>4} {'stack':>5} {'spill':>5} {'smem':>5}  kernel")
    for row, name in sorted(zip(rows, names), key=lambda rn: (rn[0]["arch"], rn[1])):
        name = re.sub(r"^void lstm_ext::cuda::", "", name).split("(")[0]
        print(f"{row['arch']:6} {row['registers']:>4} {row.get('stack', 0):>5} "
              f"{row.get('spill_stores', 0) + row.get('spill_loads', 0):>5} {row['smem']:>5}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build/extension-build.log"))
