# Crash safety of the announcer (docs/operations.md, "Crash safety";
# src/announcer.c): the server is killed with SIGKILL while the announcer,
# the background worker that notifies persona_segment for every committed
# segment change, is running and announcing to a listener, under concurrent
# single-event writers whose events enter and leave segments.
#
# Two rounds: 1. SIGKILL of the announcer itself (the postmaster ends every
# process and recovers); 2. SIGKILL of the postmaster and every process at
# once (a power cut as far as PostgreSQL can tell). After each recovery:
#   - no announcer is running (it is never restarted by the postmaster),
#     and none is needed for the data: every event a writer saw committed is
#     there, every profile's event_count equals its events;
#   - the segment log is consistent: for every segment and profile the log
#     alternates enter, exit, enter... starting with an enter, the last op
#     is an enter exactly for the members, and the members equal the
#     predicates evaluated by hand; no log_id is used twice;
#   - the next write starts the announcer again, and a listener gets
#     persona_segment with a horizon (log_id) covering every log row
#     committed by then.
# And the server log shows no PANIC, assertion or other signal.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::RealBin;
use CrashCommon;

my $scale = $ENV{CRASH_SCALE} || 1;
my $db    = 'announce';

my $node = crash_node('announcer', $db);

sub sql { return $node->safe_psql($db, $_[0]); }

# Every profile enters "seen" at its first event and "repeat" at its
# second; "odd" it enters and leaves with every event.
sql(<<'EOF');
CREATE EXTENSION persona;
SELECT persona_create_segment('seen', 'event_count >= 1');
SELECT persona_create_segment('repeat', 'event_count >= 2');
SELECT persona_create_segment('odd', 'event_count % 2 = 1');
EOF
pass('setup: persona and three segments');

my $work = PostgreSQL::Test::Utils::tempdir;

sub client { return start_client($node, $db, $work, @_); }

# The horizons (log_id payloads) a listener's output shows.
sub horizons
{
	return map { /payload "\{"log_id": (\d+)\}"/ ? $1 : () }
	  grep { /Asynchronous notification "persona_segment"/ } slurp_lines(shift);
}

# A listener: LISTEN, then short statements for psql to print what arrived.
sub listener
{
	my ($name, $seconds) = @_;
	return client($name,
		"LISTEN persona_segment;\nSELECT 'listening';\n"
		  . ("SELECT pg_sleep(0.05);\n" x (20 * $seconds)));
}

# Single-event writers: each statement its own transaction; each printed
# id committed.
sub writers
{
	my ($tag, $n) = @_;
	my @c;
	for my $w (1 .. $n)
	{
		my $s = "\\set ON_ERROR_STOP 1\n";
		for my $k (1 .. 20000 * $scale)
		{
			my $user = $k % 2 ? "$tag$w-$k" : "$tag$w-" . ($k % 500);
			$s .= "SELECT persona_track('$user', 'page_view');\n";
		}
		push @c, client("$tag-writer$w", $s);
	}
	return @c;
}

sub announcer_pid
{
	return sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'persona announcer'"
		  . " AND datname = '$db'");
}

# Waits (at most 60 s) for a condition.
sub wait_for
{
	my ($cond) = @_;
	for (1 .. 600)
	{
		return 1 if $cond->();
		usleep(100_000);
	}
	return 0;
}

my @committed;

