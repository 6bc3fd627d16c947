# Waits that end without their client (spec §8.2), and waits during a grace
# period (which only a restart can start, so they are here and not in the
# isolation specs):
#  1. a client killed while its try_lock(key, ttl, wait_ms) waits: with
#     client_connection_check_interval set, the backend notices the closed
#     socket and exits within a bound; no queue entry is left (waiters 0),
#     the holder keeps its lease, and the holder's release is not handed to
#     the dead waiter: another client takes the key at once;
#  2. pg_terminate_backend of the head waiter at the same moment as the
#     holder's release (both orders, 20 rounds): the key is never left held by
#     a lease nobody knows; it is free afterwards, or held by the lock_id the
#     waiter's client received;
#  3. a grace period (restart with lockext.save = off): a waiter on a
#     never-used key keeps waiting within its bound (one with a 500 ms bound
#     gets NULL after about 500 ms), and is granted when the grace ends, not
#     before; lockext_grace_end() ends a grace with a waiter and the waiter is
#     granted at once.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time usleep);

my $node = PostgreSQL::Test::Cluster->new('wait_disconnect');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'lockext'\nlockext.enable_test_hooks = on\n"
	  . "lockext.max_locks = 8\nmax_connections = 50\n"
	  . "lockext.recovery_grace_ms = 5000\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION lockext; CREATE EXTENSION lockext_test');

sub sql { return $node->safe_psql('postgres', $_[0]); }

# polls $query until it returns 't', for at most $secs; true if it did
sub poll_for
{
	my ($query, $secs) = @_;
	my $deadline = time + $secs;
	while (time < $deadline)
	{
		return 1 if sql($query) eq 't';
		usleep(20_000);
	}
	return 0;
}

