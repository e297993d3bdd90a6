// Package trainer trains an image encoder with a poly-view contrastive
// objective: data, views, encoder, loss and optimizer, with checkpoints,
// metrics, plots and an online kNN monitor. cmd/train is its command line.
package trainer

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/polyview/polyview/bindings"
	"github.com/polyview/polyview/trainer/dist"
)

// Config is every setting of a run. The zero value is not usable: start
// from DefaultConfig, then apply a config file and flags.
type Config struct {
	Data     string `json:"data"`      // dataset path; "" or "mnist" is the built-in MNIST
	EvalData string `json:"eval_data"` // held-out set for kNN; "" uses the test split of Data

	Arch      string  `json:"arch"`      // convnet, resnet18, resnet34, resnet50
	Stem      string  `json:"stem"`      // cifar or imagenet (ResNets)
	Width     int     `json:"width"`     // ConvNet base width
	HeadDims  []int   `json:"head_dims"` // projection head widths, 2 or 3 layers
	ZeroInit  bool    `json:"zero_init"` // zero last BN scale of each residual block
	Objective string  `json:"objective"` // simclr, multicrop, gpvc, apvc, suffstats, mvinfonce, mvdhel
	N         int     `json:"n"`         // images per step, over all data-parallel ranks
	M         int     `json:"m"`         // views per image
	Tau       float64 `json:"tau"`
	Views     string  `json:"views"`     // recipe: simclr, simclr-cifar, mnist, byol, multicrop:GxS,LxS
	ViewSize  int     `json:"view_size"` // output side of the views (multicrop gives its own)

	Optimizer   string  `json:"optimizer"`  // lars, sgd, adamw
	LR          float64 `json:"lr"`         // base learning rate, before scaling
	LRScaling   string  `json:"lr_scaling"` // linear (lr * N*M/256), sqrt, none
	Momentum    float64 `json:"momentum"`
	WeightDecay float64 `json:"weight_decay"`
	WarmupSteps int     `json:"warmup_steps"`
	Epochs      int     `json:"epochs"` // used when Steps is 0
	Steps       int     `json:"steps"`  // total optimizer steps; 0 means Epochs worth

	Precision string `json:"precision"` // fp32, or bf16 (GPU)
	Device    string `json:"device"`    // auto, cpu, cuda, cuda:N
	Threads   int    `json:"threads"`   // CPU threads; 0 = all
	Workers   int    `json:"workers"`   // data loader workers
	Seed      uint64 `json:"seed"`

	Out       string `json:"out"`        // output folder
	CkptEvery int    `json:"ckpt_every"` // steps between checkpoints; 0 = each epoch end only
	KeepCkpts int    `json:"keep_ckpts"` // newest checkpoints kept
	Resume    string `json:"resume"`     // "", "auto" (latest in Out) or a checkpoint path
	InitFrom  string `json:"init_from"`  // load weights only from this checkpoint

	LogEvery   int     `json:"log_every"` // steps between log lines and metrics records
	KNNEvery   int     `json:"knn_every"` // epochs between kNN evaluations; 0 = start and end
	KNNK       int     `json:"knn_k"`
	KNNTemp    float64 `json:"knn_temp"`
	KNNBank    int     `json:"knn_bank"`    // training images in the kNN bank (0 = all)
	KNNQueries int     `json:"knn_queries"` // held-out images queried (0 = all)

	ProfileSteps string `json:"profile_steps"` // "A:B": profiler capture only for steps [A, B)
	// StopAfter ends this process's share of the run after that many steps
	// with a checkpoint, for time-sliced or preemptible jobs; -resume auto
	// continues. 0 runs to the end. Not part of the run's identity.
	StopAfter int `json:"-"`

	// SyncBN: with several data-parallel ranks, batch normalisation uses
	// the statistics of the global batch (the one-rank result); false
	// keeps each rank's own.
	SyncBN bool `json:"sync_bn"`
	// Dist is this process's data-parallel group (nil: one rank). Each
	// rank trains on N / Dist.Size() images of every step; only rank 0
	// writes the output folder. A TCP group on a CUDA device is upgraded
	// to NCCL for the collectives.
	Dist     dist.Collective `json:"-"`
	Progress bool            `json:"progress"` // progress bar on a terminal
}

