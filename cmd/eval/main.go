// Command eval measures a trained encoder on a labelled dataset: a
// linear probe trained on frozen features of the train split and scored
// on the test split (top-1 and top-5), and the kNN classifier.
//
//	go run ./cmd/eval -ckpt runs/default/ckpt-000000250 -data mnist
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/polyview/polyview/bindings"
	"github.com/polyview/polyview/datasets"
	"github.com/polyview/polyview/trainer"
	"github.com/polyview/polyview/trainer/eval"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "eval: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("eval", flag.ContinueOnError)
	ckpt := fs.String("ckpt", "", "checkpoint (base path or either file)")
	data := fs.String("data", "mnist", "labelled dataset with train and test splits")
	device := fs.String("device", "auto", "auto, cpu, cuda or cuda:N")
	trainLimit := fs.Int("train-limit", 10000, "training images for the probe and the kNN bank (0 = all)")
	testLimit := fs.Int("test-limit", 0, "test images scored (0 = all)")
	epochs := fs.Int("epochs", 100, "probe epochs")
	lr := fs.Float64("lr", 1e-3, "probe Adam step size")
	wd := fs.Float64("weight-decay", 1e-4, "probe L2 weight decay")
	k := fs.Int("knn-k", 200, "kNN neighbours")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *ckpt == "" {
		return fmt.Errorf("-ckpt is required")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	bindings.SetLogger(log)
	enc, err := trainer.LoadEncoder(*ckpt, *device)
	if err != nil {
		return err
	}
	defer enc.Close()
	embed := func(split string, limit int) (*eval.Features, error) {
		ds, err := datasets.Open(*data, datasets.Options{Split: split, Logger: log})
		if err != nil {
			return nil, err
		}
		if ds.NumClasses() <= 0 {
			return nil, fmt.Errorf("%s (%s split) has no labels to evaluate with", *data, split)
		}
		e, err := enc.EmbedDataset(ds, limit, 256)
		if err != nil {
			return nil, err
		}
		return e.Features, nil
	}
	train, err := embed("train", *trainLimit)
	if err != nil {
		return err
	}
	test, err := embed("test", *testLimit)
	if err != nil {
		return err
	}
	res, err := eval.LinearProbe(train, test, eval.ProbeConfig{Epochs: *epochs, LR: *lr,
		WeightDecay: *wd})
	if err != nil {
		return err
	}
	// KNN normalises in place; the probe has standardised its own copies.
	acc, err := eval.KNN(train, test, *k, 0.07)
	if err != nil {
		return err
	}
	fmt.Printf("linear probe: top-1 %.2f%%  top-5 %.2f%%  (%d train, %d test, dim %d)\n",
		100*res.Top1, 100*res.Top5, train.N, test.N, train.Dim)
	fmt.Printf("kNN (k=%d): top-1 %.2f%%\n", *k, 100*acc)
	return nil
}
