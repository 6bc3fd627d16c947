# Extension versions (packaging, part 2): lockext--1.0.sql stays as released,
# 1.1 is reached by CREATE EXTENSION or by ALTER EXTENSION lockext UPDATE.
#  1. The 1.1 library serves a database still at 1.0: every 1.0 object works,
#     its lockext_test_* hooks too, next to a database at 1.1 on the same server;
#     lockext-run (the 1.1 client, $ENV{LOCKEXT_RUN}) holds a lease there.
#  2. ALTER EXTENSION lockext UPDATE keeps every lease (same lock_id and fence;
#     renew and release with the old lock_ids work; lockext-run keeps renewing
#     across the update with its prepared statements and releases at the end),
#     adds the 1.1 objects (revoked from PUBLIC) and drops the hooks, which the
#     test-only extension lockext_test provides from then on.
#  3. An updated database and a fresh 1.1 one have identical objects (name,
#     definition, OUT columns, view columns, privileges, initial privileges,
#     comments); no downgrade path.
#  4. The checks of 2 and 3 fail on the database a broken update script would
#     leave (a hook not dropped; a function with other OUT columns).
#  5. pg_dump/pg_restore round-trips a database using lockext, also one with
#     lockext in a non-public schema and objects depending on lock_handle and
#     on a changed member privilege: CREATE EXTENSION recreates the members,
#     none is dumped on its own.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Digest::SHA qw(sha256_hex);
use IPC::Run;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('upgrade');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'lockext'\nlockext.enable_test_hooks = on\n"
	  . "lockext.max_locks = 64\nmax_connections = 50\n");
$node->start;

sub sql { my ($db, $q) = @_; return $node->safe_psql($db, $q); }

# psql that may fail: (exit code, stdout, stderr)
sub try_sql
{
	my ($db, $q) = @_;
	my ($out, $err);
	my $rc = $node->psql($db, $q, stdout => \$out, stderr => \$err, on_error_stop => 1);
	return ($rc, $out, $err);
}

# Every object of extension $ext in $db, one line each: its description, then
# what defines it (function definition with OUT columns, language, symbol,
# volatility, strictness; relkind, view definition and columns; type
# attributes), its privileges, its initial privileges (what pg_dump compares
# against) and its comment.
sub members
{
	my ($db, $ext) = @_;
	$ext //= 'lockext';
	my $rows = sql(
		$db, qq{
		SELECT pg_describe_object(d.classid, d.objid, d.objsubid) || ' :: ' ||
		       CASE d.classid
		         WHEN 'pg_proc'::regclass THEN
		           (SELECT replace(pg_get_functiondef(p.oid), E'\\n', ' ') || ' acl=' ||
		                   coalesce(p.proacl::text, 'default')
		              FROM pg_proc p WHERE p.oid = d.objid)
		         WHEN 'pg_class'::regclass THEN
		           (SELECT c.relkind::text || ' ' || coalesce(replace(pg_get_viewdef(c.oid), E'\\n', ' '), '') ||
		                   ' cols=' || (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod),
		                                                  ', ' ORDER BY a.attnum)
		                                  FROM pg_attribute a
		                                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) ||
		                   ' acl=' || coalesce(c.relacl::text, 'default')
		              FROM pg_class c WHERE c.oid = d.objid)
		         WHEN 'pg_type'::regclass THEN
		           (SELECT t.typtype::text || ' cols=' ||
		                   coalesce((SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod),
		                                               ', ' ORDER BY a.attnum)
		                               FROM pg_attribute a
		                              WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped), '') ||
		                   ' acl=' || coalesce(t.typacl::text, 'default')
		              FROM pg_type t WHERE t.oid = d.objid)
		         ELSE 'class ' || d.classid::regclass::text
		       END ||
		       ' initprivs=' || coalesce((SELECT string_agg(i.privtype::text || ':' || i.initprivs::text, ',' ORDER BY i.objsubid)
		                                    FROM pg_init_privs i
		                                   WHERE i.classoid = d.classid AND i.objoid = d.objid), 'none') ||
		       ' comment=' || coalesce(obj_description(d.objid, d.classid::regclass::name), 'none')
		  FROM pg_depend d JOIN pg_extension e ON d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid
		 WHERE e.extname = '$ext' AND d.deptype = 'e'
		 ORDER BY 1});
	return [ split /\n/, $rows ];
}