// DefaultConfig is the built-in run: the small ConvNet on MNIST on the CPU
// with gpvc and M = 4, a few minutes on 2 cores.
func DefaultConfig() Config {
	return Config{
		Data: "mnist", Arch: "convnet", Stem: "cifar", Width: 16, HeadDims: []int{128, 64},
		Objective: "gpvc", N: 64, M: 4, Tau: 0.2, Views: "mnist", ViewSize: 28,
		Optimizer: "lars", LR: 0.3, LRScaling: "linear", Momentum: 0.9, WeightDecay: 1e-6,
		WarmupSteps: 20, Epochs: 1, Steps: 250, Precision: "fp32", Device: "auto", Seed: 0,
		Out: "runs/default", KeepCkpts: 2, LogEvery: 10, KNNK: 200, KNNTemp: 0.07,
		KNNEvery: 1, KNNBank: 5000, KNNQueries: 1000, Progress: true, SyncBN: true,
	}
}

// Flags registers every field on fs, writing into c. Call after loading a
// config file so that flags override it.
func (c *Config) Flags(fs *flag.FlagSet) {
	fs.StringVar(&c.Data, "data", c.Data, "dataset: mnist (built in), a folder, shard glob, .tar, CIFAR or IDX path")
	fs.StringVar(&c.EvalData, "eval-data", c.EvalData, "held-out dataset for kNN (default: test split of -data)")
	fs.StringVar(&c.Arch, "model", c.Arch, "encoder: convnet, resnet18, resnet34, resnet50")
	fs.StringVar(&c.Stem, "stem", c.Stem, "ResNet stem: cifar or imagenet")
	fs.IntVar(&c.Width, "width", c.Width, "ConvNet base width")
	fs.Func("head", "projection head widths, e.g. 512,128 (2 or 3 layers)", func(s string) error {
		v, err := parseIntList(s)
		c.HeadDims = v
		return err
	})
	fs.BoolVar(&c.ZeroInit, "zero-init-residual", c.ZeroInit, "zero-initialise the last BN scale of residual blocks")
	fs.StringVar(&c.Objective, "objective", c.Objective, "simclr, multicrop, gpvc, apvc, suffstats, mvinfonce, mvdhel")
	fs.IntVar(&c.N, "n", c.N, "images per step (the global batch: each of W ranks takes N/W)")
	fs.IntVar(&c.M, "m", c.M, "views per image")
	fs.Float64Var(&c.Tau, "tau", c.Tau, "temperature")
	fs.StringVar(&c.Views, "views", c.Views, "view recipe: mnist, simclr, simclr-cifar, byol, multicrop:2x32,6x16")
	fs.IntVar(&c.ViewSize, "view-size", c.ViewSize, "view side in pixels")
	fs.StringVar(&c.Optimizer, "optimizer", c.Optimizer, "lars, sgd or adamw")
	fs.Float64Var(&c.LR, "lr", c.LR, "base learning rate (scaled by -lr-scaling)")
	fs.StringVar(&c.LRScaling, "lr-scaling", c.LRScaling, "linear (lr*N*M/256), sqrt (lr*sqrt(N*M/256)) or none")
	fs.Float64Var(&c.Momentum, "momentum", c.Momentum, "momentum (sgd, lars) or beta1 (adamw)")
	fs.Float64Var(&c.WeightDecay, "weight-decay", c.WeightDecay, "weight decay")
	fs.IntVar(&c.WarmupSteps, "warmup", c.WarmupSteps, "linear warm-up steps before cosine decay")
	fs.IntVar(&c.Epochs, "epochs", c.Epochs, "epochs (when -steps is 0)")
	fs.IntVar(&c.Steps, "steps", c.Steps, "optimizer steps; 0 means -epochs worth")
	fs.StringVar(&c.Precision, "precision", c.Precision, "fp32 or bf16 (GPU)")
	fs.StringVar(&c.Device, "device", c.Device, "auto, cpu, cuda or cuda:N")
	fs.IntVar(&c.Threads, "threads", c.Threads, "CPU threads (0 = all)")
	fs.IntVar(&c.Workers, "workers", c.Workers, "data loader workers (0 = default)")
	fs.Func("seed", "seed of every random draw", func(s string) error {
		v, err := strconv.ParseUint(s, 10, 64)
		c.Seed = v
		return err
	})
	fs.StringVar(&c.Out, "out", c.Out, "output folder (config, metrics.jsonl, checkpoints, plots)")
	fs.IntVar(&c.CkptEvery, "ckpt-every", c.CkptEvery, "steps between checkpoints (0 = at the end)")
	fs.IntVar(&c.KeepCkpts, "keep-ckpts", c.KeepCkpts, "newest checkpoints to keep")
	fs.StringVar(&c.Resume, "resume", c.Resume, "resume: auto (latest in -out) or a checkpoint path")
	fs.StringVar(&c.InitFrom, "init-from", c.InitFrom, "start from this checkpoint's weights only")
	fs.IntVar(&c.LogEvery, "log-every", c.LogEvery, "steps between log lines and metrics records")
	fs.IntVar(&c.KNNEvery, "knn-every", c.KNNEvery, "epochs between kNN evaluations (0 = start and end)")
	fs.IntVar(&c.KNNK, "knn-k", c.KNNK, "neighbours of the kNN monitor")
	fs.Float64Var(&c.KNNTemp, "knn-temp", c.KNNTemp, "temperature of the kNN votes")
	fs.IntVar(&c.KNNBank, "knn-bank", c.KNNBank, "training images in the kNN bank (0 = all)")
	fs.IntVar(&c.KNNQueries, "knn-queries", c.KNNQueries, "held-out images queried (0 = all)")
	fs.StringVar(&c.ProfileSteps, "profile-steps", c.ProfileSteps, "A:B limits profiler capture to steps [A, B) (Nsight: --capture-range=cudaProfilerApi)")
	fs.IntVar(&c.StopAfter, "stop-after", c.StopAfter, "checkpoint and exit after this many steps (resume with -resume auto)")
	fs.BoolVar(&c.Progress, "progress", c.Progress, "show a progress bar on a terminal")
	fs.BoolVar(&c.SyncBN, "sync-bn", c.SyncBN, "data-parallel: batch norm over the global batch (false: per rank)")
}

