package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// s3LeaseKey is the writer lease object of the volume at prefix.
func s3LeaseKey(prefix string) string { return prefix + "/.kmsfs/lease" }

// second is another mount point of the same volume (same backend and
// keystore, a log of its own), as a second machine would mount it.
func (v *mountVolume) second(t *testing.T) *mountVolume {
	t.Helper()
	root := t.TempDir()
	w := &mountVolume{t: t, vault: v.vault, keystore: v.keystore, mnt: filepath.Join(root, "mnt"), logPath: filepath.Join(root, "kmsfs.log")}
	if err := os.Mkdir(w.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.cleanup)
	return w
}

// A second read-write mount of an object-per-file S3 volume is refused with
// an error naming the holder; read-only mounts stay allowed; the lease goes
// with an unmount or a killed holder.
func TestS3WriterLease(t *testing.T) {
	g := s3StartGateway(t)
	const prefix = "lease"
	v := s3NewVolume(t, g, prefix)
	v.mount(g.flags()...)
	if err := os.WriteFile(v.path("a"), []byte("written by the first mount"), 0o644); err != nil {
		t.Fatal(err)
	}
	var lease struct {
		Host string `json:"host"`
		PID  int    `json:"pid"`
	}
	if err := json.Unmarshal(g.get(t, s3LeaseKey(prefix)), &lease); err != nil {
		t.Fatalf("lease object: %v", err)
	}
	host, _ := os.Hostname()
	if lease.Host != host || lease.PID == 0 {
		t.Fatalf("lease names %+v, want this host and the mount's pid", lease)
	}

	w := v.second(t)
	out, err := w.tryRun(append(append([]string{"mount", "--log", w.logPath}, g.flags()...), w.vault, w.mnt)...)
	if err == nil {
		t.Fatalf("a second read-write mount was allowed:\n%s", out)
	}
	for _, want := range []string{"in use by another kmsfs process", "writer lease held by", "host " + host} {
		if !strings.Contains(out, want) {
			t.Errorf("refusal %q does not say %q", strings.TrimSpace(out), want)
		}
	}
	if n := strings.Count(strings.TrimSpace(out), "\n"); n != 0 {
		t.Errorf("refusal is %d lines, want one:\n%s", n+1, out)
	}
	if mountIsMounted(w.mnt) {
		t.Fatal("the refused mount is mounted")
	}

	// Read-only mounts take no lease.
	w.mount(append(g.flags(), "--read-only")...)
	if got, err := os.ReadFile(w.path("a")); err != nil || string(got) != "written by the first mount" {
		t.Fatalf("read-only mount reads a = %q, %v", got, err)
	}
	w.unmount()

	// Unmounting releases the lease: the second mount now writes.
	v.unmount()
	w.mount(g.flags()...)
	if err := os.WriteFile(w.path("b"), []byte("second"), 0o644); err != nil {
		t.Fatal(err)
	}

	// A holder killed with SIGKILL leaves its lease; on the same machine a
	// new mount sees that its process is gone and takes it over at once.
	w.unmount()
	mounted := strings.Count(w.log(), "msg=mounted")
	p := w.mountForeground(g.flags()...)
	// Kill it once it has finished starting: go-fuse's start-up opens a
	// file on the new mount (its poll hack), a request to the daemon itself,
	// and a daemon killed while one of its threads waits for its own answer
	// cannot exit until the connection is aborted.
	deadline := time.Now().Add(20 * time.Second)
	for strings.Count(w.log(), "msg=mounted") == mounted {
		if time.Now().After(deadline) {
			t.Fatal("the mount never logged that it was up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if done, _ := p.wait(10 * time.Second); !done {
		out, _ := exec.Command("sh", "-c", "for t in /proc/"+strconv.Itoa(p.cmd.Process.Pid)+"/task/*; do echo $t; grep State $t/status; cat $t/stack; cat $t/wchan; echo; done").CombinedOutput()
		t.Fatalf("the killed mount did not exit:\n%s", out)
	}
	if out, err := exec.Command("umount", "-l", w.mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount -l: %v: %s", err, out)
	}
	mountWaitUnmounted(w.mnt, 10*time.Second)
	v.mount(g.flags()...)
	if !strings.Contains(v.log(), "took over the volume's writer lease") {
		t.Error("the mount after a SIGKILL did not log the takeover")
	}
	if got, err := os.ReadFile(v.path("b")); err != nil || string(got) != "second" {
		t.Fatalf("b = %q, %v", got, err)
	}
}

// A mount whose lease another writer took over (here: replaced with awscli,
// as a mount on another machine would after the lease expired) stops
// writing: close(2) reports EIO and nothing reaches the bucket.
func TestS3WriterLeaseLost(t *testing.T) {
	g := s3StartGateway(t)
	const prefix = "leaselost"
	v := s3NewVolume(t, g, prefix)
	v.mount(append(g.flags(), "--s3-lease-ttl", "2s")...)
	if err := os.WriteFile(v.path("kept"), []byte("before"), 0o644); err != nil {
		t.Fatal(err)
	}
	thief := filepath.Join(t.TempDir(), "lease.json")
	if err := os.WriteFile(thief, []byte(`{"version":1,"holder":"other","host":"elsewhere.example","pid":7,"ttl_seconds":60}`), 0o600); err != nil {
		t.Fatal(err)
	}
	g.aws(t, "s3api", "put-object", "--bucket", s3Bucket, "--key", s3LeaseKey(prefix), "--body", thief)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(v.log(), "writer lease lost") {
		if time.Now().After(deadline) {
			t.Fatal("the mount never noticed that its lease was taken")
		}
		time.Sleep(50 * time.Millisecond)
	}
	err := os.WriteFile(v.path("kept"), []byte("after the lease was lost"), 0o644)
	if mountErrno(err) != syscall.EIO {
		t.Fatalf("write after losing the lease: %v, want EIO", err)
	}
	if err := os.Mkdir(v.path("newdir"), 0o755); mountErrno(err) != syscall.EIO {
		t.Fatalf("mkdir after losing the lease: %v, want EIO", err)
	}
	listing := g.aws(t, "s3", "ls", "--recursive", "s3://"+s3Bucket+"/"+prefix+"/")
	if strings.Contains(listing, "newdir") {
		t.Fatalf("a directory reached the bucket after the lease was lost:\n%s", listing)
	}
	if got := g.get(t, s3LeaseKey(prefix)); !bytes.Contains(got, []byte("elsewhere.example")) {
		t.Fatalf("the other writer's lease was changed: %s", got)
	}
	// The file still holds what was acknowledged before.
	v.unmount()
	w := v.second(t)
	w.mount(append(g.flags(), "--read-only")...)
	if got, err := os.ReadFile(w.path("kept")); err != nil || string(got) != "before" {
		t.Fatalf("kept = %q, %v", got, err)
	}
}
