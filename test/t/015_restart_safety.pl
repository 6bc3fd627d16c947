# Restart sequences that must fail closed (issue 9, spec §3.8).  Each block
# reproduces a double grant or a fence going backwards that lockext 1.0
# allowed, and checks the safe behaviour:
#  1. a clean restart during an active grace continues the grace;
#  3. a missing or garbled state file after a clean shutdown: fences resume
#     from the copy in the lease file (the log says so); every copy gone:
#     grants fail with 55000 until lockext_fence_resume() names a floor;
#  4. a lease file of any size or content never keeps the server from
#     starting (1.1 GB of garbage: grace, not FATAL);
#  6. lockext_stats takes no partition lock; client_addr follows
#     pg_stat_activity's rule; a failed write of the durable record refuses
#     grants; lowering lockext.max_ttl_ms does not shorten the grace below a
#     TTL already granted; a reload does not end a grace, lockext_grace_end()
#     does.
# (2, the promotion grace, is in 012; 5, wall-clock steps, in 013.)
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

my $node = PostgreSQL::Test::Cluster->new('safety');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'lockext'\nrestart_after_crash = on\n"
	  . "lockext.enable_test_hooks = on\nlockext.max_ttl_ms = '2min'\n"
	  . "listen_addresses = '127.0.0.1'\n");
$node->start;
my $dir = $node->data_dir . '/pg_lockext';

sub sql { return $node->safe_psql('postgres', $_[0]); }
sub grace { return sql("SELECT active::text || '|' || reason FROM lockext_grace()"); }
sub granted { return sql("SELECT try_lock('$_[0]', 1000) IS NOT NULL"); }

# Kills one backend with SIGKILL and waits for the crash restart.
sub crash_backend
{
	my $bg = $node->background_psql('postgres', on_error_stop => 0);
	my $pid = $bg->query_safe('SELECT pg_backend_pid()');
	my $off = -s $node->logfile;
	kill 'KILL', $pid;
	$node->wait_for_log(qr/all server processes terminated; reinitializing/, $off);
	$node->wait_for_log(qr/database system is ready to accept connections/, $off);
	eval { $bg->quit };
}

sql('CREATE EXTENSION lockext; CREATE EXTENSION lockext_test');

### 1. a clean restart does not end an active grace
$node->append_conf('postgresql.conf', "lockext.recovery_grace_ms = 60000\n");
$node->reload;
sql("SELECT lock_id FROM try_lock('s:held', 60000)");
crash_backend();
is(grace(), 'true|crash restart', '1: grace after a backend crash');
$node->restart;    # fast
is(grace(), 'true|crash restart', '1: a fast restart during grace continues it');
is(granted('s:held'), 'f', '1: the key held before the crash is still refused');
cmp_ok(sql('SELECT remaining_ms FROM lockext_grace()'), '>', 50000, '1: with the time it had left');
$node->stop('immediate');
$node->start;
is(sql('SELECT active FROM lockext_grace()'), 't', '1: an immediate stop during grace continues it too');
cmp_ok(sql('SELECT remaining_ms FROM lockext_grace()'), '>', 50000, '1: never shorter than before');

### 6. a reload does not end a grace; lockext_grace_end() does
$node->append_conf('postgresql.conf', "lockext.recovery_grace_ms = 0\n");
$node->reload;
sleep(0.3);
is(sql('SELECT active FROM lockext_grace()'), 't',
	'6: recovery_grace_ms = 0 by reload leaves the grace in force');
is(sql('SELECT lockext_grace_end()'), 't', '6: lockext_grace_end() ends it');
is(sql('SELECT active FROM lockext_grace()'), 'f', '6: no grace after lockext_grace_end()');
is(granted('s:after-end'), 't', '6: grants resume at once');
$node->restart;
is(grace(), 'false|none', '6: an ended grace is not continued by a restart');

### 6. the grace covers the longest TTL granted, even after max_ttl_ms is lowered
$node->append_conf('postgresql.conf', "lockext.recovery_grace_ms = -1\n");
$node->reload;
sql("SELECT lock_id FROM try_lock('s:long', 90000)");
$node->append_conf('postgresql.conf', "lockext.max_ttl_ms = '1s'\n");
$node->reload;
crash_backend();
cmp_ok(sql('SELECT remaining_ms FROM lockext_grace()'), '>', 80000,
	'6: grace covers the 90 s lease although max_ttl_ms is now 1 s');
sql('SELECT lockext_grace_end()');
$node->append_conf('postgresql.conf', "lockext.max_ttl_ms = '2min'\nlockext.recovery_grace_ms = 2000\n");
$node->reload;

### 3. fences after the durable record is lost
my $fence = sql("SELECT fence FROM try_lock('s:f1', 60000)");
$node->stop('fast');
unlink("$dir/state") or die "no state file: $!";
my $off = -s $node->logfile;
$node->start;
ok($node->log_contains(qr/fences resume from the reservation recorded in "pg_lockext\/leases"/, $off),
	'3: a missing state file: the log names the copy fences resume from');
my $f2 = sql("SELECT fence FROM try_lock('s:f2', 1000)");
cmp_ok($f2, '>', $fence, "3: missing state file: fence $f2 above $fence");

$node->stop('fast');
open(my $fh, '+<', "$dir/state") or die;
binmode $fh;
seek($fh, 10, 0);
print $fh "garbage!";
close $fh;
$node->start;
my $f3 = sql("SELECT fence FROM try_lock('s:f3', 1000)");
cmp_ok($f3, '>', $f2, "3: garbled state file: fence $f3 above $f2");

