# Replicated leases across a crash (spec §7.4) and standbys that start
# mid-stream (§7.1, §7.6).
#  - lockext.replication = sync for longer than the TTL ceiling: a crash
#    restart (a backend killed with SIGKILL) or an immediate stop and start
#    restores every lease from WAL (lock_id, fence; releases and evictions
#    replayed too) and applies no grace, also at a second crash soon after
#    the first (that restart restored every lease and sync stayed in force,
#    so no lease can be unknown: "sync since" must not restart with it);
#  - async: the leases whose records arrived survive, but the full grace
#    applies;
#  - sync set less than one TTL before the crash: a shortened grace;
#  - a standby started from a backup taken while replication was off is
#    incomplete (a lease granted then is unknown to it) until the primary
#    switches replication on and logs a snapshot; promoting an incomplete
#    standby with promotion_grace_ms = 0 applies the full grace;
#  - a standby without lockext in shared_preload_libraries stops at once with
#    PostgreSQL's "resource manager with ID 197 not registered".
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

my $ttl = 5000;
my $node = PostgreSQL::Test::Cluster->new('c20');
$node->init(allows_streaming => 1);
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'lockext'\nlockext.max_ttl_ms = $ttl\n"
	  . "lockext.replication = sync\nrestart_after_crash = on\nmax_connections = 30\n");
$node->start;
my $sync_since = time;    # sync is in force from the start of the server
$node->safe_psql('postgres', 'CREATE EXTENSION lockext');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub grant
{
	my ($key) = @_;
	my $row = sql("SELECT lock_id || '|' || fence FROM try_lock('$key', $ttl)");
	die "not granted: $key" if $row eq '';
	return $row;
}

sub lease { return sql("SELECT lock_id || '|' || fence FROM lockext_leases WHERE key = '$_[0]'"); }

# sleep until sync has been in force for longer than the TTL ceiling
sub wait_sync_longer_than_ttl
{
	my $left = $sync_since + $ttl / 1000.0 + 0.5 - time;
	sleep($left) if $left > 0;
}

# a checkpoint moves the redo pointer; the worker logs a snapshot within ~1 s
sub checkpoint_and_snapshot
{
	sql('CHECKPOINT');
	sleep(2);
}

# SIGKILL a backend: the postmaster reinitialises shared memory (restart_after_crash)
sub crash_backend
{
	my $off = -s $node->logfile;
	my $bg = $node->background_psql('postgres', on_error_stop => 0);
	my $pid = $bg->query_safe('SELECT pg_backend_pid()');
	kill 'KILL', $pid;
	$node->wait_for_log(qr/all server processes terminated; reinitializing/, $off);
	$node->wait_for_log(qr/database system is ready to accept connections/, $off);
	eval { $bg->quit };
	return $off;
}

sub set_mode
{
	my ($mode) = @_;
	$node->append_conf('postgresql.conf', "lockext.replication = $mode\n");
	$node->reload;
	$node->poll_query_until('postgres', "SELECT mode = '$mode' FROM lockext_replication()")
	  or die "mode $mode not published";
	$sync_since = time if $mode eq 'sync';
}

### 3. sync for longer than the TTL, crash restart: every lease restored, no grace
wait_sync_longer_than_ttl();
my $la = grant('c:a');    # before the checkpoint: only in the snapshot
my ($rid) = split /\|/, grant('c:rel');
grant('c:evict');
checkpoint_and_snapshot();
my $lb = grant('c:b');    # after the snapshot: its GRANT record
sql("SELECT release('c:rel', '$rid')");    # RELEASE and EVICT records after the snapshot
sql("SELECT lockext_force_release('c:evict')");
sleep(0.5);    # removals are not waited for (a lease kept longer is safe): let the WAL writer flush them
my $off = crash_backend();
isnt(sql("SELECT lock_id FROM try_lock('c:new', $ttl)"), '',
	'sync, crash restart: a new key is granted at once');
is(sql("SELECT active::text || '|' || remaining_ms FROM lockext_grace()"), 'false|0',
	'sync, crash restart: no grace');
is(lease('c:a'), $la, 'sync, crash restart: a lease from the snapshot survives with lock_id and fence');
is(lease('c:b'), $lb, 'sync, crash restart: a lease logged after the snapshot survives with lock_id and fence');
is(sql("SELECT count(*) FROM lockext_leases WHERE key IN ('c:rel', 'c:evict')"), '0',
	'sync, crash restart: leases released or evicted after the snapshot stay gone');