# the pid of the backend waiting in lockext (wait_event Extension) on behalf
# of application_name $app, once there is one (at most 30 s), else ''
sub waiter_pid
{
	my ($app) = @_;
	poll_for(
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = '$app'
		   AND wait_event_type = 'Extension' AND wait_event = 'Extension'", 30)
	  or return '';
	return sql("SELECT pid FROM pg_stat_activity WHERE application_name = '$app'");
}

sub waiters { return sql('SELECT waiters FROM lockext_stats'); }

### 1. the client of a waiting backend dies
my ($hold_id) = split /\|/, sql("SELECT lock_id FROM try_lock('d:k', 60000)");
ok($hold_id, "the holder has d:k ($hold_id)");

my ($out, $err) = ('', '');
my $client = IPC::Run::start(
	[
		'psql', '-X', '-At', '-d', $node->connstr('postgres') . ' application_name=d_waiter',
		'-c', "SET client_connection_check_interval = '100ms'",
		'-c', "SELECT lock_id FROM try_lock('d:k', 60000, 60000)"
	],
	'<', \undef, '>', \$out, '2>', \$err);
my $pid = waiter_pid('d_waiter');
like($pid, qr/^\d+$/, "the waiter's backend $pid waits (wait_event Extension:Extension)");
is(waiters(), '1', 'lockext_stats.waiters = 1');
is(sql("SELECT waiters FROM lockext_leases WHERE key = 'd:k'"), '1', 'the lease of d:k has 1 waiter');

my $t0 = time;
$client->signal('KILL');
eval { $client->finish; };
ok(poll_for("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid", 10),
	'the waiting backend exits after its client died');
my $took = time - $t0;
cmp_ok($took, '<', 5, sprintf('... within 5 s (%.2f s; client_connection_check_interval = 100ms)', $took));
unlike($out, qr/[0-9a-f]{8}-/, 'the dead client received no lock_id');
is(waiters(), '0', 'no waiter left in lockext_stats');
is(sql("SELECT coalesce(sum(waiters), 0) FROM lockext_leases"), '0', 'no waiter left on any lease');
is(sql("SELECT lock_id FROM lockext_leases WHERE key = 'd:k'"), $hold_id, 'the holder still holds d:k');
is(sql("SELECT release('d:k', '$hold_id')"), 't', "the holder's release succeeds");
is(sql("SELECT count(*) FROM lockext_leases WHERE key = 'd:k'"), '0',
	'the release was not handed to the dead waiter: d:k is free');
my ($next_id) = split /\|/, sql("SELECT lock_id FROM try_lock('d:k', 60000)");
ok($next_id, 'another client takes d:k at once (plain try_lock)');
sql("SELECT release('d:k', '$next_id')");

### 2. terminate the head waiter while the holder releases
my ($free_after, $known_after, $lost_reply, $unknown_after) = (0, 0, 0, 0);
for my $round (1 .. 20)
{
	my $key = "r:k$round";
	my ($hid) = split /\|/, sql("SELECT lock_id FROM try_lock('$key', 60000)");
	my $w = $node->background_psql('postgres', on_error_stop => 0);
	$w->query_safe("SET application_name = 'r_waiter'");
	$w->query_until(qr/wait_sent/,
		"\\echo wait_sent\nSELECT 'got=' || coalesce(lock_id::text, 'null') FROM try_lock('$key', 60000, 30000);\n");
	my $wpid = waiter_pid('r_waiter');
	ok($wpid, "round $round: the waiter $wpid is queued on $key");
	# one statement: the two calls come microseconds apart; the order alternates
	my $both = $round % 2
	  ? "SELECT pg_terminate_backend($wpid), release('$key', '$hid')"
	  : "SELECT release('$key', '$hid'), pg_terminate_backend($wpid)";
	is(sql($both), 't|t', "round $round: terminate and release both done");
	ok(poll_for("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $wpid", 10),
		"round $round: the waiter is gone");
	# what the waiter's client saw, if anything (all of psql's output, once it exited)
	eval { $w->quit; };
	eval { $w->{run}->finish; };
	my $got = ($w->{stdout} =~ /got=([0-9a-f-]{36})/) ? $1 : '';
	my $lease = sql("SELECT coalesce((SELECT lock_id::text FROM lockext_leases WHERE key = '$key'), 'none')");
	if ($lease eq 'none')
	{
		$free_after++;
	}
	elsif ($got ne '' && $lease eq $got)
	{
		$known_after++;
		sql("SELECT release('$key', '$got')");
	}
	elsif (sql("SELECT pid FROM lockext_leases WHERE key = '$key'") eq $wpid)
	{
		# The wait had ended with the grant and the backend was past its last check
		# when the terminate came: the reply (queued with the FATAL) never reached the
		# application. That is a lost reply, as for any call (the outcome is unknown to
		# the client; the lease ends by its TTL), not something an interrupted wait left.
		$lost_reply++;
		diag("round $round: $key granted to the waiter, reply lost to the terminate");
		sql("SELECT lockext_force_release('$key')");
	}
	else
	{
		$unknown_after++;
		diag("round $round: $key held by $lease after the waiter died (its client got '$got')");
		sql("SELECT lockext_force_release('$key')");
	}
	is(waiters(), '0', "round $round: no waiter left");
	my ($tid) = split /\|/, sql("SELECT lock_id FROM try_lock('$key', 1000)");
	ok($tid, "round $round: $key can be taken afterwards");
	sql("SELECT release('$key', '$tid')") if $tid;
}
is($unknown_after, 0,
	"never a lease nobody knows after terminate + release ($free_after free, $known_after held by the waiter's handle, "
	  . "$lost_reply granted with the reply lost)");

### 2b. the waiter behind a hand-off: when the lease handed to the waiter ahead of it
### runs out (its holder never releases), it is granted then, not at the end of its bound
{
	my $key = 'chain:k';
	my ($hid) = split /\|/, sql("SELECT lock_id FROM try_lock('$key', 60000)");
	my @w;
	for my $name ('chain_b', 'chain_c')
	{
		my $ttl = $name eq 'chain_b' ? 1000 : 60000;
		my $bound = $name eq 'chain_b' ? 20000 : 15000;
		my $bg = $node->background_psql('postgres', on_error_stop => 0);
		$bg->query_safe("SET application_name = '$name'");
		$bg->query_until(qr/wait_sent/,
			"\\echo wait_sent\nSELECT 'got=' || coalesce(lock_id::text, 'null') FROM try_lock('$key', $ttl, $bound);\n");
		ok(waiter_pid($name), "$name waits for $key");
		push @w, $bg;
	}
	my $c_pid = sql("SELECT pid FROM pg_stat_activity WHERE application_name = 'chain_c'");
	is(sql("SELECT release('$key', '$hid')"), 't', 'the holder releases: the key goes to the first waiter (1 s lease)');
	my $t0 = time;
	ok(poll_for("SELECT count(*) = 1 FROM lockext_leases WHERE key = '$key' AND pid = $c_pid", 14),
		'the second waiter is granted when the first waiter\'s lease runs out');
	my $took = time - $t0;
	cmp_ok($took, '<', 4, sprintf('... about 1 s after the release (%.2f s), not at the end of its 15 s bound', $took));
	for my $bg (@w) { eval { $bg->quit; }; }
	sql("SELECT lockext_force_release('$key')");
	is(waiters(), '0', 'no waiter left after the chain');
}

### 3. waits during a grace period
sub grace_active { return sql('SELECT active FROM lockext_grace()'); }

$node->append_conf('postgresql.conf', "lockext.save = off\n");
$node->restart;
is(grace_active(), 't', 'after a restart with lockext.save = off the grace period is active');
my $grace_until = sql("SELECT extract(epoch FROM grace_until) FROM lockext_grace()");

my ($gout, $gerr, $sout, $serr) = ('', '', '', '');
my $gw = IPC::Run::start(
	[
		'psql', '-X', '-At', '-d', $node->connstr('postgres') . ' application_name=g_waiter',
		'-c', "SELECT coalesce(lock_id::text, 'null') || '|' || extract(epoch FROM clock_timestamp()) FROM try_lock('g:k', 60000, 20000)"
	],
	'<', \undef, '>', \$gout, '2>', \$gerr);
my $short = IPC::Run::start(
	[
		'psql', '-X', '-At', '-d', $node->connstr('postgres') . ' application_name=g_short',
		'-c', "SELECT coalesce(lock_id::text, 'null') FROM try_lock('g:s', 60000, 500)"
	],
	'<', \undef, '>', \$sout, '2>', \$serr);
my $t_short = time;
ok(waiter_pid('g_waiter'), 'a waiter on a never-used key waits during the grace period');
eval { $short->finish; };
my $short_took = time - $t_short;
is($sout, "null\n", 'a waiter with a 500 ms bound gets NULL during the grace period');
cmp_ok($short_took, '>=', 0.4, sprintf('... after waiting out its bound (%.2f s)', $short_took));
is(sql("SELECT (SELECT active FROM lockext_grace()) AND
		  (SELECT waiters FROM lockext_stats) = 1"), 't', 'still in grace, the long waiter still waits');
eval { $gw->finish; };
my ($gid, $gat) = split /\|/, ($gout =~ s/\s+$//r);
like($gid, qr/^[0-9a-f-]{36}$/, 'the waiter was granted g:k when the grace period ended');
cmp_ok($gat, '>=', $grace_until - 0.05, 'not before the grace period ended');
cmp_ok($gat, '<', $grace_until + 3, '... and soon after it ended');
is($gerr, '', 'no error');
sql("SELECT release('g:k', '$gid')") if $gid;

# lockext_grace_end() with a waiter: granted at once
$node->append_conf('postgresql.conf', "lockext.recovery_grace_ms = 60000\n");
$node->restart;
is(grace_active(), 't', 'grace again (60 s)');
($gout, $gerr) = ('', '');
$gw = IPC::Run::start(
	[
		'psql', '-X', '-At', '-d', $node->connstr('postgres') . ' application_name=g_waiter2',
		'-c', "SELECT coalesce(lock_id::text, 'null') FROM try_lock('g:e', 60000, 30000)"
	],
	'<', \undef, '>', \$gout, '2>', \$gerr);
ok(waiter_pid('g_waiter2'), 'a waiter waits during the grace period');
$t0 = time;
is(sql('SELECT lockext_grace_end()'), 't', 'lockext_grace_end() ended the grace period');
eval { $gw->finish; };
$took = time - $t0;
like($gout, qr/^[0-9a-f-]{36}$/, 'the waiter was granted g:e');
cmp_ok($took, '<', 5, sprintf('... within 5 s of lockext_grace_end() (%.2f s; its bound is 30 s)', $took));
is(waiters(), '0', 'no waiter left');
sql("SELECT lockext_force_release('g:e')");

$node->stop;
done_testing();
