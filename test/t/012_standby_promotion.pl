# Standby and failover (spec §3.8, testing.md T7-T8).  On a streaming
# standby try_lock, renew, release and force_release fail with 25006; the
# views still work.  After promotion grants report contention for the grace
# period, then resume with fences above every fence the old primary
# granted, also while the old primary still runs (split brain): fences
# carry the timeline, which promotion raises.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

my $conf = "shared_preload_libraries = 'lockext'\nlockext.recovery_grace_ms = 4000\n"
  . "max_connections = 30\n";
my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', $conf);
$primary->start;
$primary->safe_psql('postgres', 'CREATE EXTENSION lockext');
my ($id, $fence) = split /\|/,
  $primary->safe_psql('postgres', "SELECT lock_id, fence FROM try_lock('p:a', 60000)");

$primary->backup('b1');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b1', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);

### T7: the standby refuses every change, with 25006
for my $call ("try_lock('s:k', 1000)", "renew('p:a', '$id')", "renew('p:a', '$id', 1000)",
	"release('p:a', '$id')", "lockext_force_release('p:a')")
{
	my ($rc, $out, $err) = $standby->psql('postgres',
		"\\set VERBOSITY verbose\nSELECT $call");
	isnt($rc, 0, "standby: $call fails");
	like($err, qr/ERROR:  25006: cannot execute \w+\(\) during recovery/,
		"standby: $call gives 25006 with a clear message");
}
is($standby->safe_psql('postgres', 'SELECT count(*) FROM lockext_leases'), '0',
	'standby: the view works (and holds nothing)');
is($standby->safe_psql('postgres', 'SELECT active::text FROM lockext_grace()'), 'false',
	'standby: no grace while in recovery');

### the old primary keeps granting; remember its highest fence
my $old_max = $primary->safe_psql('postgres',
	"SELECT max(h.fence) FROM generate_series(1, 5) k, LATERAL try_lock('p:more' || k, 60000) h");
$primary->wait_for_catchup($standby);

### T8: promotion starts a grace period
$standby->promote;
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 'f', 'standby promoted');
is($standby->safe_psql('postgres', "SELECT try_lock('p:a', 1000) IS NULL"), 't',
	'new primary: the old primary\'s key reports contention during grace');
is($standby->safe_psql('postgres', "SELECT try_lock('p:never-used', 1000) IS NULL"), 't',
	'new primary: a never-used key reports contention during grace');
is($standby->safe_psql('postgres', "SELECT active::text || '|' || reason FROM lockext_grace()"),
	'true|promotion', 'new primary: grace reason is promotion');
is($standby->safe_psql('postgres', "SELECT renew('p:a', '$id')"), 'f',
	'new primary: the old holder\'s renew fails (lease lost), it must stop');

### a clean restart of the promoted server during its grace continues the grace
$standby->restart;
is($standby->safe_psql('postgres', "SELECT active::text || '|' || reason FROM lockext_grace()"),
	'true|promotion', 'promoted server restarted during grace: the grace goes on');
is($standby->safe_psql('postgres', "SELECT try_lock('p:a', 1000) IS NULL"), 't',
	'and the old primary\'s key is still refused');
sleep($standby->safe_psql('postgres', 'SELECT remaining_ms FROM lockext_grace()') / 1000.0 + 0.2);

my $new_fence = $standby->safe_psql('postgres',
	"SELECT fence FROM try_lock('p:a', 60000) h WHERE h.lock_id IS NOT NULL");
ok($new_fence ne '', 'new primary: grants resume after grace');
cmp_ok($new_fence, '>', $old_max, "new primary fence $new_fence above old primary's max $old_max");

### split brain: the old primary still runs and grants, always below the new primary
my $old_after = $primary->safe_psql('postgres',
	"SELECT max(h.fence) FROM generate_series(1, 5) k, LATERAL try_lock('p:late' || k, 60000) h");
cmp_ok($old_after, '<', $new_fence,
	"old primary's later fences ($old_after) stay below the new primary's ($new_fence)");
is($standby->safe_psql('postgres', 'SELECT (fence >> 44)::int FROM lockext_leases WHERE key = \'p:a\''),
	$standby->safe_psql('postgres', 'SELECT timeline_id FROM pg_control_checkpoint()'),
	'the fence carries the new timeline');

### the promotion grace starts when recovery ends, not at the first lease call
my $standby2 = PostgreSQL::Test::Cluster->new('standby2');
$standby2->init_from_backup($primary, 'b1', has_streaming => 1);
$standby2->start;
$primary->wait_for_catchup($standby2);
$standby2->promote;
ok($standby2->wait_for_log(qr/lockext: no lease will be granted for \d+ ms \(promotion\)/),
	'the grace is armed at promotion, before any lease call');
sleep(4.3);    # longer than the grace; no lease call meanwhile
is($standby2->safe_psql('postgres', "SELECT active FROM lockext_grace()"), 'f',
	'a server promoted longer ago than the grace has no grace at its first call');
isnt($standby2->safe_psql('postgres', "SELECT lock_id FROM try_lock('p:fresh', 1000)"), '',
	'and grants at once');

$primary->stop;
$standby->stop;
$standby2->stop;
done_testing();
