#!/usr/bin/env python3
"""Mutual-exclusion and fencing checker for lockext histories (testing.md §2.6).

Reads the JSON-lines histories written by driver.cpp (one file per driver process; all
times are CLOCK_MONOTONIC nanoseconds of one host) and checks:

Mutual exclusion. A grant A (a try_lock with outcome ok) gives its client a known lease
window [A.complete, end) with

    end = min(max(A.invoke, invoke of every successful renew of A's lock_id) + ttl,
              invoke of the first release of A's lock_id, whatever its outcome)

The server granted at some g in [A.invoke, A.complete] and, if correct, keeps the lease
until at least g + ttl (a renew that succeeded at r keeps it until r + ttl; the server
never revives an expired lease, so a successful renew also proves the lease was held
without a gap) unless a release arrives, which is after its invoke. So a correct server's
hold interval contains the client window, and two windows of one key that overlap mean
that two clients held the key at once: a server bug. Windows are half-open; a window whose
client learnt of the grant only after invoke + ttl is empty.

Fencing. If grant A completed before grant B was invoked (A.complete < B.invoke) then
fence(A) < fence(B) must hold: checked globally over all keys (so also per key). Two
grants with the same fence or the same lock_id are violations too.

Grace period (optional, --server-log). After a crash restart or an unclean start the
server logs "lockext: no lease will be granted for N ms (reason)" when it arms the grace
period, and must refuse every grant for N ms from that instant S; all processes of the
old shared memory are gone before S. (With --grace-ms, a crash reinitialisation without
such a line counts too, starting at the "reinitializing" line, which comes before S.) So a grant invoked after S that completed before
S + N is a violation. The log's wall-clock timestamp (milliseconds, UTC) is mapped onto
the monotonic clock with --wall-minus-mono; the check leaves margins for the timestamp's
precision and that mapping (a grant counts only if invoked at least 10 ms after the logged
instant and completed at least 200 ms before the grace ends).

Waiting clients: a try_lock with "wait_ms" (try_lock(key, ttl, wait_ms)) is a grant like
any other; the server granted it at some g in [invoke, complete] (a hand-off from a
release, an expiry or a force_release while it waited), so the same window and fence rules
hold. The driver keeps wait_ms at most half the TTL, so such windows are not empty.

Leases lost early, with --no-lease-loss (replicated leases: nothing may lose one, not
even a failover): every such renew is a violation, unless an indeterminate renew of the
same lease came before it (with lockext.replication = sync, a renew whose confirmation
did not come removes the lease on the primary and fails).

Indeterminate operations (outcome info: the call failed after the request may have been
executed) give no window and no fence claim; a renew or release that failed or is
indeterminate never extends a window, and a release ends the window at its invoke time
whatever its outcome (the client stops relying on the lease when it starts releasing).

Standard library only. Exit status: 0 = no violation, 1 = violations, 2 = unusable input.
"""

import argparse
import calendar
import json
import re
import sys
from collections import Counter, defaultdict
from datetime import datetime

NS_PER_MS = 1_000_000


class Grant:
    __slots__ = ("proc", "thread", "key", "lock_id", "fence", "ttl_ns", "invoke", "ok",
                 "extended_from", "release_invoke", "renews", "info_renew")

    def __init__(self, op):
        self.proc = op["proc"]
        self.thread = op["thread"]
        self.key = op["key"]
        self.lock_id = op["lock_id"]
        self.fence = op["fence"]
        self.ttl_ns = int(op["ttl_ms"]) * NS_PER_MS
        self.invoke = op["invoke_ns"]
        self.ok = op["complete_ns"]
        self.extended_from = None   # invoke of the latest successful renew (its ttl)
        self.release_invoke = None
        self.renews = 0
        self.info_renew = None      # invoke of the first indeterminate renew

    def who(self):
        return f"p{self.proc}/t{self.thread}"

    def lease_end(self):
        end = self.invoke + self.ttl_ns
        if self.extended_from is not None:
            end = max(end, self.extended_from[0] + self.extended_from[1])
        return end

    def end(self):
        end = self.lease_end()
        if self.release_invoke is not None:
            end = min(end, self.release_invoke)
        return end

    def end_reason(self, t):
        lease_end = self.lease_end()
        if self.release_invoke is not None and self.release_invoke <= lease_end:
            return f"release invoked at {t(self.release_invoke)}"
        if self.extended_from is not None and lease_end > self.invoke + self.ttl_ns:
            return (f"renew #{self.renews} invoked at {t(self.extended_from[0])} "
                    f"+ ttl {self.extended_from[1] // NS_PER_MS} ms")
        return f"try_lock invoked at {t(self.invoke)} + ttl {self.ttl_ns // NS_PER_MS} ms"