// LoadFile reads a JSON config file over c; unknown fields are an error
// naming the file and the field.
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return fmt.Errorf("config %s: %v", path, err)
	}
	return nil
}

// Validate checks every field, naming the flag and the problem.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if _, err := bindings.ParseObjective(c.Objective); err != nil {
		bad("-objective: %v", err)
	}
	if c.N < 2 {
		bad("-n %d: need at least 2 images per step (negatives)", c.N)
	}
	if w := c.worldSize(); w > 1 && c.N%w != 0 {
		bad("-n %d: the global batch must split evenly over the %d data-parallel ranks", c.N, w)
	}
	if c.M < 2 {
		bad("-m %d: need at least 2 views per image", c.M)
	}
	if strings.EqualFold(c.Objective, "simclr") && c.M != 2 {
		bad("-m %d: simclr takes exactly 2 views (use gpvc, apvc or multicrop)", c.M)
	}
	if !(c.Tau > 0) || math.IsInf(c.Tau, 0) {
		bad("-tau %g: must be a positive finite number", c.Tau)
	}
	if !(c.LR > 0) || math.IsInf(c.LR, 0) {
		bad("-lr %g: must be positive", c.LR)
	}
	switch c.LRScaling {
	case "linear", "sqrt", "none":
	default:
		bad("-lr-scaling %q: want linear, sqrt or none", c.LRScaling)
	}
	switch c.Optimizer {
	case "lars", "sgd", "adamw":
	default:
		bad("-optimizer %q: want lars, sgd or adamw", c.Optimizer)
	}
	switch c.Precision {
	case "fp32", "bf16":
	default:
		bad("-precision %q: want fp32 or bf16", c.Precision)
	}
	if c.WeightDecay < 0 || c.Momentum < 0 || c.Momentum >= 1 {
		bad("-weight-decay %g / -momentum %g: want >= 0 and momentum < 1", c.WeightDecay, c.Momentum)
	}
	if c.Steps < 0 || c.Epochs < 0 || (c.Steps == 0 && c.Epochs == 0) {
		bad("-steps %d / -epochs %d: one must be positive", c.Steps, c.Epochs)
	}
	if c.WarmupSteps < 0 || c.CkptEvery < 0 || c.LogEvery < 0 || c.KNNEvery < 0 {
		bad("-warmup, -ckpt-every, -log-every and -knn-every must not be negative")
	}
	if c.KNNK < 1 || !(c.KNNTemp > 0) {
		bad("-knn-k %d / -knn-temp %g: must be positive", c.KNNK, c.KNNTemp)
	}
	if c.ViewSize < 1 && !strings.HasPrefix(c.Views, "multicrop") {
		bad("-view-size %d: must be positive", c.ViewSize)
	}
	if c.Out == "" {
		bad("-out: an output folder is required")
	}
	if c.Resume != "" && c.InitFrom != "" {
		bad("-resume and -init-from exclude each other")
	}
	if _, _, err := c.profileWindow(); err != nil {
		bad("-profile-steps: %v", err)
	}
	if _, err := c.Recipes(); err != nil {
		bad("-views: %v", err)
	}
	return errors.Join(errs...)
}

