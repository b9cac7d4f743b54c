package bench

import (
	"sync/atomic"
	"testing"
	"time"
)

// TestMeterEvery: the meter hears the count while a phase runs and its
// final value when the phase stops, so a progress bar ends at the total.
func TestMeterEvery(t *testing.T) {
	var done atomic.Int64
	seen := make(chan int, 1000)
	stop := meterEvery(time.Millisecond, func(n int) { seen <- n }, &done)
	done.Store(3)
	deadline := time.After(10 * time.Second)
	for n := 0; n != 3; {
		select {
		case n = <-seen:
		case <-deadline:
			t.Fatal("the meter never heard 3 files done")
		}
	}
	stop()

	// No tick within the phase: stopping still reports the final count.
	var final []int
	stop = meterEvery(time.Hour, func(n int) { final = append(final, n) }, &done)
	done.Store(7)
	stop()
	if len(final) != 1 || final[0] != 7 {
		t.Fatalf("after stop the meter heard %v, want [7]", final)
	}
}
