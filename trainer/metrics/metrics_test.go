package metrics

import (
	"image/png"
	"math"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metrics.jsonl")
	w, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(Record{Kind: "step", Step: 1, Loss: 2.5, LR: 0.1})
	w.Write(Record{Kind: "eval", Step: 1, KNNTop1: 0.4, GPU: &GPUReading{TempC: 50}})
	w.Close()
	// Reopening appends (resume).
	w, _ = Open(path)
	w.Write(Record{Kind: "step", Step: 2, Loss: 2.0})
	w.Close()
	recs, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 || recs[0].Loss != 2.5 || recs[1].GPU.TempC != 50 || recs[2].Step != 2 {
		t.Errorf("records %+v", recs)
	}
	os.WriteFile(path, []byte("{\"step\":1}\nnot json\n"), 0o644)
	if _, err := ReadFile(path); err == nil {
		t.Error("malformed line accepted")
	}
}

func TestPlotPNG(t *testing.T) {
	path := filepath.Join(t.TempDir(), "loss.png")
	pts := []Point{{0, 3}, {1, 2.5}, {2, math.NaN()}, {3, 1.2}}
	if err := PlotPNG(path, "loss", "step", pts); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(path)
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != plotW || b.Dy() != plotH {
		t.Errorf("size %v", b)
	}
	// The trace colour appears: the series was drawn.
	found := false
	for y := 0; y < plotH && !found; y++ {
		for x := 0; x < plotW; x++ {
			r, g, b, _ := img.At(x, y).RGBA()
			if r>>8 == 31 && g>>8 == 119 && b>>8 == 180 {
				found = true
				break
			}
		}
	}
	if !found {
		t.Error("no trace drawn")
	}
}
