# Promotion sequences that must keep the grace (issue 9 review, spec §3.8):
#  1. a standby that crash-restarted during recovery, then is promoted and
#     restarted cleanly at once: the promotion grace still applies (the
#     worker survives crash reinitialisations; a grace owed is durable);
#  2. a standby started as a primary without standby.signal ("promotion by
#     restart", same timeline): grace, and fences refused until an operator
#     names a floor, because they could repeat the old primary's.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $conf = "shared_preload_libraries = 'lockext'\nlockext.recovery_grace_ms = 60000\n"
  . "restart_after_crash = on\nmax_connections = 30\n";
my $primary = PostgreSQL::Test::Cluster->new('p16');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', $conf);
$primary->start;
$primary->safe_psql('postgres', 'CREATE EXTENSION lockext');
$primary->safe_psql('postgres', "SELECT lock_id FROM try_lock('k', 60000)");
$primary->backup('b16');

sub grace_of { return $_[0]->safe_psql('postgres', "SELECT active::text || '|' || reason FROM lockext_grace()"); }

### 1. crash restart during recovery, promotion, clean restart before any lease call
my $s1 = PostgreSQL::Test::Cluster->new('s16a');
$s1->init_from_backup($primary, 'b16', has_streaming => 1);
$s1->start;
$primary->wait_for_catchup($s1);
my $bg = $s1->background_psql('postgres', on_error_stop => 0);
my $pid = $bg->query_safe('SELECT pg_backend_pid()');
my $off = -s $s1->logfile;
kill 'KILL', $pid;
$s1->wait_for_log(qr/all server processes terminated; reinitializing/, $off);
$s1->wait_for_log(qr/database system is ready to accept read-only connections/, $off);
eval { $bg->quit };
$s1->promote;
$s1->restart;    # fast, before any lease call
is(grace_of($s1), 'true|promotion', '1: crash in recovery, promotion, restart: the promotion grace applies');
is($s1->safe_psql('postgres', "SELECT try_lock('k', 1000) IS NULL"), 't',
	'1: the old primary\'s key is not granted');
$s1->stop;

### 2. a standby started as a primary without standby.signal
my $s2 = PostgreSQL::Test::Cluster->new('s16b');
$s2->init_from_backup($primary, 'b16', has_streaming => 1);
$s2->start;
$primary->wait_for_catchup($s2);
$s2->stop;
unlink($s2->data_dir . '/standby.signal') or die "no standby.signal: $!";
$off = -s $s2->logfile;
$s2->start;
ok($s2->log_contains(qr/ran as a standby on timeline 1 and now starts as a primary on the same timeline/, $off),
	'2: the log says what happened');
is(grace_of($s2), 'true|promotion', '2: the promotion grace applies');
my ($rc, $out, $err) = $s2->psql('postgres',
	"SELECT lockext_grace_end(); SELECT * FROM try_lock('k2', 1000)");
like($err, qr/fence state is lost/, '2: no fence is handed out on the old primary\'s timeline');
my $old_max = $primary->safe_psql('postgres', "SELECT max(fence) FROM try_lock('k3', 1000)");
$s2->safe_psql('postgres', "SELECT lockext_fence_resume($old_max)");
cmp_ok($s2->safe_psql('postgres', "SELECT fence FROM try_lock('k2', 1000)"), '>', $old_max,
	'2: after the operator names the old primary\'s highest fence, fences continue above it');

$s2->stop;
$primary->stop;
done_testing();
