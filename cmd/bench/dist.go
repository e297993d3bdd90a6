package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/polyview/polyview/bindings"
	"github.com/polyview/polyview/trainer"
	"github.com/polyview/polyview/trainer/dist"
	"github.com/polyview/polyview/trainer/model"
)

func init() {
	subcommands["dist"] = subcommand{run: runDist,
		help: "data-parallel: bytes each rank sends per step, measured TCP traffic, scaling"}
}

// distModel is one model of the traffic table.
type distModel struct {
	Name  string `json:"name"`
	Arch  string `json:"arch"`
	Stem  string `json:"stem"`
	Head  []int  `json:"head"`
	N     int    `json:"n_per_rank"` // images per rank per step
	M     int    `json:"m"`
	Width int    `json:"width,omitempty"`
}

// distTraffic is what one step moves, per rank.
type distTraffic struct {
	Model      string  `json:"model"`
	Params     int     `json:"params"`
	BNChannels int     `json:"bn_channels"`
	W          int     `json:"world"`
	RingBytes  float64 `json:"nccl_ring_bytes_per_rank"`
	GradShare  float64 `json:"grad_share"`
	StarRank0  float64 `json:"tcp_rank0_bytes"`
	StarOther  float64 `json:"tcp_other_bytes"`
}

// stepBytes counts the payloads of one data-parallel step: the gradient
// all-reduce (P floats), two all-reduces of [2, C] per BN layer when BN
// is synchronised, the all-gather of the projections (n M d floats per
// rank) and the two flag all-reduces (2 floats each).
type stepBytes struct {
	grads, bn, emb, flags float64 // bytes one rank contributes
	bnCalls               int
}

func countStep(m *model.Model, n, mviews int) stepBytes {
	var s stepBytes
	for _, p := range m.Params() {
		s.grads += float64(4 * p.Value.Numel())
	}
	for _, b := range m.Buffers() {
		if strings.HasSuffix(b.Name, "running_mean") {
			s.bn += 2 * 2 * 4 * float64(b.Value.Numel()) // forward and backward, [2, C]
			s.bnCalls += 2
		}
	}
	s.emb = float64(4 * n * mviews * m.OutDim)
	s.flags = 2 * 2 * 4
	return s
}

// ring is NCCL's per-rank traffic: ring all-reduce 2 (W-1)/W of the
// buffer, ring all-gather (W-1) local parts.
func (s stepBytes) ring(w int) float64 {
	f := 2 * float64(w-1) / float64(w)
	return f*(s.grads+s.bn+s.flags) + float64(w-1)*s.emb
}

// star is polyview's TCP group: every other rank sends its payload to
// rank 0, which sends each of them the result (the gathered batch is W
// times a payload).
func (s stepBytes) star(w int) (rank0, other float64) {
	other = s.grads + s.bn + s.flags + s.emb
	rank0 = float64(w-1) * (s.grads + s.bn + s.flags + float64(w)*s.emb)
	return rank0, other
}

