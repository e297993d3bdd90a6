package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/polyview/polyview/bindings"
	"github.com/polyview/polyview/trainer/model"
)

func init() {
	subcommands["encoder"] = subcommand{run: runEncoder,
		help: "encoder forward+backward views/s and CPU GEMM GFLOP/s, vs PyTorch"}
}

// encoderSpec is one encoder benchmark; the JSON field names are those
// peer/encoder_torch.py reads.
type encoderSpec struct {
	Name     string `json:"name"`
	Stem     string `json:"stem"`
	Size     int    `json:"size"`
	Channels int    `json:"channels"`
	Batch    int    `json:"batch"`
	Width    int    `json:"width"`
}

// encoderRow is one encoder's result.
type encoderRow struct {
	encoderSpec
	Threads      int     `json:"threads,omitempty"`   // CPU
	Precision    string  `json:"precision,omitempty"` // GPU: bf16 or fp32 activations
	Seconds      float64 `json:"seconds"`
	ViewsPerSec  float64 `json:"views_per_s"`
	PeerViewsSec float64 `json:"peer_views_per_s,omitempty"`
	Ratio        float64 `json:"ratio,omitempty"`
}

// gemmRow is one square GEMM size.
type gemmRow struct {
	N          int     `json:"n"`
	GFLOPs     float64 `json:"gflops"`
	PeakFrac   float64 `json:"peak_fraction"`
	PeerGFLOPs float64 `json:"peer_gflops,omitempty"`
}

type encoderPeer struct {
	Torch  string `json:"torch"`
	Models []struct {
		ViewsPerSec float64 `json:"views_per_s"`
	} `json:"models"`
	Gemm []struct {
		GFLOPs float64 `json:"gflops"`
	} `json:"gemm"`
}

