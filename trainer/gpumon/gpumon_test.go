package gpumon

import "testing"

// TestOpenWithoutDriver: on a machine without the NVIDIA driver Open must
// return an error (never panic), and a nil Monitor reads nothing. With a
// driver, a reading has a non-zero memory total.
func TestOpen(t *testing.T) {
	m, err := Open(0)
	if err != nil {
		if m != nil {
			t.Fatal("error with a non-nil monitor")
		}
		if r := m.Read(); r != nil {
			t.Errorf("nil monitor read %+v", r)
		}
		return
	}
	if r := m.Read(); r == nil || r.MemTotal == 0 {
		t.Errorf("GPU reading %+v has no memory total", r)
	}
}