def load(paths):
    ops, bad = [], []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    op = json.loads(line)
                except ValueError as e:
                    bad.append(f"{path}:{n}: {e}")
                    continue
                if op.get("op") in ("try_lock", "renew", "release"):
                    ops.append(op)
                elif op.get("op") != "meta":
                    bad.append(f"{path}:{n}: unknown op {op.get('op')!r}")
    return ops, bad


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (\S+) (.*)")
LOG_EVENTS = {
    "grace": re.compile(r"lockext: no lease will be granted for (\d+) ms \(([^)]*)\)"),
    "reinit": re.compile(r"all server processes terminated; reinitializing"),
    "restored": re.compile(r"lockext: restored (\d+) of (\d+) saved leases"),
}


def server_log_events(path, offset, wall_minus_mono_ns):
    """(monotonic time, kind, match) for each line of the server log after byte offset
    that LOG_EVENTS knows."""
    with open(path, "rb") as f:
        f.seek(offset)
        for raw in f:
            m = LOG_LINE.match(raw.decode("utf-8", "replace"))
            if not m:
                continue
            stamp, zone, text = m.groups()
            for kind, pattern in LOG_EVENTS.items():
                event = pattern.search(text)
                if event:
                    break
            else:
                continue
            if zone not in ("UTC", "GMT"):
                raise ValueError(f"server log timestamps must be in UTC, not {zone}")
            day, _, frac = stamp.partition(".")
            wall_ns = (calendar.timegm(datetime.strptime(day, "%Y-%m-%d %H:%M:%S").timetuple())
                       * 1_000_000_000 + int((frac or "0").ljust(9, "0")[:9]))
            yield wall_ns - wall_minus_mono_ns, kind, event


def grace_events(events, grace_ms=None):
    """Grace periods among server_log_events, as (start on the monotonic clock, length in
    ns, reason): every "no lease will be granted" line. With grace_ms (what a correct
    server would keep; the self-test runs with the grace off, so the server logs none)
    also every crash reinitialisation that no such line follows within a second, starting
    at the reinitialisation (the grace can only start later)."""
    logged = [(mono, (int(m.group(1)) if grace_ms is None else grace_ms) * NS_PER_MS, m.group(2))
              for mono, kind, m in events if kind == "grace"]
    result = list(logged)
    if grace_ms is not None:
        for r, kind, _ in events:
            if kind == "reinit" and not any(r <= start <= r + 1000 * NS_PER_MS
                                            for start, _, _ in logged):
                result.append((r, grace_ms * NS_PER_MS, "crash restart, none logged"))
    return sorted(result)


def lease_loss_events(events):
    """Instants at which the server may legitimately have lost its leases: crash
    reinitialisations and every grace start (unclean start, leases not restored)."""
    return sorted(mono for mono, kind, _ in events if kind in ("grace", "reinit"))


def restore_events(events):
    """Starts that restored the leases saved at a clean shutdown."""
    return sorted(mono for mono, kind, _ in events if kind == "restored")


