# Wall-clock steps (testing.md T2, T11; spec §3.8), with the server under
# libfaketime (DONT_FAKE_MONOTONIC=1: only the wall clock moves; the
# monotonic and boot-time clocks run true, as they do on a real host).  A
# running lease is measured on CLOCK_MONOTONIC, so a +2 h step does not
# expire it.  Across a restart the downtime is measured on CLOCK_BOOTTIME
# within one boot: a wall clock that stepped forward while the server was
# down never frees a key early, one that stepped back never lengthens a
# lease, and the real downtime is still subtracted.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

my $libfaketime = '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1';
plan skip_all => "libfaketime not installed ($libfaketime)" unless -e $libfaketime;

my $dir = PostgreSQL::Test::Utils::tempdir;
my $clock = "$dir/faketime";
sub set_clock { open(my $f, '>', $clock) or die; print $f "$_[0]\n"; close $f; }
set_clock('+0');

my $node = PostgreSQL::Test::Cluster->new('wallclock');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'lockext'\nlockext.max_ttl_ms = '1h'\n");

# the server (only) runs under libfaketime
sub start_faked
{
	local $ENV{LD_PRELOAD} = $libfaketime;
	local $ENV{FAKETIME_TIMESTAMP_FILE} = $clock;
	local $ENV{FAKETIME_NO_CACHE} = '1';
	local $ENV{DONT_FAKE_MONOTONIC} = '1';
	$node->start;
}
sub sql { return $node->safe_psql('postgres', $_[0]); }

start_faked();
sql('CREATE EXTENSION lockext');

### T11: a +2 h wall-clock step while running does not expire a 10-minute lease
my $id = sql("SELECT lock_id FROM try_lock('w:a', 600000)");
my $wall_before = sql("SELECT extract(epoch FROM now())");
set_clock('+2h');
my $wall_after = sql("SELECT extract(epoch FROM now())");
cmp_ok($wall_after - $wall_before, '>=', 7000, 'the server\'s wall clock jumped 2 hours');
is(sql("SELECT try_lock('w:a', 1000) IS NULL"), 't', 'lease still held after the jump');
cmp_ok(sql("SELECT remaining_ms FROM lockext_leases WHERE key = 'w:a'"), '>', 590000,
	'remaining_ms unaffected by the jump');
is(sql("SELECT renew('w:a', '$id')"), 't', 'the holder still renews');

### T2: downtime measured on the boot clock, not the wall clock
set_clock('+0');
my $before = sql("SELECT remaining_ms FROM lockext_leases WHERE key = 'w:a'");
$node->stop('fast');
set_clock('+300s');    # the wall clock steps 5 minutes forward while the server is down
start_faked();
my $after = sql("SELECT remaining_ms FROM lockext_leases WHERE key = 'w:a'");
cmp_ok($after, '>', $before - 30000,
	"forward step while down: the lease is not shortened by the step ($before -> $after)");
cmp_ok($after, '<', $before, 'the real downtime is still subtracted');

$node->stop('fast');
set_clock('-1h');      # the clock went backwards while the server was down
start_faked();
my $after_back = sql("SELECT remaining_ms FROM lockext_leases WHERE key = 'w:a'");
cmp_ok($after_back, '<', $after, "backward step never lengthens a lease ($after -> $after_back)");
cmp_ok($after_back, '>', $after - 30000, 'and does not shorten it either');

$node->stop('fast');
set_clock('+1h');      # longer than the remaining lease: it must still be held
start_faked();
is(sql("SELECT count(*) FROM lockext_leases WHERE key = 'w:a'"), '1',
	'a +1 h step while down does not expire a lease with 10 minutes left');
is(sql("SELECT try_lock('w:a', 1000) IS NULL"), 't', 'and its key is not granted to anyone else');
is(sql("SELECT renew('w:a', '$id')"), 't', 'the holder still renews it');

### real downtime longer than a lease: that lease is gone, its key free
set_clock('+0');
sql("SELECT lock_id FROM try_lock('w:short', 2000)");
$node->stop('fast');
sleep(3);
start_faked();
is(sql("SELECT count(*) FROM lockext_leases WHERE key = 'w:short'"), '0',
	'a lease whose time ran out during the (real) downtime is not restored');
is(sql("SELECT try_lock('w:short', 1000) IS NOT NULL"), 't', 'and its key is free (no grace: clean restart)');

$node->stop;
done_testing();
