# After a crash no key may be granted that an earlier holder could still
# believe it owns (spec §3.8, testing.md T3-T5): a backend killed with
# SIGKILL (shared memory reinitialised), an immediate stop, a SIGKILLed
# postmaster.  Each time: grants report contention for
# lockext.recovery_grace_ms, then resume with fences above every fence
# granted before the crash.  recovery_grace_ms = 0 turns the grace off.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

my $grace_ms = 3000;
my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'lockext'\nrestart_after_crash = on\n"
	  . "lockext.recovery_grace_ms = $grace_ms\n");
$node->start;

sub sql { return $node->safe_psql('postgres', $_[0]); }
sub grace { return sql("SELECT active::text || '|' || reason FROM lockext_grace()"); }

sql('CREATE EXTENSION lockext');

# Takes a lease, returns its fence.
sub grant
{
	my ($key) = @_;
	return sql("SELECT fence FROM try_lock('$key', 60000) h WHERE h.lock_id IS NOT NULL");
}

# After a crash of any kind: grace, then grants with higher fences.
sub check_after_crash
{
	my ($what, $reason, $fence_before) = @_;
	is(grace(), "true|$reason", "$what: grace period active");
	is(sql("SELECT count(*) FROM lockext_leases"), '0', "$what: no lease survived");
	is(sql("SELECT try_lock('c:held', 1000) IS NULL"), 't',
		"$what: the key held before the crash reports contention");
	is(sql("SELECT try_lock('c:fresh-" . $what =~ s/\W/_/gr . "', 1000) IS NULL"), 't',
		"$what: a never-used key reports contention too");
	my $left = sql("SELECT remaining_ms FROM lockext_grace()");
	cmp_ok($left, '<=', $grace_ms, "$what: grace lasts at most recovery_grace_ms ($left ms left)");
	sleep($left / 1000.0 + 0.1);
	is(grace(), "false|$reason", "$what: grace over");
	my $fence = grant('c:held');
	ok(defined $fence && $fence ne '', "$what: the key is granted after grace");
	cmp_ok($fence, '>', $fence_before, "$what: fence $fence above pre-crash fence $fence_before");
	sql("SELECT lockext_force_release('c:held')");
	return $fence;
}

my $fence = grant('c:held');

### T3: a backend dies of SIGKILL; the postmaster reinitialises shared memory
my $bg = $node->background_psql('postgres', on_error_stop => 0);
my $pid = $bg->query_safe('SELECT pg_backend_pid()');
my $off = -s $node->logfile;
kill 'KILL', $pid;
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $off);
$node->wait_for_log(qr/database system is ready to accept connections/, $off);
eval { $bg->quit };
$fence = check_after_crash('backend SIGKILL', 'crash restart', $fence);
$fence = grant('c:held');

### T4: immediate stop: nothing saved, grace at the next start
$node->stop('immediate');
ok(!-e $node->data_dir . '/pg_lockext/leases', 'immediate stop writes no lease file');
$node->start;
$fence = check_after_crash('immediate stop', 'start after an unclean shutdown', $fence);
$fence = grant('c:held');

### T5: the postmaster itself is SIGKILLed
my $pm_pid = $node->safe_psql('postgres', "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'");
$node->kill9;
# its children notice the postmaster's death and exit
for (1 .. 100) { last unless kill(0, $pm_pid); sleep(0.1); }
ok(!kill(0, $pm_pid), 'checkpointer exited after the postmaster died');
$node->start;
$fence = check_after_crash('postmaster SIGKILL', 'start after an unclean shutdown', $fence);

### recovery_grace_ms = 0 disables the grace (the checker's self-test relies on it)
$node->append_conf('postgresql.conf', "lockext.recovery_grace_ms = 0\n");
$node->restart;
grant('c:held');
$node->stop('immediate');
$node->start;
is(grace(), 'false|none', 'recovery_grace_ms = 0: no grace');
my $f = grant('c:held');
cmp_ok($f, '>', $fence, 'recovery_grace_ms = 0: granted at once, fences still increase');

$node->stop;
done_testing();