func runDist(args []string) error {
	fs := flag.NewFlagSet("dist", flag.ContinueOnError)
	worlds := fs.String("world", "2,4,8", "world sizes of the traffic table")
	measure := fs.String("measure", "2,4", "world sizes whose TCP traffic is measured in a real run (empty skips)")
	scaling := fs.String("scaling", "", "world sizes for a scaling run of cmd/train processes, e.g. 1,2 (empty skips)")
	device := fs.String("device", "cpu", "device of the scaling runs: cpu or cuda (one GPU per rank)")
	steps := fs.Int("steps", 30, "steps of each scaling run")
	trainBin := fs.String("train", "", "cmd/train binary of the scaling runs (empty: go build it)")
	jsonPath := fs.String("json", "", "write the rows as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ws, err := parseInts(*worlds)
	if err != nil {
		return fmt.Errorf("-world: %w", err)
	}
	dev, err := bindings.Open("cpu", nil)
	if err != nil {
		return err
	}
	defer dev.Close()

	models := []distModel{
		{Name: "convnet28", Arch: "convnet", Head: []int{128, 64}, N: 64, M: 4, Width: 16},
		{Name: "resnet18-cifar", Arch: "resnet18", Stem: "cifar", Head: []int{2048, 128}, N: 256, M: 4},
		{Name: "resnet50-imagenet", Arch: "resnet50", Stem: "imagenet", Head: []int{2048, 128}, N: 64, M: 4},
	}
	var rows []distTraffic
	fmt.Println("Bytes each rank sends per step (synchronised BN, global negatives)")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "model\tparams\tn/rank x M\tW\tNCCL ring MB\tof it grads\tTCP rank 0 MB\tTCP others MB\t")
	for _, dm := range models {
		m, err := model.New(dev, model.Config{Arch: dm.Arch, Stem: dm.Stem, Width: dm.Width,
			HeadDims: dm.Head})
		if err != nil {
			return err
		}
		s := countStep(m, dm.N, dm.M)
		params := m.NumParams()
		bnC := 0
		for _, b := range m.Buffers() {
			if strings.HasSuffix(b.Name, "running_mean") {
				bnC += b.Value.Numel()
			}
		}
		m.Close()
		for _, w := range ws {
			r0, other := s.star(w)
			row := distTraffic{Model: dm.Name, Params: params, BNChannels: bnC, W: w,
				RingBytes: s.ring(w), StarRank0: r0, StarOther: other,
				GradShare: 2 * float64(w-1) / float64(w) * s.grads / s.ring(w)}
			rows = append(rows, row)
			fmt.Fprintf(tw, "%s\t%.2fM\t%dx%d\t%d\t%.1f\t%.0f%%\t%.1f\t%.1f\t\n", dm.Name,
				float64(params)/1e6, dm.N, dm.M, w, row.RingBytes/1e6, 100*row.GradShare,
				r0/1e6, other/1e6)
		}
	}
	tw.Flush()

	var measured []measuredTraffic
	if *measure != "" {
		mw, err := parseInts(*measure)
		if err != nil {
			return fmt.Errorf("-measure: %w", err)
		}
		fmt.Println("\nMeasured TCP traffic of real steps (in-process ranks on loopback, convnet28 on MNIST, N = 64 global, M = 4)")
		tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "W\trank 0 MB/step\tpredicted\trank 1 MB/step\tpredicted\tcollectives/step\t")
		for _, w := range mw {
			row, err := measureTCP(dev, w)
			if err != nil {
				return fmt.Errorf("measuring W=%d: %w", w, err)
			}
			measured = append(measured, row)
			fmt.Fprintf(tw, "%d\t%.3f\t%.3f\t%.3f\t%.3f\t%.0f\t\n", w, row.Rank0/1e6,
				row.PredRank0/1e6, row.Other/1e6, row.PredOther/1e6, row.Calls)
		}
		tw.Flush()
	}

	var scale []scalingRow
	if *scaling != "" {
		sw, err := parseInts(*scaling)
		if err != nil {
			return fmt.Errorf("-scaling: %w", err)
		}
		if scale, err = runScaling(sw, *device, *steps, *trainBin); err != nil {
			return err
		}
	}
	if *jsonPath != "" {
		b, _ := json.MarshalIndent(map[string]any{"traffic": rows, "measured": measured,
			"scaling": scale, "date": time.Now().UTC().Format(time.RFC3339)}, "", "  ")
		return os.WriteFile(*jsonPath, b, 0o644)
	}
	return nil
}

type measuredTraffic struct {
	W         int     `json:"world"`
	Rank0     float64 `json:"rank0_bytes_per_step"`
	Other     float64 `json:"other_bytes_per_step"`
	PredRank0 float64 `json:"predicted_rank0"`
	PredOther float64 `json:"predicted_other"`
	Calls     float64 `json:"collectives_per_step"`
}

// measureTCP trains the default ConvNet on w in-process TCP ranks for 2
// and then 5 steps; the difference of the bytes counted, over 3 steps,
// is the traffic of a step without the start-up broadcast.
func measureTCP(dev *bindings.Device, w int) (measuredTraffic, error) {
	counts := map[int][]dist.Traffic{}
	for _, steps := range []int{2, 5} {
		tr, err := trainTCP(w, steps)
		if err != nil {
			return measuredTraffic{}, err
		}
		counts[steps] = tr
	}
	cfg := measureConfig(2)
	m, err := model.New(dev, model.Config{Arch: cfg.Arch, Width: cfg.Width, HeadDims: cfg.HeadDims})
	if err != nil {
		return measuredTraffic{}, err
	}
	defer m.Close()
	s := countStep(m, cfg.N/w, cfg.M)
	r0, other := s.star(w)
	per := func(r int) float64 { return float64(counts[5][r].Bytes-counts[2][r].Bytes) / 3 }
	return measuredTraffic{W: w, Rank0: per(0), Other: per(1), PredRank0: r0, PredOther: other,
		Calls: float64(counts[5][0].Calls-counts[2][0].Calls) / 3}, nil
}

