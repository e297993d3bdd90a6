package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/polyview/polyview/bindings"
	"github.com/polyview/polyview/trainer/model"
)

func init() {
	subcommands["encoder-gpu"] = subcommand{run: runEncoderGPU,
		help: "encoder forward+backward views/s on a GPU (bf16 activations) vs PyTorch autocast"}
}

// runEncoderGPU times the encoders of `bench encoder` at GPU batch sizes:
// polyview with bf16 activations and fp32 weights (-precision bf16)
// against PyTorch with channels-last tensors under bf16 autocast and
// cudnn.benchmark, each timed between device synchronisations.
func runEncoderGPU(args []string) error {
	fs := flag.NewFlagSet("encoder-gpu", flag.ContinueOnError)
	device := fs.String("device", "cuda", "device: cuda or cuda:N")
	precision := fs.String("precision", "bf16", "bf16 (activations; fp32 weights) or fp32")
	iters := fs.Int("iters", 10, "timed iterations per encoder")
	warmup := fs.Int("warmup", 3, "untimed iterations first (cuDNN algorithm choice)")
	only := fs.String("models", "", "comma-separated subset of convnet28,convnet32,resnet18,resnet50")
	python := fs.String("python", defaultPython(), "python with torch (CUDA) for the peer; empty skips it")
	jsonPath := fs.String("json", "", "write the rows as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *precision != "bf16" && *precision != "fp32" {
		return fmt.Errorf("-precision %q: want bf16 or fp32", *precision)
	}
	dev, err := bindings.Open(*device, nil)
	if err != nil {
		return err
	}
	defer dev.Close()
	specs := map[string]encoderSpec{
		"convnet28": {Name: "convnet", Size: 28, Channels: 1, Batch: 2048, Width: 32},
		"convnet32": {Name: "convnet", Size: 32, Channels: 3, Batch: 2048, Width: 32},
		"resnet18":  {Name: "resnet18", Stem: "cifar", Size: 32, Channels: 3, Batch: 512},
		"resnet50":  {Name: "resnet50", Stem: "imagenet", Size: 224, Channels: 3, Batch: 128},
	}
	var run []encoderSpec
	for _, k := range []string{"convnet28", "convnet32", "resnet18", "resnet50"} {
		if *only == "" || strings.Contains(","+*only+",", ","+k+",") {
			run = append(run, specs[k])
		}
	}
	rows := make([]encoderRow, len(run))
	for i, s := range run {
		sec, err := timeEncoderGPU(dev, s, *precision == "bf16", *warmup, *iters)
		if err != nil {
			return fmt.Errorf("%s: %w", s.Name, err)
		}
		rows[i] = encoderRow{encoderSpec: s, Precision: *precision, Seconds: sec,
			ViewsPerSec: float64(s.Batch) / sec}
	}
	peer := "no peer"
	if *python != "" {
		p, err := runEncoderGPUPeer(*python, run, *precision == "bf16", *warmup, *iters)
		if err != nil {
			fmt.Fprintf(os.Stderr, "encoder-gpu: peer skipped: %v\n", err)
		} else {
			peer = "PyTorch " + p.Torch + " on " + p.Device
			for i := range rows {
				rows[i].PeerViewsSec = p.Models[i].ViewsPerSec
				rows[i].Ratio = rows[i].ViewsPerSec / p.Models[i].ViewsPerSec
			}
		}
	}
	fmt.Printf("device %s, %s; peer: %s (channels-last, autocast %s)\n\n", dev.Name(),
		*precision, peer, *precision)
	printEncoderRows(rows, "%.0f")
	if *jsonPath != "" {
		b, _ := json.MarshalIndent(map[string]any{"device": dev.Name(), "peer": peer,
			"rows": rows, "date": time.Now().UTC().Format(time.RFC3339)}, "", "  ")
		return os.WriteFile(*jsonPath, b, 0o644)
	}
	return nil
}

// timeEncoderGPU returns the mean seconds of one forward+backward of the
// encoder on the GPU, the device synchronised around each iteration.
func timeEncoderGPU(dev *bindings.Device, s encoderSpec, bf16 bool, warmup, iters int) (float64, error) {
	m, err := model.New(dev, model.Config{Arch: s.Name, Stem: s.Stem, InChannels: s.Channels,
		Width: s.Width, Seed: 1, BF16Activations: bf16})
	if err != nil {
		return 0, err
	}
	defer m.Close()
	from := dev.FromFloat32
	if bf16 {
		from = dev.FromBFloat16
	}
	x, err := randOn(from, 1, s.Batch, s.Size, s.Size, s.Channels)
	if err != nil {
		return 0, err
	}
	defer x.Close()
	g, err := randOn(from, 2, s.Batch, m.RepDim)
	if err != nil {
		return 0, err
	}
	defer g.Close()
	var total time.Duration
	for i := 0; i < warmup+iters; i++ {
		if err := dev.Synchronize(); err != nil {
			return 0, err
		}
		t0 := time.Now()
		if _, err := m.Forward(x); err != nil {
			return 0, err
		}
		if err := m.Backward(g); err != nil {
			return 0, err
		}
		if err := dev.Synchronize(); err != nil {
			return 0, err
		}
		if i >= warmup {
			total += time.Since(t0)
		}
	}
	return total.Seconds() / float64(iters), nil
}

// randOn is randTensor through a constructor of the wanted dtype.
func randOn(from func([]float32, ...int) (*bindings.Tensor, error), seed uint64,
	shape ...int) (*bindings.Tensor, error) {
	host, err := bindings.Open("cpu", nil)
	if err != nil {
		return nil, err
	}
	defer host.Close()
	t, err := randTensor(host, seed, shape...)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	v, err := t.Float32()
	if err != nil {
		return nil, err
	}
	return from(v, shape...)
}

type gpuEncoderPeer struct {
	Torch  string `json:"torch"`
	Device string `json:"device"`
	Models []struct {
		ViewsPerSec float64 `json:"views_per_s"`
	} `json:"models"`
}

func runEncoderGPUPeer(python string, specs []encoderSpec, bf16 bool, warmup,
	iters int) (*gpuEncoderPeer, error) {
	arg, _ := json.Marshal(map[string]any{"warmup": warmup, "iters": iters, "bf16": bf16,
		"models": specs})
	var p gpuEncoderPeer
	if err := runPeer(python, "encoder_torch_gpu.py", []string{string(arg)}, nil, &p); err != nil {
		return nil, err
	}
	if len(p.Models) != len(specs) {
		return nil, fmt.Errorf("peer returned %d models, want %d", len(p.Models), len(specs))
	}
	return &p, nil
}
