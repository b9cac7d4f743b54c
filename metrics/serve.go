package metrics

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves /metrics (Prometheus) and /stats.json.
func (s *Set) Handler() http.Handler {
	mux := http.NewServeMux()
	// ContinueOnError: a collector that fails (the process collector
	// without /proc) must not take the mount's own counters down with it.
	mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("/stats.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(s.Snapshot())
	})
	return mux
}

// SocketPath is where a mount serves its metrics for `kmsfs stats`: a unix
// socket named after a hash of the absolute mount point, under /run/kmsfs
// for root and runtimeDir/kmsfs (else the temp dir) for others. runtimeDir
// is $XDG_RUNTIME_DIR, which the command reads.
func SocketPath(runtimeDir, mountpoint string) string {
	sum := sha256.Sum256([]byte(filepath.Clean(mountpoint)))
	dir := "/run/kmsfs"
	if os.Getuid() != 0 {
		if runtimeDir != "" {
			dir = filepath.Join(runtimeDir, "kmsfs")
		} else {
			dir = filepath.Join(os.TempDir(), fmt.Sprintf("kmsfs-%d", os.Getuid()))
		}
	}
	return filepath.Join(dir, hex.EncodeToString(sum[:8])+".sock")
}

// Fetch asks the mount at mountpoint for its snapshot over its socket.
func Fetch(ctx context.Context, runtimeDir, mountpoint string) (Snapshot, error) {
	sock := SocketPath(runtimeDir, mountpoint)
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	var snap Snapshot
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://kmsfs/stats.json", nil)
	if err != nil {
		return snap, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return snap, fmt.Errorf("no kmsfs mount answering at %s (socket %s): %w", mountpoint, sock, err)
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&snap)
	return snap, err
}

// Serve listens on the stats socket of mountpoint (and on addr, if not
// empty) until ctx ends.
func (s *Set) Serve(ctx context.Context, runtimeDir, mountpoint, addr string) error {
	sock := SocketPath(runtimeDir, mountpoint)
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		return err
	}
	os.Remove(sock) // a stale socket of a mount that died
	ul, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("stats socket: %w", err)
	}
	listeners := []net.Listener{ul}
	if addr != "" {
		tl, err := net.Listen("tcp", addr)
		if err != nil {
			ul.Close()
			return fmt.Errorf("--metrics-addr %s: %w", addr, err)
		}
		listeners = append(listeners, tl)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	for _, l := range listeners {
		go srv.Serve(l)
	}
	go func() {
		<-ctx.Done()
		srv.Close()
		os.Remove(sock)
	}()
	return nil
}
