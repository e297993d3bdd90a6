package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/polyview/polyview/bindings"
)

func init() {
	subcommands["views"] = subcommand{run: runViews,
		help: "augmented views per second, CPU per core, vs torchvision.transforms.v2"}
}

// viewsCase is one row of the table: an output size, its recipe and the
// size of the (random) source images.
type viewsCase struct {
	Size       int    `json:"size"`
	Recipe     string `json:"recipe"`
	SrcH, SrcW int    `json:"-"`
	Src        string `json:"src"`
}

// viewsRow is one measured row, also written as JSON.
type viewsRow struct {
	viewsCase
	Device      string  `json:"device"`
	Threads     int     `json:"threads"`
	Ours        float64 `json:"polyview_views_per_s"`
	OursPerCore float64 `json:"polyview_views_per_s_per_core"`
	// The peer with antialiasing off (the same work as ours: plain
	// bilinear) and on (torchvision's default).
	Peer           float64 `json:"torchvision_views_per_s,omitempty"`
	PeerAntialias  float64 `json:"torchvision_antialias_views_per_s,omitempty"`
	Ratio          float64 `json:"ratio,omitempty"`
	RatioAntialias float64 `json:"ratio_antialias,omitempty"`
	PeerError      string  `json:"torchvision_error,omitempty"`
}

