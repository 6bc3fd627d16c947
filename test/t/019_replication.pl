# Replicated leases (spec §7): a primary with two hot standbys, in async and
# in sync mode.  The standbys mirror the lease table (same lock_id and fence)
# and refuse changes with 25006; pg_walinspect shows lockext's records; an
# idle primary stops writing them.  Promotion keeps every replicated lease
# (renew and release work on the new primary, fences rise), with
# lockext.promotion_grace_ms = 0 (no grace) and -1 (the full grace).  The old
# primary, isolated from its promoted synchronous standby, cannot complete a
# grant or a renewal (57014, whatever synchronous_commit; the lease is
# removed there).  pg_rewind turns it into a standby of the new primary,
# which replays lockext's records.
use strict;
use warnings;
use File::Copy;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

my $ttl = 10000;    # nothing here waits for a TTL or a grace to run out
my $conf = "shared_preload_libraries = 'lockext'\nlockext.max_ttl_ms = $ttl\n"
  . "lockext.replication = async\nmax_connections = 30\nwal_keep_size = '128MB'\nautovacuum = off\n";
my $primary = PostgreSQL::Test::Cluster->new('p19');
$primary->init(allows_streaming => 1);    # also wal_log_hints = on (pg_rewind)
$primary->append_conf('postgresql.conf', $conf);
$primary->start;
$primary->safe_psql('postgres', 'CREATE EXTENSION lockext; CREATE EXTENSION pg_walinspect');
my $wal_start = $primary->lsn('insert');

$primary->backup('b19');
my $s1 = PostgreSQL::Test::Cluster->new('s1');
$s1->init_from_backup($primary, 'b19', has_streaming => 1);
$s1->append_conf('postgresql.conf', "lockext.promotion_grace_ms = 0\n");
$s1->start;
my $s2 = PostgreSQL::Test::Cluster->new('s2');
$s2->init_from_backup($primary, 'b19', has_streaming => 1);
$s2->start;

# every record the primary inserted so far, replayed by the standby
sub caught_up
{
	my ($standby) = @_;
	$primary->wait_for_catchup($standby, 'replay', $primary->lsn('insert'));
}

sub lease_row
{
	my ($node, $key) = @_;
	return $node->safe_psql('postgres',
		"SELECT lock_id || '|' || fence || '|' || ttl_ms FROM lockext_leases WHERE key = '$key'");
}

sub grace_row
{
	my ($node, $cols) = @_;
	return $node->safe_psql('postgres', "SELECT $cols FROM lockext_grace()");
}

# the highest fence the old primary ever granted
my $old_max = 0;

sub grant_on_primary
{
	my ($key) = @_;
	my ($id, $fence) = split /\|/,
	  $primary->safe_psql('postgres', "SELECT lock_id, fence FROM try_lock('$key', $ttl)");
	die "primary did not grant $key" unless defined $fence && $fence ne '';
	$old_max = $fence if $fence > $old_max;
	return ($id, $fence);
}