ok($node->log_contains(qr/lockext: every lease was restored from WAL; no grace period after the crash restart/, $off),
	'sync, crash restart: the log says why no grace applies');
cmp_ok(sql("SELECT fence FROM lockext_leases WHERE key = 'c:new'"), '>', (split /\|/, $lb)[1],
	'sync, crash restart: fences continue above the restored ones');

### a second crash soon after: sync is still in force, the restored table is complete
### (fails while ReplicationStartup() resets "sync since" at every shared-memory init)
my $a2 = grant('c:a2');
checkpoint_and_snapshot();
$off = crash_backend();
isnt(sql("SELECT lock_id FROM try_lock('c:new2', $ttl)"), '',
	'sync, second crash restart within one TTL of the first: a new key is granted at once');
is(sql("SELECT active::text || '|' || remaining_ms FROM lockext_grace()"), 'false|0',
	'sync, second crash restart: no grace');
is(lease('c:a2'), $a2, 'sync, second crash restart: the lease survives');
sql('SELECT lockext_grace_end()');    # whatever the outcome, go on without a grace

### 3. sync for longer than the TTL, immediate stop and start: no grace
$sync_since = time;    # (if the restart counts as a new start of sync)
wait_sync_longer_than_ttl();
my $c = grant('i:c');
checkpoint_and_snapshot();
my $d = grant('i:d');
$off = -s $node->logfile;
$node->stop('immediate');
$node->start;
isnt(sql("SELECT lock_id FROM try_lock('i:new', $ttl)"), '',
	'sync, immediate stop and start: a new key is granted at once');
is(sql("SELECT active::text || '|' || remaining_ms FROM lockext_grace()"), 'false|0',
	'sync, immediate stop and start: no grace');
is(lease('i:c'), $c, 'sync, immediate stop and start: the snapshot\'s lease survives');
is(lease('i:d'), $d, 'sync, immediate stop and start: the lease logged after the snapshot survives');
ok($node->log_contains(
	qr/lockext: every lease was restored from WAL; no grace period after the start after an unclean shutdown/, $off),
	'sync, immediate stop and start: the log says why no grace applies');

### 3. async: the leases survive, the full grace applies
set_mode('async');
my $e = grant('a:e');
checkpoint_and_snapshot();
$off = crash_backend();
is(sql("SELECT try_lock('a:new', $ttl) IS NULL"), 't', 'async, crash restart: a new key is refused');
my ($active, $reason, $left) = split /\|/,
  sql("SELECT active || '|' || reason || '|' || remaining_ms FROM lockext_grace()");
is("$active|$reason", 'true|crash restart', 'async, crash restart: the grace applies (crash restart)');
cmp_ok($left, '>', $ttl - 2000, "async, crash restart: the full grace ($left ms left)");
is(lease('a:e'), $e, 'async, crash restart: a lease whose records arrived survives');
ok($node->log_contains(qr/lockext: the grace period after the crash restart applies in full: lockext.replication was async/, $off),
	'async, crash restart: the log says why the grace applies');
sql('SELECT lockext_grace_end()');

### 3. sync set less than one TTL before the crash: a shortened grace
set_mode('sync');
my $f = grant('s:f');
checkpoint_and_snapshot();
my $crash_at = time;
$off = crash_backend();
is(sql("SELECT try_lock('s:new', $ttl) IS NULL"), 't', 'sync for less than the TTL, crash restart: a new key is refused');
($active, $reason, $left) = split /\|/,
  sql("SELECT active || '|' || reason || '|' || remaining_ms FROM lockext_grace()");
is("$active|$reason", 'true|crash restart', 'sync for less than the TTL: the grace applies');
my $expect = ($sync_since + $ttl / 1000.0 - time) * 1000;
cmp_ok($left, '<', $ttl - 1000,
	"sync for less than the TTL: the grace is shortened ($left ms left, full $ttl, about $expect expected)");
ok($node->log_contains(qr/lockext: every lease was restored from WAL; the grace period after the crash restart ends in \d+ ms/, $off),
	'sync for less than the TTL: the log says the grace was shortened');
is(lease('s:f'), $f, 'sync for less than the TTL: the lease survives');
sql('SELECT lockext_grace_end()');

