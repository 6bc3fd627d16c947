#!/usr/bin/env python3
"""Unit tests of check.py on hand-made histories (standard library only).

    python3 test/checker/test_check.py
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check  # noqa: E402

MS = 1_000_000


def op(kind, proc, inv_ms, ok_ms, outcome="ok", key="k", ttl=1000, lock_id=None, fence=None,
       contended=False, thread=0):
    return {"proc": proc, "thread": thread, "op": kind, "invoke_ns": int(inv_ms * MS),
            "complete_ns": int(ok_ms * MS), "outcome": outcome, "key": key, "ttl_ms": ttl,
            "lock_id": lock_id, "fence": fence, "contended": contended,
            "error": None if outcome == "ok" else "x"}


def grant(proc, inv, ok, lid, fence, key="k", ttl=1000):
    return op("try_lock", proc, inv, ok, key=key, ttl=ttl, lock_id=lid, fence=fence)


def result(ops):
    report, _ = check.check(ops)
    return report["mutex_violations"], report["fence_violations"]


class MutexTest(unittest.TestCase):
    def test_waiter_handed_the_key_at_release(self):
        # the waiter invoked while the key was held, was granted when the holder released
        w = grant(2, 50, 402, "b", 2)
        w["wait_ms"] = 500
        self.assertEqual(result([
            grant(1, 0, 5, "a", 1), op("release", 1, 400, 401, lock_id="a"), w,
        ]), (0, 0))

    def test_waiter_granted_while_the_holder_holds(self):
        # a hand-off that did not end the old lease: two holders
        w = grant(2, 50, 300, "b", 2)
        w["wait_ms"] = 500
        report, _ = check.check([grant(1, 0, 5, "a", 1), op("release", 1, 400, 401, lock_id="a"), w])
        self.assertEqual((report["mutex_violations"], report["waits"], report["wait_grants"]), (1, 1, 1))

    def test_sequential_holders_after_release(self):
        self.assertEqual(result([
            grant(1, 0, 5, "a", 1), op("release", 1, 100, 101, lock_id="a"),
            grant(2, 99, 102, "b", 2), op("release", 2, 200, 201, lock_id="b"),
        ]), (0, 0))

    def test_overlap_while_first_holds(self):
        self.assertEqual(result([
            grant(1, 0, 5, "a", 1), op("release", 1, 500, 501, lock_id="a"),
            grant(2, 100, 110, "b", 2),
        ]), (1, 0))

    def test_expiry_ends_the_window(self):
        # first client overruns its 1000 ms ttl; a grant after invoke + ttl is fine
        self.assertEqual(result([
            grant(1, 0, 5, "a", 1), op("release", 1, 1500, 1501, lock_id="a"),
            grant(2, 1000, 1001, "b", 2),
        ]), (0, 0))

    def test_grant_ok_just_before_expiry_is_a_violation(self):
        self.assertEqual(result([
            grant(1, 0, 5, "a", 1), grant(2, 990, 999, "b", 2),
        ]), (1, 0))

    def test_successful_renew_extends(self):
        ops = [grant(1, 0, 5, "a", 1), op("renew", 1, 300, 301, lock_id="a"),
               grant(2, 1100, 1101, "b", 2)]
        self.assertEqual(result(ops), (1, 0))

    def test_failed_or_indeterminate_renew_does_not_extend(self):
        for outcome in ("fail", "info"):
            ops = [grant(1, 0, 5, "a", 1), op("renew", 1, 300, 301, outcome, lock_id="a"),
                   grant(2, 1100, 1101, "b", 2)]
            self.assertEqual(result(ops), (0, 0), outcome)

    def test_indeterminate_grant_has_no_window(self):
        self.assertEqual(result([
            op("try_lock", 1, 0, 5, "info"), grant(2, 10, 11, "b", 2),
        ]), (0, 0))

    def test_indeterminate_release_still_ends_window(self):
        self.assertEqual(result([
            grant(1, 0, 5, "a", 1), op("release", 1, 100, 3000, "info", lock_id="a"),
            grant(2, 200, 201, "b", 2),
        ]), (0, 0))

    def test_empty_window_client_learnt_too_late(self):
        # reply arrived after invoke + ttl (client paused): no claim
        report, _ = check.check([grant(1, 0, 1200, "a", 1), grant(2, 1100, 1101, "b", 2)])
        self.assertEqual((report["mutex_violations"], report["empty_windows"]), (0, 1))

    def test_different_keys_do_not_conflict(self):
        self.assertEqual(result([
            grant(1, 0, 5, "a", 1, key="x"), grant(2, 10, 11, "b", 2, key="y"),
        ]), (0, 0))

    def test_overlap_with_an_earlier_long_window(self):
        # A long, B short inside A, C after B but inside A: two violations
        self.assertEqual(result([
            grant(1, 0, 1, "a", 1), grant(2, 100, 101, "b", 2),
            op("release", 2, 150, 151, lock_id="b"), grant(3, 300, 301, "c", 3),
        ]), (2, 0))


class FenceTest(unittest.TestCase):
    def test_fence_must_grow_across_keys(self):
        self.assertEqual(result([
            grant(1, 0, 5, "a", 10, key="x"), grant(2, 10, 11, "b", 9, key="y"),
        ]), (0, 1))

    def test_concurrent_grants_may_complete_out_of_order(self):
        # B invoked before A completed: no order claim between them
        self.assertEqual(result([
            grant(1, 0, 20, "a", 10, key="x"), grant(2, 10, 11, "b", 9, key="y"),
        ]), (0, 0))

    def test_equal_fences(self):
        self.assertEqual(result([
            grant(1, 0, 20, "a", 7, key="x"), grant(2, 10, 11, "b", 7, key="y"),
        ]), (0, 1))

    def test_lock_id_reuse(self):
        report, _ = check.check([grant(1, 0, 5, "a", 1, key="x"), grant(2, 10, 11, "a", 2, key="y")])
        self.assertEqual(report["lock_id_reuse"], 1)


class GraceTest(unittest.TestCase):
    GRACE = [(1000 * MS, 2000 * MS, "crash restart")]

    def grace_violations(self, ops):
        report, _ = check.check(ops, graces=self.GRACE)
        return report["grace_violations"]

    def test_grant_inside_grace(self):
        self.assertEqual(self.grace_violations([grant(1, 1500, 1501, "a", 1)]), 1)

    def test_grant_after_grace_or_before_start(self):
        self.assertEqual(self.grace_violations([
            grant(1, 2900, 3001, "a", 1), grant(2, 900, 1200, "b", 2),
            grant(3, 1005, 1100, "c", 3),   # invoked within the 10 ms margin: not claimed
        ]), 0)

    def lost(self, ops, losses):
        report, _ = check.check(ops, losses=losses)
        return report["lost_leases"]

    def test_renew_refused_while_lease_live(self):
        ops = [grant(1, 0, 5, "a", 1),
               op("renew", 1, 300, 301, "fail", lock_id="a")]
        ops[1]["error"] = "renew failed: lock lost: 'k' is no longer held by this lock_id"
        self.assertEqual(self.lost(ops, []), 1)
        self.assertEqual(self.lost(ops, [200 * MS]), 0)      # a crash in between excuses it
        self.assertEqual(self.lost(ops, None), 0)           # no server log: not checked
        ops[1]["complete_ns"] = 1001 * MS                   # may have arrived after expiry
        self.assertEqual(self.lost(ops, []), 0)

    def test_no_lease_loss(self):
        # replicated leases (test/ha): no event excuses a lost lease, except an earlier
        # indeterminate renew of it (a sync renew that was not confirmed removes it)
        ops = [grant(1, 0, 5, "a", 1),
               op("renew", 1, 300, 301, "fail", lock_id="a")]
        ops[1]["error"] = "renew failed: lock lost: 'k' is no longer held by this lock_id"
        report, _ = check.check(ops, no_loss=True)
        self.assertEqual((report["lost_leases"], report["lost_after_indeterminate_renew"]), (1, 0))
        report, _ = check.check(ops, losses=[200 * MS], no_loss=True)   # a crash does not excuse it
        self.assertEqual(report["lost_leases"], 1)
        ops.insert(1, op("renew", 1, 100, 150, "info", lock_id="a"))
        report, _ = check.check(ops, no_loss=True)
        self.assertEqual((report["lost_leases"], report["lost_after_indeterminate_renew"]), (0, 1))
        self.assertEqual(self.lost(ops, []), 1)              # without it: as before

    def test_log_parsing(self):
        import tempfile
        with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as f:
            f.write("2026-11-27 04:19:57.322 UTC [1] LOG:  something else\n")
            f.write("1970-01-01 00:00:10.200 UTC [9] LOG:  all server processes terminated; "
                    "reinitializing\n")
            f.write("1970-01-01 00:00:10.250 UTC [9] LOG:  lockext: no lease will be granted "
                    "for 2000 ms (crash restart)\n")
        try:
            events = list(check.server_log_events(f.name, 0, wall_minus_mono_ns=4 * 10**9))
            self.assertEqual(check.grace_events(events), [(6_250 * MS, 2000 * MS, "crash restart")])
            events = list(check.server_log_events(f.name, 0, 0))
            self.assertEqual(check.grace_events(events, grace_ms=500),
                             [(10_250 * MS, 500 * MS, "crash restart")])
            self.assertEqual(check.lease_loss_events(events), [10_200 * MS, 10_250 * MS])
            with open(f.name, "a") as g:  # a crash without a grace line (grace off)
                g.write("1970-01-01 00:00:20.000 UTC [9] LOG:  all server processes "
                        "terminated; reinitializing\n")
                g.write("1970-01-01 00:00:30.000 UTC [9] LOG:  lockext: restored 2 of 2 saved "
                        "leases (0 expired during the downtime)\n")
            events = list(check.server_log_events(f.name, 0, 0))
            self.assertEqual(len(check.grace_events(events)), 1)
            graces = check.grace_events(events, grace_ms=500)
            self.assertEqual(graces[1], (20_000 * MS, 500 * MS, "crash restart, none logged"))
            self.assertEqual(check.restore_events(events), [30_000 * MS])
        finally:
            os.unlink(f.name)


if __name__ == "__main__":
    unittest.main(verbosity=1)
