// Command embed writes the embeddings of a dataset under a trained
// encoder: the representation (default) or the projection head's output,
// one row per image, with the images' keys and labels.
//
//	go run ./cmd/embed -ckpt runs/default/ckpt-000000250 -data mnist -split test -o emb.npy
//
// An .npy output gets a .keys.txt (key, tab, label per line) beside it; a
// .safetensors output holds "embeddings" [N, D] F32 and "labels" [N] I64,
// with the keys in its metadata as a JSON list.
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/polyview/polyview/bindings"
	"github.com/polyview/polyview/datasets"
	"github.com/polyview/polyview/trainer"
	"github.com/polyview/polyview/trainer/checkpoint"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "embed: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("embed", flag.ContinueOnError)
	ckpt := fs.String("ckpt", "", "checkpoint (base path or either file)")
	data := fs.String("data", "mnist", "dataset path (as for train)")
	split := fs.String("split", "test", "train or test")
	out := fs.String("o", "embeddings.npy", "output: .npy or .safetensors")
	head := fs.Bool("head", false, "the projection head's output instead of the representation")
	device := fs.String("device", "auto", "auto, cpu, cuda or cuda:N")
	limit := fs.Int("limit", 0, "embed only the first N images (0 = all)")
	batch := fs.Int("batch", 256, "images per forward pass")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *ckpt == "" {
		return fmt.Errorf("-ckpt is required")
	}
	if !strings.HasSuffix(*out, ".npy") && !strings.HasSuffix(*out, ".safetensors") {
		return fmt.Errorf("-o %s: want a .npy or .safetensors file", *out)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	bindings.SetLogger(log)
	enc, err := trainer.LoadEncoder(*ckpt, *device)
	if err != nil {
		return err
	}
	defer enc.Close()
	enc.Head = *head
	ds, err := datasets.Open(*data, datasets.Options{Split: *split, Logger: log})
	if err != nil {
		return err
	}
	emb, err := enc.EmbedDataset(ds, *limit, *batch)
	if err != nil {
		return err
	}
	f := emb.Features
	if strings.HasSuffix(*out, ".npy") {
		if err := checkpoint.WriteFileAtomic(*out, func(w io.Writer) error {
			bw := bufio.NewWriter(w)
			if err := trainer.WriteNPY(bw, f.Data, f.N, f.Dim); err != nil {
				return err
			}
			return bw.Flush()
		}); err != nil {
			return err
		}
		keys := strings.TrimSuffix(*out, ".npy") + ".keys.txt"
		if err := checkpoint.WriteFileAtomic(keys, func(w io.Writer) error {
			bw := bufio.NewWriter(w)
			for i, k := range emb.Keys {
				fmt.Fprintf(bw, "%s\t%d\n", k, f.Labels[i])
			}
			return bw.Flush()
		}); err != nil {
			return err
		}
	} else {
		labels := make([]byte, 8*f.N)
		for i, l := range f.Labels {
			binary.LittleEndian.PutUint64(labels[8*i:], uint64(int64(l)))
		}
		keysJSON, _ := json.Marshal(emb.Keys)
		tensors := map[string]checkpoint.Tensor{
			"embeddings": checkpoint.FromFloat32(f.Data, f.N, f.Dim),
			"labels":     {DType: "I64", Shape: []int{f.N}, Data: labels},
		}
		if err := checkpoint.WriteFileAtomic(*out, func(w io.Writer) error {
			bw := bufio.NewWriter(w)
			err := checkpoint.EncodeSafetensors(bw, tensors, map[string]string{"keys": string(keysJSON)})
			if err != nil {
				return err
			}
			return bw.Flush()
		}); err != nil {
			return err
		}
	}
	fmt.Printf("wrote %d embeddings of width %d to %s\n", f.N, f.Dim, *out)
	return nil
}
