package trainer

import (
	"path/filepath"

	"github.com/polyview/polyview/trainer/metrics"
)

// writePlots draws loss, learning rate and kNN accuracy from the whole of
// metrics.jsonl (a resumed run included) into the output folder.
func (r *run) writePlots() {
	if r.metrics == nil {
		return
	}
	recs, err := metrics.ReadFile(filepath.Join(r.cfg.Out, "metrics.jsonl"))
	if err != nil {
		r.log.Warn("plots", "err", err)
		return
	}
	var loss, lr, knn []metrics.Point
	for _, rec := range recs {
		switch rec.Kind {
		case "step":
			loss = append(loss, metrics.Point{X: float64(rec.Step), Y: rec.Loss})
			lr = append(lr, metrics.Point{X: float64(rec.Step), Y: rec.LR})
		case "eval":
			knn = append(knn, metrics.Point{X: float64(rec.Step), Y: rec.KNNTop1})
		}
	}
	plots := []struct {
		file, title string
		pts         []metrics.Point
	}{
		{"loss.png", r.cfg.Objective + " loss", loss},
		{"lr.png", "learning rate", lr},
		{"knn.png", "kNN top-1 accuracy", knn},
	}
	for _, p := range plots {
		if err := metrics.PlotPNG(filepath.Join(r.cfg.Out, p.file), p.title, "step", p.pts); err != nil {
			r.log.Warn("plots", "err", err)
		}
	}
}
