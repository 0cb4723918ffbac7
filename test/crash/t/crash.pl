# Crash safety (docs/operations.md, "Crash safety"): the server is killed
# with SIGKILL in the middle of persona's work, restarted, and the data
# checked against what was committed.
#
# Scenarios, each with concurrent single-event writers (persona_track):
#   1. bulk ingest (INSERT ... SELECT batches)        kill: postmaster + all
#   2. merges (persona_identify of anonymous profiles) kill: postmaster + all
#   3. trait backfills (persona_define_trait loop)    kill: the backend (crash
#                                                      recovery by the postmaster)
#   4. segment creation (persona_create_segment loop) kill: postmaster + all
#   5. a claim/ack storm of outbox workers             kill: postmaster + all,
#                                                      then a worker's backend
# "postmaster + all" is a power cut as far as PostgreSQL can tell: every
# process of the server dies at once (the OS keeps its page cache, so this is
# WAL replay of everything that reached the kernel, which is what a commit
# guarantees with fsync on a crash-safe disk).
#
# After each recovery (check_all):
#   - every event a writer saw committed is there, and each bulk batch is
#     whole or absent;
#   - every profile's event_count, first_seen and last_seen equal its
#     events; every identity points at a live profile;
#   - every trait column of persona.traits equals a GROUP BY over the events;
#   - every segment's members equal its predicate evaluated by hand;
#   - messages: one per committed triggering event, none acked twice (the
#     workers log each ack in the ack's own transaction), and every message
#     not sent is claimable again once its lease ends, and no sent one is;
#   - amcheck: bt_index_check on every persona index, verify_heapam on every
#     persona table, finds nothing.
# CRASH_SCALE (default 1) multiplies the data size.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep time);
use FindBin;
use lib $FindBin::RealBin;
use CrashCommon;

my $scale = $ENV{CRASH_SCALE} || 1;
my $users = 4000 * $scale;     # people of the bulk load
my $batch = 4000 * $scale;     # events per bulk INSERT
my $db    = 'crash';

my $node = crash_node('crash', $db);

sub sql { return $node->safe_psql($db, $_[0]); }

sql(<<"EOF");
CREATE EXTENSION persona;
CREATE EXTENSION amcheck;
SELECT persona_define_trait('purchases', 'count', 'purchase');
SELECT persona_define_trait('spent', 'sum', 'purchase', 'amount');
SELECT persona_define_trait('carts', 'count', 'cart');
SELECT persona_create_segment('seg_3_100', 'purchases >= 3 AND spent > 100');
SELECT persona_create_action('remind', 'push', '{"text": "{{carts}} carts"}');
SELECT persona_create_trigger('cart_remind', 'cart', 'remind');
-- What the outbox workers acked, written in the ack's own transaction.
CREATE TABLE sent_log (message_id bigint NOT NULL, worker int NOT NULL);
INSERT INTO persona.events (user_id, event_type, properties)
SELECT 'u' || (i % $users), CASE WHEN i % 10 = 0 THEN 'cart' ELSE 'purchase' END,
       jsonb_build_object('amount', i % 97)
  FROM generate_series(1, 5 * $batch) AS i;
EOF
pass('setup: persona, traits, a segment, a trigger and ' . 5 * $batch . ' events');

my $work = PostgreSQL::Test::Utils::tempdir;
my @committed_ids;    # event ids persona_track returned (committed)
my %bulk_done;        # bulk batches whose COMMIT returned
my $bulk_next = 1;

# A psql client running a script in the background, its output to a file.
sub client
{
	my ($name, $script) = @_;
	return start_client($node, $db, $work, $name, "\\set ON_ERROR_STOP 1\n$script");
}

# Single-event writers: persona_track of people of the bulk load and of new
# people, each statement its own transaction; each printed id committed.
sub writers
{
	my ($tag, $n) = @_;
	my @c;
	for my $w (1 .. $n)
	{
		my $s = '';
		for my $k (1 .. 20000)
		{
			my $type = $k % 7 == 0 ? 'cart' : 'purchase';
			my $user = $k % 3 == 0 ? "$tag$w-$k" : 'u' . (($k * 7 + $w) % $users);
			$s .= "SELECT persona_track('$user', '$type', '{\"amount\": "
			  . ($k % 50) . "}');\n";
		}
		push @c, client("$tag-writer$w", $s);
	}
	return @c;
}

