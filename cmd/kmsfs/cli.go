package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/pflag"
)

// command is one kmsfs command, or a group of them (kms, kms alias): every
// command's name, usage, flags and action are in the table commands()
// returns, and run dispatches, parses and reports errors for all of them
// alike.
type command struct {
	name    string
	aliases []string
	args    string // positional arguments, as the usage line shows them
	summary string // one line, in the parent's list of commands
	about   string // printed by --help between the usage line and the flags
	footer  string // printed by --help after the flags
	// minArgs and maxArgs bound the positional arguments (maxArgs < 0: any).
	minArgs, maxArgs int
	// setup registers the command's flags and returns what it runs; nil
	// for a group.
	setup func(fs *pflag.FlagSet) runFunc
	subs  []*command
}

// runFunc runs a command once its flags are parsed.
type runFunc func(ctx context.Context, inv *invocation) error

// invocation is one run of a command.
type invocation struct {
	args   []string // positional arguments
	raw    []string // the arguments as given, flags included
	stdout io.Writer
	stderr io.Writer
}

// usageError is a command line kmsfs cannot run: exit status 2, one line.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// Exit statuses.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// run runs the command line args (without the program name) and returns
// the exit status. Every error is printed here, once, as "kmsfs: PATH: ...".
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := rootCommand()
	if len(args) == 0 {
		fmt.Fprint(stderr, root.help("kmsfs", nil))
		return exitUsage
	}
	// mount(8) with type fuse.kmsfs runs, through fuse3's mount.fuse3,
	// "kmsfs SOURCE MOUNTPOINT -o OPTIONS": a path where a command goes.
	if strings.Contains(args[0], "/") && len(args) >= 2 {
		args = append([]string{"mount"}, args...)
	}
	c, path, rest := root.lookup(args)
	if c.setup == nil { // a group: its help, or which subcommand is missing
		switch {
		case len(rest) > 0 && isHelp(rest[0]):
			fmt.Fprint(stdout, c.help(strings.TrimSpace("kmsfs "+path), nil))
			return exitOK
		case c == root:
			fmt.Fprintf(stderr, "kmsfs: unknown command %q (see 'kmsfs help')\n", rest[0])
		case len(rest) == 0:
			fmt.Fprintf(stderr, "kmsfs: %s: missing subcommand (see 'kmsfs %s --help')\n", path, path)
		default:
			fmt.Fprintf(stderr, "kmsfs: %s: unknown subcommand %q (see 'kmsfs %s --help')\n", path, rest[0], path)
		}
		return exitUsage
	}
	fs := newFlagSet(path)
	runf := c.setup(fs)
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(stdout, c.help("kmsfs "+path, fs))
			return exitOK
		}
		fmt.Fprintf(stderr, "kmsfs: %s: %v (see 'kmsfs %s --help')\n", path, err, path)
		return exitUsage
	}
	if n := fs.NArg(); n < c.minArgs || c.maxArgs >= 0 && n > c.maxArgs {
		fmt.Fprintf(stderr, "kmsfs: %s: %s (see 'kmsfs %s --help')\n", path, c.argCountProblem(n), path)
		return exitUsage
	}
	err := runf(ctx, &invocation{args: fs.Args(), raw: rest, stdout: stdout, stderr: stderr})
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "kmsfs: %s: %v\n", path, err)
	var ue *usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitError
}

// lookup walks args down the table and returns the command they name (a
// group when they stop at one), its path and the arguments left for it.
// "help X Y" is "X Y --help".
func (c *command) lookup(args []string) (*command, string, []string) {
	cur, path, rest := c, "", args
	for cur.setup == nil && len(rest) > 0 {
		if rest[0] == "help" && len(rest) > 1 {
			rest = append(append([]string(nil), rest[1:]...), "--help")
		}
		sub := cur.sub(rest[0])
		if sub == nil {
			break
		}
		cur, path, rest = sub, strings.TrimSpace(path+" "+sub.name), rest[1:]
	}
	return cur, path, rest
}

func (c *command) sub(name string) *command {
	for _, s := range c.subs {
		if s.name == name {
			return s
		}
		for _, a := range s.aliases {
			if a == name {
				return s
			}
		}
	}
	return nil
}

func isHelp(arg string) bool { return arg == "-h" || arg == "--help" || arg == "help" }

// argCountProblem says what is wrong with n positional arguments.
func (c *command) argCountProblem(n int) string {
	if c.args == "" {
		return fmt.Sprintf("takes no arguments, got %d", n)
	}
	return fmt.Sprintf("want %s, got %d argument(s)", c.args, n)
}

// help renders the command's --help: usage line, about, flags or
// subcommands, footer.
func (c *command) help(path string, fs *pflag.FlagSet) string {
	var b strings.Builder
	switch {
	case c.setup == nil:
		fmt.Fprintf(&b, "Usage: %s COMMAND [flags] [args]\n", path)
	default:
		use := path
		if fs != nil && fs.HasFlags() {
			use += " [flags]"
		}
		if c.args != "" {
			use += " " + c.args
		}
		fmt.Fprintf(&b, "Usage: %s\n", use)
	}
	if c.about != "" {
		fmt.Fprintf(&b, "\n%s\n", strings.TrimRight(c.about, "\n"))
	}
	if c.setup == nil {
		b.WriteString("\nCommands:\n")
		tw := tabwriter.NewWriter(&b, 0, 8, 2, ' ', 0)
		for _, s := range c.subs {
			use := s.name
			if s.setup == nil {
				use += " COMMAND ..."
			} else if s.args != "" {
				use += " " + s.args
			}
			fmt.Fprintf(tw, "  %s\t%s\n", use, s.summary)
		}
		tw.Flush()
		fmt.Fprintf(&b, "\nRun '%s COMMAND --help' for a command's flags.\n", path)
	} else if fs != nil && fs.HasFlags() {
		fmt.Fprintf(&b, "\nFlags:\n%s", fs.FlagUsages())
	}
	if c.footer != "" {
		fmt.Fprintf(&b, "\n%s\n", strings.TrimRight(c.footer, "\n"))
	}
	return b.String()
}

// newFlagSet returns a flag set that reports instead of printing: run
// prints help to stdout and errors as one line to stderr.
func newFlagSet(path string) *pflag.FlagSet {
	fs := pflag.NewFlagSet("kmsfs "+path, pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}