func runEncoder(args []string) error {
	fs := flag.NewFlagSet("encoder", flag.ContinueOnError)
	threads := fs.Int("threads", 0, "CPU threads for both sides (0 = all)")
	iters := fs.Int("iters", 9, "timed iterations per encoder (the median is reported)")
	warmup := fs.Int("warmup", 2, "untimed iterations first (PyTorch varied more after one)")
	rounds := fs.Int("rounds", 3, "rounds of polyview then the peer; medians are reported, "+
		"and the ratio is the median of the rounds' ratios")
	only := fs.String("models", "", "comma-separated subset of convnet28,convnet32,resnet18,"+
		"resnet50 (none: GEMM only)")
	sizes := fs.String("gemm", "512,1024,2048", "square GEMM sizes (empty skips)")
	python := fs.String("python", defaultPython(), "python with torch for the peer; empty skips it")
	jsonPath := fs.String("json", "", "write the rows as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := bindings.SetCPUThreads(*threads); err != nil {
		return err
	}
	nthreads := bindings.CPUThreads()
	specs := map[string]encoderSpec{
		"convnet28": {Name: "convnet", Size: 28, Channels: 1, Batch: 256, Width: 32},
		"convnet32": {Name: "convnet", Size: 32, Channels: 3, Batch: 256, Width: 32},
		"resnet18":  {Name: "resnet18", Stem: "cifar", Size: 32, Channels: 3, Batch: 32},
		"resnet50":  {Name: "resnet50", Stem: "imagenet", Size: 224, Channels: 3, Batch: 8},
	}
	run := []encoderSpec{}
	for _, k := range []string{"convnet28", "convnet32", "resnet18", "resnet50"} {
		if *only == "" || strings.Contains(","+*only+",", ","+k+",") {
			run = append(run, specs[k])
		}
	}
	gemmSizes := []int{}
	if *sizes != "" {
		var err error
		if gemmSizes, err = parseInts(*sizes); err != nil {
			return fmt.Errorf("-gemm: %w", err)
		}
	}
	dev, err := bindings.Open("cpu", nil)
	if err != nil {
		return err
	}
	defer dev.Close()

	if *rounds < 1 {
		return fmt.Errorf("-rounds %d: want at least 1", *rounds)
	}

	// Rounds alternate the two sides, so that a shared machine's slow
	// minutes (its speed here drifted by 20% from one minute to the next)
	// fall on both rather than on whichever ran second.
	rows := make([]encoderRow, len(run))
	gemms := make([]gemmRow, len(gemmSizes))
	secs := make([][]float64, len(run))
	gflops, peerGflops := make([][]float64, len(gemmSizes)), make([][]float64, len(gemmSizes))
	peerViews, ratios := make([][]float64, len(run)), make([][]float64, len(run))
	peerNote := "no peer (-python empty)"
	peaks := []float64{}
	for round := 0; round < *rounds; round++ {
		for i, s := range run {
			t, err := timeEncoder(dev, s, *warmup, *iters)
			if err != nil {
				return fmt.Errorf("%s: %w", s.Name, err)
			}
			secs[i] = append(secs[i], t)
		}
		peak, err := bindings.CPUFMAPeak()
		if err != nil {
			return err
		}
		peaks = append(peaks, peak)
		for i, n := range gemmSizes {
			g, err := timeGEMM(dev, n)
			if err != nil {
				return fmt.Errorf("gemm %d: %w", n, err)
			}
			gflops[i] = append(gflops[i], g)
		}
		if *python == "" || strings.HasPrefix(peerNote, "peer failed") {
			continue
		}
		p, err := runEncoderPeer(*python, run, gemmSizes, nthreads, *warmup, *iters)
		if err != nil {
			peerNote = "peer failed: " + err.Error()
			continue
		}
		peerNote = "PyTorch " + p.Torch
		for i, s := range run {
			peerViews[i] = append(peerViews[i], p.Models[i].ViewsPerSec)
			ratios[i] = append(ratios[i], float64(s.Batch)/secs[i][round]/p.Models[i].ViewsPerSec)
		}
		for i := range gemmSizes {
			peerGflops[i] = append(peerGflops[i], p.Gemm[i].GFLOPs)
		}
	}
	peak := median(peaks)
	for i, s := range run {
		t := median(secs[i])
		rows[i] = encoderRow{encoderSpec: s, Threads: nthreads, Seconds: t,
			ViewsPerSec: float64(s.Batch) / t}
		if !strings.HasPrefix(peerNote, "peer failed") && len(ratios[i]) > 0 {
			rows[i].PeerViewsSec, rows[i].Ratio = median(peerViews[i]), median(ratios[i])
		}
	}
	for i, n := range gemmSizes {
		// The GEMM against the peak measured in the same round, since the
		// clock moves both.
		fracs := make([]float64, len(gflops[i]))
		for r, g := range gflops[i] {
			fracs[r] = g / peaks[r]
		}
		gemms[i] = gemmRow{N: n, GFLOPs: median(gflops[i]), PeakFrac: median(fracs)}
		if len(peerGflops[i]) > 0 && !strings.HasPrefix(peerNote, "peer failed") {
			gemms[i].PeerGFLOPs = median(peerGflops[i])
		}
	}
	if *rounds > 1 {
		peerNote += fmt.Sprintf("; medians of %d alternating rounds", *rounds)
	}
	printEncoder(dev.Name(), peerNote, peak, nthreads, rows, gemms)
	if *jsonPath != "" {
		b, _ := json.MarshalIndent(map[string]any{"device": dev.Name(), "threads": nthreads,
			"fma_peak_gflops": peak, "peer": peerNote, "encoders": rows,
			"gemm": gemms}, "", "  ")
		if err := os.WriteFile(*jsonPath, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// median returns the median of v (the mean of the middle two when even).
func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

// timeEncoder returns the median seconds of one forward+backward of the
// encoder (training mode) on a batch, from a fixed output gradient. The
// median rather than the mean: on a shared machine one iteration slowed
// by another process otherwise moves the result by 10-20%.
func timeEncoder(dev *bindings.Device, s encoderSpec, warmup, iters int) (float64, error) {
	m, err := model.New(dev, model.Config{Arch: s.Name, Stem: s.Stem, InChannels: s.Channels,
		Width: s.Width, Seed: 1})
	if err != nil {
		return 0, err
	}
	defer m.Close()
	x, err := randTensor(dev, 1, s.Batch, s.Size, s.Size, s.Channels)
	if err != nil {
		return 0, err
	}
	defer x.Close()
	g, err := randTensor(dev, 2, s.Batch, m.RepDim)
	if err != nil {
		return 0, err
	}
	defer g.Close()
	var times []float64
	for i := 0; i < warmup+iters; i++ {
		t0 := time.Now()
		if _, err := m.Forward(x); err != nil {
			return 0, err
		}
		if err := m.Backward(g); err != nil {
			return 0, err
		}
		if i >= warmup {
			times = append(times, time.Since(t0).Seconds())
		}
	}
	sort.Float64s(times)
	return times[len(times)/2], nil
}

// timeGEMM is the best GFLOP/s over five rounds of n x n x n products
// through the linear op (y = x w^T, the same packed GEMM as the
// convolutions), each round repeating the product for at least 0.2 s so
// that small sizes are not timed by the clock's granularity.
func timeGEMM(dev *bindings.Device, n int) (float64, error) {
	x, err := randTensor(dev, 3, n, n)
	if err != nil {
		return 0, err
	}
	defer x.Close()
	w, err := randTensor(dev, 4, n, n)
	if err != nil {
		return 0, err
	}
	defer w.Close()
	y, err := dev.NewTensor(bindings.Float32, n, n)
	if err != nil {
		return 0, err
	}
	defer y.Close()
	if err := bindings.LinearForward(x, w, nil, y); err != nil {
		return 0, err
	}
	best := 0.0
	for round := 0; round < 5; round++ {
		t0, reps := time.Now(), 0
		for ; reps == 0 || time.Since(t0) < 200*time.Millisecond; reps++ {
			if err := bindings.LinearForward(x, w, nil, y); err != nil {
				return 0, err
			}
		}
		flops := 2 * float64(n) * float64(n) * float64(n) * float64(reps)
		best = max(best, flops/time.Since(t0).Seconds()/1e9)
	}
	return best, nil
}

func randTensor(dev *bindings.Device, seed uint64, shape ...int) (*bindings.Tensor, error) {
	n := 1
	for _, s := range shape {
		n *= s
	}
	r := rand.New(rand.NewPCG(seed, 0))
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return dev.FromFloat32(v, shape...)
}

func runEncoderPeer(python string, specs []encoderSpec, gemm []int, threads, warmup,
	iters int) (*encoderPeer, error) {
	arg, _ := json.Marshal(map[string]any{"threads": threads, "warmup": warmup,
		"iters": iters, "models": specs, "gemm": gemm})
	var p encoderPeer
	err := runPeer(python, "encoder_torch.py", []string{string(arg)},
		[]string{fmt.Sprintf("OMP_NUM_THREADS=%d", threads)}, &p)
	if err != nil {
		return nil, err
	}
	if len(p.Models) != len(specs) || len(p.Gemm) != len(gemm) {
		return nil, fmt.Errorf("peer returned %d models and %d GEMMs, want %d and %d",
			len(p.Models), len(p.Gemm), len(specs), len(gemm))
	}
	return &p, nil
}

func printEncoder(device, peer string, peak float64, threads int, rows []encoderRow,
	gemms []gemmRow) {
	fmt.Printf("device %s, %d threads, FMA peak %.1f GFLOP/s (all threads busy); %s\n\n",
		device, threads, peak, peer)
	printEncoderRows(rows, "%.1f")
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "gemm n\tpolyview GFLOP/s\tof peak\ttorch GFLOP/s\t")
	for _, g := range gemms {
		fmt.Fprintf(tw, "%d\t%.1f\t%.0f%%\t%s\t\n", g.N, g.GFLOPs, 100*g.PeakFrac,
			orDash(g.PeerGFLOPs, "%.1f"))
	}
	tw.Flush()
}

func orDash(v float64, format string) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

// printEncoderRows prints the views/s table of encoders, the rates in
// format.
func printEncoderRows(rows []encoderRow, format string) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "encoder\tpx\tbatch\tpolyview views/s\ttorch views/s\tratio\t")
	for _, r := range rows {
		name := r.Name
		if r.Stem != "" {
			name += "/" + r.Stem
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t"+format+"\t%s\t%s\t\n", name, r.Size, r.Batch,
			r.ViewsPerSec, orDash(r.PeerViewsSec, format), orDash(r.Ratio, "%.2f"))
	}
	tw.Flush()
}
