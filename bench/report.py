#!/usr/bin/env python3
"""bench/report.py RAW_CSV OUT_DIR INFO: medians, ratios, the table, targets, plot data.

Ratios are computed within each run (a cell against the floor measured in the same run, at
the same concurrency and through the same path) and the median over runs is reported.
"Ratio to the floor" compares round trips per second: ops/s x round trips per op (2 for a
granted two-statement cycle, 1 + grants/attempts on a hot key where a refused attempt skips
the release) against the floor's SELECT 1 statements per second.
"""
import csv, statistics, sys, os
from collections import defaultdict

raw, out, info = sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""
kv = dict(x.split("=", 1) for x in info.split() if "=" in x)
rows = list(csv.DictReader(open(raw)))

def f(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None

cell = {}  # (run, wl, path, c) -> row
for r in rows:
    cell[(r["run"], r["workload"], r["path"], r["clients"])] = r
runs = sorted({r["run"] for r in rows}, key=int)

def floor_path(path):
    return "direct" if path in ("client", "redis") else path

def ratio_in_run(run, wl, path, c):
    r = cell.get((run, wl, path, c))
    if not r or not r["floor"]:
        return None
    fl = cell.get((run, r["floor"], floor_path(path), c))
    if not fl:
        return None
    a, rt = f(r["ops_s"]), f(r["rt_per_op"])
    b = f(fl["ops_s"])
    frt = 3.0 if r["floor"] == "floor3" else 2.0
    if not a or not b or rt is None:
        return None
    return a * rt / (b * frt)

def pair_ratio(wl1, p1, wl2, p2, c):
    """median over runs of ops(wl1)/ops(wl2), both measured in the same run"""
    v = []
    for run in runs:
        a, b = cell.get((run, wl1, p1, c)), cell.get((run, wl2, p2, c))
        if a and b and f(a["ops_s"]) and f(b["ops_s"]):
            v.append(f(a["ops_s"]) / f(b["ops_s"]))
    return statistics.median(v) if v else None

def med(vals):
    v = [x for x in vals if x is not None]
    return statistics.median(v) if v else None

groups = defaultdict(list)
order = []
for r in rows:
    k = (r["workload"], r["path"], r["clients"])
    if k not in groups:
        order.append(k)
    groups[k].append(r)

label = {
    "floor2": "floor: 2 x SELECT 1", "shape": "control: same SQL, no lock", "floor3": "floor: 3 x SELECT 1",
    "lockext": "lockext try_lock+release", "lockext_hot": "lockext, one hot key",
    "lockext_renew": "lockext try+renew+release", "advisory": "advisory lock+unlock",
    "advisory_hot": "advisory, one hot key", "advisory_txn": "advisory in BEGIN..COMMIT",
    "lease_unlogged": "lease table UNLOGGED", "lease_unlogged_hot": "UNLOGGED table, hot key",
    "lease_logged": "lease table (logged)", "lease_logged_hot": "logged table, hot key",
    "client_pg": "client lib, pg backend", "client_memory": "client lib, memory backend",
    "redis": "Redis SET NX PX + Lua del", "redis_hot": "Redis, one hot key",
    "lockext_999k_live": "lockext, 999k live leases",
    "pair_gross": "in-server pair (gross)", "pair_trivial": "in-server trivial fn",
    "pair_net": "in-server pair (net)", "pair_handle_gross": "in-server, release(h) form",
    "scale_1k_gross": "1k live: pair (gross)", "scale_1k_trivial": "1k live: trivial fn",
    "scale_1k_net": "1k live: pair (net)",
    "scale_999k_gross": "999k live: pair (gross)", "scale_999k_trivial": "999k live: trivial fn",
    "scale_999k_net": "999k live: pair (net)",
}
path_order = {"direct": 0, "client": 1, "redis": 2, "pgbouncer": 3, "inserver": 4}
wl_order = list(label)
order.sort(key=lambda k: (path_order.get(k[1], 9), int(k[2]),
                          wl_order.index(k[0]) if k[0] in wl_order else 99))

table = []
csv_rows = []
for k in order:
    wl, path, c = k
    if wl == "shmem_per_slot":
        continue
    g = groups[k]
    ops = med(f(r["ops_s"]) for r in g)
    lat = med(f(r["lat_us"]) for r in g)
    grants = med(f(r["grants_s"]) for r in g)
    ratio = med(ratio_in_run(r["run"], wl, path, c) for r in g)
    table.append((label.get(wl, wl), path, c, ops, lat, grants, ratio))
    csv_rows.append(dict(workload=wl, path=path, clients=c, ops_s=ops, avg_latency_us=lat,
                         grants_s=grants, ratio_to_floor=ratio, runs=len(g)))

def fmt(x, p=0):
    return "-" if x is None else f"{x:,.{p}f}"

hdr = ("workload", "path", "clients", "ops/s", "avg latency µs", "grants/s", "ratio to floor")
lines = []
w = [27, 9, 7, 12, 14, 10, 14]
lines.append(" | ".join(h.ljust(w[i]) if i < 2 else h.rjust(w[i]) for i, h in enumerate(hdr)))
lines.append("-+-".join("-" * x for x in w))
for t in table:
    vals = [t[0], t[1], t[2], fmt(t[3]), fmt(t[4], 1 if t[1] != "inserver" else 3), fmt(t[5]), fmt(t[6], 2)]
    lines.append(" | ".join(v.ljust(w[i]) if i < 2 else v.rjust(w[i]) for i, v in enumerate(vals)))
table_txt = "\n".join(lines)

# ---- targets
tg = []
def target(name, value, ok_fn, goal, note=""):
    if value is None:
        tg.append(f"  [ n/a ] {name}: not measured")
        return
    ok = ok_fn(value)
    tg.append(f"  [{' met ' if ok else 'MISSED'}] {name}: {value:.2f} (target {goal}){note}")

for c in ("8", "32"):
    target(f"lockext cycle / floor, {c} clients", med(ratio_in_run(r, "lockext", "direct", c) for r in runs), lambda v: v >= 0.9, ">= 0.9")
target("lockext cycle / floor, 32 clients via PgBouncer", med(ratio_in_run(r, "lockext", "pgbouncer", "32") for r in runs), lambda v: v >= 0.9, ">= 0.9")
for c in ("1", "8", "32"):
    target(f"lockext / advisory cycle, {c} clients", pair_ratio("lockext", "direct", "advisory", "direct", c), lambda v: v >= 1.0, ">= 1.0")
for c in ("1", "8", "32"):
    target(f"lockext / logged lease table, {c} clients", pair_ratio("lockext", "direct", "lease_logged", "direct", c), lambda v: v >= 5, ">= 5")
for c in ("8", "32"):
    target(f"hot key: lockext round trips / floor, {c} clients", med(ratio_in_run(r, "lockext_hot", "direct", c) for r in runs), lambda v: v >= 0.9, ">= 0.9")
s1 = med(f(r["lat_us"]) for r in groups.get(("scale_1k_net", "inserver", "1"), []))
s2 = med(f(r["lat_us"]) for r in groups.get(("scale_999k_net", "inserver", "1"), []))
target("cost per pair at 999k live / at 1k live leases (in-server, net)", s2 / s1 if s1 and s2 else None, lambda v: v <= 1.3, "<= 1.3",
       f"  [{fmt(s1, 3)} µs vs {fmt(s2, 3)} µs]")
pg1 = pair_ratio("lockext_999k_live", "direct", "lockext", "direct", "8")
if pg1:
    tg.append(f"  [ info ] pgbench lockext cycle at 8 clients, 999k live / ~0 live: {pg1:.2f} (throughput ratio, 1 run)")
slot = med(f(r["ops_s"]) for r in groups.get(("shmem_per_slot", "inserver", "1"), []))
klen = f(kv.get("max_key_length"))
target("shared memory per slot, bytes", slot, lambda v: klen is not None and v <= klen + 128,
       f"<= max_key_length + 128 = {fmt(klen + 128 if klen else None)}",
       f"  [pg_shmem_allocations: {kv.get('shmem_big')} B at max_locks={kv.get('max_locks')}, {kv.get('shmem_small')} B at 10000]")
net = med(f(r["lat_us"]) for r in groups.get(("pair_net", "inserver", "1"), []))
target("in-server µs per try_lock+release pair (net of a trivial function)", net, lambda v: v <= 2.0, "<= 2 µs")
for c in ("1", "8", "32"):
    target(f"client library pg backend / pgbench lockext cycle, {c} threads", pair_ratio("client_pg", "client", "lockext", "direct", c), lambda v: v >= 0.9, ">= 0.9")
for c in ("1", "8", "32"):
    r = med(ratio_in_run(r, "shape", "direct", c) for r in runs)
    if r:
        tg.append(f"  [ info ] control (lockext's SQL shape without a lock) / floor, {c} clients: {r:.2f}")
    r = pair_ratio("lockext", "direct", "shape", "direct", c)
    if r:
        tg.append(f"  [ info ] lockext / control, {c} clients: {r:.2f} (what the extension itself costs)")
for c in ("1", "8", "32"):
    r = pair_ratio("lockext", "direct", "redis", "redis", c)
    if r:
        tg.append(f"  [ info ] lockext / Redis cycle, {c} clients: {r:.2f}")
targets_txt = "targets (median over runs of per-run ratios):\n" + "\n".join(tg)

print()
print(f"lockext benchmark ({info})")
print(table_txt)
print()
print(targets_txt)
print()
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "table.txt"), "w").write(table_txt + "\n")
open(os.path.join(out, "targets.txt"), "w").write(targets_txt + "\n")
with open(os.path.join(out, "results.csv"), "w", newline="") as fh:
    wr = csv.DictWriter(fh, fieldnames=list(csv_rows[0].keys()))
    wr.writeheader()
    for r in csv_rows:
        wr.writerow({k: ("" if v is None else (f"{v:.4g}" if isinstance(v, float) else v)) for k, v in r.items()})

# ---- plot data: ops/s at 1, 8, 32 clients for each workload on the direct/client/redis paths
plot = ["floor2", "shape", "lockext", "advisory", "lease_unlogged", "lease_logged", "floor3", "lockext_renew",
        "lockext_hot", "advisory_hot", "lease_unlogged_hot", "lease_logged_hot", "client_pg", "client_memory",
        "redis", "redis_hot"]
paths = {"client_pg": "client", "client_memory": "client", "redis": "redis", "redis_hot": "redis"}
with open(os.path.join(out, "plot.dat"), "w") as fh:
    fh.write("# workload c1 c8 c32\n")
    for wl in plot:
        p = paths.get(wl, "direct")
        v = [med(f(r["ops_s"]) for r in groups.get((wl, p, c), [])) for c in ("1", "8", "32")]
        if any(x for x in v):
            fh.write('"%s" %s\n' % (label.get(wl, wl), " ".join("%.1f" % (x or 0) for x in v)))