# The lockext_test_* functions in $db that belong to extension lockext.
sub hooks_in_lockext
{
	my ($db) = @_;
	return sql(
		$db, q{
		SELECT count(*) FROM pg_proc p
		  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
		  JOIN pg_extension e ON d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid
		 WHERE e.extname = 'lockext' AND p.proname LIKE 'lockext_test\_%'});
}

# "lock_id fence" of the live lease of $key in $db, per the lockext_leases view
sub lease_of
{
	my ($db, $key) = @_;
	return sql($db,
		"SELECT lock_id || ' ' || fence FROM lockext_leases WHERE datname = current_database() AND key = '$key'");
}

# renewals of the live lease of $key in $db
sub renewals_of
{
	my ($db, $key) = @_;
	return sql($db, "SELECT renewals FROM lockext_leases WHERE datname = current_database() AND key = '$key'");
}

sub extversion
{
	return sql($_[0], "SELECT extversion FROM pg_extension WHERE extname = 'lockext'");
}

### 0. the released script is the released one
my $sharedir = sql('postgres', "SELECT setting FROM pg_config WHERE name = 'SHAREDIR'");
my $script10 = slurp_file("$sharedir/extension/lockext--1.0.sql");
is(sha256_hex($script10), 'd4aa429e197d05e6f8516443ca6ad17b68be20568f7c89ac18ef47fb5af9f327',
	'the installed lockext--1.0.sql is byte for byte the released script');

### 1. a database at 1.0, served by the 1.1 library, beside one at 1.1
sql('postgres', 'CREATE DATABASE v10; CREATE DATABASE v11; CREATE ROLE upg_plain LOGIN');
sql('v10', "CREATE EXTENSION lockext VERSION '1.0'");
sql('v11', 'CREATE EXTENSION lockext');
is(extversion('v10'), '1.0', 'CREATE EXTENSION lockext VERSION 1.0 works with the 1.1 library');
is(extversion('v11'), '1.1', 'CREATE EXTENSION lockext installs 1.1 (the default version)');
my $members10 = members('v10');
is(scalar(grep { /^type lock_handle |^view lockext_(leases|stats) / } @$members10), 3,
	'1.0: type lock_handle, views lockext_leases and lockext_stats');
is(hooks_in_lockext('v10'), '6', '1.0 has its six lockext_test_* hooks');
is(sql('v10', "SELECT count(*) FROM pg_proc WHERE proname IN ('lockext_grace_end', 'lockext_fence_resume')"),
	'0', '1.0 has no 1.1 functions');

# every 1.0 function and view works with the 1.1 library
is( sql('v10',
		q{SELECT h.key || ' ' || (h.fence > 0) || ' ' || h.ttl_ms || ' ' || renew(h) || ' ' ||
		         renew(h.key, h.lock_id) || ' ' || renew(h.key, h.lock_id, 5000) || ' ' ||
		         release(h) || ' ' || release(h.key, h.lock_id)
		    FROM try_lock('up:api', 60000) h}),
	'up:api true 60000 true true true true false',
	'1.0: try_lock, the three renews and both releases');
is(sql('v10', q{SELECT lock_id FROM try_lock('up:cas', 60000)}) ne ''
	  && sql('v10', q{SELECT release('up:cas', gen_random_uuid())}) eq 'f'
	  && sql('v10', q{SELECT lockext_force_release('up:cas')}) eq 't',
	1, '1.0: a foreign lock_id is a no-op, lockext_force_release evicts');
