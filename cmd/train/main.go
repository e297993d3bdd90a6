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
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/polyview/polyview/bindings"
	"github.com/polyview/polyview/trainer"
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
	res, err := trainer.Train(ctx, cfg, log, os.Stderr)
	if err != nil {
		return err
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
