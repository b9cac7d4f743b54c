package fs

import (
	"fmt"
	"testing"
)

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		`/tmp/plain`:           "/tmp/plain",
		`/tmp/with\040space`:   "/tmp/with space",
		`/tmp/tab\011and\134x`: "/tmp/tab\tand\\x",
		`/tmp/trailing\04`:     `/tmp/trailing\04`,
	} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}

// The root filesystem is always in mountinfo; its device is found without
// a stat of the mount point.
func TestMountDeviceOfRoot(t *testing.T) {
	dev, err := mountDevice("/")
	if err != nil {
		t.Fatal(err)
	}
	var maj, min int
	if _, err := fmt.Sscanf(dev, "%d:%d", &maj, &min); err != nil {
		t.Fatalf("mountDevice(/) = %q: %v", dev, err)
	}
	if _, err := mountDevice("/no/such/mount/point"); err == nil {
		t.Fatal("mountDevice of a path that is no mount point succeeded")
	}
}
