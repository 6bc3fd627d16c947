# The test-only extension lockext_test (test/lockext_test/: the lockext_test_* hooks the
# suites call), included by the top-level Makefile before PGXS.  installcheck installs it
# into the PostgreSQL under test before the suites run (PGXS's REGRESS_PREP), with the same
# PG_CONFIG, only when the installed copy differs: once root has installed it, the suites
# run as an unprivileged user.  It is never part of a package.
lockext_test_goal := $(.DEFAULT_GOAL)
REGRESS_PREP      += lockext-test-extension

lockext-test-extension:
	$(MAKE) -C $(srcdir)/test/lockext_test PG_CONFIG='$(PG_CONFIG)' install-if-changed

.PHONY: lockext-test-extension
# the rule above must not become the default goal (PGXS's "all", defined later)
.DEFAULT_GOAL := $(lockext_test_goal)
