# SQL property fuzzer (testing.md §2.7): thousands of calls mixing valid and
# edge values (NULLs, empty, max and max+1 and 1 MB keys, extreme TTLs,
# real, foreign, random and malformed lock_ids, frozen-clock jumps) through
# every entry point.  Properties: every ERROR has a SQLSTATE from the
# documented list; no backend crashes; afterwards the table is consistent
# (one live lease per key, the view and stats agree, capacity respected).
# LOCKEXT_FUZZ_SEED and LOCKEXT_FUZZ_CALLS override the defaults.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $seed = $ENV{LOCKEXT_FUZZ_SEED} // 20261127;
my $calls = $ENV{LOCKEXT_FUZZ_CALLS} // 6000;
srand($seed);
note("seed $seed, $calls calls");

my $node = PostgreSQL::Test::Cluster->new('fuzz');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'lockext'\nlockext.enable_test_hooks = on\n"
	  . "lockext.max_locks = 8\nrestart_after_crash = on\n");
$node->start;
$node->safe_psql('postgres',
	"CREATE EXTENSION lockext; CREATE EXTENSION lockext_test; CREATE TABLE ids (k text, id uuid, h lock_handle);"
	  . " SELECT lockext_test_clock_freeze();");
my $start_time = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');

sub pick { return $_[ int(rand(@_)) ]; }
my @pool = map { "'fz:$_'" } 1 .. 12;
my @keys = (@pool, @pool, @pool, 'NULL', "''", "'x'", "repeat('k', 256)", "repeat('k', 257)",
	"repeat('é', 128)", "repeat('é', 129)", "repeat('z', 1000000)", "'fz:' || chr(233)",
	"'fz: '", "'FZ:1'", "E'fz:\\t'");
my @ttls = ('NULL', '-9223372036854775808', '-1', '0', '1', '2', '50', '1000', '1000', '30000',
	'300000', '300001', '9223372036854775807', "'12'", "'abc'", '1.5');
sub lock_id
{
	my ($key) = @_;
	return pick("(SELECT id FROM ids WHERE k = $key ORDER BY random() LIMIT 1)",
		"(SELECT id FROM ids WHERE k = $key ORDER BY random() LIMIT 1)",
		"(SELECT id FROM ids ORDER BY random() LIMIT 1)",
		'gen_random_uuid()', 'NULL', "'abc'", "'00000000-0000-0000-0000-000000000000'",
		"'0123456789abcdef0123456789abcdef0'");
}
sub handle
{
	return pick("(SELECT h FROM ids ORDER BY random() LIMIT 1)", 'NULL::lock_handle',
		"(" . pick(@keys) . ", " . lock_id(pick(@pool)) . ", " . pick(@ttls) . ", 1, now())::lock_handle");
}

my @script = ("\\set ON_ERROR_STOP 0", "\\set VERBOSITY sqlstate", "\\set SHOW_CONTEXT never");
for (1 .. $calls)
{
	my $k = pick(@keys);
	my $op = int(rand(100));
	if ($op < 35)
	{
		push @script, "INSERT INTO ids SELECT h.key, h.lock_id, h FROM try_lock($k, " . pick(@ttls)
		  . ") h WHERE h.lock_id IS NOT NULL;";
	}
	elsif ($op < 50) { push @script, "SELECT renew($k, " . lock_id($k) . ");"; }
	elsif ($op < 60) { push @script, "SELECT renew($k, " . lock_id($k) . ", " . pick(@ttls) . ");"; }
	elsif ($op < 65) { push @script, "SELECT renew(" . handle() . ");"; }
	elsif ($op < 82) { push @script, "SELECT release($k, " . lock_id($k) . ");"; }
	elsif ($op < 87) { push @script, "SELECT release(" . handle() . ");"; }
	elsif ($op < 90) { push @script, "SELECT lockext_force_release($k);"; }
	elsif ($op < 95) { push @script, "SELECT lockext_test_clock_advance(" . pick(1, 10, 100, 999, 1000, 5000) . ");"; }
	elsif ($op < 97) { push @script, "SELECT count(*) FROM lockext_leases;"; }
	else { push @script, "SELECT * FROM lockext_stats;"; }
}
push @script, "SELECT lockext_test_clock_release();";

my ($stdout, $stderr);
my $rc = $node->psql('postgres', join("\n", @script) . "\n",
	stdout => \$stdout, stderr => \$stderr, on_error_stop => 0);
is($rc, 0, 'the fuzz script ran to the end');

my %allowed = map { $_ => 1 } qw(22004 22023 22P02 22003 53400 42883 54000 22021);
my %seen;
for my $line (split /\n/, $stderr)
{
	next unless $line =~ /^(?:psql:[^:]*:\d+: )?ERROR:\s+(\S+)/;
	$seen{$1}++;
}
my @unexpected = grep { !$allowed{$_} } sort keys %seen;
is_deeply(\@unexpected, [], 'every error has a documented SQLSTATE')
  or diag("errors by SQLSTATE: " . join(', ', map { "$_=$seen{$_}" } sort keys %seen));
note('errors by SQLSTATE: ' . join(', ', map { "$_=$seen{$_}" } sort keys %seen));
cmp_ok(scalar(keys %seen), '>=', 4, 'the fuzzer reached several error classes');
my $grants = $node->safe_psql('postgres', 'SELECT count(*) FROM ids');
cmp_ok($grants, '>', 50, "the fuzzer made real grants ($grants)");

ok(!$node->log_contains(qr/terminated by signal|PANIC|TRAP:|runtime error/),
	'no backend crashed');
is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $start_time,
	'no crash restart');
is($node->safe_psql('postgres',
		'SELECT count(*) FROM (SELECT key FROM lockext_leases GROUP BY datname, key HAVING count(*) > 1) d'),
	'0', 'at most one live lease per key');
is($node->safe_psql('postgres',
		'SELECT (SELECT count(*) FROM lockext_leases) = leases AND leases <= max_locks AND high_water <= max_locks FROM lockext_stats'),
	't', 'view, stats and capacity agree');
my $live = $node->safe_psql('postgres', 'SELECT count(*) FROM lockext_leases');
is($node->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE release(key, lock_id)) FROM lockext_leases"),
	$live, "every live lease ($live) is released by its own lock_id");
is($node->safe_psql('postgres', 'SELECT count(*) FROM lockext_leases'), '0', 'table empty afterwards');
is($node->safe_psql('postgres',
		"SELECT count(*) FROM generate_series(1, 8) g, LATERAL try_lock('after:' || g, 1000) h WHERE h.lock_id IS NOT NULL"),
	'8', 'all 8 slots usable afterwards: no slot leaked');

$node->stop;
done_testing();
