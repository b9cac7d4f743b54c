package envelope

import (
	"bytes"
	"errors"
	"testing"
)

// TestOpenUnitOneFrame: a unit's payload is exactly one zstd frame
// (docs/FORMAT.md section 4a); zstd's own decoder would read two frames in
// a row, or a skippable frame before one, so OpenUnit checks.
func TestOpenUnitOneFrame(t *testing.T) {
	keys, err := DeriveFileKeys(bytes.Repeat([]byte{7}, KeySize), [IDLen]byte{1}, Version4)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCodec(3)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	plain := bytes.Repeat([]byte("kmsfs unit "), 300)
	frame := c.enc.EncodeAll(plain, nil)
	if n, err := zstdFrameLen(frame); err != nil || n != len(frame) {
		t.Fatalf("zstdFrameLen of one frame: %d, %v; want %d", n, err, len(frame))
	}
	empty := c.enc.EncodeAll(nil, nil)
	skippable := []byte{0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 'j', 'u', 'n', 'k'}
	nonce := make([]byte, NonceSize)
	for name, payload := range map[string][]byte{
		"two frames":            append(append([]byte{unitZstd}, frame...), empty...),
		"skippable frame first": append(append([]byte{unitZstd}, skippable...), frame...),
		"trailing byte":         append(append([]byte{unitZstd}, frame...), 0),
		"cut frame":             append([]byte{unitZstd}, frame[:len(frame)-2]...),
	} {
		sealed := keys.sealUnitWithNonce(nil, payload, 0, nonce)
		if _, err := keys.OpenUnit(nil, sealed, 0, len(plain), c); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v; want ErrCorrupt", name, err)
		}
	}
	sealed := keys.sealUnitWithNonce(nil, append([]byte{unitZstd}, frame...), 0, nonce)
	if got, err := keys.OpenUnit(nil, sealed, 0, len(plain), c); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("one frame: %v", err)
	}
}
