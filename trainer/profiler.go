package trainer

import (
	"log/slog"

	"github.com/polyview/polyview/bindings"
)

// profiler limits a profiler's capture to the steps of -profile-steps
// (Nsight Systems with --capture-range=cudaProfilerApi): it starts the
// capture before step A and stops it before step B.
type profiler struct {
	dev    *bindings.Device
	lo, hi int64
	active bool
	log    *slog.Logger
}

func newProfiler(cfg Config, dev *bindings.Device, log *slog.Logger) (*profiler, error) {
	lo, hi, err := cfg.profileWindow()
	if err != nil {
		return nil, err
	}
	return &profiler{dev: dev, lo: int64(lo), hi: int64(hi), log: log}, nil
}

func (p *profiler) beforeStep(step int64) {
	if p.hi == 0 {
		return
	}
	if step == p.lo && !p.active {
		p.set(true)
	}
	if step == p.hi && p.active {
		p.set(false)
	}
}

func (p *profiler) set(on bool) {
	if err := p.dev.SetProfiling(on); err != nil {
		p.log.Warn("profiler", "err", err)
		p.hi = 0
		return
	}
	p.active = on
	p.log.Info("profiler capture", "on", on)
}

func (p *profiler) close() {
	if p.active {
		p.set(false)
	}
}