# a standby's copy of primary-side leases, in both modes
sub mirror_checks
{
	my ($mode) = @_;
	my $records0 = $primary->safe_psql('postgres', 'SELECT wal_records FROM lockext_stats');
	my $replayed0 = $s1->safe_psql('postgres', 'SELECT replayed FROM lockext_stats');
	my ($id, $fence) = grant_on_primary("$mode:1");
	caught_up($s1);
	cmp_ok($primary->safe_psql('postgres', 'SELECT wal_records FROM lockext_stats'), '>', $records0,
		"$mode: lockext_stats.wal_records counts the grant on the primary");
	cmp_ok($s1->safe_psql('postgres', 'SELECT replayed FROM lockext_stats'), '>', $replayed0,
		"$mode: lockext_stats.replayed counts it on the standby");
	is($s1->safe_psql('postgres', 'SELECT leases FROM lockext_stats'),
		$s1->safe_psql('postgres', 'SELECT count(*) FROM lockext_leases'),
		"$mode: the standby's lockext_stats.leases counts the replicated leases");
	is(lease_row($s1, "$mode:1"), "$id|$fence|$ttl",
		"$mode: the lease granted on the primary is on the standby with the same lock_id, fence, ttl");
	is($primary->safe_psql('postgres', "SELECT renew('$mode:1', '$id')"), 't', "$mode: renewed on the primary");
	caught_up($s1);
	is($s1->safe_psql('postgres', "SELECT renewals || '|' || fence FROM lockext_leases WHERE key = '$mode:1'"),
		"1|$fence", "$mode: the renewal is replayed (renewals = 1, fence unchanged)");
	is($primary->safe_psql('postgres', "SELECT release('$mode:1', '$id')"), 't', "$mode: released on the primary");
	caught_up($s1);
	is($s1->safe_psql('postgres', "SELECT count(*) FROM lockext_leases WHERE key = '$mode:1'"), '0',
		"$mode: the release removes it on the standby");
	# the standby still refuses every change
	my ($sid, $sfence) = grant_on_primary("$mode:2");
	caught_up($s1);
	for my $call ("try_lock('$mode:x', 1000)", "renew('$mode:2', '$sid')", "release('$mode:2', '$sid')")
	{
		my ($rc, $out, $err) = $s1->psql('postgres', "\\set VERBOSITY verbose\nSELECT $call");
		like($err, qr/ERROR:  25006:/, "$mode: standby: $call fails with 25006");
	}
	is(lease_row($s1, "$mode:2"), "$sid|$sfence|$ttl", "$mode: the standby's refused release left the lease");
	$primary->safe_psql('postgres', "SELECT release('$mode:2', '$sid')");
}

### 1. async
ok($s1->poll_query_until('postgres', 'SELECT table_complete FROM lockext_replication()'),
	'async: the standby\'s table becomes complete (a snapshot after the backup\'s checkpoint)');
is($s1->safe_psql('postgres', "SELECT mode || '|' || table_complete || '|' || promotion_grace_ms FROM lockext_replication()"),
	'async|true|0', 'async: the standby shows the primary\'s mode, a complete table, promotion grace 0');
is(grace_row($s1, 'active'), 'f', 'async: no grace on the standby');
mirror_checks('async');

### 1. sync (synchronous_standby_names names s1)
$primary->append_conf('postgresql.conf',
	"synchronous_standby_names = 's1'\nlockext.replication = sync\n");
$primary->reload;
ok($primary->poll_query_until('postgres', "SELECT mode = 'sync' FROM lockext_replication()"),
	'sync: the worker publishes the new mode');
ok($primary->poll_query_until('postgres',
	"SELECT sync_state = 'sync' FROM pg_stat_replication WHERE application_name = 's1'"),
	'sync: s1 is the synchronous standby');
ok($s1->poll_query_until('postgres', "SELECT mode = 'sync' AND table_complete FROM lockext_replication()"),
	'sync: the standby replays the MODE record and a snapshot');
mirror_checks('sync');

### 7. pg_walinspect shows lockext's records
my $ckpt_lsn = $primary->safe_psql('postgres', 'SELECT pg_current_wal_insert_lsn()');
$primary->safe_psql('postgres', 'CHECKPOINT');
sleep(2);    # the worker logs a snapshot within ~1 s of the redo pointer moving
my $wal_end = $primary->safe_psql('postgres', 'SELECT pg_current_wal_flush_lsn()');
my $records = $primary->safe_psql('postgres',
	"SELECT record_type || ' ' || description FROM pg_get_wal_records_info('$wal_start', '$wal_end')"
	  . " WHERE resource_manager = 'lockext' ORDER BY start_lsn");
like($records, qr/^GRANT .*key "async:1" lock_id [0-9a-f-]{36} fence \d+/m,
	'walinspect: a GRANT record names its key, lock_id and fence');
like($records, qr/^RENEW .*key "async:1"/m, 'walinspect: a RENEW record');
like($records, qr/^RELEASE .*key "sync:1" lock_id/m, 'walinspect: a RELEASE record');
like($records, qr/^MODE .*mode sync/m, 'walinspect: the MODE record of the switch to sync');
like($records, qr/^SNAPSHOT .*mode sync .* last/m, 'walinspect: SNAPSHOT records');
like($primary->safe_psql('postgres',
	"SELECT string_agg(record_type || ' ' || description, E'\\n') FROM pg_get_wal_records_info('$ckpt_lsn', '$wal_end')"
	  . " WHERE resource_manager = 'lockext'"),
	qr/^SNAPSHOT .*snapshot \d+ part 0 first last leases \d+/m,
	'walinspect: a whole SNAPSHOT logged after the checkpoint moved the redo pointer');

