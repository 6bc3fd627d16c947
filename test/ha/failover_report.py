#!/usr/bin/env python3
"""Failovers as the clients saw them, from test/ha/run.sh's histories (standard library only).

    failover_report.py --events EVENTS.jsonl [--json OUT.json] HISTORY.jsonl...

EVENTS is the nemesis' log, one JSON object per line, times on CLOCK_MONOTONIC (the clock of
the driver's histories, test/checker/driver.cpp):

    {"event": "kill", "mono_ns": ..., "node": "n1", "port": ..., "pid": ..., "timeline": 1}
    {"event": "promoted", "mono_ns": ..., "node": "n3", "port": ..., "timeline": 2}

("kill": the leader's postmaster got SIGKILL; "promoted": Patroni's API first showed the
new leader running and it accepted writes.) The timeline of the server that granted a lease
is in its fence (fence >> 44, README "Fencing token"), so the histories alone tell which
leader granted what. A renew's server is known exactly when the driver logged "server":
"<port>/<timeline>" (threads with their own connection, --server-info); a renew through
the library (no "server") that succeeded counts as served by the leader of the last
"promoted" event before its invoke (the old postmaster was dead by then, and a correct
lockext with replication = sync cannot confirm anything there; a renew the new leader served
before the nemesis saw it promoted is not counted: an undercount, never an overcount).

Per failover:
  - client-seen failover time: last grant on the old timeline to the first grant on the new
    one (complete times), and the kill to that first grant;
  - leases held at the kill (granted on the old timeline, known live at the kill instant,
    not being released) whose holder renewed after it ("keepers"), split into kept (a renew
    succeeded on a later timeline), lost (a renew after the kill was answered "lock lost"
    while the client still knew the lease live), ran out (every renew failed until the
    lease's known end passed: the failover took longer than the lease had left) and work
    ended (every renew failed, and the holder's work was over and it released before the
    lease's known end).
Overall: leases kept across a failover (a renew on a later timeline than the grant's).
"""

import argparse
import json
import sys
from collections import defaultdict

MS = 1_000_000
TL_SHIFT = 44


def tl_of_fence(fence):
    return None if fence is None else int(fence) >> TL_SHIFT


def server_tl(op):
    s = op.get("server")
    if not s or "/" not in s:
        return None
    try:
        tl = int(s.split("/", 1)[1])
    except ValueError:
        return None
    return tl if tl > 0 else None