func measureConfig(steps int) trainer.Config {
	c := trainer.DefaultConfig()
	c.Steps, c.KNNEvery, c.KNNBank, c.KNNQueries = steps, 0, 100, 50
	c.Progress, c.LogEvery, c.Device = false, 0, "cpu"
	return c
}

// trainTCP runs measureConfig on w ranks meeting over loopback TCP and
// returns each rank's traffic.
func trainTCP(w, steps int) ([]dist.Traffic, error) {
	port, err := freeBenchPort()
	if err != nil {
		return nil, err
	}
	out, err := os.MkdirTemp("", "polyview-bench-dist")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(out)
	traffic := make([]dist.Traffic, w)
	errs := make([]error, w)
	var wg sync.WaitGroup
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for r := 0; r < w; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g, err := dist.Join(context.Background(), dist.JoinConfig{Rank: r, Size: w,
				Addr: dist.Addr("127.0.0.1", port), Timeout: 5 * time.Minute})
			if err != nil {
				errs[r] = err
				return
			}
			defer g.Close()
			c := measureConfig(steps)
			c.Out, c.Dist = filepath.Join(out, "run"), g
			_, errs[r] = trainer.Train(context.Background(), c, quiet, io.Discard)
			traffic[r] = g.Traffic()
		}()
	}
	wg.Wait()
	return traffic, errors.Join(errs...)
}

func freeBenchPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

type scalingRow struct {
	W            int     `json:"world"`
	Device       string  `json:"device"`
	ViewsPerSec  float64 `json:"views_per_s"`
	PerRank      float64 `json:"views_per_s_per_rank"`
	Efficiency   float64 `json:"scaling_efficiency"`
	GlobalBatchN int     `json:"n"`
}

var doneLine = regexp.MustCompile(`done: \d+ steps, final loss [-\d.eE+NaInf]+, ([\d.]+) views/s`)

// runScaling trains with cmd/train at each world size, the per-rank
// batch fixed (N = 64 W), and reports views/s and the efficiency
// against W = 1 (views/s per rank over the one-rank figure).
func runScaling(worlds []int, device string, steps int, bin string) ([]scalingRow, error) {
	if bin == "" {
		bin = filepath.Join(os.TempDir(), "polyview-bench-train")
		if out, err := exec.Command("go", "build", "-o", bin, "./cmd/train").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("building cmd/train: %v\n%s", err, out)
		}
	}
	fmt.Printf("\nScaling: cmd/train -device %s, convnet28 on MNIST, 64 images per rank, M = 4, %d steps\n",
		device, steps)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "W\tviews/s\tper rank\tefficiency\t")
	var rows []scalingRow
	for _, w := range worlds {
		out, err := os.MkdirTemp("", "polyview-bench-scaling")
		if err != nil {
			return nil, err
		}
		args := []string{"-nproc-per-node", strconv.Itoa(w), "-device", device,
			"-n", strconv.Itoa(64 * w), "-steps", strconv.Itoa(steps), "-knn-bank", "100",
			"-knn-queries", "50", "-knn-every", "0", "-progress=false", "-out", out}
		res, err := exec.Command(bin, args...).CombinedOutput()
		os.RemoveAll(out)
		if err != nil {
			return nil, fmt.Errorf("W=%d: %v\n%s", w, err, res)
		}
		m := doneLine.FindSubmatch(res)
		if m == nil {
			return nil, fmt.Errorf("W=%d: no result line in\n%s", w, res)
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		row := scalingRow{W: w, Device: device, ViewsPerSec: v, PerRank: v / float64(w),
			GlobalBatchN: 64 * w}
		if len(rows) > 0 && rows[0].W == 1 {
			row.Efficiency = row.PerRank / rows[0].PerRank
		} else if w == 1 {
			row.Efficiency = 1
		}
		rows = append(rows, row)
		fmt.Fprintf(tw, "%d\t%.0f\t%.0f\t%s\t\n", w, v, row.PerRank,
			orDash(100*row.Efficiency, "%.0f%%"))
	}
	tw.Flush()
	return rows, nil
}
