package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/polyview/polyview/bindings"
)

func init() {
	subcommands["loss"] = subcommand{run: runLoss,
		help: "fused poly-view objectives, forward+backward, vs a materialised PyTorch peer"}
}

// lossRow is one measurement: polyview and, when it ran, the peer.
type lossRow struct {
	Objective  string  `json:"objective"`
	Device     string  `json:"device"`
	DType      string  `json:"dtype"`
	R          int     `json:"r"`
	N          int     `json:"n"`
	M          int     `json:"m"`
	D          int     `json:"d"`
	Threads    int     `json:"threads"`
	Seconds    float64 `json:"seconds"`
	GFLOPs     float64 `json:"gflops"`
	PeakBytes  int64   `json:"peak_bytes"`
	Loss       float64 `json:"loss"`
	PeerSecs   float64 `json:"peer_seconds,omitempty"`
	PeerPeak   int64   `json:"peer_peak_bytes,omitempty"`
	PeerLoss   float64 `json:"peer_loss,omitempty"`
	PeerError  string  `json:"peer_error,omitempty"`
	Speedup    float64 `json:"speedup,omitempty"`
	LossRelErr float64 `json:"loss_rel_err,omitempty"`
}

// peerResult is what peer/loss_torch.py prints.
type peerResult struct {
	Seconds   float64 `json:"seconds"`
	Loss      float64 `json:"loss"`
	PeakBytes int64   `json:"peak_bytes"`
	Error     string  `json:"error"`
	Torch     string  `json:"torch"`
}