sub check_after_recovery
{
	my ($what) = @_;

	is(announcer_pid(), '', "$what: no announcer runs after recovery");

	my $ids = join(',', @committed);
	is(sql("SELECT count(*) FROM persona.events WHERE event_id IN ($ids)"),
		scalar(@committed), "$what: every event a writer saw committed is there");
	is(sql(<<'EOF'), '0', "$what: every profile counts its events");
SELECT count(*) FROM persona.profiles AS p
 WHERE p.event_count <> (SELECT count(*) FROM persona.events AS e WHERE e.profile_id = p.profile_id)
EOF
	is(sql(<<'EOF'), '0', "$what: the log alternates enter and exit, from an enter");
SELECT count(*) FROM (
  SELECT l.op, lag(l.op) OVER (PARTITION BY l.segment, l.profile_id ORDER BY l.log_id) AS prev
    FROM persona.segment_log AS l) AS x
 WHERE x.op = coalesce(x.prev, 'exit')
EOF
	is(sql(<<'EOF'), '0', "$what: the last op logged is an enter exactly for the members");
SELECT count(*) FROM (
  SELECT DISTINCT ON (l.segment, l.profile_id) l.segment, l.profile_id, l.op
    FROM persona.segment_log AS l ORDER BY l.segment, l.profile_id, l.log_id DESC) AS last
  FULL JOIN persona.segment_members AS m USING (segment, profile_id)
 WHERE (last.op = 'enter') IS DISTINCT FROM (m.profile_id IS NOT NULL)
EOF
	is(sql(<<'EOF'), '0', "$what: the members equal the predicates evaluated by hand");
SELECT count(*) FROM (
  SELECT s.segment, p.profile_id FROM persona.profiles AS p
   CROSS JOIN LATERAL (VALUES ('seen', p.event_count >= 1), ('repeat', p.event_count >= 2),
                              ('odd', p.event_count % 2 = 1)) AS s(segment, member)
   WHERE s.member) AS want
  FULL JOIN persona.segment_members AS m USING (segment, profile_id)
 WHERE want.profile_id IS NULL OR m.profile_id IS NULL
EOF

	# The next write starts the announcer again, and a listener hears of
	# everything committed.
	my $l = listener("$what-after", 60);
	ok(wait_for(sub { grep { $_ eq 'listening' } slurp_lines("$work/$what-after.out") }),
		"$what: a listener listens");
	my $id = sql("SELECT persona_track('after-$what', 'page_view')");
	my $last = sql('SELECT max(log_id) FROM persona.segment_log');
	ok(wait_for(sub { announcer_pid() ne '' }) || grep({ $_ >= $last } horizons("$work/$what-after.out")),
		"$what: the next write starts the announcer again");
	ok(wait_for(sub { grep { $_ >= $last } horizons("$work/$what-after.out") }),
		"$what: the listener gets persona_segment with a horizon covering log_id $last");
	$l->{h}->kill_kill;
	push @committed, $id;
}

# One round: writers and a listener; once the announcer is announcing to
# the listener, $kill runs; then the writers are reaped and the data checked.
sub round
{
	my ($what, $kill) = @_;
	my $l = listener("$what-before", 60);
	my @w = writers($what, 3);
	ok(wait_for(sub { horizons("$work/$what-before.out") > 2 }),
		"$what: the announcer announces to the listener while writers write");
	my $pid = announcer_pid();
	ok($pid ne '', "$what: the announcer runs (pid $pid)");
	$kill->($pid);
	for my $c (@w, $l)
	{
		$c->{h}->finish;    # psql exits once its connection is gone
		push @committed, grep { /^\d+$/ } slurp_lines("$work/$c->{name}.out")
		  if $c->{name} =~ /writer/;
	}
	ok(@committed > 0, "$what: the writers committed events before the kill");
	check_after_recovery($what);
}

# 1. SIGKILL of the announcer: the postmaster ends every process and recovers.
round(
	'announcer-killed',
	sub {
		kill_backend_and_wait($node, shift);
	});
like(slurp_file($node->logfile), qr/persona announcer.*terminated by signal 9/,
	'announcer-killed: the announcer was killed with SIGKILL');

# 2. SIGKILL of the postmaster and every process at once, then a start.
round(
	'server-killed',
	sub {
		kill_all_and_restart($node);
	});

unlike(slurp_file($node->logfile), qr/PANIC|TRAP:|terminated by signal (?!9)/,
	'the log shows no PANIC, assertion or other signal');

$node->stop;
done_testing();
