package integration

import (
	"bytes"
	"context"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// TestS3MountTruncationDetected is the end-of-file part of the tamper tests
// on the S3 backend: objects cut at a block boundary (the short last block
// removed; a whole block removed from a file of whole blocks), and an object
// given back a block of its own that a truncation removed, read as EIO with
// a log line naming the file, while an untouched file reads.
func TestS3MountTruncationDetected(t *testing.T) {
	g := s3StartGateway(t)
	v := s3NewVolume(t, g, "vol")
	v.mount(g.flags()...)
	files := map[string][]byte{
		"cut-short":   mountPattern(3*mountBlockSize+500, 1),
		"cut-aligned": mountPattern(4*mountBlockSize, 2),
		"intact":      mountPattern(3*mountBlockSize+500, 3),
	}
	for name, data := range files {
		mountWriteFile(t, v.path(name), data)
	}
	mountWriteFile(t, v.path("append-block"), mountPattern(4*mountBlockSize, 4))
	v.unmount()
	stale := g.get(t, "vol/append-block")[mountBlockOffset(3):mountBlockOffset(4)]
	v.mount(g.flags()...)
	if err := os.Truncate(v.path("append-block"), 3*mountBlockSize); err != nil {
		t.Fatal(err)
	}
	v.unmount()

	// Rewrite an object with new bytes and its own metadata (mode, times).
	put := func(key string, edit func([]byte) []byte) {
		t.Helper()
		out, err := g.client.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(s3Bucket), Key: aws.String(key)})
		if err != nil {
			t.Fatal(err)
		}
		meta := out.Metadata
		out.Body.Close()
		body := edit(g.get(t, key))
		if _, err := g.client.PutObject(context.Background(), &s3.PutObjectInput{
			Bucket: aws.String(s3Bucket), Key: aws.String(key), Body: bytes.NewReader(body), Metadata: meta,
		}); err != nil {
			t.Fatal(err)
		}
	}
	put("vol/cut-short", func(b []byte) []byte { return b[:mountBlockOffset(3)] })
	put("vol/cut-aligned", func(b []byte) []byte { return b[:mountBlockOffset(3)] })
	put("vol/append-block", func(b []byte) []byte { return append(b, stale...) })
	tampered := []string{"cut-short", "cut-aligned", "append-block"}

	v.mount(g.flags()...)
	for _, name := range tampered {
		got, err := os.ReadFile(v.path(name))
		if mountErrno(err) != syscall.EIO {
			t.Errorf("%s: read %d bytes, err %v; want EIO", name, len(got), err)
		}
	}
	if got, err := os.ReadFile(v.path("intact")); err != nil || !bytes.Equal(got, files["intact"]) {
		t.Errorf("untouched file: %d bytes, %v", len(got), err)
	}
	log := v.log()
	for _, name := range tampered {
		if !strings.Contains(log, "path=/"+name+" ") && !strings.Contains(log, "path="+name+" ") {
			t.Errorf("log has no line naming /%s", name)
		}
	}
	if t.Failed() {
		t.Logf("log:\n%s", mountTail(log, 40))
	}
}
