# What the crash tests (t/*.pl) share: a server that restarts after a
# crash, background psql clients, and the two ways of killing the server.
package CrashCommon;

use strict;
use warnings;
use Exporter 'import';
use IPC::Run;
use PostgreSQL::Test::Cluster;
use Time::HiRes qw(usleep);

our @EXPORT = qw(crash_node start_client slurp_lines kill_all_and_restart
  kill_backend_and_wait);

# A started server (fsync on, restarting after a crash) with database $db.
sub crash_node
{
	my ($name, $db) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf(
		'postgresql.conf', qq{
max_connections = 30
restart_after_crash = on
log_min_messages = warning
fsync = on
});
	$node->start;
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	return $node;
}

# A psql client running a script in the background, its output to
# $work/$name.out (and .err).
sub start_client
{
	my ($node, $db, $work, $name, $script) = @_;
	my $in = "$work/$name.sql";
	open my $fh, '>', $in or die;
	print $fh $script;
	close $fh;
	my @cmd = ('psql', '-X', '-qAt', '-d', $node->connstr($db), '-f', $in);
	my $h = IPC::Run::start(\@cmd, '<', \undef, '>', "$work/$name.out",
		'2>', "$work/$name.err");
	return { name => $name, h => $h };
}

sub slurp_lines
{
	my $f = shift;
	open my $fh, '<', $f or return ();
	my @l = <$fh>;
	chomp @l;
	return @l;
}

# The server's processes: the postmaster's children.
sub children
{
	my $pm = shift;
	my @kids;
	opendir my $d, '/proc' or die;
	for my $p (grep { /^\d+$/ } readdir $d)
	{
		open my $fh, '<', "/proc/$p/stat" or next;
		my $stat = <$fh>;
		close $fh;
		next unless defined $stat && $stat =~ /\)\s+\S+\s+(\d+)/;
		push @kids, $p if $1 == $pm;
	}
	return @kids;
}

sub alive { return kill(0, $_[0]); }

# SIGKILL the postmaster and every one of its processes at once, then start.
sub kill_all_and_restart
{
	my $node = shift;
	my $pm   = $node->{_pid};
	my @kids = children($pm);
	$node->kill9;
	kill 'KILL', @kids;
	for (1 .. 600)
	{
		last unless grep { alive($_) } $pm, @kids;
		usleep(50_000);
	}
	$node->start;
}

# SIGKILL one process: the postmaster ends every other one and recovers.
sub kill_backend_and_wait
{
	my ($node, $pid) = @_;
	my $offset = -s $node->logfile;
	kill 'KILL', $pid;
	$node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
	$node->wait_for_log(qr/database system is ready to accept connections/, $offset);
}

1;