# every copy gone: the state file, the marker (at a crash) or the lease file
$node->stop('immediate');
unlink("$dir/state", "$dir/running");
$off = -s $node->logfile;
$node->start;
ok($node->log_contains(qr/the fence state is lost/, $off), '3: every copy lost: the log says so');
my ($rc, $out, $err) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT lockext_grace_end(); SELECT * FROM try_lock('s:f4', 1000)");
like($err, qr/ERROR:  55000: lockext cannot grant: its fence state is lost/,
	'3: grants fail with 55000, not a fence that may repeat one');
like($err, qr/lockext_fence_resume/, '3: the error names the fix');
cmp_ok(sql("SELECT lockext_fence_resume($f3)"), '>=', $f3, '3: lockext_fence_resume() names a floor');
my $f4 = sql("SELECT fence FROM try_lock('s:f4', 1000)");
cmp_ok($f4, '>', $f3, "3: after the floor, fences continue above it ($f4 > $f3)");
$node->restart;
my $f5 = sql("SELECT fence FROM try_lock('s:f5', 1000)");
cmp_ok($f5, '>', $f4, '3: and stay above it across a restart');

### 4. a lease file of any size or content never keeps the server from starting
sql("SELECT lock_id FROM try_lock('s:big', 60000)");
$node->stop('fast');
truncate("$dir/leases", 1100 * 1024 * 1024) or die "truncate: $!";
$off = -s $node->logfile;
my $t0 = time;
$node->start;
ok($node->log_contains(qr/ignoring unreadable lease file "pg_lockext\/leases": checksum mismatch/, $off),
	'4: a 1.1 GB lease file is read as a stream and rejected by its checksum');
is(grace(), 'true|start without restoring every saved lease', '4: and the start is treated as a loss (grace)');
note(sprintf('start with a 1.1 GB lease file took %.1f s', time - $t0));
sql('SELECT lockext_grace_end()');

for my $content ("", "x", "\0" x 4096, "LXLS" . ("\xff" x 300))
{
	$node->stop('fast');
	open(my $g, '>', "$dir/leases") or die;
	binmode $g;
	print $g $content;
	close $g;
	$node->start;
	is(sql('SELECT active FROM lockext_grace()'), 't',
		'4: a lease file of ' . length($content) . ' garbage bytes: the server starts, with grace');
	sql('SELECT lockext_grace_end()');
}

### 6. a durable record that cannot be written refuses grants (fail closed)
$node->stop('fast');
mkdir("$dir/running.tmp") or die;    # the marker cannot be written
$off = -s $node->logfile;
$node->start;
ok($node->log_contains(qr/could not write "pg_lockext\/state" and "pg_lockext\/running"/, $off),
	'6: an unwritable marker is reported');
($rc, $out, $err) = $node->psql('postgres', "SELECT lockext_grace_end(); SELECT * FROM try_lock('s:w', 1000)");
like($err, qr/ERROR:  lockext cannot grant: its fence state is lost/,
	'6: and grants are refused instead of running without a marker');
rmdir("$dir/running.tmp");
sql('SELECT lockext_fence_resume(0)');
is(granted('s:w'), 't', '6: once the directory is fixed and a floor named, grants resume');

### 6. lockext_stats takes no partition lock
# (with nothing left to reclaim: a sweep of expired leases does wait its turn)
sql('SELECT count(lockext_force_release(key)) FROM lockext_leases');
sql('SELECT leases FROM lockext_stats');
my $part = sql("SELECT lockext_test_partition_of('s:stall')");
my $staller = $node->background_psql('postgres', on_error_stop => 0);
$staller->query_until(qr/stalling/, "\\echo stalling\nSELECT lockext_test_stall($part, 3000, false);\n");
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event_type = 'Extension' AND query LIKE '%lockext_test_stall%'")
  or die 'the stall did not start';
my $t = time;
sql('SELECT leases FROM lockext_stats');
my $took = time - $t;
cmp_ok($took, '<', 2, sprintf('6: lockext_stats returns while a partition lock is held (%.2f s)', $took));
$staller->quit;

### 6. client_addr is shown by pg_stat_activity's rule
sql("CREATE ROLE s_alice LOGIN; CREATE ROLE s_bob LOGIN; CREATE ROLE s_stats LOGIN IN ROLE pg_read_all_stats;");
sql('GRANT USAGE ON SCHEMA public TO s_alice, s_bob, s_stats');
my $tcp = 'host=127.0.0.1 port=' . $node->port . ' dbname=postgres';
my $alice_id = $node->safe_psql('postgres', "SELECT lock_id FROM try_lock('s:addr', 60000)",
	connstr => "$tcp user=s_alice");
sub addr_seen
{
	my ($user) = @_;
	return $node->safe_psql('postgres',
		"SELECT (client_addr IS NOT NULL)::text || '|' || (lock_id IS NOT NULL)::text FROM lockext_leases WHERE key = 's:addr'",
		connstr => "$tcp user=$user");
}
is(addr_seen('s_alice'), 'true|true', '6: the holder sees its client_addr and lock_id');
is(addr_seen('s_bob'), 'false|false', '6: another role sees neither');
is(addr_seen('s_stats'), 'true|false', '6: pg_read_all_stats sees client_addr, never the lock_id');

$node->stop;
done_testing();
