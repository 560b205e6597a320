"""A measurement, not a test (too slow for the suite): the Ray job's driver memory on 1x and 8x the rows, and
its throughput on 1 and 2 worker nodes of a simulated cluster (ray.cluster_utils.Cluster: a head with no
CPU, nodes of one CPU). Figures in docs/scale.md.

    python tests/serving/ray_scale.py BUNDLE NAMES.txt WORKDIR [--range-bytes N] [--only-throughput]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# One job in a process of its own: its driver's peak RSS is that process's (ru_maxrss).
JOB = r"""
import json, os, resource, sys
import ray
from ray.cluster_utils import Cluster
from seqship.runtime.ray import score_with_ray
bundle, src, out, nodes, range_bytes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
for _ in range(nodes):
    c.add_node(num_cpus=1)
c.wait_for_nodes()
ray.init(address=c.address, log_to_driver=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
s = score_with_ray(bundle, src, out, workers=nodes, range_bytes=range_bytes)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rows": s.rows_in, "parts": len(s.parts), "texts_per_second": s.texts_per_second,
                  "rss_before_job_mib": round(before / 1024), "rss_peak_mib": round(peak / 1024)}))
ray.shutdown()
c.shutdown()
"""


def job(args, names: list[str], rows: int, nodes: int) -> dict:
    src = args.workdir / f"in-{rows}"
    if not src.exists():
        src.mkdir(parents=True)
        with open(src / "names.txt", "w", encoding="utf-8") as f:
            for _ in range(rows // len(names) + 1):
                f.write("\n".join(names) + "\n")
    out = args.workdir / f"out-{rows}-{nodes}"
    cmd = [sys.executable, "-c", JOB, args.bundle, str(src), str(out), str(nodes), str(args.range_bytes)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    result = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"{rows:,} rows on {nodes} node(s): {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("names", type=Path, help="a text file, one name a line (repeated to the sizes measured)")
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--range-bytes", type=int, default=1 << 20)
    ap.add_argument("--only-throughput", action="store_true")
    args = ap.parse_args()
    names = [t for t in args.names.read_text(encoding="utf-8").split("\n") if t.strip()]
    if not args.only_throughput:
        one, eight = job(args, names, 200_000, 2), job(args, names, 1_600_000, 2)
        change = 100 * (eight["rss_peak_mib"] / one["rss_peak_mib"] - 1)
        print(f"driver peak RSS: {one['rss_peak_mib']} MiB (1x), {eight['rss_peak_mib']} MiB (8x): {change:+.1f}%")
    n1, n2 = job(args, names, 400_000, 1), job(args, names, 400_000, 2)
    print(f"throughput: {n1['texts_per_second']:,.0f} texts/s on 1 worker node, {n2['texts_per_second']:,.0f} on 2")


if __name__ == "__main__":
    main()
