# Sessionless leases (spec §3.6, testing.md T9): a lease belongs to whoever
# holds its lock_id, not to the connection that took it.  Closing the
# granting connection, or terminating its backend, does not release it;
# another connection renews and releases it with the lock_id.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('sessionless');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'lockext'\nlockext.enable_test_hooks = on\n"
	  . "lockext.max_locks = 8\nmax_connections = 50\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION lockext; CREATE EXTENSION lockext_test');

sub sql { return $node->safe_psql('postgres', $_[0]); }

# Waits until backend $pid has left pg_stat_activity.
sub wait_gone
{
	my ($pid) = @_;
	ok($node->poll_query_until('postgres',
			"SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid"),
		"backend $pid has exited");
}

### 1. grant in session A, quit A, renew/release from session B
my $a = $node->background_psql('postgres');
my $a_pid = $a->query_safe('SELECT pg_backend_pid()');
my ($lock_id, $fence) = split /\|/,
  $a->query_safe("SELECT lock_id, fence FROM try_lock('t2:k', 60000)");
like($lock_id, qr/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
	'session A got a UUIDv4 lock_id');
like($fence, qr/^[1-9][0-9]*$/, 'session A got a positive fence');
$a->quit;
wait_gone($a_pid);

is(sql("SELECT lock_id, fence, pid, renewals FROM lockext_leases WHERE key = 't2:k'"),
	"$lock_id|$fence|$a_pid|0",
	'closing session A did not release its lease (still held under its lock_id, pid of A)');
is(sql("SELECT lock_id IS NULL FROM try_lock('t2:k', 60000)"),
	't', 'another session still sees contention on the key');

# Session B: every renew form and then release work with the lock_id alone.
is(sql("SELECT renew('t2:k', '$lock_id')"), 't', 'B: renew(key, lock_id) after A quit');
is(sql("SELECT renew('t2:k', '$lock_id', 30000)"), 't', 'B: renew(key, lock_id, ttl)');
is(sql("SELECT renew(ROW('t2:k', '$lock_id', 45000, $fence, NULL)::lock_handle)"),
	't', 'B: renew(lock_handle)');
is(sql("SELECT renewals, ttl_ms, remaining_ms BETWEEN 40000 AND 45000 FROM lockext_leases WHERE key = 't2:k'"),
	'3|45000|t', 'B: three renewals recorded, TTL from the last one');
is(sql("SELECT release('t2:k', '$lock_id')"), 't', 'B: release(key, lock_id)');
is(sql("SELECT release('t2:k', '$lock_id')"), 'f', 'B: a second release is a no-op');
is(sql("SELECT renew('t2:k', '$lock_id')"), 'f', 'B: renew after release is false');
is(sql("SELECT count(*) FROM lockext_leases WHERE key = 't2:k'"), '0', 'the lease is gone');
is(sql("SELECT fence > $fence FROM try_lock('t2:k', 60000) h WHERE h.lock_id IS NOT NULL"),
	't', 'the key is free again, with a larger fence');
sql("SELECT lockext_force_release('t2:k')");

### 2. release(lock_handle) from another session, with the handle A returned
$a = $node->background_psql('postgres');
my $handle = $a->query_safe("SELECT h FROM try_lock('t2:h', 60000) h");
$a->quit;
is(sql("SELECT release('$handle'::lock_handle)"), 't', 'release(lock_handle) from another session');
is(sql("SELECT count(*) FROM lockext_leases WHERE key = 't2:h'"), '0', 'handle release removed it');

### 3. the lease survives pg_terminate_backend of its grantor
my $c = $node->background_psql('postgres', on_error_stop => 0);
my $c_pid = $c->query_safe('SELECT pg_backend_pid()');
($lock_id, $fence) = split /\|/,
  $c->query_safe("SELECT lock_id, fence FROM try_lock('t2:term', 60000)");
is(sql("SELECT pg_terminate_backend($c_pid)"), 't', 'terminated the granting backend');
wait_gone($c_pid);
eval { $c->quit };    # psql exits on its own when its backend dies

is(sql("SELECT lock_id, pid FROM lockext_leases WHERE key = 't2:term'"),
	"$lock_id|$c_pid", 'the lease outlived its backend');
is(sql("SELECT lock_id IS NULL FROM try_lock('t2:term', 60000)"),
	't', 'the key is still contended after the backend was terminated');
is(sql("SELECT renew('t2:term', '$lock_id')"), 't', 'renew with the lock_id after termination');
is(sql("SELECT release('t2:term', '$lock_id')"), 't', 'release with the lock_id after termination');

### 4. the TTL, not the connection, ends an abandoned lease (frozen clock)
sql("SELECT lockext_test_clock_freeze()");
$a = $node->background_psql('postgres');
$lock_id = $a->query_safe("SELECT lock_id FROM try_lock('t2:ttl', 5000)");
$a->quit;
sql("SELECT lockext_test_clock_advance(4999)");
is(sql("SELECT count(*) FROM lockext_leases WHERE key = 't2:ttl'"), '1', 'abandoned lease held at ttl-1');
sql("SELECT lockext_test_clock_advance(1)");
is(sql("SELECT count(*) FROM lockext_leases WHERE key = 't2:ttl'"), '0', 'abandoned lease expired at ttl');
is(sql("SELECT renew('t2:ttl', '$lock_id')"), 'f', 'renew of the expired abandoned lease is false');
sql("SELECT lockext_test_clock_release()");

is(sql("SELECT count(*) FROM lockext_leases"), '0', 'nothing left held');
ok(!$node->log_contains(qr/terminated by signal|PANIC/), 'no backend crashed');

$node->stop;
done_testing();