func runLoss(args []string) error {
	fs := flag.NewFlagSet("loss", flag.ContinueOnError)
	device := fs.String("device", "cpu", "cpu, cuda or cuda:N")
	rows := fs.String("r", "", "comma-separated R = N*M values (default cpu 1024,4096,16384; "+
		"cuda 8192,32768,65536,262144)")
	m := fs.Int("m", 4, "views per image (simclr always uses 2)")
	d := fs.Int("d", 128, "embedding width")
	tau := fs.Float64("tau", 0.2, "temperature")
	objs := fs.String("objectives", "all", "comma-separated objectives, or all")
	dtypeName := fs.String("dtype", "", "float32 or bfloat16 (default float32 on cpu, bfloat16 on cuda)")
	threads := fs.Int("threads", 0, "CPU threads for polyview and the peer (0 = all cores)")
	reps := fs.Int("reps", 3, "timed repetitions after one warm-up; the median is reported")
	python := fs.String("python", defaultPython(), "python with torch for the peer; empty skips it")
	peerMaxR := fs.Int("peer-max-r", 65536, "skip the CPU peer above this R (its S alone is 4 R^2 bytes)")
	jsonPath := fs.String("json", "", "also write the rows as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}

	dev, err := bindings.Open(*device, nil)
	if err != nil {
		return err
	}
	defer dev.Close()
	if *threads > 0 {
		if err := bindings.SetCPUThreads(*threads); err != nil {
			return err
		}
	}
	nthreads := bindings.CPUThreads()
	dtype := bindings.Float32
	if *dtypeName == "bfloat16" || (*dtypeName == "" && dev.IsCUDA()) {
		dtype = bindings.BFloat16
	}
	rs := *rows
	if rs == "" {
		rs = "1024,4096,16384"
		if dev.IsCUDA() {
			rs = "8192,32768,65536,262144"
		}
	}
	rlist, err := parseInts(rs)
	if err != nil {
		return fmt.Errorf("-r: %w", err)
	}
	objectives, err := parseObjectives(*objs)
	if err != nil {
		return err
	}
	peerDev := "cpu"
	if dev.IsCUDA() {
		peerDev = "cuda"
	}

	fmt.Printf("bench loss: %s, %v, d=%d, tau=%g, %d threads, median of %d\n",
		dev.Name(), dtype, *d, *tau, nthreads, *reps)
	fmt.Println("GFLOP/s counts 3 x 2 R^2 d per forward+backward (S, then (G + G^T) Z as two products),")
	fmt.Println("the work of the materialised version; polyview's symmetric passes do 2 x 2 R^2 d.")
	var out []lossRow
	fmt.Printf("%-10s %7s %6s %3s %9s %8s %9s %9s %9s %8s %9s\n", "objective", "R", "N", "M",
		"ms", "GFLOP/s", "peak MiB", "peer ms", "peer MiB", "speedup", "loss diff")
	for _, obj := range objectives {
		for _, r := range rlist {
			mv := *m
			if obj == bindings.SimCLR {
				mv = 2
			}
			n := r / mv
			row, err := measureLoss(dev, obj, dtype, n, mv, *d, *tau, *reps)
			if err != nil {
				return err
			}
			row.Threads = nthreads
			row.Device = dev.Name()
			if *python != "" && (dev.IsCUDA() || r <= *peerMaxR) {
				p := runLossPeer(*python, obj, n, mv, *d, *tau, nthreads, *reps, peerDev, dtype)
				row.PeerSecs, row.PeerPeak, row.PeerLoss, row.PeerError = p.Seconds, p.PeakBytes, p.Loss, p.Error
				if p.Error == "" && p.Seconds > 0 {
					row.Speedup = p.Seconds / row.Seconds
					row.LossRelErr = math.Abs(p.Loss-row.Loss) / math.Abs(p.Loss)
				}
			} else if *python != "" {
				row.PeerError = "skipped (-peer-max-r)"
			}
			out = append(out, row)
			printLossRow(row)
		}
	}
	if *jsonPath != "" {
		b, _ := json.MarshalIndent(out, "", "  ")
		if err := os.WriteFile(*jsonPath, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func printLossRow(r lossRow) {
	peerMs, peerMiB, speed, diff := "-", "-", "-", "-"
	if r.PeerError != "" {
		peerMs = r.PeerError
	} else if r.PeerSecs > 0 {
		peerMs = fmt.Sprintf("%.1f", r.PeerSecs*1e3)
		peerMiB = fmt.Sprintf("%.0f", float64(r.PeerPeak)/(1<<20))
		speed = fmt.Sprintf("%.2fx", r.Speedup)
		diff = fmt.Sprintf("%.1e", r.LossRelErr)
	}
	fmt.Printf("%-10s %7d %6d %3d %9.1f %8.1f %9.1f %9s %9s %8s %9s\n", r.Objective, r.R, r.N,
		r.M, r.Seconds*1e3, r.GFLOPs, float64(r.PeakBytes)/(1<<20), peerMs, peerMiB, speed, diff)
}

// measureLoss times forward+backward on OBJECTIVES.md's reference formula
// (the peer builds the same input, so the two losses must agree).
func measureLoss(dev *bindings.Device, obj bindings.Objective, dtype bindings.DType,
	n, m, d int, tau float64, reps int) (lossRow, error) {
	h := make([]float32, n*m*d)
	for i := 0; i < n; i++ {
		for a := 0; a < m; a++ {
			for t := 0; t < d; t++ {
				x := 0.7*float64(i+1) + 1.3*float64(a+1) + 0.37*float64(t+1)
				h[(i*m+a)*d+t] = float32(math.Sin(x) + 0.05*float64(t))
			}
		}
	}
	ht, err := dev.NewTensor(dtype, n, m, d)
	if err != nil {
		return lossRow{}, err
	}
	defer ht.Close()
	if err := ht.WriteFloat32(h); err != nil {
		return lossRow{}, err
	}
	g, err := dev.NewTensor(dtype, n, m, d)
	if err != nil {
		return lossRow{}, err
	}
	defer g.Close()
	loss := bindings.Loss{Objective: obj, Tau: tau}
	inUse, _, err := dev.Memory()
	if err != nil {
		return lossRow{}, err
	}
	if err := dev.ResetPeak(); err != nil {
		return lossRow{}, err
	}
	var times []float64
	var value float64
	for rep := 0; rep <= reps; rep++ {
		start := time.Now()
		if value, err = loss.ForwardBackward(ht, g); err != nil {
			return lossRow{}, err
		}
		if err := dev.Synchronize(); err != nil {
			return lossRow{}, err
		}
		if rep > 0 {
			times = append(times, time.Since(start).Seconds())
		}
	}
	_, peak, err := dev.Memory()
	if err != nil {
		return lossRow{}, err
	}
	sort.Float64s(times)
	secs := times[len(times)/2]
	r := float64(n * m)
	return lossRow{
		Objective: obj.String(), DType: dtype.String(), R: n * m, N: n, M: m, D: d,
		Seconds: secs, GFLOPs: 3 * 2 * r * r * float64(d) / secs / 1e9,
		PeakBytes: peak - inUse, Loss: value,
	}, nil
}

func runLossPeer(python string, obj bindings.Objective, n, m, d int, tau float64, threads, reps int,
	device string, dtype bindings.DType) peerResult {
	var p peerResult
	err := runPeer(python, "loss_torch.py", []string{"--objective", obj.String(),
		"--n", strconv.Itoa(n), "--m", strconv.Itoa(m), "--d", strconv.Itoa(d),
		"--tau", fmt.Sprint(tau), "--threads", strconv.Itoa(threads), "--reps", strconv.Itoa(reps),
		"--device", device, "--dtype", dtype.String()}, nil, &p)
	if err != nil {
		msg := err.Error()
		if strings.Contains(strings.ToLower(msg), "memory") || strings.Contains(msg, "signal: killed") {
			msg = "out of memory"
		}
		return peerResult{Error: msg}
	}
	return p
}

// runPeer runs the PyTorch script peer/<script> with python, args and
// extra environment variables, and decodes the one JSON object it prints
// into out. A failure reads as the script's last line on stderr.
func runPeer(python, script string, args, env []string, out any) error {
	cmd := exec.Command(python, append([]string{filepath.Join(sourceDir(), "peer", script)},
		args...)...)
	cmd.Env = append(os.Environ(), env...)
	b, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok && len(ee.Stderr) > 0 {
			lines := strings.Split(strings.TrimSpace(string(ee.Stderr)), "\n")
			return fmt.Errorf("%s", lines[len(lines)-1])
		}
		return err
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("bad peer output: %w", err)
	}
	return nil
}

// defaultPython is $POLYVIEW_TORCH_PYTHON, else python3.
func defaultPython() string {
	if p := os.Getenv("POLYVIEW_TORCH_PYTHON"); p != "" {
		return p
	}
	return "python3"
}

// sourceDir is this package's folder, where peer/ lives: where it was
// compiled, or, for a binary carried to another machine (the GPU check),
// cmd/bench under the working directory (the repository's root).
func sourceDir() string {
	if _, file, _, ok := runtime.Caller(0); ok {
		if _, err := os.Stat(filepath.Join(filepath.Dir(file), "peer")); err == nil {
			return filepath.Dir(file)
		}
	}
	return filepath.Join("cmd", "bench")
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		out = append(out, v)
	}
	return out, nil
}

func parseObjectives(s string) ([]bindings.Objective, error) {
	if s == "all" {
		return bindings.Objectives(), nil
	}
	var out []bindings.Objective
	for _, f := range strings.Split(s, ",") {
		o, err := bindings.ParseObjective(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		out = append(out, o)
	}
	return out, nil
}