func runViews(args []string) error {
	fs := flag.NewFlagSet("views", flag.ContinueOnError)
	threads := fs.Int("threads", 1, "CPU threads for both polyview and torch")
	images := fs.Int("images", 32, "images per batch")
	views := fs.Int("views", 2, "views per image")
	seconds := fs.Float64("seconds", 3, "minimum time per measurement")
	device := fs.String("device", "cpu", "device for polyview: cpu, cuda, auto")
	python := fs.String("python", viewsPython(),
		"python with torch and torchvision ('' skips the peer)")
	jsonPath := fs.String("json", "", "write the rows as JSON to this file")
	sizes := fs.String("sizes", "32,224", "output sizes to measure (32 and 224 have recipes)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := bindings.SetCPUThreads(*threads); err != nil {
		return err
	}
	dev, err := bindings.Open(*device, nil)
	if err != nil {
		return err
	}
	defer dev.Close()

	var rows []viewsRow
	for _, s := range strings.Split(*sizes, ",") {
		size, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("-sizes: %q is not a number", s)
		}
		c := viewsCaseFor(size)
		row := viewsRow{viewsCase: c, Device: dev.Name(), Threads: *threads}
		if row.Ours, err = measureOurs(dev, c, *images, *views, *seconds); err != nil {
			return err
		}
		row.OursPerCore = row.Ours / float64(*threads)
		if *python != "" {
			peerArgs := []string{"--size", strconv.Itoa(size), "--src", c.Src, "--recipe", c.Recipe,
				"--images", strconv.Itoa(*images), "--views", strconv.Itoa(*views),
				"--threads", strconv.Itoa(*threads), "--seconds", fmt.Sprint(*seconds)}
			row.Peer, err = measurePeer(*python, append(peerArgs, "--antialias", "0"))
			if err == nil {
				row.PeerAntialias, err = measurePeer(*python, append(peerArgs, "--antialias", "1"))
			}
			if err != nil {
				row.PeerError = err.Error()
			} else {
				row.Ratio, row.RatioAntialias = row.Ours/row.Peer, row.Ours/row.PeerAntialias
			}
		}
		rows = append(rows, row)
	}
	printViews(rows)
	if *jsonPath != "" {
		b, _ := json.MarshalIndent(rows, "", "  ")
		if err := os.WriteFile(*jsonPath, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// viewsCaseFor: 224 is ImageNet's SimCLR recipe on 375 x 500 sources (an
// ImageNet-like size); 32 and below are CIFAR's recipe on 32 x 32 ones.
func viewsCaseFor(size int) viewsCase {
	if size <= 32 {
		return viewsCase{Size: size, Recipe: "simclr-cifar", SrcH: 32, SrcW: 32, Src: "32x32"}
	}
	return viewsCase{Size: size, Recipe: "simclr", SrcH: 375, SrcW: 500, Src: "375x500"}
}

func (c viewsCase) recipe() bindings.Recipe {
	if c.Recipe == "simclr-cifar" {
		return bindings.SimCLRCIFARRecipe(c.Size)
	}
	return bindings.SimCLRRecipe(c.Size)
}

// measureOurs returns views per second of AugmentInto on one reused batch
// and output, a new epoch per call so that every call draws new views.
func measureOurs(dev *bindings.Device, c viewsCase, n, m int, seconds float64) (float64, error) {
	rng := rand.New(rand.NewSource(1))
	images := make([]bindings.Image, n)
	for i := range images {
		pix := make([]byte, c.SrcH*c.SrcW*3)
		rng.Read(pix)
		images[i] = bindings.Image{Pix: pix, Height: c.SrcH, Width: c.SrcW, Channels: 3,
			Index: int64(i)}
	}
	batch, err := bindings.NewImageBatch(dev, images)
	if err != nil {
		return 0, err
	}
	defer batch.Close()
	out, err := dev.NewTensor(bindings.Float32, n, m, c.Size, c.Size, 3)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	recipes := bindings.Repeat(c.recipe(), m)
	run := func(epoch uint64) error {
		if err := bindings.AugmentInto(batch, recipes, 0, 1, epoch, out); err != nil {
			return err
		}
		return dev.Synchronize()
	}
	if err := run(0); err != nil { // warm up
		return 0, err
	}
	start, calls := time.Now(), 0
	for time.Since(start).Seconds() < seconds {
		if err := run(uint64(calls + 1)); err != nil {
			return 0, err
		}
		calls++
	}
	return float64(calls*n*m) / time.Since(start).Seconds(), nil
}

// measurePeer runs the torchvision script and returns its views/s.
func measurePeer(python string, args []string) (float64, error) {
	script, err := viewsPeerScript("views_torchvision.py")
	if err != nil {
		return 0, err
	}
	cmd := exec.Command(python, append([]string{script}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("%s %s: %v: %s", python, filepath.Base(script), err,
			viewsLastLine(stderr.String()))
	}
	var res struct {
		ViewsPerS float64 `json:"views_per_s"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return 0, fmt.Errorf("peer output %q: %v", stdout.String(), err)
	}
	return res.ViewsPerS, nil
}

// viewsPeerScript finds cmd/bench/peer/name from the working directory or the
// source tree this file was built from.
func viewsPeerScript(name string) (string, error) {
	var dirs []string
	if _, file, _, ok := runtime.Caller(0); ok {
		dirs = append(dirs, filepath.Join(filepath.Dir(file), "peer"))
	}
	dirs = append(dirs, filepath.Join("cmd", "bench", "peer"), "peer")
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("peer script %s not found (run from the repository root)", name)
}

// viewsPython is the peer's default interpreter: $POLYVIEW_TORCH_PYTHON or python3.
func viewsPython() string {
	if p := os.Getenv("POLYVIEW_TORCH_PYTHON"); p != "" {
		return p
	}
	return "python3"
}

func viewsLastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func printViews(rows []viewsRow) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "size\trecipe\tsource\tthreads\tpolyview/s\tper core\t"+
		"torchvision/s\tratio\ttv antialias/s\tratio\t")
	for _, r := range rows {
		peer, ratio, peerAA, ratioAA := "-", "-", "-", "-"
		if r.Peer > 0 {
			peer, ratio = fmt.Sprintf("%.0f", r.Peer), fmt.Sprintf("%.1fx", r.Ratio)
			peerAA, ratioAA = fmt.Sprintf("%.0f", r.PeerAntialias),
				fmt.Sprintf("%.1fx", r.RatioAntialias)
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%d\t%.0f\t%.0f\t%s\t%s\t%s\t%s\t\n", r.Size, r.Recipe, r.Src,
			r.Threads, r.Ours, r.OursPerCore, peer, ratio, peerAA, ratioAA)
	}
	w.Flush()
	for _, r := range rows {
		if r.PeerError != "" {
			fmt.Fprintf(os.Stderr, "torchvision at %d: %s\n", r.Size, r.PeerError)
		}
	}
	if len(rows) > 0 {
		fmt.Printf("device: %s; views per second, higher is better; ratio = polyview / "+
			"torchvision at the same thread count\n", rows[0].Device)
	}
}
