"""Interleaved rounds of calls.py through mediamem and through PyGObject,
in the same interpreter (Debian's /usr/bin/python3, which has PyGObject;
mediamem's abi3 wheel is unpacked onto its path), and a markdown table of
the medians with their ranges.

    python3 run.py --wheel-dir DIR [--rounds 11] [--number 20000]

DIR is the unpacked wheel (the folder that holds mediamem/).
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
OPS = [
    ("is_fd_memory", "`GstAllocators.is_fd_memory(mem)`, fd memory"),
    ("map_read_4k", "`with mem.map(READ) as info: bytes(info.data)`, 4 KiB"),
    ("share", "`mem.share(0, 4096)` (and its free), 4 KiB"),
]


def one(python, which, wheel_dir, number):
    env = dict(os.environ)
    if which == "mediamem":
        env["PYTHONPATH"] = str(wheel_dir)
    out = subprocess.run(
        [python, str(HERE / "calls.py"), which, "--number", str(number)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    if out.returncode != 0:
        sys.exit(f"{which} run failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheel-dir", required=True)
    ap.add_argument("--python", default="/usr/bin/python3")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--number", type=int, default=20000)
    args = ap.parse_args()
    runs = {"mediamem": [], "gi": []}
    for r in range(args.rounds):
        order = ["mediamem", "gi"] if r % 2 == 0 else ["gi", "mediamem"]
        for which in order:
            runs[which].append(one(args.python, which, args.wheel_dir, args.number))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    m, g = runs["mediamem"], runs["gi"]
    print(f"Python {m[0]['python']} ({args.python}) for both; {g[0]['gstreamer']} through PyGObject; "
          f"{args.rounds} interleaved rounds (one process per round and side), each the median "
          f"of 5 timings of {args.number} calls; medians of the rounds with [min–max].\n")
    print("| call | mediamem | PyGObject (GStreamer) | speed-up | goal ≥ 2x |")
    print("|---|---|---|---|---|")
    ok = True
    for key, label in OPS:
        a = [x[key] for x in m]
        b = [x[key] for x in g]
        ratio = statistics.median(b) / statistics.median(a)
        ratios = [y / x for x, y in zip(a, b)]
        met = ratio >= 2
        ok &= met
        print(f"| {label} | {statistics.median(a):.0f} ns [{min(a):.0f}–{max(a):.0f}] "
              f"| {statistics.median(b):.0f} ns [{min(b):.0f}–{max(b):.0f}] "
              f"| {ratio:.1f}x [{min(ratios):.1f}–{max(ratios):.1f}] | {'met' if met else 'NOT met'} |")
    e = [x["empty_loop"] for x in m + g]
    print(f"\ntimeit's loop itself costs {statistics.median(e):.0f} ns per iteration, "
          "included on both sides.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
