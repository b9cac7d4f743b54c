package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// softHSMModule is the Debian softhsm2 package's PKCS#11 library.
const softHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// TestMain lets the scripts run this package's main as "kmsfs", in a child
// process, as a user would run the installed binary.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"kmsfs": func() { os.Exit(kmsfsMain()) },
	})
}

// TestScripts runs testdata/*.txtar. Each script starts in an empty work
// directory holding a copy of the format-v1 fixture volumes (and their
// keystore) under fixture/.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata",
		RequireExplicitExec: true,
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			// keyid VAR sets $VAR to the key ID the last command printed
			// first (kmsfs kms create-key prints "ID<tab>ARN").
			"keyid": func(ts *testscript.TestScript, neg bool, args []string) {
				if neg || len(args) != 1 {
					ts.Fatalf("usage: keyid VAR")
				}
				f := strings.Fields(ts.ReadFile("stdout"))
				if len(f) == 0 {
					ts.Fatalf("keyid: the last command printed nothing")
				}
				ts.Setenv(args[0], f[0])
			},
		},
		// [softhsm]: SoftHSM2 is installed; with CI=true its absence
		// fails the script instead of skipping it.
		Condition: func(cond string) (bool, error) {
			if cond != "softhsm" {
				return false, fmt.Errorf("unknown condition %q", cond)
			}
			_, err := os.Stat(softHSMModule)
			if err != nil && os.Getenv("CI") == "true" {
				return false, fmt.Errorf("SoftHSM2 is not installed (apt install softhsm2), and CI=true: %v", err)
			}
			return err == nil, nil
		},
		Setup: func(env *testscript.Env) error {
			dst := filepath.Join(env.WorkDir, "fixture")
			if err := os.CopyFS(dst, os.DirFS("../../volume/testdata/v1")); err != nil {
				return err
			}
			// The keystore refuses a directory others can read; CopyFS
			// made it 0755.
			return os.Chmod(filepath.Join(dst, "keystore"), 0o700)
		},
	})
}

// flagTypeName matches a flag whose value is shown by its Go type ("--keystore
// string") instead of a name from its usage text ("--keystore DIR").
var flagTypeName = regexp.MustCompile(`--[a-z0-9-]+ (string|duration|int|uint|float|strings|stringArray|durationSlice|float64Slice|ints|uint64|int64)\s`)

// TestHelpOfEveryCommand walks the command table: every command and group
// answers --help on stdout with exit status 0, and names flag values.
func TestHelpOfEveryCommand(t *testing.T) {
	var walk func(c *command, path []string)
	n := 0
	walk = func(c *command, path []string) {
		for _, s := range c.subs {
			walk(s, append(append([]string(nil), path...), s.name))
		}
		if len(path) == 0 {
			return
		}
		for _, h := range []string{"--help", "-h"} {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), append(append([]string(nil), path...), h), &stdout, &stderr)
			name := strings.Join(path, " ")
			if code != exitOK || stderr.Len() != 0 {
				t.Errorf("kmsfs %s %s: exit %d, stderr %q", name, h, code, stderr.String())
			}
			if !strings.HasPrefix(stdout.String(), "Usage: kmsfs "+name) {
				t.Errorf("kmsfs %s %s: stdout does not start with its usage:\n%s", name, h, stdout.String())
			}
			if m := flagTypeName.FindString(stdout.String()); m != "" {
				t.Errorf("kmsfs %s --help shows a flag value by its type: %q", name, m)
			}
		}
		n++
	}
	walk(rootCommand(), nil)
	if n < 25 {
		t.Fatalf("walked %d commands; the table has more", n)
	}
}