# Bulk ingest: batches of $batch events, each INSERT its own transaction.
sub bulk
{
	my $s = '';
	for my $k ($bulk_next .. $bulk_next + 200)
	{
		$s .= "INSERT INTO persona.events (user_id, anonymous_id, event_type, properties)\n"
		  . "SELECT CASE WHEN i % 4 = 0 THEN NULL ELSE 'u' || (i % $users) END,\n"
		  . "       CASE WHEN i % 4 = 0 THEN 'a$k-' || (i % 50) END,\n"
		  . "       CASE WHEN i % 10 = 0 THEN 'cart' ELSE 'purchase' END,\n"
		  . "       jsonb_build_object('amount', i % 89, 'batch', $k)\n"
		  . "  FROM generate_series(1, $batch) AS i;\n\\echo batch $k\n";
	}
	$bulk_next += 201;
	return client("bulk$bulk_next", $s);
}

# Waits until every client has exited (after the kill) and collects what
# the writers saw committed.
sub reap
{
	for my $c (@_)
	{
		$c->{h}->finish;    # psql exits once its connection is gone
		my @out = slurp_lines("$work/$c->{name}.out");
		if ($c->{name} =~ /writer/)
		{
			push @committed_ids, grep { /^\d+$/ } @out;
		}
		elsif ($c->{name} =~ /bulk/)
		{
			for (@out)
			{
				$bulk_done{$1} = 1 if /^batch (\d+)$/;
			}
		}
	}
}

# Waits (at most 60 s) for a query of the pattern to be running, plus $ms.
sub wait_active
{
	my ($pattern, $ms, $tries, $states) = @_;
	my $pid;
	$states ||= "'active'";
	for (1 .. ($tries || 600))
	{
		$pid = sql("SELECT pid FROM pg_stat_activity WHERE datname = '$db'"
			  . " AND state IN ($states) AND pid <> pg_backend_pid() AND query LIKE '$pattern' LIMIT 1");
		last if $pid;
		usleep(100_000);
	}
	usleep($ms * 1000);
	return $pid;
}

sub is_zero
{
	my ($query, $what) = @_;
	my $got = sql($query);
	is($got, '0', $what) or diag("query: $query");
}

