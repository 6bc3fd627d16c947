# Mutual exclusion and fencing under real concurrency (spec §3.1, §3.5):
# pgbench, 16 clients, 3 keys, short hold times.  A client that is granted a
# key inserts the key into a table with a PRIMARY KEY on it, sleeps a little,
# deletes it, then releases the lease: two overlapping holders of one key
# would collide on the primary key and abort pgbench.  Every grant is logged
# (in grant order, while held) to check that fences strictly increase per key
# and overall (a grant that completed before another was invoked has the
# smaller fence), and every release by a holder must return true.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $clients = 16;
my $xacts = 400;

my $node = PostgreSQL::Test::Cluster->new('mutex');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'lockext'\nlockext.enable_test_hooks = on\n"
	  . "lockext.max_locks = 8\nmax_connections = 50\n");
$node->start;

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(<<'SQL');
CREATE EXTENSION lockext;
CREATE TABLE holder (key int PRIMARY KEY, fence bigint NOT NULL);
CREATE TABLE grant_log (seq bigserial PRIMARY KEY, key int NOT NULL, fence bigint NOT NULL,
                        client int NOT NULL, released boolean,
                        invoked_at timestamptz NOT NULL,       -- before try_lock was sent
                        logged_at timestamptz NOT NULL DEFAULT clock_timestamp());  -- after it returned
CREATE FUNCTION must(ok boolean, what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF ok IS NOT TRUE THEN RAISE EXCEPTION 'must: % returned %', what, ok; END IF;
END $$;
SQL

# Autocommit statements, so that other clients see each step at once.
# (A release that does not return true aborts the client through must().)
my $script = <<'PGB';
\set k random(1, 3)
SELECT clock_timestamp() AS t0 \gset
SELECT coalesce(h.fence, 0) AS f, coalesce(h.lock_id::text, '') AS lid FROM try_lock('t6:' || :k, 10000) h \gset
\if :f > 0
INSERT INTO holder VALUES (:k, :f);
INSERT INTO grant_log (key, fence, client, invoked_at) VALUES (:k, :f, :client_id, ':t0');
SELECT pg_sleep(0.0005);
DELETE FROM holder WHERE key = :k;
UPDATE grant_log SET released = true WHERE fence = :f;
SELECT must(release('t6:' || :k, ':lid'), 'release by the holder');
\endif
PGB

$node->pgbench(
	"--no-vacuum --client=$clients --jobs=4 --transactions=$xacts",
	0,
	[ qr{number of transactions actually processed: @{[$clients * $xacts]}/@{[$clients * $xacts]}} ],
	[qr{^$}],
	'pgbench: 16 clients contend on 3 keys, no overlapping holders',
	{ '006_mutex' => $script },
	'postgres');

my $grants = sql('SELECT count(*) FROM grant_log');
note "grants: $grants of " . ($clients * $xacts) . ' attempts';
cmp_ok($grants, '>', 20, 'a fair number of grants happened');
cmp_ok($grants, '<', $clients * $xacts, 'and there was contention');
is(sql('SELECT count(*) FROM grant_log WHERE released IS NOT TRUE'), '0',
	'every grant was released by its holder (release returned true)');
is(sql('SELECT count(DISTINCT client) > 1 FROM grant_log'), 't', 'several clients held the keys');
is( sql(
		'SELECT count(*) FROM (SELECT fence, lag(fence) OVER (PARTITION BY key ORDER BY seq) AS prev
		 FROM grant_log) s WHERE fence <= prev'),
	'0', 'per key, every fence is greater than the previous holder\'s');
is( sql(
		'SELECT count(*) FROM grant_log a JOIN grant_log b ON a.logged_at < b.invoked_at
		 WHERE a.fence >= b.fence'),
	'0', 'over all keys: a grant that completed before another was invoked has the smaller fence');
is(sql('SELECT count(*) FROM holder'), '0', 'no holder left');
is(sql('SELECT count(*) FROM lockext_leases'), '0', 'no lease left');
is(sql('SELECT acquired = ' . $grants . ', released = ' . $grants . ', acquired + contended = ' . ($clients * $xacts) . ' FROM lockext_stats'),
	't|t|t', 'lockext_stats: acquired = released = grants, acquired + contended = attempts');
ok(!$node->log_contains(qr/terminated by signal|PANIC/), 'no backend crashed');

$node->stop;
done_testing();
