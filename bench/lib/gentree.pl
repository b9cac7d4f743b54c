#!/usr/bin/perl
# gentree.pl DIR [FILES] [SEED] — generate a deterministic source-like tree.
#
# The tree stands in for "a source tree of about 10,000 files" in
# bench/compare.sh. It is generated rather than copied from /usr/share/doc or
# /usr/include so that every machine and every run measures the same bytes:
# the same PRNG (32-bit xorshift, no dependence on perl's rand) always yields
# the same names, sizes, modes, times and contents.
#
# Shape (per file, drawn from the PRNG):
#   2%  empty            30% 1 B–1 KiB     33% 1–8 KiB
#   25% 8–32 KiB         8%  32–128 KiB    2%  128–512 KiB
# 97% of files are text-like (words, indentation, newlines: like source), 3%
# are incompressible bytes (like images or objects); 10% are mode 0755; files
# sit in about FILES/16 directories up to 6 deep; FILES/100 relative
# symlinks; mtimes spread over 2024. No hard links: not every peer supports them.
use strict;
use warnings;
use File::Path qw(make_path);

my ($root, $nfiles, $seed) = @ARGV;
die "usage: gentree.pl DIR [FILES] [SEED]\n" unless defined $root;
$nfiles //= 10000;
$seed   //= 20261123;
die "$root exists\n" if -e $root;

my $x = $seed & 0xffffffff;
$x ||= 1;
sub rnd {    # xorshift32: next value in [0, 2^32)
	$x ^= ($x << 13) & 0xffffffff;
	$x ^= $x >> 17;
	$x ^= ($x << 5) & 0xffffffff;
	return $x;
}
sub below { my $n = shift; return rnd() % $n }

# Text pool: source-looking lines from a small vocabulary.
my @words = qw(if else for return func struct int char void static const
  error nil err ctx buf len size offset header block key data file path name
  read write open close sync flush mutex lock unlock append make new copy
  range map string byte uint64 bool true false case switch default break
  continue package import type var defer go select chan interface);
my $text = '';
while (length($text) < (4 << 20)) {
	my $indent = "\t" x below(4);
	my $n      = 2 + below(10);
	$text .= $indent . join(' ', map { $words[below(scalar @words)] } 1 .. $n) . (below(5) ? ";\n" : " {\n");
}
my $bin = '';
$bin .= pack('N', rnd()) while length($bin) < (1 << 20);

my @ext = qw(.c .h .go .go .go .py .md .txt .json .sh _test.go .rs .js .yaml);
sub name { my $s = ''; $s .= chr(97 + below(26)) for 1 .. (3 + below(9)); return $s }

# Directories: each new one hangs under a random existing one (depth <= 6).
my $ndirs = int($nfiles / 16) || 1;
my @dirs  = ('');
my %depth = ('' => 0);
my %seen;
while (@dirs < $ndirs + 1) {
	my $p = $dirs[below(scalar @dirs)];
	next if $depth{$p} >= 6;
	my $d = ($p eq '' ? '' : "$p/") . name();
	next if $seen{$d}++;
	push @dirs, $d;
	$depth{$d} = $depth{$p} + 1;
}
make_path(map { "$root/$_" } @dirs);

my $base = 1704067200;    # 2024-01-01T00:00:00Z
my (@files, $bytes);
for my $i (1 .. $nfiles) {
	my $d = $dirs[below(scalar @dirs)];
	my $f = ($d eq '' ? '' : "$d/") . name() . "_$i" . $ext[below(scalar @ext)];
	my $b = below(100);
	my $size =
	    $b < 2  ? 0
	  : $b < 32 ? 1 + below(1024)
	  : $b < 65 ? 1024 + below(7 * 1024)
	  : $b < 90 ? 8192 + below(24 * 1024)
	  : $b < 98 ? 32768 + below(96 * 1024)
	  :           131072 + below(384 * 1024);
	my $pool = below(100) < 3 ? \$bin : \$text;
	my $off  = below(length($$pool) - $size);
	open(my $fh, '>:raw', "$root/$f") or die "$root/$f: $!";
	print $fh substr($$pool, $off, $size);
	close($fh) or die "$root/$f: $!";
	chmod(below(10) ? 0644 : 0755, "$root/$f");
	my $t = $base + below(365 * 86400);
	utime($t, $t, "$root/$f");
	push @files, $f;
	$bytes += $size;
}
my $nlinks = int($nfiles / 100);
for my $i (1 .. $nlinks) {
	my $target = $files[below(scalar @files)];
	my $d      = $dirs[below(scalar @dirs)];
	my $up     = $d eq '' ? '' : '../' x $depth{$d};
	my $l      = "$root/" . ($d eq '' ? '' : "$d/") . "link_$i";
	symlink($up . $target, $l) or die "symlink: $!";
	# perl has no lutimes; touch -h sets the link's own time.
	system('touch', '-h', '-d', '@' . ($base + below(365 * 86400)), $l) == 0 or die "touch -h $l\n";
}
# Directory times last, deepest first, so creating children does not reset them.
for my $d (sort { $depth{$b} <=> $depth{$a} or $a cmp $b } @dirs) {
	my $t = $base + below(365 * 86400);
	utime($t, $t, $d eq '' ? $root : "$root/$d");
}
printf "files=%d dirs=%d symlinks=%d bytes=%d\n", $nfiles, scalar(@dirs), $nlinks, $bytes;