// ScaledLR is the learning rate after batch-size scaling: the batch is
// N*M views, and 256 is the reference batch of the base rate.
func (c *Config) ScaledLR() float64 {
	b := float64(c.N*c.M) / 256
	switch c.LRScaling {
	case "linear":
		return c.LR * b
	case "sqrt":
		return c.LR * math.Sqrt(b)
	}
	return c.LR
}

// profileWindow parses ProfileSteps "A:B"; (0, 0) means no window.
func (c *Config) profileWindow() (int, int, error) {
	if c.ProfileSteps == "" {
		return 0, 0, nil
	}
	a, b, ok := strings.Cut(c.ProfileSteps, ":")
	lo, err1 := strconv.Atoi(a)
	hi, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || lo < 0 || hi <= lo {
		return 0, 0, fmt.Errorf("%q: want A:B with 0 <= A < B", c.ProfileSteps)
	}
	return lo, hi, nil
}

// Recipes resolves Views, ViewSize and M into one recipe per view index.
func (c *Config) Recipes() ([]bindings.Recipe, error) {
	name, arg, _ := strings.Cut(c.Views, ":")
	s := c.ViewSize
	switch name {
	case "simclr":
		return bindings.Repeat(bindings.SimCLRRecipe(s), c.M), nil
	case "simclr-cifar":
		return bindings.Repeat(bindings.SimCLRCIFARRecipe(s), c.M), nil
	case "mnist":
		return bindings.Repeat(MNISTRecipe(s), c.M), nil
	case "byol":
		if c.M != 2 {
			return nil, fmt.Errorf("byol is a pair of views; -m is %d", c.M)
		}
		return bindings.BYOLRecipes(s), nil
	case "multicrop":
		// multicrop:2x32,6x16 = 2 global views of 32 px, 6 local of 16 px.
		parts := strings.Split(arg, ",")
		if len(parts) != 2 {
			return nil, fmt.Errorf("%q: want multicrop:GxS,LxS", c.Views)
		}
		var counts, sizes [2]int
		for k, p := range parts {
			a, b, ok := strings.Cut(p, "x")
			n1, e1 := strconv.Atoi(a)
			n2, e2 := strconv.Atoi(b)
			if !ok || e1 != nil || e2 != nil || n1 < 1 || n2 < 1 {
				return nil, fmt.Errorf("%q: want multicrop:GxS,LxS", c.Views)
			}
			counts[k], sizes[k] = n1, n2
		}
		if counts[0]+counts[1] != c.M {
			return nil, fmt.Errorf("%q has %d views; -m is %d", c.Views, counts[0]+counts[1], c.M)
		}
		return bindings.MultiCropRecipes(counts[0], sizes[0], counts[1], sizes[1]), nil
	}
	return nil, fmt.Errorf("unknown recipe %q (want mnist, simclr, simclr-cifar, byol or multicrop:GxS,LxS)", c.Views)
}

// MNISTRecipe suits 28 x 28 digits: crops that keep most of the digit, no
// flip (digits are not mirror-symmetric), mild brightness and contrast
// jitter and blur, and MNIST's own normalisation on every channel.
func MNISTRecipe(size int) bindings.Recipe {
	r := bindings.SimCLRRecipe(size)
	r.ScaleMin, r.ScaleMax = 0.4, 1
	r.FlipP = 0
	r.JitterP = 0.8
	r.Brightness, r.Contrast, r.Saturation, r.Hue = 0.4, 0.4, 0, 0
	r.GrayP = 0
	r.BlurP = 0.3
	r.SolarizeP = 0
	r.Mean = [3]float64{0.1307, 0.1307, 0.1307}
	r.Std = [3]float64{0.3081, 0.3081, 0.3081}
	return r
}

func parseIntList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("%q: not a list of integers", s)
		}
		out = append(out, v)
	}
	return out, nil
}

// worldSize is the number of data-parallel ranks.
func (c *Config) worldSize() int {
	if c.Dist == nil {
		return 1
	}
	return c.Dist.Size()
}
