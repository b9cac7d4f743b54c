#!/usr/bin/perl
# report.pl SAMPLES.tsv JSON_OUT MD_OUT — turn bench/compare.sh's raw samples
# into a JSON record and a markdown table (medians, and the targets checked).
#
# Input lines (tab-separated):
#   meta    KEY  VALUE
#   sample  FS   ROW  REP  VALUE  LOAD1  CPU   (VALUE: MB/s or seconds, "error" if the
#           command failed; CPU: seconds used by the row's commands plus the FUSE daemon)
#   note    FS   ROW  REP  TEXT
use strict;
use warnings;
use JSON::PP;

my ($in, $json_out, $md_out) = @ARGV;
die "usage: report.pl SAMPLES.tsv JSON_OUT MD_OUT\n" unless defined $md_out;

# Row order, labels and units; "higher" says which direction is better.
my @rows = (
	[seqwrite       => 'sequential write (dd bs=1M conv=fsync)',     'MB/s', 1],
	[seqread        => 'sequential read, after remount + drop_caches', 'MB/s', 1],
	[cp             => 'cp -a tree',                                 's',    0],
	[rsync          => 'rsync -a tree (second copy)',                's',    0],
	[rsync_checksum => 'rsync -a --checksum, no-op',                 's',    0],
	[diff           => 'diff -r --no-dereference',                   's',    0],
	[rm             => 'rm -rf tree',                                's',    0],
);
my @fss   = qw(ext4 kmsfs gocryptfs securefs);
my @peers = qw(gocryptfs securefs);
# Column headings; gofuse (go-fuse's loopback, no encryption) is a yardstick,
# not a peer, and shown only when the run had it.
my %label = (gofuse => 'go-fuse loopback (no crypto)');

my (%meta, @meta_order, %samples, %loads, %cpu, %errors, @notes);
open(my $fh, '<', $in) or die "$in: $!";
while (<$fh>) {
	chomp;
	my @f = split /\t/;
	if ($f[0] eq 'meta') {
		push @meta_order, $f[1] unless exists $meta{ $f[1] };
		$meta{ $f[1] } = $f[2] // '';
	} elsif ($f[0] eq 'sample') {
		my (undef, $fs, $row, $rep, $v, $load, $cpu) = @f;
		if ($v eq 'error') {
			$errors{$fs}{$row}++;
		} else {
			push @{ $samples{$fs}{$row} }, $v + 0;
		}
		push @{ $loads{$fs}{$row} }, $load + 0 if defined $load && $load ne '';
		push @{ $cpu{$fs}{$row} }, $cpu + 0 if defined $cpu && $cpu ne '' && $v ne 'error';
	} elsif ($f[0] eq 'note') {
		push @notes, { fs => $f[1], row => $f[2], rep => $f[3] + 0, text => $f[4] };
	}
}
close $fh;
push @fss, 'gofuse' if $samples{gofuse} || $errors{gofuse};
# kmsfs-base: the same rows with another kmsfs binary (--baseline-bin).
my $has_base = $samples{'kmsfs-base'} || $errors{'kmsfs-base'};
push @fss, 'kmsfs-base' if $has_base;

