package bench

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseSize reads a byte count: a plain number, or one with a binary unit
// (K/KiB, M/MiB, G/GiB, case-insensitive; "B" alone means bytes).
func ParseSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"b", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: want a byte count such as 4096, 4KiB or 256MiB", s)
	}
	if n > 0 && mult > 1 && n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return n * mult, nil
}

// Preset is a named workload.
type Preset struct {
	Files int
	Size  int64
}

// PresetNames lists the presets for flag help.
const PresetNames = "small (10000 x 4KiB) or large (8 x 256MiB)"

// LookupPreset returns the workload named name: "small", many small files
// where key handling dominates, or "large", a few big ones where bulk
// encryption does.
func LookupPreset(name string) (Preset, bool) {
	switch name {
	case "small":
		return Preset{Files: 10000, Size: 4 << 10}, true
	case "large":
		return Preset{Files: 8, Size: 256 << 20}, true
	}
	return Preset{}, false
}
