# Lifecycle fuzzer (issue 9; spec §3.5, §3.8).  Random, seeded sequences of
# what operators and machines do to a server -- lease traffic from several
# clients, backend SIGKILL, fast / smart / immediate stops, postmaster
# SIGKILL, restarts during an active grace, promotion of a streaming
# standby (old primary stopped, crashed or left running as an idle
# split-brain node), deletion / truncation / scribbling of each file in
# pg_lockext/ while the server is down, wall-clock steps (libfaketime) while
# it is down or running, max_ttl_ms lowered by reload -- checking after every
# step the two promises of a lock service:
#
#  1. no double grant: a key is never granted (or renewed) while another
#     client may still believe it owns it.  A client believes it owns K from
#     a successful try_lock/renew until the SEND time of that call, on this
#     test's CLOCK_MONOTONIC, + ttl, unless it released it (belief ends at
#     the release's send time) or a renew returned false (belief ends when it
#     saw false).  Nothing the server says about time is used.  A grant is a
#     violation when it was SEEN (received) before the other belief ended,
#     so the server certainly granted inside the window.
#  2. fences never go backwards: every fence granted is strictly greater
#     than every fence granted before it, across restarts and promotions.
#
# Also reported (informational, not a failure): leases lost early -- a renew
# returning false while the belief was open and nothing but clean restarts
# with untouched files and no clock step happened since the last success.
#
# Environment:
#   LOCKEXT_FUZZ_SEED         seed (default: random; printed at start and on every failure)
#   LOCKEXT_FUZZ_SECONDS      wall time of the event loop (default 100; the file takes ~10 s more)
#   LOCKEXT_FUZZ_EVENTS       weights, e.g. "traffic=6,promote=0,tamper=50,clock=35"
#                             (tamper and clock: percent chance per down period)
#   LOCKEXT_FUZZ_MAX_TTL_MS   lockext.max_ttl_ms (default 4000)
#   LOCKEXT_FUZZ_GRACE_MS     lockext.recovery_grace_ms (default: -1 or explicit >= max ttl, by seed)
#   LOCKEXT_FUZZ_STOP_AT_FIRST  1 = stop at the first violation (default: collect all)
#   LOCKEXT_FUZZ_LIBFAKETIME  path of libfaketime.so.1
#   LOCKEXT_FUZZ_CONF         extra postgresql.conf lines for every node (e.g. "lockext.save = off")
#   LOCKEXT_FUZZ_RENEW_CLAMP  1 = renew(key, lock_id) may clamp the lease's TTL to a lowered
#                             lockext.max_ttl_ms (the holder then believes only that long)
# The event sequence is a function of the seed; outcomes depend on timing,
# so a rerun with the same seed replays the same events, not always the
# same results.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use File::Path qw(rmtree);
use Time::HiRes qw(clock_gettime CLOCK_MONOTONIC sleep);

my $libfaketime = $ENV{LOCKEXT_FUZZ_LIBFAKETIME}
  // '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1';
plan skip_all => "libfaketime not installed ($libfaketime)" unless -e $libfaketime;

### configuration
my $seed = $ENV{LOCKEXT_FUZZ_SEED} // int(rand(1_000_000_000));
my $seconds = $ENV{LOCKEXT_FUZZ_SECONDS} // 100;
my $max_ttl = $ENV{LOCKEXT_FUZZ_MAX_TTL_MS} // 4000;
my $stop_at_first = $ENV{LOCKEXT_FUZZ_STOP_AT_FIRST} // 0;
srand($seed);
my $grace_ms = $ENV{LOCKEXT_FUZZ_GRACE_MS}
  // (rand() < 0.5 ? -1 : $max_ttl + 250 * int(rand(9)));