sub check_all
{
	my $when = shift;

	is_zero(
		'SELECT count(*) FROM unnest(\'{' . join(',', @committed_ids) . '}\'::bigint[]) AS c(id)'
		  . ' WHERE NOT EXISTS (SELECT FROM persona.events AS e WHERE e.event_id = c.id)',
		"$when: every event a writer saw committed is there ("
		  . scalar(@committed_ids) . ' events)');

	my $done = join(',', sort keys %bulk_done) || '0';
	is_zero(
		"SELECT count(*) FROM (SELECT (properties->>'batch')::int AS b, count(*) AS n"
		  . " FROM persona.events WHERE properties ? 'batch' GROUP BY 1) AS x"
		  . " WHERE n <> $batch",
		"$when: every bulk batch is whole or absent, and each committed one is whole");
	is_zero(
		"SELECT count(*) FROM unnest('{$done}'::int[]) AS d(b) WHERE b > 0 AND NOT EXISTS"
		  . " (SELECT FROM persona.events AS e WHERE e.properties @> jsonb_build_object('batch', d.b))",
		"$when: every committed bulk batch is there (" . scalar(keys %bulk_done) . ')');

	is_zero(<<"EOF", "$when: every profile's event_count, first_seen, last_seen equal its events");
SELECT count(*)
  FROM persona.profiles AS p
  FULL JOIN (SELECT profile_id, count(*) AS n, min(occurred_at) AS f, max(occurred_at) AS l
               FROM persona.events GROUP BY profile_id) AS e USING (profile_id)
 WHERE p.profile_id IS NULL
    OR p.event_count <> coalesce(e.n, 0)
    OR e.n IS NOT NULL AND (p.first_seen IS DISTINCT FROM e.f OR p.last_seen IS DISTINCT FROM e.l)
EOF
	is_zero(
		'SELECT count(*) FROM persona.identities AS i WHERE NOT EXISTS'
		  . ' (SELECT FROM persona.profiles AS p WHERE p.profile_id = i.profile_id)',
		"$when: every identity points at a live profile");

	# Traits: the view against a GROUP BY over the events, per definition.
	my @traits = split /\n/,
	  sql("SELECT name || '|' || aggregate || '|' || event_type || '|' || coalesce(property, '')"
		  . ' FROM persona.trait_defs ORDER BY name');
	my $bad = 0;
	for my $t (@traits)
	{
		my ($name, $agg, $type, $prop) = split /\|/, $t, 4;
		my $v = "(e.properties->>'$prop')::numeric";
		my %by = (
			count => 'count(*)',
			sum   => "sum($v)",
			max   => "max($v)",
			min   => "min($v)");
		my %none = (count => '0', sum => '0', max => 'NULL', min => 'NULL');
		die "no recomputation for aggregate $agg" unless $by{$agg};
		my $n = sql(<<"EOF");
SELECT count(*)
  FROM persona.profiles AS p
  LEFT JOIN persona.traits AS t USING (profile_id)
  LEFT JOIN (SELECT e.profile_id, $by{$agg} AS v FROM persona.events AS e
              WHERE e.event_type = '$type' GROUP BY e.profile_id) AS g USING (profile_id)
 WHERE t.profile_id IS NULL OR t.${name}::numeric IS DISTINCT FROM coalesce(g.v, $none{$agg})
EOF
		diag("trait $name: $n profiles differ") if $n ne '0';
		$bad += $n;
	}
	is($bad, 0, "$when: every trait (" . scalar(@traits) . ') equals a GROUP BY recomputation');

	# Segments are named seg_N_M for "purchases >= N AND spent > M".
	my $segs = sql('SELECT count(*) FROM persona.segments');
	my $diff = sql(<<'EOF');
WITH agg AS (
  SELECT p.profile_id,
         count(e.event_id) FILTER (WHERE e.event_type = 'purchase') AS n,
         coalesce(sum((e.properties->>'amount')::numeric) FILTER (WHERE e.event_type = 'purchase'), 0) AS s
    FROM persona.profiles AS p LEFT JOIN persona.events AS e USING (profile_id)
   GROUP BY p.profile_id),
segs AS (
  SELECT name, split_part(name, '_', 2)::int AS n, split_part(name, '_', 3)::int AS m
    FROM persona.segments),
hand AS (SELECT segs.name, agg.profile_id FROM segs JOIN agg ON agg.n >= segs.n AND agg.s > segs.m),
stored AS (SELECT segment, profile_id FROM persona.segment_members)
SELECT string_agg(name || ': ' || c || ' profiles differ', ', ')
  FROM (SELECT name, count(*) AS c
          FROM ((TABLE hand EXCEPT TABLE stored) UNION ALL (TABLE stored EXCEPT TABLE hand)) AS d
         GROUP BY name) AS x
EOF
	is($diff, '', "$when: every segment's members ($segs segments) equal its predicate evaluated by hand");

	check_messages($when);

	my ($rc, $out, $err) = $node->psql($db, <<'EOF');
SELECT c.relname || ': ' || v.msg
  FROM pg_class AS c, LATERAL verify_heapam(c.oid, check_toast => true) AS v
 WHERE c.relnamespace = 'persona'::regnamespace AND c.relkind IN ('r', 'm');
SELECT count(bt_index_check(c.oid, true))
  FROM pg_class AS c JOIN pg_am AS a ON a.oid = c.relam
 WHERE c.relnamespace = 'persona'::regnamespace AND c.relkind = 'i' AND a.amname = 'btree'
 HAVING false;
EOF
	is("$rc|$out|$err", '0||',
		"$when: amcheck finds nothing (verify_heapam on every persona table, bt_index_check on every index)");
}

