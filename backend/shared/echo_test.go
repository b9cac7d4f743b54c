package shared

import (
	"testing"

	"github.com/kmsfs/kmsfs/backend/shared/meta"
)

func TestEchoes(t *testing.T) {
	var e echoes
	ep := e.drop()
	e.put("a", meta.Attr{Ino: 7}, ep)
	if a, ok := e.take("a"); !ok || a.Ino != 7 {
		t.Fatalf("take after put = %+v, %v", a, ok)
	}
	if _, ok := e.take("a"); ok {
		t.Fatal("an echo answered two stats")
	}
	// A change that began before another change of this process ended
	// records nothing: what it returned may be stale.
	ep = e.drop()
	later := e.drop()
	e.put("a", meta.Attr{Ino: 8}, ep)
	if _, ok := e.take("a"); ok {
		t.Fatal("an echo overtaken by a later change was recorded")
	}
	e.put("b", meta.Attr{Ino: 9}, later)
	e.drop()
	if _, ok := e.take("b"); ok {
		t.Fatal("an echo survived a change of the tree")
	}
}