sub median {
	my @v = sort { $a <=> $b } @_;
	return undef unless @v;
	return @v % 2 ? $v[$#v / 2] : ($v[@v / 2 - 1] + $v[@v / 2]) / 2;
}
my (%med, %cpu_med);
for my $fs (@fss) {
	for my $r (@rows) {
		$cpu_med{$fs}{ $r->[0] } = $cpu{$fs}{ $r->[0] } ? median(@{ $cpu{$fs}{ $r->[0] } }) : undef;
		my $s = $samples{$fs}{ $r->[0] };
		# A row with any failed repetition has no median: a partial result would flatter it.
		$med{$fs}{ $r->[0] } = ($s && !$errors{$fs}{ $r->[0] }) ? median(@$s) : undef;
	}
}

# speed(fs, row): bigger is better whatever the unit, so ratios read alike.
sub speed {
	my ($fs, $r) = @_;
	my $v = $med{$fs}{ $r->[0] };
	return undef unless defined $v && $v > 0;
	return $r->[3] ? $v : 1 / $v;
}
my (%ahead, $ahead_all);
$ahead_all = 1;
for my $r (@rows) {
	my $k = speed('kmsfs', $r);
	my $ok = defined $k ? 1 : 0;
	for my $p (@peers) {
		my $s = speed($p, $r);
		$ok = 0 if defined $k && defined $s && !($k > $s);
	}
	$ahead{ $r->[0] } = $ok;
	$ahead_all &&= $ok;
}
my ($kw, $ew) = (speed('kmsfs', $rows[0]), speed('ext4', $rows[0]));
my $write_ratio = (defined $kw && defined $ew) ? $kw / $ew : undef;
my $read        = $med{kmsfs}{seqread};
my %targets = (
	kmsfs_ahead_of_peers_every_row => $ahead_all ? JSON::PP::true : JSON::PP::false,
	seqwrite_kmsfs_over_ext4       => $write_ratio,
	seqwrite_at_least_0_9x_ext4    => (defined $write_ratio && $write_ratio >= 0.9) ? JSON::PP::true : JSON::PP::false,
	seqread_kmsfs_mb_s             => $read,
	seqread_at_least_600_mb_s      => (defined $read && $read >= 600) ? JSON::PP::true : JSON::PP::false,
);

my %json = (
	meta    => { map { $_ => $meta{$_} } @meta_order },
	rows    => [map { { id => $_->[0], label => $_->[1], unit => $_->[2], higher_is_better => $_->[3] ? JSON::PP::true : JSON::PP::false } } @rows],
	samples => \%samples,
	errors  => \%errors,
	load1_at_start => \%loads,
	cpu_seconds    => \%cpu,
	cpu_median     => \%cpu_med,
	median  => \%med,
	kmsfs_ahead_by_row => { map { $_ => $ahead{$_} ? JSON::PP::true : JSON::PP::false } keys %ahead },
	targets => \%targets,
	notes   => \@notes,
);
open(my $jo, '>', $json_out) or die "$json_out: $!";
print $jo JSON::PP->new->pretty->canonical->encode(\%json);
close $jo;

sub cell {
	my ($fs, $r) = @_;
	return 'error' if $errors{$fs}{ $r->[0] };
	my $v = $med{$fs}{ $r->[0] };
	return 'n/a' unless defined $v;
	return $r->[2] eq 'MB/s' ? sprintf('%.0f', $v) : sprintf('%.2f', $v);
}
sub pf { return $_[0] ? 'pass' : '**fail**' }

# Repetitions actually taken (fewer than asked when the run was interrupted).
my $n = 0;
for my $fs (keys %samples) {
	for my $row (keys %{ $samples{$fs} }) {
		my $k = @{ $samples{$fs}{$row} } + ($errors{$fs}{$row} // 0);
		$n = $k if $k > $n;
	}
}
my $out = '';
$out .= "| row (median of $n) | unit | " . join(' | ', map { $label{$_} // $_ } @fss) . " | kmsfs speed ÷ ext4 | kmsfs ahead of both peers |\n";
$out .= "|---|---|" . ('--:|' x @fss) . "--:|:-:|\n";
for my $r (@rows) {
	my ($k, $e) = (speed('kmsfs', $r), speed('ext4', $r));
	my $ratio = (defined $k && defined $e) ? sprintf('%.2f×', $k / $e) : 'n/a';
	$out .= "| $r->[1] | $r->[2] | " . join(' | ', map { cell($_, $r) } @fss) . " | $ratio | " . pf($ahead{ $r->[0] }) . " |\n";
}
$out .= "\n| target | value | result |\n|---|--:|:-:|\n";
$out .= sprintf("| kmsfs ahead of gocryptfs and securefs on every row | %d of %d rows | %s |\n",
	scalar(grep { $ahead{ $_->[0] } } @rows), scalar(@rows), pf($ahead_all));
$out .= sprintf("| sequential write ≥ 0.9× ext4 (kmsfs/ext4) | %s | %s |\n",
	defined $write_ratio ? sprintf('%.2f×', $write_ratio) : 'n/a', pf(defined $write_ratio && $write_ratio >= 0.9));
$out .= sprintf("| sequential read ≥ 600 MB/s | %s | %s |\n",
	defined $read ? sprintf('%.0f MB/s', $read) : 'n/a', pf(defined $read && $read >= 600));

if ($has_base) {
	$out .= "\nkmsfs against kmsfs-base (--baseline-bin), speed ratio per row (above 1: kmsfs faster; wall clock and CPU seconds):\n\n";
	$out .= "| row | kmsfs | kmsfs-base | speed ratio | CPU ratio (base ÷ kmsfs) |\n|---|--:|--:|--:|--:|\n";
	for my $r (@rows) {
		my ($k, $b) = (speed('kmsfs', $r), speed('kmsfs-base', $r));
		my ($ck, $cb) = ($cpu_med{kmsfs}{ $r->[0] }, $cpu_med{'kmsfs-base'}{ $r->[0] });
		$out .= sprintf("| %s | %s | %s | %s | %s |\n", $r->[0], cell('kmsfs', $r), cell('kmsfs-base', $r),
			(defined $k && defined $b) ? sprintf('%.2f×', $k / $b) : 'n/a',
			(defined $ck && defined $cb && $ck > 0) ? sprintf('%.2f×', $cb / $ck) : 'n/a');
	}
}
$out .= "\nCPU seconds per row (median; the row's commands, kernel work in their system calls included, plus the FUSE daemon; ext4 has no daemon):\n\n";
$out .= "| row | " . join(' | ', @fss) . " |\n|---|" . ('--:|' x @fss) . "\n";
for my $r (@rows) {
	$out .= "| $r->[0] | " . join(' | ', map { defined $cpu_med{$_}{ $r->[0] } ? sprintf('%.2f', $cpu_med{$_}{ $r->[0] }) : 'n/a' } @fss) . " |\n";
}

$out .= "\nAll samples, in run order (MB/s or s; load1 at the start of each sample in brackets):\n\n";
$out .= "| row | " . join(' | ', @fss) . " |\n|---|" . ('---|' x @fss) . "\n";
for my $r (@rows) {
	my @c;
	for my $fs (@fss) {
		my $s = $samples{$fs}{ $r->[0] } || [];
		my $l = $loads{$fs}{ $r->[0] } || [];
		my @parts = map { ($r->[2] eq 'MB/s' ? sprintf('%.0f', $s->[$_]) : sprintf('%.2f', $s->[$_])) . (defined $l->[$_] ? " [$l->[$_]]" : '') } 0 .. $#$s;
		push @parts, "$errors{$fs}{$r->[0]}× error" if $errors{$fs}{ $r->[0] };
		push @c, @parts ? join(', ', @parts) : 'n/a';
	}
	$out .= "| $r->[0] | " . join(' | ', @c) . " |\n";
}
if (@notes) {
	$out .= "\nNotes:\n\n";
	$out .= "- $_->{fs} $_->{row} (rep $_->{rep}): $_->{text}\n" for @notes;
}
open(my $mo, '>', $md_out) or die "$md_out: $!";
print $mo $out;
close $mo;
print $out;