is(sql('v10', 'SELECT acquired >= 2, max_locks FROM lockext_stats'), 't|64', '1.0: lockext_stats');
is(sql('v10', 'SELECT active FROM lockext_grace()'), 'f', '1.0: lockext_grace()');
sql('v10', 'SELECT lockext_stats_reset()');
is(sql('v10', 'SELECT acquired FROM lockext_stats'), '0', '1.0: lockext_stats_reset()');
# its hooks: the frozen clock expires a lease exactly at its TTL
is( sql('v10',
		q{SELECT lockext_test_clock_freeze();
		  SELECT fence > 0 FROM try_lock('up:hook', 1000);
		  SELECT lockext_test_clock_advance(999);
		  SELECT count(*) FROM lockext_leases WHERE datname = current_database() AND key = 'up:hook';
		  SELECT lockext_test_clock_advance(1);
		  SELECT count(*) FROM lockext_leases WHERE datname = current_database() AND key = 'up:hook';
		  SELECT lockext_test_clock_release();}),
	"\nt\n\n1\n\n0\n", '1.0: the lockext_test_* hooks work');
my ($rc, $out, $err) = try_sql('v10', 'CREATE EXTENSION lockext_test');
isnt($rc, 0, 'CREATE EXTENSION lockext_test refuses a database at 1.0');
like($err, qr/lockext 1\.0 already provides the lockext_test_\* functions.*HINT:  Run ALTER EXTENSION lockext UPDATE first/s,
	'... saying that 1.0 has the hooks and what to do');

# objects of the application that depend on lockext's, created at 1.0: the update
# must not drop and recreate what they depend on (it would fail here)
sql(
	'v10', q{
	CREATE TABLE app_jobs (name text PRIMARY KEY, last lock_handle);
	CREATE FUNCTION app_take(k text) RETURNS lock_handle LANGUAGE sql VOLATILE
	BEGIN ATOMIC SELECT h FROM try_lock(k, 60000) h; END;
	CREATE FUNCTION app_cycle(h lock_handle) RETURNS text LANGUAGE sql VOLATILE
	BEGIN ATOMIC SELECT renew(h.key, h.lock_id) || ' ' || renew(h.key, h.lock_id, 60000) || ' ' ||
	                    renew(h) || ' ' || release(h) || ' ' || release(h.key, h.lock_id); END;
	CREATE VIEW app_held AS SELECT key, lock_id, fence, renewals FROM lockext_leases
	 WHERE datname = current_database();
	CREATE VIEW app_stats AS SELECT acquired, leases FROM lockext_stats;
	CREATE VIEW app_grace AS SELECT active FROM lockext_grace();
	INSERT INTO app_jobs SELECT 'nightly', app_take('up:app');});
is(sql('v10', "SELECT count(*) FROM app_held WHERE key = 'up:app'"), '1',
	'1.0: objects depending on lockext\'s (SQL-standard bodies, views, a lock_handle column)');

# leases taken at 1.0: one by SQL, one renewed through a handle after the update
my ($sql_id, $sql_fence) = split /\|/, sql('v10', "SELECT lock_id, fence FROM try_lock('up:sql', 300000)");
my ($h_id,   $h_fence)   = split /\|/, sql('v10', "SELECT lock_id, fence FROM try_lock('up:handle', 300000)");
like($sql_id, qr/^[0-9a-f-]{36}$/, "1.0: granted up:sql ($sql_id, fence $sql_fence)");
# the 1.1 library fills the 1.0 view's columns (a live lease: the C function builds a row)
is( sql('v10',
		q{SELECT string_agg(attname, ' ' ORDER BY attnum) FROM pg_attribute
		   WHERE attrelid = 'lockext_leases'::regclass AND attnum > 0 AND NOT attisdropped}),
	'datname key lock_id fence ttl_ms acquired_at expires_at remaining_ms renewals holder pid '
	  . 'application_name client_addr',
	'1.0: lockext_leases has the 13 columns of 1.0');
