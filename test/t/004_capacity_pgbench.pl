# Capacity at scale (spec §3.7, testing.md T14): lockext.max_locks = 64,
# pgbench with 16 clients; every transaction tries all 65 keys (each client
# in its own rotated order, long TTLs, nothing released).  Afterwards exactly
# 64 leases are live; the one key that never got a slot was refused with
# SQLSTATE 53400 on every attempt (never a NULL that reads as contention);
# every other key was granted exactly once and contended afterwards.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $clients = 16;
my $xacts = 5;
my $keys = 65;

my $node = PostgreSQL::Test::Cluster->new('capacity');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'lockext'\nlockext.enable_test_hooks = on\n"
	  . "lockext.max_locks = 64\nmax_connections = 50\n");
$node->start;

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(<<'SQL');
CREATE EXTENSION lockext;
CREATE TABLE outcome (client int, key text, result text, sqlstate text, message text);
-- One pgbench transaction: try every key once, starting at a per-client
-- offset, and log what each try_lock returned or raised.
CREATE FUNCTION try_all(client int, nkeys int, nclients int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  k text;
  h lock_handle;
BEGIN
  -- start together: before the first try of the run, wait (at most 10 s)
  -- until every pgbench client is connected
  FOR w IN 1 .. 1000 LOOP
    EXIT WHEN EXISTS (SELECT 1 FROM outcome)
      OR (SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT try_all(%') >= nclients;
    PERFORM pg_sleep(0.01);
    PERFORM pg_stat_clear_snapshot();    -- else pg_stat_activity stays frozen for the transaction
  END LOOP;
  FOR i IN 0 .. nkeys - 1 LOOP
    -- a short pause between tries so that the clients really interleave
    PERFORM pg_sleep(0.0005);
    k := 't4:' || ((client * 4 + i) % nkeys + 1);
    BEGIN
      SELECT * INTO h FROM try_lock(k, 300000);
      INSERT INTO outcome VALUES (client, k,
        CASE WHEN h.lock_id IS NULL THEN 'contended' ELSE 'granted' END, NULL, NULL);
    EXCEPTION WHEN OTHERS THEN
      INSERT INTO outcome VALUES (client, k, 'error', SQLSTATE, SQLERRM);
    END;
  END LOOP;
END $$;
SQL

$node->pgbench(
	"--no-vacuum --client=$clients --jobs=4 --transactions=$xacts",
	0,
	[ qr{number of transactions actually processed: @{[$clients * $xacts]}/@{[$clients * $xacts]}} ],
	[qr{^$}],
	'pgbench: 16 clients try 65 keys each transaction',
	{ '004_capacity_try_all' => "SELECT try_all(:client_id, $keys, $clients);\n" },
	'postgres');
note 'key left out: ' . sql("SELECT string_agg(DISTINCT key, ',') FROM outcome WHERE result = 'error'");
note 'grants per client: ' . sql("SELECT string_agg(client || ':' || n, ' ' ORDER BY client) FROM (SELECT client, count(*) n FROM outcome WHERE result = 'granted' GROUP BY client) s");

my $attempts_per_key = $clients * $xacts;
is(sql('SELECT count(*) FROM outcome'), $attempts_per_key * $keys, 'every attempt was logged');
is(sql("SELECT count(*) FROM lockext_leases WHERE key LIKE 't4:%'"), '64',
	'exactly max_locks = 64 leases are live');
is(sql("SELECT leases, max_locks, high_water FROM lockext_stats"), '64|64|64',
	'lockext_stats: 64 leases of 64, high water 64');
is(sql("SELECT count(*), count(DISTINCT key) FROM outcome WHERE result = 'granted'"), '64|64',
	'64 grants, each on a different key');
is( sql(
		"SELECT count(*) FROM outcome o JOIN lockext_leases l USING (key)
		 WHERE o.result = 'granted'"),
	'64', 'the live leases are exactly the granted keys');
is(sql("SELECT count(*) FROM outcome WHERE result NOT IN ('granted', 'contended', 'error')"),
	'0', 'no other outcome');
is( sql(
		"SELECT count(*), count(DISTINCT key), count(*) FILTER (WHERE sqlstate = '53400'
		   AND message = 'lock table is full') FROM outcome WHERE result = 'error'"),
	"$attempts_per_key|1|$attempts_per_key",
	'every attempt at the one key left out failed with 53400 "lock table is full"');
is( sql(
		"SELECT count(*) FROM outcome WHERE result = 'contended' AND key IN
		   (SELECT key FROM outcome WHERE result = 'error')"),
	'0', 'the key left out was never reported as contention (no silent NULL)');
is( sql(
		"SELECT count(*) FROM outcome WHERE result = 'error' AND key IN
		   (SELECT key FROM outcome WHERE result = 'granted')"),
	'0', 'no granted key ever saw 53400');
is(sql("SELECT count(*) FROM outcome WHERE result = 'contended'"),
	$attempts_per_key * $keys - 64 - $attempts_per_key,
	'every other attempt on a granted key was contention');
is(sql('SELECT table_full FROM lockext_stats'), $attempts_per_key,
	'lockext_stats.table_full counts the refusals');

# The full table, from a plain session: the left-out key gets the error
# with its DETAIL and HINT, a held key gets contention.
my $left_out = sql("SELECT DISTINCT key FROM outcome WHERE result = 'error'");
my ($ret, $out, $err) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT try_lock('$left_out', 1000);\n"
	  . "SELECT (try_lock('t4:1', 1000)).lock_id IS NULL AS contended;\n",
	on_error_stop => 0);
like($err, qr/ERROR:  53400: lock table is full/, "try_lock('$left_out') on the full table: 53400");
like($err, qr/DETAIL:  64 of 64 slots hold unexpired leases\./, 'DETAIL counts the live leases');
like($err, qr/HINT:  Increase lockext\.max_locks/, 'HINT names lockext.max_locks');
is($out, 't', 'a held key on the full table is contention');

sql("SELECT count(lockext_force_release(key)) FROM lockext_leases");
is(sql('SELECT count(*) FROM lockext_leases'), '0', 'force_release emptied the table');
is(sql("SELECT (try_lock('$left_out', 1000)).lock_id IS NOT NULL"), 't',
	'the left-out key is granted once slots are free');
ok(!$node->log_contains(qr/terminated by signal|PANIC/), 'no backend crashed');

$node->stop;
done_testing();
