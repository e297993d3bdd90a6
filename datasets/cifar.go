package datasets

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// CIFAR binary files are a sequence of fixed-size records: the label byte(s) — one for
// CIFAR-10; coarse then fine for CIFAR-100 — followed by a 32x32 image stored plane by
// plane (1024 red, 1024 green, 1024 blue bytes, each plane row-major).
const (
	cifarSide   = 32
	cifarPixels = cifarSide * cifarSide * 3
)

// cifarLayout describes one of the two record layouts.
type cifarLayout struct {
	format     Format
	labelBytes int // label bytes at the start of each record
	labelAt    int // which label byte to use
	numClasses int
}

func (l cifarLayout) recordSize() int { return l.labelBytes + cifarPixels }

var (
	cifar10Layout        = cifarLayout{FormatCIFAR10, 1, 0, 10}
	cifar100FineLayout   = cifarLayout{FormatCIFAR100, 2, 1, 100}
	cifar100CoarseLayout = cifarLayout{FormatCIFAR100, 2, 0, 20}
)

// cifarLayoutFor picks the layout from a file name: CIFAR-100 ships train.bin and
// test.bin, CIFAR-10 everything else (data_batch_N.bin, test_batch.bin).
func cifarLayoutFor(path string, coarse bool) cifarLayout {
	switch filepath.Base(path) {
	case "train.bin", "test.bin":
		if coarse {
			return cifar100CoarseLayout
		}
		return cifar100FineLayout
	}
	return cifar10Layout
}

// parseCIFAR appends the records in data to pix (HWC) and labels. A partial record or a
// label outside the layout's classes is an error naming the record.
func parseCIFAR(data []byte, layout cifarLayout, pix []byte, labels []int32) ([]byte,
	[]int32, error) {
	rec := layout.recordSize()
	if len(data) == 0 {
		return pix, labels, errors.New("the file is empty")
	}
	if len(data)%rec != 0 {
		return pix, labels, fmt.Errorf("truncated: %d bytes is not a whole number of "+
			"%d-byte records (the last has %d bytes)", len(data), rec, len(data)%rec)
	}
	const plane = cifarSide * cifarSide
	for r := 0; r < len(data)/rec; r++ {
		record := data[r*rec : (r+1)*rec]
		label := int(record[layout.labelAt])
		if label >= layout.numClasses {
			return pix, labels, fmt.Errorf("record %d: label %d out of range [0, %d)",
				r, label, layout.numClasses)
		}
		labels = append(labels, int32(label))

		// Planar CHW to interleaved HWC.
		planes := record[layout.labelBytes:]
		start := len(pix)
		pix = append(pix, make([]byte, cifarPixels)...)
		out := pix[start:]
		for i := 0; i < plane; i++ {
			out[3*i] = planes[i]
			out[3*i+1] = planes[plane+i]
			out[3*i+2] = planes[2*plane+i]
		}
	}
	return pix, labels, nil
}

// openCIFAR reads CIFAR binary files into memory. All files must share one layout.
func openCIFAR(paths []string, opts Options) (Dataset, error) {
	if len(paths) == 0 {
		return nil, fmt.Errorf("no CIFAR file for split %q", opts.Split)
	}
	layout := cifarLayoutFor(paths[0], opts.CoarseLabels)
	d := &memoryDataset{format: layout.format, source: strings.Join(paths, ","),
		opts: opts, h: cifarSide, w: cifarSide, c: 3}
	for _, p := range paths {
		if l := cifarLayoutFor(p, opts.CoarseLabels); l != layout {
			return nil, fmt.Errorf("%s: CIFAR-10 and CIFAR-100 files are mixed", p)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		d.files = append(d.files, fileSpan{filepath.Base(p), len(d.labels)})
		d.pix, d.labels, err = parseCIFAR(data, layout, d.pix, d.labels)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	d.n = len(d.labels)
	return finishMemory(d, layout.numClasses)
}