### 9. an idle primary with replication on does not keep writing WAL
# (insert positions: the flush position may still lag behind earlier records)
my $idle_start = $primary->lsn('insert');
sleep(3.5);
my $idle_end = $primary->lsn('insert');
$primary->poll_query_until('postgres', "SELECT pg_current_wal_flush_lsn() >= '$idle_end'")
  or die 'WAL not flushed';
my $idle_bytes = $primary->safe_psql('postgres', "SELECT '$idle_end'::pg_lsn - '$idle_start'::pg_lsn");
my ($idle_lockext, $idle_list) = $idle_bytes > 0
  ? split(/\|/, $primary->safe_psql('postgres',
	"SELECT count(*) FILTER (WHERE resource_manager = 'lockext') || '|' ||"
	  . " string_agg(resource_manager || '/' || record_type, ' ') FROM pg_get_wal_records_info('$idle_start', '$idle_end')"))
  : (0, 'none');
is($idle_lockext, 0, "idle primary: no lockext record in 3.5 s (records: $idle_list)");
cmp_ok($idle_bytes, '<', 512, "idle primary: WAL grew by $idle_bytes bytes only");

### 2. promotion with promotion_grace_ms = 0 keeps every replicated lease
my ($kid, $kfence) = grant_on_primary('f:keep');
my ($s2id, $s2fence) = grant_on_primary('f:s2');
my ($rid, $rfence) = grant_on_primary('iso:r');
my ($wid, $wfence) = grant_on_primary('iso:w');
caught_up($s1);
caught_up($s2);
is(lease_row($s1, 'f:keep'), "$kid|$kfence|$ttl", 'before promotion: s1 has the lease');
my $off = -s $s1->logfile;
$s1->promote;
is($s1->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 'f', 's1 promoted');
is(lease_row($s1, 'f:keep'), "$kid|$kfence|$ttl",
	'promotion keeps the lease with its key, lock_id and fence');
isnt($s1->safe_psql('postgres', "SELECT lock_id FROM try_lock('new:1', $ttl)"), '',
	'promotion_grace_ms = 0, complete table: a new key is granted at once');
is(grace_row($s1, "active::text || '|' || reason"), 'false|none', 'and no grace is in force');
ok($s1->log_contains(qr/lockext: promoted with every replicated lease kept and no grace period/, $off),
	'the log says every lease was kept and no grace applies');
my $new_fence = $s1->safe_psql('postgres', "SELECT fence FROM lockext_leases WHERE key = 'new:1'");
cmp_ok($new_fence, '>', $old_max, "new primary's fence $new_fence above every old primary fence ($old_max)");
is($s1->safe_psql('postgres', "SELECT renew('f:keep', '$kid')"), 't', 'the holder renews on the new primary');
is($s1->safe_psql('postgres', "SELECT renewals || '|' || fence FROM lockext_leases WHERE key = 'f:keep'"),
	"1|$kfence", 'the renewed lease keeps its fence');
is($s1->safe_psql('postgres', "SELECT try_lock('f:keep', 1000) IS NULL"), 't',
	'the kept key is still held (contention for others)');
is($s1->safe_psql('postgres', "SELECT release('f:keep', '$kid')"), 't', 'the holder releases on the new primary');
is($s1->safe_psql('postgres', "SELECT count(*) FROM lockext_leases WHERE key = 'f:keep'"), '0',
	'and the lease is gone');

### 2. promotion with promotion_grace_ms = -1 (default): the full grace for new keys
$s2->promote;
is($s2->safe_psql('postgres', "SELECT try_lock('new:2', 1000) IS NULL"), 't',
	'promotion_grace_ms = -1: a new key is refused after promotion');
my ($active, $reason, $left) = split /\|/, grace_row($s2, "active || '|' || reason || '|' || remaining_ms");
is("$active|$reason", 'true|promotion', 'the grace reason is promotion');
cmp_ok($left, '>', $ttl - 3000, "the grace is the full one ($left ms left of $ttl)");
is(lease_row($s2, 'f:s2'), "$s2id|$s2fence|$ttl", 'the replicated lease is kept on s2');
is($s2->safe_psql('postgres', "SELECT renew('f:s2', '$s2id')"), 't', 'and its holder renews it during the grace');

