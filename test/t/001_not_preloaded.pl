# lockext outside shared_preload_libraries (spec §3.9, testing.md T13):
# CREATE EXTENSION and any later call fail with 55000 and a HINT naming the
# setting, never a crash or a silent NULL; preloaded, the same node works.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('not_preloaded');
$node->init;
# The last setting wins, whatever TEMP_CONFIG appended before it.
$node->append_conf('postgresql.conf', "max_connections = 50\nshared_preload_libraries = ''\n");
$node->start;

is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'), '', 'lockext is not preloaded');

# Runs $sql with VERBOSITY verbose (SQLSTATE in the message) and prints the
# SQLSTATE of the last error on stdout.
sub run_failing
{
	my ($sql) = @_;
	my ($ret, $out, $err) = $node->psql(
		'postgres',
		"\\set VERBOSITY verbose\n$sql\n\\echo SQLSTATE=:LAST_ERROR_SQLSTATE\n",
		on_error_stop => 0);
	return ($out, $err);
}

my ($out, $err) = run_failing('CREATE EXTENSION lockext;');
like($out, qr/^SQLSTATE=55000$/m, 'CREATE EXTENSION without preload: SQLSTATE 55000');
like($err, qr/ERROR:  55000: lockext must be loaded via "shared_preload_libraries"/,
	'CREATE EXTENSION without preload: message names shared_preload_libraries');
like($err, qr/HINT:  Add lockext to shared_preload_libraries in postgresql\.conf and restart the server\./,
	'CREATE EXTENSION without preload: HINT names the setting');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_extension WHERE extname = 'lockext'"),
	'0', 'the failed CREATE EXTENSION left nothing behind');

# Preload it: the extension installs and grants.
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'lockext'\nlockext.enable_test_hooks = on\n");
$node->restart;
is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'), 'lockext', 'lockext preloaded');
$node->safe_psql('postgres', 'CREATE EXTENSION lockext');
is( $node->safe_psql(
		'postgres',
		"SELECT h.key, h.lock_id IS NOT NULL, h.ttl_ms, h.fence > 0 FROM try_lock('t1:k', 60000) h"),
	't1:k|t|60000|t',
	'preloaded: try_lock grants');
is($node->safe_psql('postgres', "SELECT count(*) FROM lockext_leases WHERE key = 't1:k'"),
	'1', 'preloaded: the lease is in lockext_leases');

# Remove it from the preload list again: the extension's objects still
# exist, but every call must raise 55000 (the library's _PG_init refuses to
# load outside preload), and keep raising it on later calls in the session.
$node->append_conf('postgresql.conf', "shared_preload_libraries = ''\n");
$node->restart;
is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'), '', 'lockext no longer preloaded');

($out, $err) = run_failing(
	"SELECT try_lock('t1:k2', 1000);\n\\echo first=:LAST_ERROR_SQLSTATE\n"
	  . "SELECT try_lock('t1:k2', 1000);\n\\echo second=:LAST_ERROR_SQLSTATE\n"
	  . "SELECT renew('t1:k2', gen_random_uuid());\n\\echo renew=:LAST_ERROR_SQLSTATE\n"
	  . "SELECT release('t1:k2', gen_random_uuid());\n\\echo release=:LAST_ERROR_SQLSTATE\n"
	  . "SELECT count(*) FROM lockext_leases;\n\\echo view=:LAST_ERROR_SQLSTATE\n");
like($out, qr/^first=55000$/m,   'try_lock without preload: 55000');
like($out, qr/^second=55000$/m,  'a second try_lock in the same session: still 55000');
like($out, qr/^renew=55000$/m,   'renew without preload: 55000');
like($out, qr/^release=55000$/m, 'release without preload: 55000');
like($out, qr/^view=55000$/m,    'lockext_leases without preload: 55000');
is(join(',', grep { !/=/ } split /\n/, $out), '', 'no call returned a row (nothing that reads as contention)');
my @hints = ($err =~ /HINT:  Add lockext to shared_preload_libraries/g);
is(scalar(@hints), 5, 'every failing call carries the HINT');

# A new session fails the same way (not only the one that tried first).
($out, $err) = run_failing("SELECT try_lock('t1:k3', 1000);");
like($out, qr/^SQLSTATE=55000$/m, 'try_lock in a fresh session: 55000');

ok(!$node->log_contains(qr/terminated by signal|PANIC/), 'no backend crashed');

$node->stop;
done_testing();