is( sql('v10',
		"SELECT key || ' ' || (lock_id = '$sql_id') || ' ' || (fence = $sql_fence) || ' ' || ttl_ms || ' ' ||
		        (remaining_ms BETWEEN 1 AND 300000) || ' ' || holder || ' ' || (pid > 0)
		   FROM lockext_leases WHERE datname = current_database() AND key = 'up:sql'"),
	'up:sql true true 300000 true postgres true', '1.0: lockext_leases shows the lease');
is(sql('v10', 'SELECT leases >= 2, max_locks FROM lockext_stats'), 't|64', '1.0: lockext_stats counts it');
# a key held in v11 is a different lock from the same key in v10
ok(sql('v11', "SELECT lock_id IS NOT NULL FROM try_lock('up:sql', 300000)") eq 't',
	'the same key in the database at 1.1 is another lock');

# lockext-run 1.1 against the database at 1.0, holding its lease across the update
my $run     = $ENV{LOCKEXT_RUN};
my $tmp     = PostgreSQL::Test::Utils::tempdir;
my $have_run = defined $run && $run ne '' && -x $run;
fail("LOCKEXT_RUN=$run is not an executable file") if defined $run && $run ne '' && !$have_run;
my ($run_h, $run_out, $run_err, $run_id, $run_fence, $renewals_before) = (undef, '', '');
# a test that dies does not leave lockext-run behind
END { $run_h->kill_kill if $run_h && $run_h->pumpable; }
SKIP:
{
	skip 'lockext-run not available (set LOCKEXT_RUN to the built lockext-run; tools/test.sh does)', 4
	  unless $have_run;
	my $cmd = q{echo "$LOCKEXT_LOCK_ID $LOCKEXT_FENCE" >"$1/held.tmp" && mv "$1/held.tmp" "$1/held";}
	  . q{ while [ ! -e "$1/stop" ]; do sleep 0.05; done};
	$run_h = IPC::Run::start([ $run, '-d', $node->connstr('v10'), '-k', 'up:run', '-t', '3s',
			'--prepared-statements', 'on', '--', 'sh', '-c', $cmd, 'sh', $tmp ],
		'>', \$run_out, '2>', \$run_err);
	my $waited = 0;
	while (!-e "$tmp/held" && $waited < 30_000 && $run_h->pumpable)
	{
		usleep(50_000);
		$waited += 50;
		$run_h->pump_nb;
	}
	ok(-e "$tmp/held", 'lockext-run holds up:run in the database at 1.0 and runs its command')
	  or diag("lockext-run stdout: $run_out\nstderr: $run_err");
	($run_id, $run_fence) = split ' ', (-e "$tmp/held" ? slurp_file("$tmp/held") : ' ');
	is(lease_of('v10', 'up:run'),
		"$run_id $run_fence", '... the lease in the view is the one its command was given');
	ok( $node->poll_query_until(
			'v10', "SELECT renewals > 0 FROM lockext_leases WHERE datname = current_database() AND key = 'up:run'"),
		'... and lockext-run renews it at 1.0');
	$renewals_before = renewals_of('v10', 'up:run');
	pass("lockext-run renewed $renewals_before times before the update");
}

### 2. ALTER EXTENSION lockext UPDATE
($rc, $out, $err) = try_sql('v10', 'ALTER EXTENSION lockext UPDATE');
is($rc, 0, "ALTER EXTENSION lockext UPDATE works with the application's objects in place") or diag($err);
is(extversion('v10'), '1.1', 'ALTER EXTENSION lockext UPDATE goes to 1.1');
is(lease_of('v10', 'up:sql'),
	"$sql_id $sql_fence", 'the lease taken at 1.0 is still held, same lock_id and fence');
is(lease_of('v10', 'up:handle'),
	"$h_id $h_fence", 'so is the second one');
is( sql('v10',
		"SELECT renew('up:sql', '$sql_id') || ' ' || renew('up:sql', '$sql_id', 300000) || ' ' ||
		        renew(ROW('up:handle', '$h_id', 300000, $h_fence, now())::lock_handle)"),
	'true true true', 'renew with the old lock_ids works after the update (all three forms)');
is(sql('v10', "SELECT try_lock('up:sql', 1000) IS NULL"), 't', 'the old lease still excludes others');
is( sql('v10',
		"SELECT release('up:sql', '$sql_id') || ' ' || release('up:sql', '$sql_id') || ' ' ||
		        release(ROW('up:handle', '$h_id', 300000, $h_fence, now())::lock_handle)"),
	'true false true', 'release with the old lock_ids works after the update (then is a no-op)');
cmp_ok(sql('v10', "SELECT fence FROM try_lock('up:after', 60000)"), '>', $sql_fence,
	'fences keep rising across the update');
is(sql('v10', "SELECT app_cycle(last) FROM app_jobs"), 'true true true true false',
	'the application\'s objects created at 1.0 work after the update (a lock_handle stored at 1.0)');
is(sql('v10', "SELECT count(*) FROM app_held WHERE key = 'up:app'"), '0', '... and its views');

SKIP:
{
	skip 'lockext-run not available (set LOCKEXT_RUN to the built lockext-run; tools/test.sh does)', 4
	  unless $have_run;
	ok( $node->poll_query_until(
			'v10',
			"SELECT renewals > $renewals_before + 1 FROM lockext_leases
			  WHERE datname = current_database() AND key = 'up:run'"),
		'lockext-run keeps renewing its lease after the update (prepared statements still valid)');
	is(lease_of('v10', 'up:run'),
		"$run_id $run_fence", '... the same lease');
	open(my $fh, '>', "$tmp/stop") or die "cannot create $tmp/stop: $!";
	close $fh;
	my $finished = eval { $run_h->finish; 1 };
	is($finished ? $run_h->full_result(0) : "finish failed: $@", 0, 'lockext-run exits 0 when its command ends')
	  or diag("lockext-run stdout: $run_out\nstderr: $run_err");
	is(lease_of('v10', 'up:run'), '', '... and released its lease');
}

# the 1.1 objects, not for PUBLIC
is(sql('v10', 'SELECT lockext_grace_end()'), 'f', 'lockext_grace_end() exists after the update');
cmp_ok(sql('v10', 'SELECT lockext_fence_resume(0)'), '>', $sql_fence,
	'lockext_fence_resume() exists after the update');
is( sql('v10',
		q{SELECT has_function_privilege('upg_plain', 'lockext_grace_end()', 'EXECUTE') || ' ' ||
		         has_function_privilege('upg_plain', 'lockext_fence_resume(bigint)', 'EXECUTE')}),
	'false false', 'both are revoked from PUBLIC');
# the hooks are gone, and come from lockext_test now
is(hooks_in_lockext('v10'), '0', 'the update dropped the lockext_test_* hooks from lockext');
is(sql('v10', "SELECT count(*) FROM pg_proc WHERE proname LIKE 'lockext_test\\_%'"), '0',
	'... and no such function is left in the database');
($rc, $out, $err) = try_sql('v10', 'CREATE EXTENSION lockext_test');
is($rc, 0, 'CREATE EXTENSION lockext_test works after the update') or diag($err);
($rc, $out, $err) = try_sql('v10', 'SELECT lockext_test_clock_freeze(); SELECT lockext_test_clock_release()');
is($rc, 0, '... and provides the hooks') or diag($err);
is( sql('v10',
		q{SELECT count(*) FILTER (WHERE has_function_privilege('upg_plain', p.oid, 'EXECUTE')) || '/' || count(*)
		    FROM pg_proc p WHERE proname LIKE 'lockext_test\_%'}),
	'0/6', 'the six hooks of lockext_test are revoked from PUBLIC');

### 3. the updated database and a fresh 1.1 one have identical objects
my $fresh = members('v11');
is_deeply(members('v10'), $fresh, 'identical objects after UPDATE and after CREATE EXTENSION (1.1)');
is(sql('v10', '\dx+ lockext'), sql('v11', '\dx+ lockext'), '... \dx+ lockext is the same');
unlike(join("\n", @$fresh), qr/lockext_test_/, 'a fresh 1.1 has no hooks');
sql('v11', 'CREATE EXTENSION lockext_test');
is_deeply(members('v10', 'lockext_test'), members('v11', 'lockext_test'), 'lockext_test is the same in both');

($rc, $out, $err) = try_sql('v10', "ALTER EXTENSION lockext UPDATE TO '1.0'");
isnt($rc, 0, 'ALTER EXTENSION lockext UPDATE TO 1.0 fails');
like($err, qr/extension "lockext" has no update path from version "1\.1" to version "1\.0"/,
	'... clearly: there is no downgrade path');
is(extversion('v10'), '1.1', '... and leaves 1.1 in place');
($rc, $out, $err) = try_sql('v10', 'ALTER EXTENSION lockext UPDATE');
like($err, qr/version "1\.1" of extension "lockext" is already installed/, 'a second UPDATE is a no-op');

### 4. the checks fail on what a broken update script would leave
# (the members of an extension can be changed from outside its scripts, so these
# build the result of a broken 1.0--1.1 script without installing one)
sql('postgres', 'CREATE DATABASE broken');
sql('broken', "CREATE EXTENSION lockext VERSION '1.0'");
sql('broken', 'ALTER EXTENSION lockext UPDATE');
# a script that forgot to drop a hook
sql('broken', q{CREATE FUNCTION lockext_test_clock_freeze() RETURNS void
	AS '$libdir/lockext', 'lockext_test_clock_freeze' LANGUAGE C VOLATILE PARALLEL UNSAFE;
	REVOKE ALL ON FUNCTION lockext_test_clock_freeze() FROM PUBLIC;
	ALTER EXTENSION lockext ADD FUNCTION lockext_test_clock_freeze()});
is(hooks_in_lockext('broken'), '1', 'self-check: a hook left in lockext is seen');
ok(!eq_array(members('broken'), $fresh), 'self-check: ... and the object lists differ');
sql('broken', 'ALTER EXTENSION lockext DROP FUNCTION lockext_test_clock_freeze();
	DROP FUNCTION lockext_test_clock_freeze()');
is_deeply(members('broken'), $fresh, 'self-check: repaired, the lists are equal again');
# a script that recreated a function with other OUT columns
sql('broken', q{ALTER EXTENSION lockext DROP FUNCTION lockext_grace(); DROP FUNCTION lockext_grace();
	CREATE FUNCTION lockext_grace(OUT active boolean, OUT reason text, OUT grace_until timestamptz,
	    OUT remaining_ms bigint, OUT refused bigint, OUT extra bigint)
	RETURNS record AS '$libdir/lockext', 'lockext_grace' LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
	ALTER EXTENSION lockext ADD FUNCTION lockext_grace()});
my @diff = grep { /lockext_grace\(\)/ } @{ members('broken') };
ok(!eq_array(members('broken'), $fresh) && "@diff" =~ /OUT extra bigint/,
	'self-check: a function with other OUT columns is seen');
sql('broken', q{ALTER EXTENSION lockext DROP FUNCTION lockext_grace(); DROP FUNCTION lockext_grace();
	CREATE FUNCTION lockext_grace(OUT active boolean, OUT reason text, OUT grace_until timestamptz,
	    OUT remaining_ms bigint, OUT refused bigint)
	RETURNS record AS '$libdir/lockext', 'lockext_grace' LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
	ALTER EXTENSION lockext ADD FUNCTION lockext_grace()});
is_deeply(members('broken'), $fresh, 'self-check: repaired, the lists are equal again');
# a view with a column appended
sql('broken', q{CREATE OR REPLACE VIEW lockext_stats AS
	SELECT acquired, contended, renewed, renew_failed, released, release_noop, expired, table_full,
	       leases, max_locks, high_water, stats_reset, waiters, waits, wait_timeouts, wal_records,
	       sync_failed, replayed, 0::bigint AS appended
	FROM lockext_stats_internal_1_1()});
ok(!eq_array(members('broken'), $fresh), 'self-check: a view with another column list is seen');
sql('broken', 'DROP EXTENSION lockext CASCADE; CREATE EXTENSION lockext');
is_deeply(members('broken'), $fresh, 'self-check: recreated, the lists are equal again');
sql('broken', 'GRANT EXECUTE ON FUNCTION lockext_stats_reset() TO PUBLIC');
ok(!eq_array(members('broken'), $fresh), 'self-check: a member privilege not revoked is seen');
sql('postgres', 'DROP DATABASE broken');

### 5. pg_dump / pg_restore
# what a dump of $db must not hold: members dumped on their own
sub dump_ok
{
	my ($db, $schema) = @_;
	my $plain = "$tmp/$db.sql";
	$node->command_ok([ 'pg_dump', '-f', $plain, '-d', $node->connstr($db) ], "pg_dump $db (plain)");
	my $text = slurp_file($plain);
	like($text, qr/^CREATE EXTENSION IF NOT EXISTS lockext WITH SCHEMA $schema;$/m,
		"$db: the dump creates lockext by CREATE EXTENSION in $schema");
	my @members = $text =~ /^(CREATE (?:FUNCTION|TYPE|VIEW|OR REPLACE \w+) \Q$schema\E\.(?:try_lock|renew|release|lock_handle|lockext_\w+)\b.*)$/mg;
	is_deeply(\@members, [], "$db: no member of lockext is dumped on its own");
	$node->command_ok([ 'pg_dump', '-Fc', '-f', "$tmp/$db.dump", '-d', $node->connstr($db) ],
		"pg_dump $db (custom)");
	sql('postgres', "CREATE DATABASE ${db}_restored");
	$node->command_ok(
		[ 'pg_restore', '--exit-on-error', '-d', $node->connstr("${db}_restored"), "$tmp/$db.dump" ],
		"pg_restore $db into ${db}_restored");
	is_deeply(members("${db}_restored"), members($db), "${db}_restored: the same lockext objects");
	return $text;
}

# the updated database (lockext in public, lockext_test beside it)
dump_ok('v10', 'public');
is(extversion('v10_restored'), '1.1', 'v10_restored: lockext 1.1');
is_deeply(members('v10_restored'), $fresh, 'v10_restored: the objects of a fresh 1.1');
is(sql('v10_restored', "SELECT lock_id IS NOT NULL FROM try_lock('up:restored', 60000)"), 't',
	'v10_restored: try_lock works');

# lockext in its own schema, with objects that depend on it and a changed member privilege
sql('postgres', 'CREATE DATABASE app; CREATE ROLE upg_ops');
sql(
	'app', q{
	CREATE SCHEMA locks;
	CREATE EXTENSION lockext SCHEMA locks;
	CREATE EXTENSION lockext_test SCHEMA locks;
	GRANT EXECUTE ON FUNCTION locks.lockext_force_release(text) TO upg_ops;
	CREATE SCHEMA app;
	CREATE TABLE app.jobs (name text PRIMARY KEY, last locks.lock_handle);
	CREATE FUNCTION app.take(k text) RETURNS locks.lock_handle LANGUAGE sql VOLATILE
	    AS $$ SELECT * FROM locks.try_lock(k, 60000) $$;
	CREATE VIEW app.job_fences AS SELECT name, (last).key, (last).fence FROM app.jobs;
	CREATE VIEW app.held AS SELECT key, fence, holder FROM locks.lockext_leases;
	INSERT INTO app.jobs SELECT 'nightly', app.take('app:nightly');});
my $app_fence = sql('app', 'SELECT fence FROM app.job_fences');
my $dump = dump_ok('app', 'locks');
like($dump, qr/^GRANT ALL ON FUNCTION locks\.lockext_force_release\((?:key )?text\) TO upg_ops;$/m,
	'app: the dump keeps the changed privilege of a member');
is(extversion('app_restored') . ' ' . sql('app_restored',
	"SELECT extnamespace::regnamespace FROM pg_extension WHERE extname = 'lockext'"),
	'1.1 locks', 'app_restored: lockext 1.1 in schema locks');
is(sql('app_restored', "SELECT locks.lockext_test_partition_of('app:k') >= 0"), 't',
	'app_restored: lockext_test, relocatable too, in schema locks');
is(sql('app_restored', "SELECT name || ' ' || key || ' ' || fence FROM app.job_fences"),
	"nightly app:nightly $app_fence", 'app_restored: the table of lock_handle values and the view over it');
is(sql('app_restored', "SELECT (app.take('app:again')).key"), 'app:again',
	'app_restored: the function returning lock_handle works');
is(sql('app_restored', "SELECT count(*) FROM app.held WHERE key = 'app:again'"), '1',
	'app_restored: the view over lockext_leases works');
is( sql('app_restored',
		q{SELECT has_function_privilege('upg_ops', 'locks.lockext_force_release(text)', 'EXECUTE') || ' ' ||
		         has_function_privilege('upg_plain', 'locks.lockext_force_release(text)', 'EXECUTE')}),
	'true false', 'app_restored: the granted privilege is back, PUBLIC still has none');

$node->stop;
done_testing();