my %w = (
	traffic          => 8,
	wait             => 2,
	backend_kill     => 1,
	stop_fast        => 2,
	stop_smart       => 1,
	stop_immediate   => 0.75,
	kill9            => 0.5,
	restart_in_grace => 1.5,     # a clean restart if a grace is active, else traffic
	promote          => 0.5,
	reload_ttl       => 0.5,
	clock_running    => 0.5,
	grace_end        => 0.25,    # operator: lockext_grace_end() (if it exists); ends every belief
	force_release    => 0.25,    # operator: lockext_force_release(key); ends the beliefs in that key
	tamper           => 35,      # percent chance per down period (then up to 2 more files)
	clock            => 50,      # percent chance per down period
);
for my $kv (split /,/, $ENV{LOCKEXT_FUZZ_EVENTS} // '')
{
	my ($k, $v) = split /=/, $kv;
	die "LOCKEXT_FUZZ_EVENTS: unknown event '$k'" unless exists $w{$k};
	$w{$k} = $v;
}
my @events = grep { $w{$_} > 0 } qw(traffic wait backend_kill stop_fast stop_smart
  stop_immediate kill9 restart_in_grace promote reload_ttl clock_running grace_end force_release);
my $wsum = 0;
$wsum += $w{$_} for @events;

my @keys = map { "fz:k$_" } 0 .. 2;
my @clients = map { "c$_" } 0 .. 4;
my @clock_steps = (120, 600, 3600, 7200, 86400, -60, -3600);    # forward steps (boot-time NTP, a resumed VM) are the dangerous ones

my $T0 = clock_gettime(CLOCK_MONOTONIC);
sub mono { return clock_gettime(CLOCK_MONOTONIC); }
sub rel { return sprintf('%.3f', $_[0] - $T0); }

my $banner = "lockext lifecycle fuzz: LOCKEXT_FUZZ_SEED=$seed LOCKEXT_FUZZ_SECONDS=$seconds "
  . "max_ttl_ms=$max_ttl recovery_grace_ms=$grace_ms weights="
  . join(',', map { "$_=$w{$_}" } sort keys %w);
diag($banner);

### state
my @hist;          # {t, step, kind, text, ...}
my $step = 0;
my %hold;          # "$client\0$key" => {id, ttl, send, end, since, fence}
my $max_fence = 0;
my $max_fence_idx = -1;
my (@violations, @lost_early, @failures);
my %stat = (grants => 0, contended => 0, errors => 0, renews => 0, renew_false => 0, releases => 0, below_mark => 0);
my $cur_max_ttl = $max_ttl;
my $done = 0;
my %down;    # what happened during the current down period (for naming causes)

sub event
{
	my (%e) = @_;
	$e{t} = mono();
	$e{step} = $step;
	push @hist, \%e;
	note("[" . rel($e{t}) . "] step $step $e{kind}: $e{text}");
	return $#hist;
}

### nodes: every server runs under libfaketime with its own clock file
my $dir = PostgreSQL::Test::Utils::tempdir;
my $node_seq = 0;
my %meta;          # name => {clock => file, offset => s, logoff => n}
my ($P, $S, $split);    # primary, standby, idle split-brain node
my $conf = "shared_preload_libraries = 'lockext'\nrestart_after_crash = on\n"
  . "lockext.max_ttl_ms = $max_ttl\nlockext.recovery_grace_ms = $grace_ms\n"
  . "lockext.max_locks = 64\nmax_connections = 30\n"
  . (defined $ENV{LOCKEXT_FUZZ_CONF} ? "$ENV{LOCKEXT_FUZZ_CONF}\n" : '');

sub set_clock
{
	my ($n, $offset) = @_;
	my $m = $meta{ $n->name };
	$m->{offset} = $offset;
	open(my $f, '>', $m->{clock}) or die "$m->{clock}: $!";
	print $f ($offset >= 0 ? "+${offset}s\n" : "${offset}s\n");
	close $f;
}

sub register_node
{
	my ($n) = @_;
	$meta{ $n->name } = { clock => "$dir/clock_" . $n->name, offset => 0, logoff => 0 };
	set_clock($n, 0);
}

# Starts a node under libfaketime; a start that fails is a failure of the
# test (spec: files of any content never keep the server from starting).
sub start_node
{
	my ($n) = @_;
	my $off = -s $n->logfile // 0;
	my $ok;
	{
		local $ENV{LD_PRELOAD} = $libfaketime;
		local $ENV{FAKETIME_TIMESTAMP_FILE} = $meta{ $n->name }{clock};
		local $ENV{FAKETIME_NO_CACHE} = '1';
		local $ENV{DONT_FAKE_MONOTONIC} = '1';
		$ok = $n->start(fail_ok => 1);
	}
	return 1 if $ok;
	my $log = slurp_file($n->logfile, $off);
	my @why = grep { /FATAL|PANIC|lockext/ } split /\n/, $log;
	failure("server " . $n->name . " did not start", join("\n", @why[ 0 .. ($#why < 9 ? $#why : 9) ]));
	$done = 1;
	return 0;
}

# Any crash we did not cause, or a FATAL/PANIC from lockext, is a failure.
sub scan_log
{
	my ($n) = @_;
	return unless $n && -e $n->logfile;
	my $m = $meta{ $n->name };
	my $size = -s $n->logfile;
	return if $size <= $m->{logoff};
	my $log = slurp_file($n->logfile, $m->{logoff});
	$m->{logoff} = $size;
	for my $line (split /\n/, $log)
	{
		failure("server " . $n->name . " logged: $line")
		  if $line =~ /terminated by signal (?!9:)\d+|PANIC:|TRAP:|FATAL:.*lockext|lockext.*FATAL/;
	}
}

### SQL as the clients do it: one psql per call, send/receive on our monotonic clock
sub call
{
	my ($sql) = @_;
	my ($out, $err, $to) = ('', '', 0);
	my $send = mono();
	my $rc = $P->psql('postgres', "\\set VERBOSITY verbose\n$sql",
		stdout => \$out, stderr => \$err, on_error_stop => 1,
		timeout => 60, timed_out => \$to);
	my $recv = mono();
	my $state = ($err =~ /ERROR:\s+([0-9A-Z]{5}):/) ? $1 : ($rc ? 'conn' : '');
	$err =~ s/\n.*//s;
	return { send => $send, recv => $recv, ok => (defined $rc && $rc == 0 && !$to),
		out => $out // '', err => $err, state => $state };
}

sub hkey { return "$_[0]\0$_[1]"; }

# Every event since $idx, for the cause of a violation.
sub window { my ($idx) = @_; return grep { $_->{kind} ne 'op' } @hist[ $idx .. $#hist ]; }

sub tainted
{
	my ($idx) = @_;
	return grep { $_->{kind} =~ /^(backend_kill|stop_immediate|kill9|promote|tamper|clock|clock_running|reload_ttl)$/ } window($idx);
}

sub causes_double
{
	my ($idx, $h) = @_;
	my (@tags, @graces, %seen);
	my $tag = sub { push @tags, $_[0] unless $seen{ $_[0] }++; };
	$tag->("the holder's last renew kept its TTL ($h->{ttl} ms) above lockext.max_ttl_ms ($h->{max_at} ms, lowered by reload): the server clamps it silently")
	  if $h && $h->{max_at} < $h->{ttl};
	for my $e (window($idx))
	{
		$tag->('lockext.max_ttl_ms lowered by reload (grace shorter than a granted TTL)') if $e->{kind} eq 'reload_ttl' && $e->{lowered};
		next unless $e->{kind} eq 'start';
		if ($e->{grace_active}) { push @graces, $e; next; }
		my @dmg = sort keys %{ $e->{damaged} };
		if ($e->{clean} && grep { $_->{grace_until} > $e->{t} } @graces)
		{
			my ($g) = grep { $_->{grace_until} > $e->{t} } @graces;
			$tag->("bug1: a clean restart ended an active grace ($g->{grace_reason})" . (@dmg ? ' [files damaged too: ' . join(',', @dmg) . ']' : ''));
		}
		elsif (@dmg)
		{
			$tag->('pg_lockext/' . join(',', @dmg) . " damaged while down after $e->{stop}, and the start applied no grace");
		}
		elsif ($e->{clean} && $e->{fwd})
		{
			$tag->('bug5: wall clock stepped forward while down shortened restored leases');
		}
		elsif (!$e->{clean} && $e->{stop} ne '')
		{
			$tag->("no grace after $e->{stop}");
		}
	}
	$tag->('grace shorter than the belief') if !@tags && @graces;
	$tag->('unclassified') unless @tags;
	return @tags;
}

# Events since the previous grant: after any start the first grant rewrites
# the fence reservation, so what broke the fence happened in between.
sub causes_fence
{
	my ($idx) = @_;
	my (@tags, $damaged, $bug3, $marker, $clock, $crash);
	for my $e (window($idx < 0 ? 0 : $idx))
	{
		if ($e->{kind} eq 'tamper')
		{
			if ($e->{file} =~ /^fence/)
			{
				$damaged = 1;
				$bug3 = 1 if $e->{stop} =~ /fast|smart|grace/;
			}
			$marker = 1 if $e->{file} =~ /^running/;
		}
		$bug3 = 1 if $damaged && $e->{kind} =~ /^(stop_fast|stop_smart|restart_in_grace)$/;
		$clock = 1 if $e->{kind} =~ /clock/ && $e->{delta} < 0;
		$crash = 1 if $e->{kind} =~ /^(backend_kill|stop_immediate|kill9|promote)$/;
	}
	push @tags, 'bug3: fence file lost/garbled, then a clean shutdown and start' if $bug3;
	push @tags, 'fence file and running marker damaged after an unclean stop' if $damaged && !$bug3 && $marker;
	push @tags, 'fence file damaged after an unclean stop' if $damaged && !$bug3 && !$marker;
	push @tags, 'wall clock stepped backwards (clock-based floor)' if $clock && !$damaged;
	push @tags, 'after a crash/promotion' if $crash && !@tags;
	push @tags, 'unclassified' unless @tags;
	return @tags;
}

sub last_events
{
	my $from = $#hist - 29;
	$from = 0 if $from < 0;
	return join("\n", map { sprintf('    [%s] step %d %s: %s', rel($_->{t}), $_->{step}, $_->{kind}, $_->{text}) }
		@hist[ $from .. $#hist ]);
}

sub report
{
	my ($v) = @_;
	push @violations, $v;
	$done = 1 if $stop_at_first;
	if (@violations > 8)
	{
		diag("VIOLATION ($v->{type}) seed $seed step $v->{step}: $v->{what} [" . join('; ', @{ $v->{tags} }) . ']');
		return;
	}
	diag("VIOLATION ($v->{type}) seed $seed step $v->{step}: $v->{what}\n"
		  . join('', map { "  $_\n" } @{ $v->{detail} })
		  . "  suspected cause: " . join('; ', @{ $v->{tags} }) . "\n"
		  . "  last events:\n" . last_events() . "\n"
		  . "  reproduce: LOCKEXT_FUZZ_SEED=$seed (violation at step $v->{step})");
}

sub failure
{
	my ($what, $more) = @_;
	diag("FAILURE seed $seed step $step: $what" . (defined $more && $more ne '' ? "\n$more" : '')
		  . "\n  last events:\n" . last_events() . "\n  reproduce: LOCKEXT_FUZZ_SEED=$seed");
	push @failures, $what;
	$done = 1 if $stop_at_first;
}

# A grant or successful renew of $key by $client, seen at $r->{recv}.
sub check_grant
{
	my ($client, $key, $r, $what, $fence) = @_;
	for my $other (@clients)
	{
		next if $other eq $client;
		my $h = $hold{ hkey($other, $key) } or next;
		next unless $h->{end} > $r->{recv};
		report({ type => 'double grant', step => $step,
			what => "key $key granted to $client while $other may still own it",
			detail => [
				"holder $other: lock_id $h->{id} fence $h->{fence}, belief from "
				  . rel($h->{send}) . " (send of its last successful call) until " . rel($h->{end})
				  . " (ttl $h->{ttl} ms), still open " . sprintf('%.3f', $h->{end} - $r->{recv}) . " s after the grant was seen",
				"offending: $client $what sent " . rel($r->{send}) . ", granted (seen) " . rel($r->{recv})
				  . (defined $fence ? ", fence $fence" : ''),
				"events in the holder's window:\n" . join("\n",
					map { sprintf('    [%s] step %d %s: %s', rel($_->{t}), $_->{step}, $_->{kind}, $_->{text}) }
					  window($h->{since})) ],
			tags => [ causes_double($h->{since}, $h) ] });
	}
}

my ($last_fence, $last_fence_idx, $in_drop) = (0, -1, 0);

# A drop below the high-water mark is reported once; the grants that follow
# it while still below the mark are only counted.
sub check_fence
{
	my ($client, $key, $fence, $r) = @_;
	if ($fence <= $max_fence)
	{
		if ($in_drop && $fence > $last_fence) { $stat{below_mark}++; }
		else
		{
			report({ type => 'fence went backwards', step => $step,
				what => "fence $fence granted to $client on $key is not above $max_fence granted before",
				detail => [ "highest fence before: $max_fence (granted at step "
					  . ($max_fence_idx >= 0 ? $hist[$max_fence_idx]{step} : '?') . "), previous grant's fence $last_fence",
					"offending grant seen at " . rel($r->{recv}) . sprintf(' (counter %d, timeline %d)', $fence & ((1 << 44) - 1), $fence >> 44),
					"events since the previous grant:\n" . join("\n",
						map { sprintf('    [%s] step %d %s: %s', rel($_->{t}), $_->{step}, $_->{kind}, $_->{text}) }
						  window($last_fence_idx < 0 ? 0 : $last_fence_idx)) ],
				tags => [ causes_fence($last_fence_idx) ] });
		}
		$in_drop = 1;
	}
	else
	{
		($max_fence, $max_fence_idx, $in_drop) = ($fence, $#hist, 0);
	}
	($last_fence, $last_fence_idx) = ($fence, $#hist);
}

my %resume_fn;    # node name => lockext_fence_resume exists

sub operator_fence_resume
{
	my ($r) = @_;
	my $name = $P->name;
	if (!defined $resume_fn{$name})
	{
		my $q = call("SELECT count(*) FROM pg_proc WHERE proname = 'lockext_fence_resume'");
		return unless $q->{ok};
		$resume_fn{$name} = $q->{out} + 0;
	}
	return unless $resume_fn{$name};
	my $q = call("SELECT lockext_fence_resume($max_fence)");
	event(kind => 'operator', text => "lockext_fence_resume($max_fence) after \"$r->{err}\" -> "
		  . ($q->{ok} ? 'ok' : "error $q->{state} $q->{err}"));
}

sub op_try_lock
{
	my ($client, $key, $ttl) = @_;
	my $r = call("SELECT h.lock_id, h.fence FROM try_lock('$key', $ttl) h");
	my $idx = event(kind => 'op', text => "$client try_lock($key, $ttl) -> "
		  . ($r->{ok} ? ($r->{out} =~ /^\|?$/ ? 'NULL' : "granted $r->{out}") : "error $r->{state} $r->{err}"));
	if (!$r->{ok})
	{
		$stat{errors}++;
		operator_fence_resume($r) if $r->{state} eq '55000';
		return;    # indeterminate at worst: the client believes nothing
	}
	my ($id, $fence) = split /\|/, $r->{out};
	if (!defined $id || $id eq '') { $stat{contended}++; return; }
	$stat{grants}++;
	check_grant($client, $key, $r, "try_lock($key, $ttl)", $fence);
	check_fence($client, $key, $fence, $r);
	$hold{ hkey($client, $key) } = { id => $id, ttl => $ttl, send => $r->{send},
		end => $r->{send} + $ttl / 1000.0, since => $idx, fence => $fence, max_at => $cur_max_ttl };
}

sub op_renew
{
	my ($client, $key, $ttl) = @_;
	my $h = $hold{ hkey($client, $key) };
	my $r = call(defined $ttl ? "SELECT renew('$key', '$h->{id}', $ttl)" : "SELECT renew('$key', '$h->{id}')");
	my $new_ttl = $ttl // $h->{ttl};
	# renew(key, lock_id) keeps "the lease's current TTL"; a server that clamps
	# it to a lowered max_ttl_ms deceives a holder counting on its handle's
	# ttl_ms.  Counted as a violation unless LOCKEXT_FUZZ_RENEW_CLAMP=1 says the
	# clamp is the documented contract.
	$new_ttl = $cur_max_ttl if !defined $ttl && $ENV{LOCKEXT_FUZZ_RENEW_CLAMP} && $cur_max_ttl < $new_ttl;
	my $idx = event(kind => 'op', text => "$client renew($key, fence $h->{fence}"
		  . (defined $ttl ? ", $ttl" : '') . ") -> " . ($r->{ok} ? $r->{out} : "error $r->{state} $r->{err}"));
	$stat{renews}++;
	if (!$r->{ok})
	{
		# unknown whether it applied: the server owes the shorter of both
		my $e = $r->{send} + $new_ttl / 1000.0;
		$h->{end} = $e if $e < $h->{end};
		$stat{errors}++;
		return;
	}
	if ($r->{out} eq 't')
	{
		check_grant($client, $key, $r, "renew($key, ttl $new_ttl)", undef);
		@$h{qw(ttl send end since max_at)} = ($new_ttl, $r->{send}, $r->{send} + $new_ttl / 1000.0, $idx, $cur_max_ttl);
		return;
	}
	$stat{renew_false}++;
	if ($h->{end} > $r->{recv} && !tainted($h->{since}))
	{
		my $msg = "seed $seed step $step: $client lost $key early: renew false seen at " . rel($r->{recv})
		  . ", belief open until " . rel($h->{end}) . " (last success sent " . rel($h->{send})
		  . ", ttl $h->{ttl} ms); since then: "
		  . join(', ', map { $_->{kind} } window($h->{since}));
		push @lost_early, $msg;
		diag("LEASE LOST EARLY (informational) $msg");
	}
	delete $hold{ hkey($client, $key) };
}

sub op_release
{
	my ($client, $key) = @_;
	my $h = $hold{ hkey($client, $key) };
	my $r = call("SELECT release('$key', '$h->{id}')");
	event(kind => 'op', text => "$client release($key, fence $h->{fence}) -> "
		  . ($r->{ok} ? $r->{out} : "error $r->{state} $r->{err}"));
	$stat{releases}++;
	delete $hold{ hkey($client, $key) };    # the client stops believing at the send
}

sub ttl_of { my ($u) = @_; return 300 + int($u * ($cur_max_ttl - 300)); }

# One random client operation; always draws 5 numbers so the event stream
# depends only on the seed.
sub random_op
{
	my ($uc, $uk, $ua, $ut, $ur) = (rand, rand, rand, rand, rand);
	my $client = $clients[ int($uc * @clients) ];
	my $key = $keys[ int($uk * @keys) ];
	my $h = $hold{ hkey($client, $key) };
	if ($h && ($h->{end} > mono() || $ua < 0.3))
	{
		if ($ua < 0.6) { op_renew($client, $key, $ur < 0.5 ? undef : ttl_of($ut)); }
		elsif ($ua < 0.75) { op_release($client, $key); }
		return;
	}
	op_try_lock($client, $key, ttl_of($ut));
}

# After every lifecycle step: each key somebody believes it holds is tried
# by another client.
sub probe
{
	for my $key (@keys)
	{
		my ($uc, $ut) = (rand, rand);
		my $now = mono();
		my @holders = grep { my $h = $hold{ hkey($_, $key) }; $h && $h->{end} > $now } @clients;
		next unless @holders;
		my @others = grep { my $c = $_; !grep { $_ eq $c } @holders } @clients;
		next unless @others;
		my $c = $others[ int($uc * @others) ];
		delete $hold{ hkey($c, $key) };    # its old, expired handle is forgotten
		op_try_lock($c, $key, ttl_of($ut));
	}
}

# After a clean restart: some holders renew, to see whether their lease
# survived (a renew false inside the belief window is a lease lost early).
sub renew_probe
{
	for my $key (@keys)
	{
		for my $c (@clients)
		{
			my $u = rand;
			my $h = $hold{ hkey($c, $key) };
			op_renew($c, $key, undef) if $h && $h->{end} > mono() && $u < 0.5;
		}
	}
}

### lifecycle events
sub pm_children
{
	my ($pm) = @_;
	my @c;
	opendir(my $d, '/proc') or return ();
	for my $p (grep { /^\d+$/ } readdir $d)
	{
		open(my $f, '<', "/proc/$p/stat") or next;
		my $s = <$f>;
		close $f;
		push @c, $p if defined $s && $s =~ /^\d+ \(.*\) \S (\d+) /s && $1 == $pm;
	}
	closedir $d;
	return @c;
}

sub tamper
{
	my ($n, $stop, $uf, $uop, $useed) = @_;
	my $pdir = $n->data_dir . '/pg_lockext';
	opendir(my $d, $pdir) or return;
	my @files = sort grep { -f "$pdir/$_" } readdir $d;
	closedir $d;
	return unless @files;
	my $name = $files[ int($uf * @files) ];
	my $f = "$pdir/$name";
	my $size = -s $f;
	my $x = int($useed * 4294967295) || 1;
	my $rnd = sub { $x ^= ($x << 13) & 0xffffffff; $x ^= $x >> 17; $x ^= ($x << 5) & 0xffffffff; return $x % $_[0]; };
	my $what;
	if ($uop < 0.25 && @files > 1)    # never the whole directory: a missing pg_lockext/ is a first start
	{
		unlink $f or die "unlink $f: $!";
		$what = 'deleted';
	}
	elsif ($size == 0)    # an empty file (the marker): give it content
	{
		open(my $fh, '>>', $f) or die "open $f: $!";
		binmode $fh;
		print $fh join('', map { chr($rnd->(256)) } 1 .. 1 + $rnd->(16));
		close $fh;
		$what = 'filled with ' . (-s $f) . ' random bytes (was empty)';
	}
	elsif ($uop < 0.45 || $size == 1)
	{
		truncate($f, 0) or die "truncate $f: $!";
		$what = "truncated to 0 (was $size)";
	}
	elsif ($uop < 0.65)
	{
		my $len = 1 + $rnd->($size - 1);
		truncate($f, $len) or die "truncate $f: $!";
		$what = "truncated to $len (was $size)";
	}
	else
	{
		open(my $fh, '+<', $f) or die "open $f: $!";
		binmode $fh;
		my @at;
		for (1 .. 1 + $rnd->(4))
		{
			my $off = $rnd->($size);
			my $bytes = join('', map { chr($rnd->(256)) } 1 .. 1 + $rnd->(8));
			seek($fh, $off, 0);
			print $fh $bytes;
			push @at, "$off+" . length($bytes);
		}
		close $fh;
		$what = "scribbled at " . join(',', @at) . " (size $size)";
	}
	if ($name =~ /^fence/) { $down{fence_damaged} = 1; } else { $down{damaged}{$name} = 1; }
	event(kind => 'tamper', file => $name, stop => $stop, text => "pg_lockext/$name $what (down after $stop)");
}

# While a node is down: damage files, step its wall clock.  Fixed draws.
sub down_actions
{
	my ($n, $stop) = @_;
	my @u = map { rand } 1 .. 11;
	for my $i (0 .. 2)
	{
		my $p = $w{tamper} / 100.0 * ($i == 0 ? 1 : 0.5);
		last unless $u[ 3 * $i ] < $p;
		tamper($n, $stop, @u[ 3 * $i + 1, 3 * $i + 2 ], rand);
	}
	if ($u[9] < $w{clock} / 100.0)
	{
		my $delta = $clock_steps[ int($u[10] * @clock_steps) ];
		set_clock($n, $delta);
		$down{fwd} = 1 if $delta > 0;
		event(kind => 'clock', delta => $delta, stop => $stop,
			text => sprintf('%s wall clock %+d s while down after %s', $n->name, $delta, $stop));
	}
}

# libfaketime and PostgreSQL 15: the postmaster does its work in signal
# handlers that interrupt its (faked) select(), and inside those libfaketime
# reports the real clock; only its start-up code sees the fake one.  A lasting
# offset would therefore count again as downtime at every later restart
# (saved at real time, restored at fake time).  So a step made while down
# lives until the server has started, and is then stepped back while it runs
# (itself a legitimate event: a wall clock stepped back while running).
sub clock_back_after_start
{
	my ($n) = @_;
	my $off = $meta{ $n->name }{offset};
	return if $off == 0;
	set_clock($n, 0);
	event(kind => 'clock_running', delta => -$off, stop => 'running',
		text => sprintf('%s wall clock %+d s while running (back to the real clock)', $n->name, -$off));
}

# A start (or crash restart, or promotion) with the grace the server reports.
# Only used to name the cause of a violation, never for the verdict.
sub start_event
{
	my ($text, $stop) = @_;
	my $g = call('SELECT row_to_json(g) FROM lockext_grace() g');
	my ($active, $left, $reason) = (0, 0, '?');
	if ($g->{ok})
	{
		$active = $g->{out} =~ /"active"\s*:\s*true/ ? 1 : 0;
		$left = $1 if $g->{out} =~ /"remaining_ms"\s*:\s*(\d+)/;
		$reason = $1 if $g->{out} =~ /"reason"\s*:\s*"([^"]*)"/;
	}
	my $clean = defined $stop && $stop =~ /^(stop_fast|stop_smart|restart_in_grace)$/ ? 1 : 0;
	event(kind => 'start', stop => $stop // '', clean => $clean,
		damaged => { %{ $down{damaged} // {} } }, fwd => $down{fwd} // 0,
		grace_active => $active, grace_until => $g->{recv} + $left / 1000.0, grace_reason => $reason,
		text => "$text (grace: " . ($active ? "active, $left ms left, $reason" : 'none') . ')');
	%down = ();
}

sub stop_start
{
	my ($mode, $kind) = @_;
	event(kind => $kind, text => $P->name . " pg_ctl stop -m $mode");
	if (!$P->stop($mode, fail_ok => 1))
	{
		failure($P->name . " did not stop ($mode)");
		$done = 1;
		return;
	}
	%down = ();
	down_actions($P, $kind);
	start_node($P) or return;
	start_event($P->name . ' started', $kind);
	clock_back_after_start($P);
}

sub ev_backend_kill
{
	my ($ubk, $upick) = (rand, rand);
	my $off = -s $P->logfile;
	my ($pid, $type, $bg);
	if ($ubk < 0.7)
	{
		$bg = $P->background_psql('postgres', on_error_stop => 0);
		$pid = $bg->query_safe('SELECT pg_backend_pid()');
		$type = 'client backend';
	}
	else
	{
		my $r = call("SELECT pid || ' ' || backend_type FROM pg_stat_activity WHERE pid <> pg_backend_pid() ORDER BY pid");
		my @p = grep { /\S/ } split /\n/, $r->{out};
		return unless @p;
		($pid, $type) = split / /, $p[ int($upick * @p) ], 2;
	}
	event(kind => 'backend_kill', text => $P->name . " SIGKILL $type $pid");
	kill 'KILL', $pid;
	$P->wait_for_log(qr/all server processes terminated; reinitializing/, $off);
	$P->wait_for_log(qr/database system is ready to accept connections/, $off);
	eval { $bg->quit } if $bg;
	%down = ();
	start_event($P->name . ' crash restart done', 'backend_kill');
}

sub ev_kill9
{
	my $pm = $P->{_pid};
	my @kids = pm_children($pm);
	event(kind => 'kill9', text => $P->name . " SIGKILL postmaster $pm (" . scalar(@kids) . ' children)');
	$P->kill9;
	my $until = mono() + 60;
	while (mono() < $until && grep { kill 0, $_ } $pm, @kids) { sleep(0.05); }
	if (grep { kill 0, $_ } $pm, @kids) { failure('children of the killed postmaster did not exit'); $done = 1; return; }
	%down = ();
	down_actions($P, 'kill9');
	start_node($P) or return;
	start_event($P->name . ' started', 'kill9');
	clock_back_after_start($P);
}

sub ev_restart_in_grace
{
	my $u = rand;
	my $r = call('SELECT active FROM lockext_grace()');
	if ($r->{ok} && $r->{out} eq 't')
	{
		stop_start($u < 0.7 ? 'fast' : 'smart', 'restart_in_grace');
		return 1;
	}
	return 0;
}

sub new_node
{
	my $n = PostgreSQL::Test::Cluster->new('n' . $node_seq++);
	register_node($n);
	return $n;
}

sub discard
{
	my ($n) = @_;
	$n->stop('immediate', fail_ok => 1);
	rmtree($n->data_dir);
}

sub make_standby
{
	my $b = 'b' . $node_seq;
	$P->backup($b);
	my $s = new_node();
	$s->init_from_backup($P, $b, has_streaming => 1);
	rmtree($P->backup_dir . "/$b");
	start_node($s) or return;
	$P->wait_for_catchup($s);
	$S = $s;
	event(kind => 'standby', text => $s->name . ' streaming from ' . $P->name);
}

sub ev_promote
{
	my ($ufate, $ucatch) = (rand, rand);
	make_standby() unless $S;
	return if $done || !$S;
	my $old = $P;
	my $fate = $ufate < 0.35 ? 'stop' : $ufate < 0.55 ? 'immediate' : $ufate < 0.75 ? 'kill9' : 'split';
	$old->wait_for_catchup($S) if $fate ne 'split' || $ucatch < 0.5;
	if ($fate eq 'stop') { $old->stop('fast', fail_ok => 1); }
	elsif ($fate eq 'immediate') { $old->stop('immediate', fail_ok => 1); }
	elsif ($fate eq 'kill9')
	{
		my $pm = $old->{_pid};
		my @kids = pm_children($pm);
		$old->kill9;
		my $until = mono() + 60;
		while (mono() < $until && grep { kill 0, $_ } $pm, @kids) { sleep(0.05); }
	}
	event(kind => 'promote', text => $S->name . " promoted; old primary " . $old->name . " $fate"
		  . ($fate eq 'split' ? ' (left running, no client traffic)' : ' and discarded'));
	$S->promote;
	$P = $S;
	$S = undef;
	%down = ();
	start_event($P->name . ' promoted', 'promote');
	if ($fate eq 'split')
	{
		discard($split) if $split;
		$split = $old;
	}
	else
	{
		discard($old);
	}
}

sub ev_reload_ttl
{
	my ($u, $v) = (rand, rand);
	my $before = $cur_max_ttl;
	$cur_max_ttl = $u < 0.5 ? $max_ttl : 1000 + int($v * ($max_ttl - 1000));
	$P->append_conf('postgresql.conf', "lockext.max_ttl_ms = $cur_max_ttl\n");
	$P->reload;
	event(kind => 'reload_ttl', lowered => ($cur_max_ttl < $before ? 1 : 0),
		text => $P->name . " lockext.max_ttl_ms = $cur_max_ttl (reload)");
}

sub ev_clock_running
{
	my $u = rand;
	my $delta = $clock_steps[ int($u * @clock_steps) ];
	set_clock($P, $delta);
	event(kind => 'clock_running', delta => $delta, stop => 'running',
		text => sprintf('%s wall clock %+d s while running', $P->name, $delta));
	for (1 .. 3) { random_op(); sleep(rand() * 0.25); }
	clock_back_after_start($P);    # see there why the step does not last
}

# Operator decisions that end beliefs: the operator knows the holders are
# gone, so the clients stop believing before the call is sent.
sub ev_grace_end
{
	my $q = call("SELECT count(*) FROM pg_proc WHERE proname = 'lockext_grace_end'");
	return 0 unless $q->{ok} && $q->{out} > 0;
	%hold = ();
	my $r = call('SELECT lockext_grace_end()');
	event(kind => 'operator', text => 'every client stopped; lockext_grace_end() -> '
		  . ($r->{ok} ? $r->{out} : "error $r->{state} $r->{err}"));
	return 1;
}

sub ev_force_release
{
	my $key = $keys[ int(rand() * @keys) ];
	delete $hold{ hkey($_, $key) } for @clients;
	my $r = call("SELECT lockext_force_release('$key')");
	event(kind => 'operator', text => "holders of $key stopped; lockext_force_release('$key') -> "
		  . ($r->{ok} ? $r->{out} : "error $r->{state} $r->{err}"));
}

### run
$P = new_node();
$P->init(allows_streaming => 1);
$P->append_conf('postgresql.conf', $conf);
start_node($P) or BAIL_OUT('first start failed');
$P->safe_psql('postgres', 'CREATE EXTENSION lockext');
event(kind => 'start', text => $P->name . ' initdb + start');
make_standby();

my $deadline = mono() + $seconds;
my $ok_run = eval {
	while (!$done && mono() < $deadline)
	{
		$step++;
		my $x = rand() * $wsum;
		my $ev;
		for (@events) { $ev = $_; last if ($x -= $w{$_}) < 0; }
		my $nops = 3 + int(rand() * 8);
		if ($ev eq 'traffic')
		{
			# spread over about a second: lifecycle events are fast, grace is not
			for (1 .. $nops) { random_op(); sleep(rand() * 0.25); }
		}
		elsif ($ev eq 'wait')
		{
			my $s = 0.2 + rand() * $cur_max_ttl / 1000.0 * 0.7;
			event(kind => 'wait', text => sprintf('sleep %.2f s', $s));
			sleep($s);
		}
		elsif ($ev eq 'backend_kill') { ev_backend_kill(); }
		elsif ($ev eq 'stop_fast') { stop_start('fast', 'stop_fast'); }
		elsif ($ev eq 'stop_smart') { stop_start('smart', 'stop_smart'); }
		elsif ($ev eq 'stop_immediate') { stop_start('immediate', 'stop_immediate'); }
		elsif ($ev eq 'kill9') { ev_kill9(); }
		elsif ($ev eq 'restart_in_grace') { random_op() unless ev_restart_in_grace(); }
		elsif ($ev eq 'promote') { ev_promote(); }
		elsif ($ev eq 'reload_ttl') { ev_reload_ttl(); }
		elsif ($ev eq 'clock_running') { ev_clock_running(); }
		elsif ($ev eq 'grace_end') { random_op() unless ev_grace_end(); }
		elsif ($ev eq 'force_release') { ev_force_release(); }
		last if $done;
		probe() unless $ev eq 'traffic' || $ev eq 'wait';
		renew_probe() if $ev =~ /^(stop_fast|stop_smart|restart_in_grace)$/;
		scan_log($_) for grep { defined } $P, $S, $split;
	}
	1;
};
failure("fuzzer died: $@") unless $ok_run;

my %tags;
$tags{"$_->{type}: " . join('; ', @{ $_->{tags} })}++ for @violations;
diag("lifecycle fuzz summary: seed=$seed steps=$step events=" . scalar(@hist)
	  . " grants=$stat{grants} contended=$stat{contended} errors=$stat{errors} renews=$stat{renews}"
	  . " renew_false=$stat{renew_false} releases=$stat{releases} max_fence=$max_fence"
	  . " grants_below_fence_mark=$stat{below_mark}"
	  . " nodes=$node_seq violations=" . scalar(@violations) . " lost_early=" . scalar(@lost_early)
	  . " failures=" . scalar(@failures) . " seconds=" . sprintf('%.1f', mono() - $T0));
diag("  $tags{$_} x $_") for sort keys %tags;

my @dbl = grep { $_->{type} eq 'double grant' } @violations;
my @fen = grep { $_->{type} ne 'double grant' } @violations;
is(scalar(@dbl), 0, "no double grant (seed $seed)");
is(scalar(@fen), 0, "fences never went backwards (seed $seed)");
is(scalar(@failures), 0, "every server started and nothing crashed unasked (seed $seed)");
cmp_ok($stat{grants}, '>', 0, "the fuzzer granted leases (seed $seed)");

for my $n (grep { defined } $P, $S, $split) { $n->stop('fast', fail_ok => 1); }
done_testing();