sub check_messages
{
	my $when = shift;
	is_zero(<<'EOF', "$when: one message per committed triggering event, per profile");
SELECT count(*) FROM
  (SELECT profile_id, count(*) AS n FROM persona.events WHERE event_type = 'cart' GROUP BY 1) AS e
  FULL JOIN (SELECT profile_id, count(*) AS n FROM persona.messages GROUP BY 1) AS m USING (profile_id)
 WHERE e.n IS DISTINCT FROM m.n
EOF
	is_zero('SELECT count(*) FROM (SELECT message_id FROM sent_log GROUP BY 1 HAVING count(*) > 1) AS d',
		"$when: no message was acked twice");
	is_zero(<<'EOF', "$when: the sent messages are exactly those whose ack committed");
SELECT count(*) FROM ((SELECT message_id FROM persona.messages WHERE status = 'sent'
                       EXCEPT SELECT message_id FROM sent_log)
                      UNION ALL
                      (SELECT message_id FROM sent_log
                       EXCEPT SELECT message_id FROM persona.messages WHERE status = 'sent')) AS d
EOF
}

# Every message not sent is claimable once the leases have run out: claim
# them all (and ack, logging them), then nothing is left but sent ones.
sub drain_outbox
{
	my $when = shift;
	# Leases are 2 s: wait them out.
	sleep 3;
	my $unsent = sql("SELECT count(*) FROM persona.messages WHERE status <> 'sent'");
	my $claimed = 0;
	for (1 .. 1000)
	{
		my $n = sql(<<'EOF');
WITH c AS (SELECT message_id FROM persona_claim('push', 1000, '1 minute')),
     l AS (INSERT INTO sent_log SELECT message_id, 0 FROM c RETURNING message_id)
SELECT count(*) FROM l
EOF
		last if $n == 0;
		$claimed += $n;
		sql('SELECT persona_ack(array_agg(message_id)) FROM sent_log WHERE worker = 0'
			  . " AND message_id IN (SELECT message_id FROM persona.messages WHERE status = 'claimed')");
	}
	is($claimed, $unsent, "$when: every unsent message ($unsent) was claimable, and only those");
	is_zero("SELECT count(*) FROM persona.messages WHERE status <> 'sent'",
		"$when: the outbox is drained");
	check_messages("$when, drained");
}

# 1. Bulk ingest with concurrent single-event writers.
{
	my @c = (bulk(), writers('s1', 2));
	wait_active('INSERT INTO persona.events%', 1500);
	kill_all_and_restart($node);
	reap(@c);
	check_all('bulk ingest');
}

# 2. Merges: known users identified with anonymous ids that have events.
{
	my $pairs = 2000;
	sql("INSERT INTO persona.events (user_id, event_type, properties)"
		  . " SELECT 'm' || (i % $pairs), 'purchase', jsonb_build_object('amount', i % 31)"
		  . " FROM generate_series(1, 3 * $pairs) AS i");
	sql("INSERT INTO persona.events (anonymous_id, event_type, properties)"
		  . " SELECT 'anon' || (i % $pairs), CASE WHEN i % 5 = 0 THEN 'cart' ELSE 'purchase' END,"
		  . " jsonb_build_object('amount', i % 37) FROM generate_series(1, 3 * $pairs) AS i");
	my @c;
	for my $w (0 .. 1)
	{
		my $s = '';
		for (my $i = $w; $i < $pairs; $i += 2)
		{
			$s .= "SELECT persona_identify('m$i', '{\"w\": $w}', 'anon$i');\n";
		}
		push @c, client("merge$w", $s);
	}
	push @c, writers('s2', 1);
	wait_active('SELECT persona_identify%', 0);
	# Kill once a tenth of the merges are done, whatever the machine's speed.
	my $before = sql('SELECT count(*) FROM persona.merges');
	for (1 .. 600)
	{
		last if sql('SELECT count(*) FROM persona.merges') - $before >= $pairs / 10;
		usleep(50_000);
	}
	kill_all_and_restart($node);
	reap(@c);
	my $merged = sql("SELECT count(*) FROM persona.identities WHERE id LIKE 'anon%'"
		  . " AND profile_id IN (SELECT profile_id FROM persona.identities WHERE id LIKE 'm%')");
	ok($merged > 0 && $merged < $pairs, "merges: the kill came mid-way ($merged of $pairs merged)");
	check_all('merges');
}

