# Memory (testing.md T12): one session calls every entry point (grant,
# contention, three renew forms, two release forms, the views) and every
# error path (NULLs, empty and too-long keys, TTL 0 / negative / too large,
# a full table with its DETAIL/HINT) 100 000 times (after 2 000 warm-up rounds), each error caught by an
# EXCEPTION handler (a subtransaction longjmp over the C++ code).  After a
# warm-up of the same workload, the backend's private memory and its memory
# contexts must not grow by more than a small bound: a leak of a few dozen
# bytes per call would show up as hundreds of kB.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('memory');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'lockext'\nlockext.enable_test_hooks = on\n"
	  . "lockext.max_locks = 8\nmax_connections = 50\n");
$node->start;

$node->safe_psql('postgres', <<'SQL');
CREATE EXTENSION lockext;
-- n rounds of the workload; returns the number of errors caught (8 per round)
CREATE FUNCTION churn(n int) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  h lock_handle;
  c lock_handle;
  errors bigint := 0;
  long_key text := repeat('x', 300);    -- above lockext.max_key_length (256)
  fill uuid[] := '{}';
  k text;
BEGIN
  -- hold 7 of the 8 slots so that the 8th grant below fills the table
  FOR i IN 1 .. 7 LOOP
    SELECT lock_id INTO STRICT h.lock_id FROM try_lock('t5:fill' || i, 300000);
    fill := fill || h.lock_id;
  END LOOP;
  FOR i IN 1 .. n LOOP
    k := 't5:k' || (i % 3);
    SELECT * INTO h FROM try_lock(k, 60000);                 -- grant (fills the table)
    IF h.lock_id IS NULL THEN RAISE 'no grant for %', k; END IF;
    SELECT * INTO c FROM try_lock(k, 60000);                 -- contention
    IF c.lock_id IS NOT NULL THEN RAISE 'double grant for %', k; END IF;
    IF NOT renew(k, h.lock_id) THEN RAISE 'renew failed'; END IF;
    IF NOT renew(k, h.lock_id, 30000) THEN RAISE 'renew ttl failed'; END IF;
    IF NOT renew(h) THEN RAISE 'renew handle failed'; END IF;
    IF renew(k, gen_random_uuid()) THEN RAISE 'foreign renew succeeded'; END IF;
    IF release('t5:other', h.lock_id) THEN RAISE 'foreign release succeeded'; END IF;
    BEGIN PERFORM try_lock('t5:full' || i, 1000); EXCEPTION WHEN configuration_limit_exceeded THEN errors := errors + 1; END;
    BEGIN PERFORM try_lock('', 1000); EXCEPTION WHEN invalid_parameter_value THEN errors := errors + 1; END;
    BEGIN PERFORM try_lock(long_key, 1000); EXCEPTION WHEN invalid_parameter_value THEN errors := errors + 1; END;
    BEGIN PERFORM try_lock(k, 0); EXCEPTION WHEN invalid_parameter_value THEN errors := errors + 1; END;
    BEGIN PERFORM try_lock(k, -1); EXCEPTION WHEN invalid_parameter_value THEN errors := errors + 1; END;
    BEGIN PERFORM renew(k, h.lock_id, 9223372036854775807); EXCEPTION WHEN invalid_parameter_value THEN errors := errors + 1; END;
    BEGIN PERFORM try_lock(NULL, 1000); EXCEPTION WHEN null_value_not_allowed THEN errors := errors + 1; END;
    BEGIN PERFORM release(k, NULL); EXCEPTION WHEN null_value_not_allowed THEN errors := errors + 1; END;
    IF i % 100 = 0 THEN
      PERFORM count(*) FROM lockext_leases;
      PERFORM * FROM lockext_stats;
    END IF;
    IF i % 2 = 0 THEN
      IF NOT release(h) THEN RAISE 'release handle failed'; END IF;
    ELSE
      IF NOT release(k, h.lock_id) THEN RAISE 'release failed'; END IF;
    END IF;
  END LOOP;
  FOR i IN 1 .. 7 LOOP
    IF NOT release('t5:fill' || i, fill[i]) THEN RAISE 'fill release failed'; END IF;
  END LOOP;
  RETURN errors;
END $$;
SQL

my $bg = $node->background_psql('postgres');
my $pid = $bg->query_safe('SELECT pg_backend_pid()');

# Private resident memory (RssAnon; VmRSS also counts the shared memory the
# backend has touched, which is not a leak) and VmRSS, in kB.
sub rss
{
	my $status = slurp_file("/proc/$pid/status");
	my ($anon) = $status =~ /^RssAnon:\s+(\d+) kB/m;
	my ($vm) = $status =~ /^VmRSS:\s+(\d+) kB/m;
	return ($anon, $vm);
}

sub context_bytes
{
	return $bg->query_safe('SELECT sum(total_bytes) FROM pg_backend_memory_contexts');
}

# warm-up: caches, plpgsql plan, first touches of shared memory
is($bg->query_safe('SELECT churn(2000)'), 2000 * 8, 'warm-up: every error path raised its error');
my ($anon0, $vm0) = rss();
my $ctx0 = context_bytes();

my $rounds = 100_000;
is($bg->query_safe("SELECT churn($rounds)"), $rounds * 8, "$rounds rounds: every error path raised its error");
my ($anon1, $vm1) = rss();
my $ctx1 = context_bytes();

note "RssAnon $anon0 -> $anon1 kB, VmRSS $vm0 -> $vm1 kB, contexts $ctx0 -> $ctx1 bytes";
cmp_ok($anon1 - $anon0, '<', 2048, 'private memory (RssAnon) grew by less than 2 MB');
cmp_ok($vm1 - $vm0, '<', 4096, 'VmRSS grew by less than 4 MB');
cmp_ok($ctx1 - $ctx0, '<', 256 * 1024, 'memory contexts grew by less than 256 kB');

is($bg->query_safe('SELECT count(*) FROM lockext_leases'), '0', 'every lease was released');
is($bg->query_safe('SELECT acquired, table_full, released FROM lockext_stats'),
	join('|', 2000 + $rounds + 14, 2000 + $rounds, 2000 + $rounds + 14),
	'lockext_stats counted exactly the grants, full-table refusals and releases');
$bg->quit;
ok(!$node->log_contains(qr/terminated by signal|PANIC/), 'no backend crashed');

$node->stop;
done_testing();
