package trainer

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// progress draws one self-overwriting line on a terminal: step, a bar,
// loss, throughput, data wait and time left. On anything else it is off.
type progress struct {
	w       io.Writer
	on      bool
	total   int64
	start   time.Time
	last    time.Time
	started int64
}

func newProgress(w io.Writer, want bool, total int64) *progress {
	p := &progress{w: w, total: total, start: time.Now(), started: -1}
	if f, ok := w.(*os.File); ok && want {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.on = true
		}
	}
	return p
}

func (p *progress) update(step int64, loss, vps, wait float64) {
	if !p.on {
		return
	}
	if p.started < 0 {
		p.started, p.start = step, time.Now()
	}
	now := time.Now()
	if now.Sub(p.last) < 100*time.Millisecond && step < p.total {
		return
	}
	p.last = now
	const width = 24
	filled := int(float64(width) * float64(step) / float64(p.total))
	bar := strings.Repeat("=", filled) + strings.Repeat(" ", width-filled)
	left := "--"
	if done := step - p.started; done > 0 {
		per := now.Sub(p.start) / time.Duration(done)
		left = (per * time.Duration(p.total-step)).Round(time.Second).String()
	}
	fmt.Fprintf(p.w, "\rstep %d/%d [%s] loss %.4f  %.0f views/s  data wait %.1f%%  left %s   ",
		step, p.total, bar, loss, vps, 100*wait, left)
}

func (p *progress) done() {
	if p.on {
		fmt.Fprintln(p.w)
		p.on = false
	}
}
