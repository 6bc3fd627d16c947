# Leases across a clean restart (spec §3.8, testing.md T1): saved at a clean
# shutdown, restored with the downtime subtracted, same lock_id and fence,
# fences above everything granted before; no grace.  With lockext.save =
# off, or an unreadable lease file, nothing is restored and grace applies.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

my $node = PostgreSQL::Test::Cluster->new('restart');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'lockext'\nlockext.recovery_grace_ms = 2000\n");
$node->start;

sub sql { return $node->safe_psql('postgres', $_[0]); }
sub grace { return sql("SELECT active::text || '|' || reason FROM lockext_grace()"); }

sql('CREATE EXTENSION lockext');
is(grace(), 'false|none', 'no grace on the first start of a new cluster');

### clean restart keeps leases
my ($id, $fence) = split /\|/, sql("SELECT lock_id, fence FROM try_lock('r:a', 60000)");
sql("SELECT fence FROM try_lock('r:short', 2000)");
my $max_fence = sql("SELECT max(fence) FROM lockext_leases");
my $before = sql("SELECT remaining_ms FROM lockext_leases WHERE key = 'r:a'");
my $off = -s $node->logfile;
$node->stop('fast');
sleep(2.5);    # r:short expires during the downtime
$node->start;
ok($node->log_contains(qr/lockext: saved 2 live leases/, $off), 'both live leases saved at shutdown');
ok($node->log_contains(qr/restored 1 of 2 saved leases \(1 expired during the downtime\)/, $off),
	'the lease that expired during the downtime is dropped');
is(grace(), 'false|none', 'no grace after a clean restart that restored every lease');
is(sql("SELECT lock_id || '|' || fence FROM lockext_leases WHERE key = 'r:a'"),
	"$id|$fence", 'restored lease keeps its lock_id and fence');
my $after = sql("SELECT remaining_ms FROM lockext_leases WHERE key = 'r:a'");
cmp_ok($after, '<=', $before - 2500, "downtime subtracted ($before ms before, $after ms after)");
cmp_ok($after, '>', $before - 20000, 'and nothing more than the downtime');
is(sql("SELECT count(*) FROM lockext_leases WHERE key = 'r:short'"), '0', 'expired lease not restored');
is(sql("SELECT try_lock('r:a', 1000) IS NULL"), 't', 'restored lease still excludes others');
is(sql("SELECT renew('r:a', '$id')"), 't', 'the holder renews its restored lease');
my $new_fence = sql("SELECT fence FROM try_lock('r:new', 1000)");
cmp_ok($new_fence, '>', $max_fence, "fence after restart ($new_fence) above every fence before ($max_fence)");
is(sql("SELECT release('r:a', '$id')"), 't', 'the holder releases its restored lease');
ok(!-e $node->data_dir . '/pg_lockext/leases', 'lease file removed once loaded');
ok(-e $node->data_dir . '/pg_lockext/running', 'running marker present');

### lockext.save = off: nothing restored, grace applies
sql("SELECT lock_id FROM try_lock('r:b', 60000)");
$node->append_conf('postgresql.conf', "lockext.save = off\n");
$node->reload;
$node->restart;
is(sql("SELECT count(*) FROM lockext_leases"), '0', 'save = off: no lease restored');
is(grace(), 'true|start after a shutdown with lockext.save = off', 'save = off: grace applies');
is(sql("SELECT try_lock('r:never-used', 1000) IS NULL"), 't',
	'during grace even a never-used key reports contention');
is(sql("SELECT refused > 0 FROM lockext_grace()"), 't', 'refusals counted');
sleep(2.1);
is(grace(), 'false|start after a shutdown with lockext.save = off', 'grace over');
is(sql("SELECT try_lock('r:never-used', 1000) IS NOT NULL"), 't', 'grants resume after grace');

### an unreadable lease file: nothing restored, grace applies
$node->append_conf('postgresql.conf', "lockext.save = on\n");
$node->reload;
sql("SELECT lock_id FROM try_lock('r:c', 60000)");
$node->stop('fast');
my $file = $node->data_dir . '/pg_lockext/leases';
ok(-s $file, 'lease file written');
open(my $fh, '+<', $file) or die "open $file: $!";
binmode $fh;
seek($fh, 40, 0);
print $fh "garbage";
close $fh;
$off = -s $node->logfile;
$node->start;
ok($node->log_contains(qr/ignoring unreadable lease file/, $off), 'corruption detected (CRC)');
is(sql("SELECT count(*) FROM lockext_leases"), '0', 'corrupt file: nothing restored');
is(grace(), 'true|start without restoring every saved lease', 'corrupt file: grace applies');

$node->stop;
done_testing();
