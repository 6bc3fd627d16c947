# A backend holding a lockext partition LWLock (testing.md T6), driven by
# lockext_test_stall(partition, ms, raise_error), which holds the partition
# lock EXCLUSIVE while it waits with wait_event_type 'Extension':
#  1. a try_lock on a key of that partition waits on LWLock:lockext and
#     proceeds when the section ends; a key of another partition does not wait;
#  2. an ERROR raised inside the section releases the lock through error
#     recovery: the staller's session survives, the waiter proceeds, no
#     crash-restart;
#  3. pg_terminate_backend on the staller takes effect only when the section
#     ends (interrupts are held under an LWLock): the backend exits then, the
#     waiter proceeds, no crash-restart;
#  4. statement_timeout cannot cut the section short either: the statement
#     runs to the end of the stall, then fails with 57014;
#  5. SIGKILL of the staller inside the section (it dies holding the LWLock)
#     makes the postmaster crash-restart; afterwards grants report contention
#     for lockext.recovery_grace_ms, then work, with fences above the old ones.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = PostgreSQL::Test::Cluster->new('lwlock_holder');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'lockext'\nlockext.enable_test_hooks = on\n"
	  . "lockext.max_locks = 8\nmax_connections = 50\nrestart_after_crash = on\n"
	  . "lockext.recovery_grace_ms = 1500\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION lockext; CREATE EXTENSION lockext_test');

sub sql { return $node->safe_psql('postgres', $_[0]); }

