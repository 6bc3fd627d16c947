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
    return {"client": "direct", "redis": "direct", "client-pgb": "pgbouncer"}.get(path, path)

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
    "lockext": "lockext try_lock+release", "lockext_fnscan": "lockext, function scan",
    "lockext_hot": "lockext, one hot key",
    "lockext_renew": "lockext try+renew+release", "advisory": "advisory lock+unlock",
    "advisory_hot": "advisory, one hot key", "advisory_txn": "advisory in BEGIN..COMMIT",
    "lease_unlogged": "lease table UNLOGGED", "lease_unlogged_hot": "UNLOGGED table, hot key",
    "lease_logged": "lease table (logged)", "lease_logged_hot": "logged table, hot key",
    "advisory_libpq": "advisory, raw libpq", "client_pg": "client lib, pg backend",
    "client_pipeline": "client lib, pipelined", "client_memory": "client lib, memory backend",
    "redis": "Redis SET NX PX + Lua del", "redis_hot": "Redis, one hot key",
    "redis_pipe16": "Redis pipelined 16 deep",
    "lockext_999k_live": "lockext, 999k live leases",
    "pair_gross": "in-server pair (gross)", "pair_trivial": "in-server trivial fn",
    "pair_net": "in-server pair (net)", "pair_handle_gross": "in-server, release(h) form",
    "scale_1k_gross": "1k live: pair (gross)", "scale_1k_trivial": "1k live: trivial fn",
    "scale_1k_net": "1k live: pair (net)",
    "scale_999k_gross": "999k live: pair (gross)", "scale_999k_trivial": "999k live: trivial fn",
    "scale_999k_net": "999k live: pair (net)",
    "scale_hp_1k_gross": "huge pages, 1k: gross", "scale_hp_1k_trivial": "huge pages, 1k: trivial",
    "scale_hp_1k_net": "huge pages, 1k: net",
    "scale_hp_999k_gross": "huge pages, 999k: gross", "scale_hp_999k_trivial": "huge pages, 999k: trivial",
    "scale_hp_999k_net": "huge pages, 999k: net",
}
path_order = {"direct": 0, "client": 1, "redis": 2, "pgbouncer": 3, "client-pgb": 4, "inserver": 5}
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
# issue 12: faster than advisory locks where users call them, and past the round-trip floor
tg.append("")
tg.append("  performance targets (issue 12), ratios of ops/s measured side by side in each run, median over runs:")
for c in ("8", "32"):
    target(f"1. SQL: lockext cycle (SELECT lock_id, fence FROM try_lock ...) / advisory cycle, pgbench, {c} clients",
           pair_ratio("lockext", "direct", "advisory", "direct", c), lambda v: v >= 1.0, ">= 1.0")
for c in ("8", "32"):
    r = pair_ratio("lockext", "direct", "lockext_fnscan", "direct", c)
    if r:
        tg.append(f"  [ info ] handle scan / function scan (lockext.handle_scan on/off), pgbench, {c} clients: {r:.2f}")
for c in ("8", "32"):
    target(f"2. client library pg / raw-libpq advisory cycle, {c} threads",
           pair_ratio("client_pg", "client", "advisory_libpq", "client", c), lambda v: v >= 1.0, ">= 1.0")
target(f"3. client library pipelined ({kv.get('pipe_conns', '?')} connections) / raw-libpq advisory cycle, 32 threads",
       pair_ratio("client_pipeline", "client", "advisory_libpq", "client", "32"), lambda v: v >= 2.0, ">= 2.0")
r = pair_ratio("client_pipeline", "client", "advisory_libpq", "client", "8")
if r:
    tg.append(f"  [ info ] client library pipelined / raw-libpq advisory cycle, 8 threads: {r:.2f}")
r = pair_ratio("client_pipeline", "client-pgb", "client_pg", "client-pgb", "32")
if r:
    tg.append(f"  [ info ] through PgBouncer (transaction pooling, unnamed statements), 32 threads: pipelined / pooled client: {r:.2f}")
for c in ("8", "32"):
    target(f"4. hot key: lockext round trips / floor, {c} clients", med(ratio_in_run(r, "lockext_hot", "direct", c) for r in runs),
           lambda v: v >= 0.9, ">= 0.9")
h1 = med(f(r["lat_us"]) for r in groups.get(("scale_hp_1k_net", "inserver", "1"), []))
h2 = med(f(r["lat_us"]) for r in groups.get(("scale_hp_999k_net", "inserver", "1"), []))
target("5. cost per pair at 999k live / at 1k live leases, 4 KiB pages (in-server, net)", s2 / s1 if s1 and s2 else None,
       lambda v: v <= 1.3, "<= 1.3", f"  [{fmt(s1, 3)} µs vs {fmt(s2, 3)} µs]")
target("5. cost per pair at 999k live / at 1k live leases, huge_pages = on (in-server, net)", h2 / h1 if h1 and h2 else None,
       lambda v: v <= 1.3, "<= 1.3", f"  [{fmt(h1, 3)} µs vs {fmt(h2, 3)} µs]")
for c in ("8", "32"):
    r1 = pair_ratio("client_pipeline", "client", "redis_pipe16", "redis", c)
    r2 = pair_ratio("redis_pipe16", "redis", "redis", "redis", c)
    if r1:
        tg.append(f"  [ info ] 6. lockext pipelined / Redis pipelined 16 deep, {c} clients: {r1:.2f}"
                  + (f" (Redis pipelined / Redis unpipelined: {r2:.2f})" if r2 else ""))
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
plot = ["floor2", "lockext", "advisory", "lease_unlogged", "lease_logged", "lockext_hot", "advisory_hot",
        "advisory_libpq", "client_pg", "client_pipeline", "redis", "redis_pipe16"]
paths = {"advisory_libpq": "client", "client_pg": "client", "client_pipeline": "client", "client_memory": "client",
         "redis": "redis", "redis_hot": "redis", "redis_pipe16": "redis"}
with open(os.path.join(out, "plot.dat"), "w") as fh:
    fh.write("# workload c1 c8 c32\n")
    for wl in plot:
        p = paths.get(wl, "direct")
        v = [med(f(r["ops_s"]) for r in groups.get((wl, p, c), [])) for c in ("1", "8", "32")]
        if any(x for x in v):
            fh.write('"%s" %s\n' % (label.get(wl, wl), " ".join("%.1f" % (x or 0) for x in v)))
