# gen_spec.awk: one isolation spec from the shared prelude and a test's own part.
#   awk -f gen_spec.awk prelude.spec specs/NAME.spec.in >NAME.spec
# The prelude's lines above "teardown" (its setup block and the comment on it) replace the
# body's line "#@ prelude-setup"; its teardown block replaces "#@ prelude-teardown PREFIX",
# with @KEY_PREFIX@ read as PREFIX.  Two marks, because a spec's setup blocks must all come
# before its teardown and a body's own setup blocks call the prelude's functions.  Lines
# starting "#@" are dropped; every other line is copied as it is.
function trim(s) { sub(/\n+$/, "", s); return s }
FNR == 1 { file++ }
file == 1 {
	if ($0 ~ /^#@/) next
	if ($0 == "teardown") in_teardown = 1
	if (in_teardown) teardown = teardown $0 "\n"; else setup = setup $0 "\n"
	next
}
FNR == 1 { print "# Generated from " FILENAME " and the prelude by test/isolation/gen_spec.awk: edit those." }
$0 == "#@ prelude-setup" { print trim(setup); seen_setup++; next }
$1 == "#@" && $2 == "prelude-teardown" && NF == 3 {
	t = trim(teardown)
	gsub(/@KEY_PREFIX@/, $3, t)
	print t
	seen_teardown++
	next
}
/^#@/ { printf "%s:%d: unknown mark: %s\n", FILENAME, FNR, $0 >"/dev/stderr"; bad = 1; next }
{ print }
END {
	if (file != 2 || setup == "" || teardown == "") { print "gen_spec.awk: usage: awk -f gen_spec.awk prelude.spec NAME.spec.in" >"/dev/stderr"; exit 1 }
	if (seen_setup != 1 || seen_teardown != 1) {
		printf "%s: needs one \"#@ prelude-setup\" and one \"#@ prelude-teardown PREFIX\" line\n", FILENAME >"/dev/stderr"
		exit 1
	}
	if (bad) exit 1
}