### 4. the isolated old primary cannot complete a grant or a renewal
ok($primary->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM pg_stat_replication WHERE application_name = 's1'"),
	'old primary: s1 no longer streams from it');
is($primary->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 'f', 'the old primary still runs as a primary');

sub sync_failed { return $primary->safe_psql('postgres', 'SELECT sync_failed FROM lockext_stats'); }

my $failed = sync_failed();
{
	is(lease_row($primary, 'iso:r'), "$rid|$rfence|$ttl", 'isolated old primary: iso:r is still held there');
	my $before = $primary->safe_psql('postgres', "SELECT remaining_ms FROM lockext_leases WHERE key = 'iso:r'");
	my ($rc, $out, $err) = $primary->psql('postgres',
		"\\set VERBOSITY verbose\nSET statement_timeout = '2s';\nSELECT renew('iso:r', '$rid')");
	like($err, qr/ERROR:  57014: lockext renewal of "iso:r" was not confirmed by a synchronous standby/,
		'isolated old primary: a renewal fails with 57014');
	# taken back, not removed: its holder (told of an error) still holds it until its old end
	my $after = $primary->safe_psql('postgres', "SELECT remaining_ms FROM lockext_leases WHERE key = 'iso:r'");
	ok(($after ne '' && $after <= $before - 1500) || ($after eq '' && $before < 2500),
		"isolated old primary: the unconfirmed renewal was taken back, the lease ends as before ($before ms left before, $after after the 2 s wait)");
	is(sync_failed(), ++$failed, 'isolated old primary: the renewal counts in sync_failed');
}

{
	# a waiter handed the key by a release: its grant is not confirmed either
	my $bg = $primary->background_psql('postgres', on_error_stop => 0);
	$bg->query_safe('\set VERBOSITY verbose');
	my $pid = $bg->query_safe('SELECT pg_backend_pid()');
	$bg->query_safe("SET statement_timeout = '4s'");
	$bg->query_until(qr/started/, "\\echo started\nSELECT lock_id FROM try_lock('iso:w', 1000, 10000);\n");
	ok($primary->poll_query_until('postgres',
		"SELECT state = 'active' AND query LIKE '%iso:w%' FROM pg_stat_activity WHERE pid = $pid"),
		'isolated old primary: a try_lock with wait_ms waits for the held key');
	my $t0 = time;
	is($primary->safe_psql('postgres', "SET statement_timeout = '2s'; SELECT release('iso:w', '$wid')"), 't',
		'isolated old primary: the holder releases (a removal is not waited for)');
	cmp_ok(time - $t0, '<', 1.5, 'isolated old primary: the release did not wait for the standby');
	ok($primary->poll_query_until('postgres',
		"SELECT wait_event = 'SyncRep' FROM pg_stat_activity WHERE pid = $pid"),
		'isolated old primary: the waiter handed the key waits for the synchronous standby');
	$bg->query('SELECT 1');
	like($bg->{stderr}, qr/ERROR:  57014: lockext grant of "iso:w" was not confirmed by a synchronous standby/,
		'isolated old primary: the handed-off grant fails with 57014');
	$bg->quit;
	is($primary->safe_psql('postgres', "SELECT count(*) FROM lockext_leases WHERE key = 'iso:w'"), '0',
		'isolated old primary: the handed-off grant is not in its table');
	$failed = sync_failed();
}

{
	# try_lock_all: every key or none, and here none
	my ($rc, $out, $err) = $primary->psql('postgres',
		"\\set VERBOSITY verbose\nSET statement_timeout = '2s';\nSELECT * FROM try_lock_all(ARRAY['iso:all1', 'iso:all2'], 1000)");
	like($err, qr/ERROR:  57014: lockext grant of "iso:all1" was not confirmed by a synchronous standby/,
		'isolated old primary: try_lock_all fails with 57014');
	is($primary->safe_psql('postgres', "SELECT count(*) FROM lockext_leases WHERE key LIKE 'iso:all%'"), '0',
		'isolated old primary: try_lock_all left none of its leases');
	cmp_ok(sync_failed(), '>', $failed, 'isolated old primary: try_lock_all counts in sync_failed');
	$failed = sync_failed();
}