def load(paths):
    ops = []
    for p in paths:
        with open(p, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    o = json.loads(line)
                except ValueError:
                    continue
                if o.get("op") in ("try_lock", "renew", "release"):
                    ops.append(o)
    return ops


def load_events(path):
    ev = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    ev.append(json.loads(line))
                except ValueError:
                    pass
    return sorted(ev, key=lambda e: e["mono_ns"])


def failovers_of(events):
    """(kill, promoted or None) pairs in order."""
    out, kill = [], None
    for e in events:
        if e["event"] == "kill":
            if kill is not None:
                out.append((kill, None))
            kill = e
        elif e["event"] == "promoted" and kill is not None:
            out.append((kill, e))
            kill = None
    if kill is not None:
        out.append((kill, None))
    return out


def analyse(ops, events):
    grants = {}
    per_lock = defaultdict(list)   # lock_id -> renews/releases in invoke order
    for o in sorted(ops, key=lambda o: o["invoke_ns"]):
        if o["op"] == "try_lock":
            if o["outcome"] == "ok" and o.get("lock_id"):
                grants[o["lock_id"]] = o
        elif o.get("lock_id"):
            per_lock[o["lock_id"]].append(o)
    promotions = sorted((e["mono_ns"], e.get("timeline") or 0) for e in events
                        if e["event"] == "promoted")

    def renew_tl(r):
        """Timeline that served an ok renew: exact from "server"; else (a library call) the
        timeline of the last promotion before its invoke (the only leader alive then), or
        0 if it came before every promotion (never counted as "later")."""
        t = server_tl(r)
        if t is not None:
            return t
        before = [tl for mono, tl in promotions if mono < r["invoke_ns"]]
        return before[-1] if before else 0

    kept_total = 0
    kept_exact = 0
    for lid, g in grants.items():
        gtl = tl_of_fence(g.get("fence"))
        if gtl is None:
            continue
        later = [r for r in per_lock.get(lid, ()) if r["op"] == "renew" and r["outcome"] == "ok"
                 and renew_tl(r) > gtl]
        if later:
            kept_total += 1
            if any(server_tl(r) is not None for r in later):
                kept_exact += 1

    by_tl = defaultdict(list)
    for g in grants.values():
        by_tl[tl_of_fence(g.get("fence"))].append(g)

    rows = []
    for i, (kill, prom) in enumerate(failovers_of(events), 1):
        k = kill["mono_ns"]
        old_tl = kill.get("timeline")
        new_tl = prom.get("timeline") if prom else None
        old_g = by_tl.get(old_tl, [])
        new_g = by_tl.get(new_tl, []) if new_tl is not None else []
        last_old = max((g["complete_ns"] for g in old_g), default=None)
        first_new = min((g["complete_ns"] for g in new_g), default=None)
        kept = lost = expired = ended = held = 0
        for g in old_g:
            lid = g["lock_id"]
            ttl = int(g["ttl_ms"]) * MS
            known_end = g["invoke_ns"] + ttl
            released = None
            after = []
            for r in per_lock.get(lid, ()):
                if r["op"] == "release":
                    released = r["invoke_ns"] if released is None else min(released, r["invoke_ns"])
                    continue
                if r["invoke_ns"] < k:
                    if r["outcome"] == "ok":
                        known_end = max(known_end, r["invoke_ns"] + ttl)
                else:
                    after.append(r)
            if not (g["complete_ns"] < k < known_end) or (released is not None and released < k):
                continue
            if not after:
                continue    # not a keeper: it only released (or ended) after the kill
            held += 1
            if any(r["outcome"] == "ok" and renew_tl(r) > old_tl for r in after):
                kept += 1
            elif any("lock lost" in (r.get("error") or "") and r["complete_ns"] < known_end
                     for r in after):
                lost += 1
            elif released is not None and released < known_end:
                ended += 1      # its work ended (release) before its lease did
            else:
                expired += 1
        rows.append({
            "n": i,
            "killed": kill.get("node"), "old_timeline": old_tl,
            "new_leader": prom.get("node") if prom else None, "new_timeline": new_tl,
            "kill_to_promoted_ms": round((prom["mono_ns"] - k) / MS) if prom else None,
            "last_old_grant_ms": round((last_old - k) / MS) if last_old is not None else None,
            "first_new_grant_ms": round((first_new - k) / MS) if first_new is not None else None,
            "client_failover_ms": round((first_new - last_old) / MS)
            if first_new is not None and last_old is not None else None,
            "keepers_at_kill": held, "kept": kept, "lost": lost, "expired": expired,
            "ended": ended,
        })
    return {
        "failovers": rows,
        "kept_across_failover": kept_total,
        "kept_exact": kept_exact,
        "grant_timelines": sorted(t for t in by_tl if t is not None),
        "grants": len(grants),
    }


def table(rows):
    head = ["#", "killed leader (tl)", "new leader (tl)", "kill→promoted ms",
            "last grant on old ms", "first grant on new ms", "client-seen failover ms",
            "keepers at kill", "kept", "lost", "ran out", "work ended"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v):
        return "-" if v is None else str(v)
    for r in rows:
        cells = [r["n"], f"{r['killed']} ({f(r['old_timeline'])})",
                 f"{f(r['new_leader'])} ({f(r['new_timeline'])})", f(r["kill_to_promoted_ms"]),
                 f(r["last_old_grant_ms"]), f(r["first_new_grant_ms"]), f(r["client_failover_ms"]),
                 r["keepers_at_kill"], r["kept"], r["lost"], r["expired"], r["ended"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("histories", nargs="+")
    ap.add_argument("--events", required=True)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rep = analyse(load(args.histories), load_events(args.events))
    for line in table(rep["failovers"]):
        print(line)
    print("(ms relative to the SIGKILL of the leader's postmaster; client-seen failover = "
          "last grant on the old leader to the first grant on the new one)")
    print(f"leases kept across a failover: {rep['kept_across_failover']} (renewed on a later "
          f"timeline than their grant's; {rep['kept_exact']} shown by the server's own "
          f"port/timeline in the reply's connection)")
    print(f"grants {rep['grants']} on timelines {rep['grant_timelines']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rep, f)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
