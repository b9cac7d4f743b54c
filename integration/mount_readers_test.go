package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	kmsfs "github.com/kmsfs/kmsfs/fs"
)

// TestMountFuseReaders: after a burst of concurrent requests, the daemon
// goes back to fs.FuseReaders threads waiting in the kernel for the next
// request (wchan fuse_dev_do_read), not go-fuse's default of GOMAXPROCS+1,
// and the burst itself is served completely: every file written by eight
// goroutines at once reads back.
func TestMountFuseReaders(t *testing.T) {
	v := mountNewVolume(t)
	p := v.mountForeground()
	pid := p.cmd.Process.Pid
	// The daemon inherits this process's environment and CPU set, so its
	// GOMAXPROCS is ours.
	want := kmsfs.FuseReaders(runtime.GOMAXPROCS(0))

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dir := v.path(fmt.Sprintf("g%d", g))
			if err := os.Mkdir(dir, 0o755); err != nil {
				errs <- err
				return
			}
			for i := range 50 {
				name := filepath.Join(dir, fmt.Sprintf("f%d", i))
				data := []byte(name)
				if err := os.WriteFile(name, data, 0o644); err != nil {
					errs <- err
					return
				}
				got, err := os.ReadFile(name)
				if err != nil || string(got) != string(data) {
					errs <- fmt.Errorf("read back %s: %q, %v", name, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	waiting := func() int {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/wchan", pid))
		n := 0
		for _, w := range tasks {
			if b, err := os.ReadFile(w); err == nil && strings.TrimSpace(string(b)) == "fuse_dev_do_read" {
				n++
			}
		}
		return n
	}
	mountWaitFor(t, 10*time.Second, fmt.Sprintf("%d thread(s) of the daemon waiting in fuse_dev_do_read", want), func() bool {
		return waiting() == want
	})
	// And it stays so: no reader left over from the burst is still on its
	// way to the device.
	for range 5 {
		time.Sleep(20 * time.Millisecond)
		if n := waiting(); n != want {
			t.Fatalf("%d daemon threads waiting for requests, want %d", n, want)
		}
	}
}