for my $case (['', 'iso'], ['SET synchronous_commit = local;', 'iso:local'],
	['SET synchronous_commit = off;', 'iso:off'])
{
	my ($set, $key) = @$case;
	my $t0 = time;
	my ($rc, $out, $err) = $primary->psql('postgres',
		"\\set VERBOSITY verbose\n$set SET statement_timeout = '2s';\nSELECT * FROM try_lock('$key', 1000)");
	my $took = time - $t0;
	isnt($rc, 0, "isolated old primary ($key): try_lock fails");
	like($err, qr/ERROR:  57014: lockext grant of "$key" was not confirmed by a synchronous standby/,
		"isolated old primary ($key): 57014, not confirmed");
	cmp_ok($took, '>=', 1.9, "isolated old primary ($key): it waited for the standby (${took}s)");
	is($primary->safe_psql('postgres', "SELECT count(*) FROM lockext_leases WHERE key = '$key'"), '0',
		"isolated old primary ($key): the lease is not in its table");
	is(sync_failed(), ++$failed, "isolated old primary ($key): lockext_stats.sync_failed went up");
}

{
	# pg_cancel_backend ends the wait the same way
	my $bg = $primary->background_psql('postgres', on_error_stop => 0);
	$bg->query_safe('\set VERBOSITY verbose');
	my $pid = $bg->query_safe('SELECT pg_backend_pid()');
	$bg->query_until(qr/started/, "\\echo started\nSELECT * FROM try_lock('iso:cancel', 1000);\n");
	ok($primary->poll_query_until('postgres',
		"SELECT wait_event = 'SyncRep' FROM pg_stat_activity WHERE pid = $pid"),
		'isolated old primary: try_lock waits for the synchronous standby');
	$primary->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
	$bg->query('SELECT 1');
	like($bg->{stderr}, qr/ERROR:  57014: lockext grant of "iso:cancel" was not confirmed by a synchronous standby/,
		'isolated old primary: pg_cancel_backend makes the waiting try_lock fail with 57014');
	$bg->quit;
	is($primary->safe_psql('postgres', "SELECT count(*) FROM lockext_leases WHERE key = 'iso:cancel'"), '0',
		'isolated old primary: the cancelled grant is not in its table');
}

### 6. pg_rewind the old primary and follow the new one
$s1->safe_psql('postgres', 'CHECKPOINT');    # the control file shows the new timeline
my ($w0id, $w0fence) = split /\|/, $s1->safe_psql('postgres', "SELECT lock_id, fence FROM try_lock('rw:0', $ttl)");
$primary->stop;
my $saved_conf = PostgreSQL::Test::Utils::tempdir() . '/postgresql.conf';
copy($primary->data_dir . '/postgresql.conf', $saved_conf) or die "copy: $!";
command_ok(['pg_rewind', '--target-pgdata', $primary->data_dir, '--source-server', $s1->connstr('postgres')],
	'pg_rewind of the old primary against the new one');
copy($saved_conf, $primary->data_dir . '/postgresql.conf') or die "copy: $!";
$primary->enable_streaming($s1);
$primary->start;
my ($w1id, $w1fence) = split /\|/, $s1->safe_psql('postgres', "SELECT lock_id, fence FROM try_lock('rw:1', $ttl)");
# (not wait_for_catchup: it may wait for a walreceiver status report longer than the TTL)
$primary->poll_query_until('postgres', "SELECT count(*) = 1 FROM lockext_leases WHERE key = 'rw:1'")
  or diag('the rewound standby did not show rw:1 within the timeout');
is($primary->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the rewound old primary is a standby');
is(lease_row($primary, 'rw:0'), "$w0id|$w0fence|$ttl",
	'rewound standby: a lease granted on the new primary before the rewind');
is(lease_row($primary, 'rw:1'), "$w1id|$w1fence|$ttl",
	'rewound standby: a lease granted on the new primary while it streams');
$s1->safe_psql('postgres', 'CHECKPOINT');
ok($primary->poll_query_until('postgres', 'SELECT table_complete FROM lockext_replication()'),
	'rewound standby: complete after the new primary\'s next snapshot');

$primary->stop;
$s1->stop;
$s2->stop;
done_testing();