### 5. a standby started mid-stream is incomplete until a snapshot
set_mode('off');
my $m = grant('m:a');
$node->backup('b20');
my $late = PostgreSQL::Test::Cluster->new('late');
$late->init_from_backup($node, 'b20', has_streaming => 1);
$late->start;
my $early = PostgreSQL::Test::Cluster->new('incomplete');
$early->init_from_backup($node, 'b20', has_streaming => 1);
$early->append_conf('postgresql.conf', "lockext.promotion_grace_ms = 0\n");
$early->start;
$node->wait_for_catchup($late);
$node->wait_for_catchup($early);
is($late->safe_psql('postgres', "SELECT mode || '|' || table_complete FROM lockext_replication()"), 'off|false',
	'standby from a backup taken with replication off: incomplete');
is($late->safe_psql('postgres', "SELECT count(*) FROM lockext_leases WHERE key = 'm:a'"), '0',
	'and the lease granted while off is unknown to it');

# promoting an incomplete standby with promotion_grace_ms = 0: the full grace
cmp_ok($early->safe_psql('postgres', 'SELECT promotion_grace_ms FROM lockext_replication()'), '>=', $ttl,
	'incomplete standby: lockext_replication() says a promotion would apply the full grace');
my ($mid) = split /\|/, $m;
is(sql("SELECT renew('m:a', '$mid')"), 't', 'renewed on the primary while replication is off');
$off = -s $early->logfile;
$early->promote;
is($early->safe_psql('postgres', "SELECT try_lock('p:new', $ttl) IS NULL"), 't',
	'incomplete standby promoted with promotion_grace_ms = 0: a new key is refused');
($active, $reason, $left) = split /\|/,
  $early->safe_psql('postgres', "SELECT active || '|' || reason || '|' || remaining_ms FROM lockext_grace()");
is("$active|$reason", 'true|promotion', 'incomplete standby promoted: the promotion grace applies');
cmp_ok($left, '>', $ttl - 2000, "incomplete standby promoted: the full grace ($left ms left)");
ok($early->log_contains(qr/lockext: the promotion applies the full grace period of \d+ ms, not lockext.promotion_grace_ms/, $off),
	'incomplete standby promoted: the log says the full grace applies');
$early->stop;

# the primary switches replication on: MODE + snapshot make the standby complete
is(sql("SELECT renew('m:a', '$mid')"), 't', 'renewed again on the primary while replication is off');
# more leases than one snapshot record holds (512), so the snapshot is several records
is(sql("SELECT count(try_lock('bulk:' || i, $ttl)) FROM generate_series(1, 1200) i"), '1200',
	'1,200 more leases granted while replication is off');
set_mode('async');
ok($late->poll_query_until('postgres', "SELECT mode = 'async' AND table_complete FROM lockext_replication()"),
	'after the switch to async the standby becomes complete');
is($late->safe_psql('postgres', "SELECT count(*) FROM lockext_leases WHERE key LIKE 'bulk:%'"), '1200',
	'a snapshot of 1,200 leases (several records) reaches the standby whole');
is($late->safe_psql('postgres', "SELECT lock_id || '|' || fence FROM lockext_leases WHERE key = 'm:a'"), $m,
	'and shows the lease granted while replication was off');
set_mode('off');
ok($late->poll_query_until('postgres', "SELECT mode = 'off' AND NOT table_complete FROM lockext_replication()"),
	'replication off again: the standby is incomplete again');
$late->stop;

### 8. a standby without lockext preloaded stops at once with a clear message
set_mode('async');
$node->backup('b20n');
my $bare = PostgreSQL::Test::Cluster->new('bare');
$bare->init_from_backup($node, 'b20n', has_streaming => 1);
$bare->append_conf('postgresql.conf', "shared_preload_libraries = ''\n");
$bare->start(fail_ok => 1);    # no lease activity on the primary: the worker's records alone
my $found = 0;
for (1 .. 100)
{
	$found = $bare->log_contains(qr/resource manager with ID 197 not registered/);
	last if $found;
	sleep(0.2);
}
ok($found, 'standby without lockext: "resource manager with ID 197 not registered"');
my $stopped = 0;
for (1 .. 100)
{
	$stopped = !-e $bare->data_dir . '/postmaster.pid';
	last if $stopped;
	sleep(0.2);
}
ok($stopped, 'standby without lockext: the server stops');
$bare->_update_pid(-1);

$node->stop;
done_testing();
