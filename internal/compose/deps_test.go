package compose

import (
	"os/exec"
	"strings"
	"testing"
)

// TestVolumeAndFSLinkNoImplementation keeps the composition in this
// package: volume and fs know the backends and KMS clients only by
// interface, so neither links the AWS SDK nor the cgo PKCS#11 binding.
func TestVolumeAndFSLinkNoImplementation(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command runs this test, so it should be on PATH: %v", err)
	}
	out, err := exec.Command(gobin, "list", "-deps", "github.com/kmsfs/kmsfs/volume", "github.com/kmsfs/kmsfs/fs").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps printed %d packages, want the dependency graph:\n%s", len(deps), out)
	}
	for _, p := range deps {
		for _, banned := range []string{"github.com/aws/aws-sdk-go-v2", "github.com/miekg/pkcs11", "github.com/kmsfs/kmsfs/kms/keystore", "github.com/kmsfs/kmsfs/kms/awskms", "github.com/kmsfs/kmsfs/backend/s3", "github.com/kmsfs/kmsfs/backend/local"} {
			if p == banned || strings.HasPrefix(p, banned+"/") {
				t.Errorf("volume or fs depends on %s", p)
			}
		}
	}
	// The test's own package does link them: the check above would pass
	// vacuously if go list answered for the wrong module.
	out, err = exec.Command(gobin, "list", "-deps", "github.com/kmsfs/kmsfs/internal/compose").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "github.com/aws/aws-sdk-go-v2/service/kms") {
		t.Fatalf("compose does not link the AWS KMS client; the check is looking at the wrong tree:\n%s", out)
	}
}