# 3. Trait backfills: define and drop traits over all the events; kill the
#    backend that backfills, so the postmaster itself recovers.
{
	my $s = '';
	for my $k (1 .. 500)
	{
		my ($agg) = (qw(max min sum count))[ $k % 4 ];
		my $prop = $agg eq 'count' ? 'NULL' : "'amount'";
		$s .= "SELECT persona_define_trait('t$k', '$agg', 'purchase', $prop);\n";
		$s .= 'SELECT persona_drop_trait(\'t' . ($k - 1) . "');\n" if $k % 3 && $k > 1;
	}
	my @c = (client('traits', $s), writers('s3', 1));
	my $pid = wait_active('SELECT persona_define_trait%', 1000);
	$pid = wait_active('SELECT persona_define_trait%', 0);
	ok($pid, 'traits: a backfill is running');
	kill_backend_and_wait($node, $pid) if $pid;
	reap(@c);
	like(slurp_file($node->logfile), qr/terminated by signal 9/, 'traits: the backend was killed');
	check_all('trait backfill');
}

# 4. Segment creation over every profile.
{
	my $s = '';
	for my $k (1 .. 300)
	{
		my $n = $k % 9 + 1;
		my $m = ($k * 37) % 400;
		$s .= "SELECT persona_create_segment('seg_${n}_$m', 'purchases >= $n AND spent > $m')"
		  . " WHERE NOT EXISTS (SELECT FROM persona.segments WHERE name = 'seg_${n}_$m');\n";
		$s .= "SELECT persona_drop_segment('seg_${n}_$m');\n" if $k % 3;
	}
	my @c = (client('segments', $s), writers('s4', 1));
	wait_active('SELECT persona_create_segment%', 1200);
	kill_all_and_restart($node);
	reap(@c);
	check_all('segment creation');
}

# 5. A claim/ack storm: workers claim batches with 2 s leases and ack them
#    (logging each ack in its transaction); one of them sometimes claims
#    and never acks (a worker that died); producers add events meanwhile.
sub worker
{
	my ($w, $forget) = @_;
	my $s = "CREATE TEMP TABLE batch (message_id bigint);\n";
	for my $k (1 .. 10000)
	{
		$s .= "BEGIN;\nINSERT INTO batch SELECT message_id FROM persona_claim('push', 20, '2 seconds');\n";
		if ($forget && $k % 4 == 0)
		{
			$s .= "COMMIT;\n";
		}
		else
		{
			$s .= "INSERT INTO sent_log SELECT message_id, $w FROM batch;\n"
			  . "SELECT persona_ack(array(SELECT message_id FROM batch));\n"
			  . "COMMIT;\n";
		}
		$s .= "TRUNCATE batch;\n";
	}
	return client("worker$w", $s);
}

for my $round ('all', 'backend')
{
	my @c = (worker(1, 0), worker(2, 0), worker(3, 1), writers("s5$round", 1));
	my $pid = wait_active('INSERT INTO batch SELECT message_id FROM persona_claim%', 1500);
	if ($round eq 'backend')
	{
		# A worker in persona_ack if one is caught within 10 s, else a worker
		# in or between claim and ack (an empty queue makes claims so quick
		# that polling rarely catches one running).
		$pid = wait_active('%persona_ack%', 0, 100)
		  || wait_active('%batch%', 0, 600, "'active', 'idle in transaction'");
	}
	if ($round eq 'all')
	{
		kill_all_and_restart($node);
	}
	else
	{
		ok($pid, 'claim/ack storm: a worker is claiming or acking');
		kill_backend_and_wait($node, $pid) if $pid;
	}
	reap(@c);
	my $sent = sql('SELECT count(*) FROM sent_log');
	ok($sent > 0, "claim/ack storm ($round): the workers acked $sent messages before the kill");
	check_all("claim/ack storm ($round)");
	drain_outbox("claim/ack storm ($round)");
}

unlike(slurp_file($node->logfile), qr/PANIC|TRAP:|terminated by signal (?!9)/,
	'the log shows no PANIC, assertion or other signal');

$node->stop;
done_testing();