def check(ops, tolerance_ns=0, max_examples=5, graces=(), clock_slack_ns=0, losses=None,
          restores=(), no_loss=False):
    origin = min((o["invoke_ns"] for o in ops), default=0)

    def t(ns):
        return f"+{(ns - origin) / 1e9:.3f}s"

    stats = Counter()
    problems = []          # damaged-history notes
    grants = []
    by_lock_id = {}
    lost = []              # renews told "lock lost" while the lease had to be live
    for o in sorted(ops, key=lambda o: o["invoke_ns"]):
        stats["ops"] += 1
        stats[o["op"]] += 1
        stats[f"{o['op']}_{o['outcome']}"] += 1
        if o.get("contended"):
            stats["contended"] += 1
        elif o["outcome"] != "ok":
            stats["errors"] += 1
            stats[f"errors_{o['outcome']}"] += 1
        if o["op"] == "try_lock":
            if o.get("wait_ms") is not None:
                stats["waits"] += 1
                if o["outcome"] == "ok":
                    stats["wait_grants"] += 1
                elif o.get("contended"):
                    stats["wait_timeouts"] += 1
            if o["outcome"] == "ok":
                g = Grant(o)
                if g.lock_id in by_lock_id:
                    problems.append(("lock_id", f"lock_id {g.lock_id} granted twice: "
                                     f"{by_lock_id[g.lock_id].who()} and {g.who()}"))
                by_lock_id[g.lock_id] = g
                grants.append(g)
            continue
        g = by_lock_id.get(o.get("lock_id"))
        if g is None:
            problems.append(("history", f"{o['op']} of unknown lock_id {o.get('lock_id')}"))
            continue
        if (o["op"] == "renew" and "lock lost" in (o.get("error") or "")
                and g.release_invoke is None and o["complete_ns"] < g.lease_end()):
            lost.append((g, o, g.info_renew is not None))
        if o["op"] == "renew" and o["outcome"] == "info" and g.info_renew is None:
            g.info_renew = o["invoke_ns"]
        if o["op"] == "renew" and o["outcome"] == "ok":
            g.renews += 1
            ttl_ns = int(o["ttl_ms"]) * NS_PER_MS
            if g.extended_from is None or o["invoke_ns"] + ttl_ns > sum(g.extended_from):
                g.extended_from = (o["invoke_ns"], ttl_ns)
        elif o["op"] == "release":
            if g.release_invoke is None or o["invoke_ns"] < g.release_invoke:
                g.release_invoke = o["invoke_ns"]
    stats["grants"] = len(grants)

    # Mutual exclusion: per key, windows sorted by start; each must start at or after
    # the latest end seen so far.
    mutex = []
    windows = defaultdict(list)
    for g in grants:
        if g.ok < g.end():
            windows[g.key].append(g)
        else:
            stats["empty_windows"] += 1
    for key, ws in windows.items():
        ws.sort(key=lambda g: g.ok)
        holder = None
        for g in ws:
            if holder is not None and g.ok + tolerance_ns < holder.end():
                mutex.append((holder, g))
            if holder is None or g.end() > holder.end():
                holder = g
    stats["windows"] = sum(len(ws) for ws in windows.values())

    # Fencing: grants in completion order; for each grant B (in invoke order) the largest
    # fence among grants completed before B was invoked must be below B's fence.
    fence = []
    done = sorted(grants, key=lambda g: g.ok)
    i, best = 0, None
    for b in sorted(grants, key=lambda g: g.invoke):
        while i < len(done) and done[i].ok < b.invoke:
            if best is None or done[i].fence > best.fence:
                best = done[i]
            i += 1
        if best is not None and best.fence >= b.fence:
            fence.append((best, b, "completed before it was invoked"))
    seen = {}
    for g in grants:
        if g.fence in seen:
            fence.append((seen[g.fence], g, "same fence"))
        seen[g.fence] = g

    # Grace: no grant invoked after the grace started may complete before it ends.
    grace = []
    after_ns = 10 * NS_PER_MS + clock_slack_ns
    before_ns = 200 * NS_PER_MS + clock_slack_ns
    first_grants = []
    for start, length, reason in graces:
        later = [g for g in grants if g.invoke > start + after_ns]
        first_grants.append(f"{(min(g.ok for g in later) - start) / NS_PER_MS:.0f} ms"
                            if later else "none")
        if length <= after_ns + before_ns:
            continue
        for g in later:
            if g.ok < start + length - before_ns:
                grace.append((start, length, reason, g))

    # Lost leases: a renew that completed before the lease could have expired must succeed
    # unless the server crashed (or started uncleanly) since the grant.
    early = []
    excused = 0
    if no_loss:
        losses = []
    if losses is not None:
        margin = 1000 * NS_PER_MS
        for g, o, after_info in lost:
            if no_loss and after_info:
                excused += 1
            elif not any(g.invoke - margin <= x <= o["complete_ns"] + margin for x in losses):
                early.append((g, o))

    # Information: leases granted before a restart that restored saved leases and renewed
    # after it (the restore path exercised end to end).
    survived = sum(1 for g in grants
                   if any(g.ok < x and g.extended_from and g.extended_from[0] > x
                          for x in restores))

    report = {
        "ops": stats["ops"],
        "try_lock": stats["try_lock"],
        "renew": stats["renew"],
        "release": stats["release"],
        "grants": stats["grants"],
        "contended": stats["contended"],
        "errors": stats["errors"],
        "errors_info": stats["errors_info"],
        "errors_fail": stats["errors_fail"],
        "renew_ok": stats["renew_ok"],
        "waits": stats["waits"],
        "wait_grants": stats["wait_grants"],
        "wait_timeouts": stats["wait_timeouts"],
        "windows": stats["windows"],
        "empty_windows": stats["empty_windows"],
        "mutex_violations": len(mutex),
        "fence_violations": len(fence),
        "grace_periods": len(graces),
        "grace_violations": len(grace),
        "lost_leases": len(early),
        "lost_after_indeterminate_renew": excused,
        "restarts_restoring": len(restores),
        "leases_renewed_across_restore": survived,
        "lock_id_reuse": sum(1 for kind, _ in problems if kind == "lock_id"),
        "history_problems": sum(1 for kind, _ in problems if kind == "history"),
        "span_s": round((max((o["complete_ns"] for o in ops), default=origin) - origin) / 1e9, 3),
    }

    lines = [
        f"ops {report['ops']} (try_lock {report['try_lock']}, renew {report['renew']}, "
        f"release {report['release']}) over {report['span_s']} s",
        f"grants {report['grants']} ({report['windows']} windows, {report['empty_windows']} empty: "
        f"learnt of only after invoke + ttl), contended {report['contended']}, "
        f"renewed {report['renew_ok']}",
        f"errors {report['errors']} (indeterminate {report['errors_info']}, "
        f"definite {report['errors_fail']})",
        f"waiting try_locks {report['waits']}: {report['wait_grants']} granted (their windows "
        f"are checked like any grant's), {report['wait_timeouts']} ended by their bound",
        f"mutex violations {len(mutex)}",
    ]
    for a, b in mutex[:max_examples]:
        lines.append(
            f"  key {a.key!r}: {a.who()} fence {a.fence} holds from {t(a.ok)} until {t(a.end())} "
            f"({a.end_reason(t)}), but {b.who()} fence {b.fence} was granted "
            f"(try_lock invoked {t(b.invoke)}, ok {t(b.ok)}): overlap "
            f"{(min(a.end(), b.end()) - b.ok) / NS_PER_MS:.1f} ms")
    lines.append(f"fence violations {len(fence)}")
    for a, b, why in fence[:max_examples]:
        lines.append(
            f"  {b.who()} fence {b.fence} on {b.key!r} (try_lock invoked {t(b.invoke)}, ok {t(b.ok)}) "
            f"is not above {a.who()} fence {a.fence} on {a.key!r} (ok {t(a.ok)}): {why}")
    if graces:
        lines.append(f"grace periods logged {len(graces)} ("
                     + ", ".join(f"{n} x {r}" for r, n in Counter(r for _, _, r in graces).items())
                     + "); first grant after each: " + ", ".join(first_grants))
        lines.append(f"grace violations {len(grace)}")
    for start, length, reason, g in grace[:max_examples]:
        lines.append(
            f"  {g.who()} fence {g.fence} on {g.key!r}: try_lock invoked {t(g.invoke)}, ok {t(g.ok)}, "
            f"inside the {length // NS_PER_MS} ms grace ({reason}) that started at {t(start)}")
    if no_loss:
        lines.append(f"leases lost early {len(early)} (renew said 'lock lost' before the lease "
                     f"could have expired; --no-lease-loss: no event may lose a lease; "
                     f"{len(lost)} such renews in all, {excused} after an indeterminate renew "
                     f"of the lease, not counted)")
    elif losses is not None:
        lines.append(f"leases lost early {len(early)} (renew said 'lock lost' before the lease "
                     f"could have expired, no crash in between; {len(lost)} such renews in all)")
    if restores:
        lines.append(f"clean restarts that restored leases {len(restores)}; leases renewed "
                     f"across one: {survived}")
    for g, o in early[:max_examples]:
        lines.append(
            f"  {g.who()} fence {g.fence} on {g.key!r} (granted {t(g.ok)}, lease known until "
            f"{t(g.lease_end())}): renew invoked {t(o['invoke_ns'])} answered 'lock lost' at "
            f"{t(o['complete_ns'])}")
    for kind, text in problems[:max_examples]:
        lines.append(f"  {kind}: {text}")
    return report, lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("histories", nargs="+", help="JSON-lines files written by the driver")
    ap.add_argument("--json", help="also write the summary as one JSON object to this file")
    ap.add_argument("--label", default="", help="name of the run, for the summary")
    ap.add_argument("--tolerance-ms", type=float, default=0.0,
                    help="ignore overlaps up to this long (default 0: none)")
    ap.add_argument("--examples", type=int, default=5, help="violations explained (default 5)")
    ap.add_argument("--server-log", help="PostgreSQL log (log_line_prefix '%%m ...', UTC) for the grace check")
    ap.add_argument("--server-log-from", type=int, default=0, help="byte offset where this run starts")
    ap.add_argument("--wall-minus-mono", type=int, action="append", default=[],
                    help="CLOCK_REALTIME - CLOCK_MONOTONIC in ns; give it twice, measured "
                         "before and after the run")
    ap.add_argument("--grace-ms", type=int, help="check this grace length instead of the logged one")
    ap.add_argument("--no-lease-loss", action="store_true",
                    help="no event may lose a lease (replicated leases across failovers): every "
                         "renew answered 'lock lost' while the lease was known live is a violation, "
                         "unless an indeterminate renew of it came first")
    args = ap.parse_args(argv)

    ops, bad = load(args.histories)
    graces, slack, losses, restores = [], 0, None, []
    if args.server_log:
        if not args.wall_minus_mono:
            ap.error("--server-log needs --wall-minus-mono")
        offsets = args.wall_minus_mono
        slack = max(offsets) - min(offsets) + NS_PER_MS
        events = list(server_log_events(args.server_log, args.server_log_from,
                                        sum(offsets) // len(offsets)))
        graces = grace_events(events, args.grace_ms)
        losses = lease_loss_events(events)
        restores = restore_events(events)
    report, lines = check(ops, int(args.tolerance_ms * NS_PER_MS), args.examples, graces, slack,
                          losses, restores, args.no_lease_loss)
    report["label"] = args.label
    report["unparsable_lines"] = len(bad)
    violations = (report["mutex_violations"] + report["fence_violations"]
                  + report["grace_violations"] + report["lost_leases"]
                  + report["lock_id_reuse"])
    unusable = bool(bad) or report["history_problems"] > 0 or report["ops"] == 0
    report["verdict"] = "violations" if violations else ("unusable" if unusable else "ok")

    prefix = f"[{args.label}] " if args.label else ""
    for line in lines:
        print(prefix + line)
    for b in bad[:5]:
        print(f"{prefix}  unparsable: {b}")
    print(f"{prefix}verdict: {report['verdict'].upper()}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f)
            f.write("\n")
    if violations:
        return 1
    return 2 if unusable else 0


if __name__ == "__main__":
    sys.exit(main())