# A crash-restart would kill every backend: this idle session must survive
# every step but the last (pg_postmaster_start_time is not reset by a
# crash-restart, so it cannot tell).
my $sentinel = $node->background_psql('postgres', on_error_stop => 0);
my $sentinel_pid = $sentinel->query_safe('SELECT pg_backend_pid()');
my $part = sql("SELECT lockext_test_partition_of('t3:k')");
like($part, qr/^\d+$/, "key t3:k is in partition $part");
# A second key in the same partition, and one in another partition.
my $same = sql(
	"SELECT k FROM (SELECT 't3:s' || g AS k FROM generate_series(1, 1000) g) s
	 WHERE lockext_test_partition_of(k) = $part AND k <> 't3:k' LIMIT 1");
my $other = sql(
	"SELECT k FROM (SELECT 't3:o' || g AS k FROM generate_series(1, 1000) g) s
	 WHERE lockext_test_partition_of(k) <> $part LIMIT 1");
ok($same ne '' && $other ne '', "found $same (same partition) and $other (other partition)");

# Starts lockext_test_stall in $bg without waiting for it; returns once the
# staller is inside the section (waiting on wait_event Extension).
sub start_stall
{
	my ($bg, $pid, $ms, $raise) = @_;
	$bg->query_until(qr/stall_sent/,
		"\\echo stall_sent\nSELECT lockext_test_stall($part, $ms, $raise);\n");
	ok( $node->poll_query_until(
			'postgres',
			"SELECT wait_event_type = 'Extension' AND wait_event = 'Extension'
			 FROM pg_stat_activity WHERE pid = $pid"),
		"staller $pid is inside the section (wait_event Extension:Extension)");
}

# Sends a try_lock from $bg without waiting; returns once it waits on the
# partition's LWLock.
sub start_waiter
{
	my ($bg, $pid, $key) = @_;
	$bg->query_until(qr/waiter_sent/,
		"\\echo waiter_sent\nSELECT (h).lock_id IS NOT NULL AS granted FROM (SELECT try_lock('$key', 60000) h) s;\n");
	ok( $node->poll_query_until(
			'postgres',
			"SELECT wait_event_type = 'LWLock' AND wait_event = 'lockext'
			 FROM pg_stat_activity WHERE pid = $pid"),
		"try_lock('$key') in backend $pid waits on LWLock:lockext");
}

sub no_crash_restart
{
	my ($what) = @_;
	is($sentinel->query_safe('SELECT pg_backend_pid()'), $sentinel_pid,
		"$what: an idle session opened at the start is still connected");
	ok(!$node->log_contains(qr/terminated by signal|server process .* was terminated|PANIC|reinitializing/),
		"$what: no crash-restart in the server log");
}

my $staller = $node->background_psql('postgres', on_error_stop => 0);
my $staller_pid = $staller->query_safe('SELECT pg_backend_pid()');
my $waiter = $node->background_psql('postgres', on_error_stop => 0);
my $waiter_pid = $waiter->query_safe('SELECT pg_backend_pid()');

### 1. plain stall: the waiter waits, another partition does not
my $t0 = time;
start_stall($staller, $staller_pid, 3000, 'false');
start_waiter($waiter, $waiter_pid, 't3:k');

is(sql("SELECT (h).lock_id IS NOT NULL FROM (SELECT try_lock('$other', 60000) h) s"),
	't', "try_lock('$other') in another partition is granted during the stall");
is(sql("SELECT wait_event_type || ':' || wait_event FROM pg_stat_activity WHERE pid = $waiter_pid"),
	'LWLock:lockext', 'meanwhile the waiter on the stalled partition is still waiting');
sql("SELECT lockext_force_release('$other')");

is($waiter->query(';'), 't', 'the waiter was granted t3:k after the stall');
cmp_ok(time - $t0, '>=', 2.5, 'the waiter waited for the section (stall 3 s)');
my ($out, $failed) = $staller->query(';');
is($failed, 0, 'the plain stall ended without an error');
is($staller->query_safe('SELECT 1'), '1', 'the staller session is usable');
no_crash_restart('plain stall');

### 2. ERROR inside the section: released by error recovery
start_stall($staller, $staller_pid, 2000, 'true');
start_waiter($waiter, $waiter_pid, $same);
is($waiter->query(';'), 't', "the waiter was granted $same after the erroring stall");
($out, $failed) = $staller->query(';');
is($failed, 1, 'the staller got an error');
like($staller->{stderr}, qr/ERROR:  lockext_test_stall raised an error inside partition $part/,
	'the error is the one raised inside the section');
$staller->{stderr} = '';
is($staller->query_safe('SELECT 1'), '1', 'the staller session survived its error');
is(sql("SELECT (h).lock_id IS NULL FROM (SELECT try_lock('t3:k', 60000) h) s"),
	't', 'the partition works: t3:k still held by the waiter (contention, no wait)');
is(sql("SELECT count(*) FROM lockext_leases WHERE key IN ('t3:k', '$same')"),
	'2', 'both leases granted to the waiter are live');
no_crash_restart('error inside the section');

### 3. pg_terminate_backend during the section is deferred to its end
sql("SELECT lockext_force_release('t3:k')");
my $log_offset = -s $node->logfile;
$t0 = time;
start_stall($staller, $staller_pid, 3000, 'false');
start_waiter($waiter, $waiter_pid, 't3:k');
is(sql("SELECT pg_terminate_backend($staller_pid)"), 't', 'SIGTERM sent to the staller');
usleep(500_000);
is(sql("SELECT wait_event_type || ':' || wait_event FROM pg_stat_activity WHERE pid = $staller_pid"),
	'Extension:Extension', 'the staller is still in the section 0.5 s after SIGTERM');
is(sql("SELECT wait_event_type || ':' || wait_event FROM pg_stat_activity WHERE pid = $waiter_pid"),
	'LWLock:lockext', 'the waiter is still waiting');
ok($node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $staller_pid"),
	'the staller exits once the section ends');
cmp_ok(time - $t0, '>=', 2.5, 'termination took effect only after the 3 s stall');
is($waiter->query(';'), 't', 'the waiter was granted t3:k after the terminated stall');
$node->wait_for_log(qr/FATAL:  terminating connection due to administrator command/, $log_offset);
ok(1, 'the staller logged a normal FATAL termination');
eval { $staller->quit };
no_crash_restart('terminate during the section');

### 4. statement_timeout does not interrupt the section
$t0 = time;
my ($ret, $out4, $err4) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSET statement_timeout = '300ms';\n"
	  . "SELECT lockext_test_stall($part, 2000, false);\n\\echo sqlstate=:LAST_ERROR_SQLSTATE\n",
	on_error_stop => 0);
cmp_ok(time - $t0, '>=', 1.9, 'a 300 ms statement_timeout did not cut the 2 s section short');
like($out4, qr/^sqlstate=57014$/m, 'the statement was cancelled (57014) once the section ended');
like($err4, qr/canceling statement due to statement timeout/, 'with the statement-timeout message');
is(sql("SELECT (h).lock_id IS NULL FROM (SELECT try_lock('t3:k', 60000) h) s"),
	't', 'the partition is usable after the cancelled stall (t3:k still held)');
no_crash_restart('statement_timeout during the section');

### 5. SIGKILL inside the section: crash-restart, grace, then grants again
my $fence_before = sql("SELECT fence FROM try_lock('t3:before_kill', 60000)");
$staller = $node->background_psql('postgres', on_error_stop => 0);
$staller_pid = $staller->query_safe('SELECT pg_backend_pid()');
start_stall($staller, $staller_pid, 5000, 'false');
start_waiter($waiter, $waiter_pid, $same);
$log_offset = -s $node->logfile;
ok(kill('KILL', $staller_pid), 'SIGKILL sent to the staller inside the section');
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
$node->wait_for_log(qr/database system is ready to accept connections/, $log_offset);
ok(1, 'the postmaster crash-restarted');
eval { $staller->quit };
eval { $waiter->quit };
eval { $sentinel->quit };
is(sql("SELECT active FROM lockext_grace()"), 't', 'grace period active after the crash-restart');
is(sql("SELECT (h).lock_id IS NULL FROM (SELECT try_lock('t3:after_kill', 60000) h) s"),
	't', 'a never-used key is contention during the grace period');
ok($node->poll_query_until('postgres',
		"SELECT (h).lock_id IS NOT NULL FROM (SELECT try_lock('t3:after_kill', 60000) h) s"),
	'grants work again after the grace period');
cmp_ok(sql("SELECT fence FROM lockext_leases WHERE key = 't3:after_kill'"), '>', $fence_before,
	'the fence after the crash-restart is above the fence before it');

sql("SELECT lockext_force_release(key) FROM lockext_leases");
is(sql('SELECT count(*) FROM lockext_leases'), '0', 'all leases released');
$node->stop;
done_testing();
