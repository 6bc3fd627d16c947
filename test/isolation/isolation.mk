# Isolation suite (pg_isolation_regress), included by the top-level Makefile before PGXS.
#
# Every spec shares one setup/teardown prelude (test/isolation/prelude.spec); a test's own
# part is test/isolation/specs/NAME.spec.in.  gen_spec.awk joins the two into
# build/isolation/specs/NAME.spec before installcheck/check (PGXS's REGRESS_PREP), and
# pg_isolation_regress reads the generated specs from there: --inputdir=build/isolation,
# whose expected/ links to the committed test/isolation/expected/.  The generated files
# stay out of the source tree (build/ is ignored and removed by make clean).
ISOLATION      = contend expiry renew_vs_expiry renew_vs_release release_vs_reacquire \
                 foreign_id three_way capacity_race \
                 wait_release wait_expiry wait_bound wait_cancel wait_terminate wait_force_release \
                 wait_fifo wait_all
ISOLATION_OPTS = --inputdir=build/isolation \
                 --temp-config=$(srcdir)/test/lockext_test.conf

isolation_src   := test/isolation
isolation_build := build/isolation
REGRESS_PREP    += isolation-specs
# the rules below must not become the default goal (PGXS's "all", defined later)
isolation_goal  := $(.DEFAULT_GOAL)

isolation-specs: $(patsubst %,$(isolation_build)/specs/%.spec,$(ISOLATION)) $(isolation_build)/expected

$(isolation_build)/specs/%.spec: $(isolation_src)/specs/%.spec.in $(isolation_src)/prelude.spec \
		$(isolation_src)/gen_spec.awk
	@mkdir -p $(@D)
	awk -f $(isolation_src)/gen_spec.awk $(isolation_src)/prelude.spec $< >$@.tmp && mv $@.tmp $@

$(isolation_build)/expected:
	@mkdir -p $(@D)
	ln -sfn ../../$(isolation_src)/expected $@

clean: clean-isolation
clean-isolation:
	rm -rf $(isolation_build)
.PHONY: isolation-specs clean-isolation
.DEFAULT_GOAL := $(isolation_goal)
