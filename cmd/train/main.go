// Command train trains an image encoder with a poly-view contrastive
// objective. With no arguments it trains the small ConvNet on the
// built-in MNIST on the CPU with gpvc and M = 4 for a few minutes, and
// prints the kNN accuracy of the encoder before and after.
//
//	go run ./cmd/train
//	go run ./cmd/train -data ../shared/data/cifar10 -model resnet18 -views simclr-cifar -view-size 32
//	go run ./cmd/train -config run.json -resume auto
//
// Every flag and its default: go run ./cmd/train -h. SIGINT or SIGTERM
// writes a checkpoint before exiting; -resume auto continues from it.
//
// Data-parallel training: -nproc-per-node W starts W ranks on this
// machine (one per GPU, or W CPU processes sharing the cores); the same
// binary under torchrun or srun reads RANK, WORLD_SIZE, ... or SLURM's
// variables instead. -n stays the global batch.
//
//	go run ./cmd/train -nproc-per-node 2 -device cpu
//	go run ./cmd/train -nproc-per-node 8 -nnodes 2 -node-rank 0 -master-addr node0 -master-port 29500 ...
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/polyview/polyview/bindings"
	"github.com/polyview/polyview/trainer"
	"github.com/polyview/polyview/trainer/dist"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "train: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	cfg := trainer.DefaultConfig()
	// A config file is read first so that flags override it.
	if path := findConfigFlag(args); path != "" {
		if err := cfg.LoadFile(path); err != nil {
			return err
		}
	}
	fs := flag.NewFlagSet("train", flag.ContinueOnError)
	fs.String("config", "", "JSON config file (flags override it)")
	debug := fs.Bool("debug", false, "debug logging")
	var launch dist.LaunchConfig
	fs.IntVar(&launch.ProcsPerNode, "nproc-per-node", 0, "data-parallel: start this many ranks on this machine")
	fs.IntVar(&launch.Nodes, "nnodes", 1, "data-parallel: machines taking part (each runs the same command)")
	fs.IntVar(&launch.NodeRank, "node-rank", 0, "data-parallel: this machine's index, 0 on the machine of rank 0")
	fs.StringVar(&launch.MasterAddr, "master-addr", "", "data-parallel: host of rank 0 (default 127.0.0.1 on one machine)")
	fs.IntVar(&launch.MasterPort, "master-port", 0, "data-parallel: TCP port of rank 0 (default: a free one on one machine)")
	distTimeout := fs.Duration("dist-timeout", 10*time.Minute, "data-parallel: how long a rank waits for the others before failing")
	cfg.Flags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	bindings.SetLogger(log)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if launch.ProcsPerNode > 0 && os.Getenv("POLYVIEW_LAUNCHED") == "" {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		launch.Program = self
		launch.Args = stripFlags(args, "nproc-per-node", "nnodes", "node-rank", "master-addr",
			"master-port")
		return dist.Launch(ctx, launch)
	}
	env, err := dist.FromEnv(os.Getenv)
	if err != nil {
		return err
	}
	console := io.Writer(os.Stderr)
	if env.Distributed() {
		if err := placeRank(&cfg, env); err != nil {
			return err
		}
		log = log.With("rank", env.Rank)
		bindings.SetLogger(log)
		if env.Rank != 0 {
			console, cfg.Progress = io.Discard, false
		}
		log.Info("joining the data-parallel group", "world", env.Size, "master", env.Addr(),
			"from", env.Source)
		group, err := dist.Join(ctx, dist.JoinConfig{Rank: env.Rank, Size: env.Size,
			Addr: env.Addr(), Timeout: *distTimeout})
		if err != nil {
			return err
		}
		defer group.Close()
		cfg.Dist = group
	}
	res, err := trainer.Train(ctx, cfg, log, console)
	if err != nil {
		return err
	}
	if env.Rank != 0 {
		return nil
	}
	fmt.Printf("done: %d steps, final loss %.4f, %.0f views/s, data wait %.1f%%\n", res.Steps,
		res.FinalLoss, res.ViewsPerSec, 100*res.DataWait)
	fmt.Printf("kNN top-1: %.2f%% before, %.2f%% after; checkpoint %s\n", 100*res.KNNBefore,
		100*res.KNNAfter, res.LastCkpt)
	return nil
}

// findConfigFlag returns the value of -config / --config in args.
func findConfigFlag(args []string) string {
	for i, a := range args {
		for _, p := range []string{"-config", "--config"} {
			if a == p && i+1 < len(args) {
				return args[i+1]
			}
			if len(a) > len(p)+1 && a[:len(p)+1] == p+"=" {
				return a[len(p)+1:]
			}
		}
	}
	return ""
}

// placeRank gives a rank its own GPU (the one of its local rank) or, on
// the CPU, its share of the cores.
func placeRank(cfg *trainer.Config, env dist.Env) error {
	switch {
	case cfg.Device == "cuda" || (cfg.Device == "auto" && cudaCount() > 0):
		n := cudaCount()
		if n == 0 {
			return fmt.Errorf("-device cuda: no GPU visible to rank %d", env.Rank)
		}
		if env.LocalSize > n {
			return fmt.Errorf("%d ranks on this machine but %d GPUs: one rank per GPU",
				env.LocalSize, n)
		}
		cfg.Device = fmt.Sprintf("cuda:%d", env.LocalRank)
	case cfg.Device == "auto" || cfg.Device == "cpu":
		cfg.Device = "cpu"
		if cfg.Threads == 0 {
			cfg.Threads = max(1, runtime.NumCPU()/max(1, env.LocalSize))
		}
	}
	return nil
}

func cudaCount() int {
	if !bindings.CUDALoaded() {
		path, ok := bindings.FindCUDALibrary()
		if !ok || bindings.LoadCUDA(path) != nil {
			return 0
		}
	}
	n, err := bindings.CUDADeviceCount()
	if err != nil {
		return 0
	}
	return n
}

// stripFlags returns args without the named flags and their values
// (-name v, -name=v, --name v, --name=v).
func stripFlags(args []string, names ...string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		name := strings.TrimLeft(a, "-")
		if a == "--" || !strings.HasPrefix(a, "-") {
			out = append(out, a)
			continue
		}
		key, _, hasValue := strings.Cut(name, "=")
		drop := false
		for _, n := range names {
			if key == n {
				drop = true
			}
		}
		if !drop {
			out = append(out, a)
			continue
		}
		if !hasValue {
			i++ // the value is the next argument
		}
	}
	return out
}
