package datasets

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
)

// memoryDataset holds same-sized images in one slab: IDX, CIFAR and FromArrays.
type memoryDataset struct {
	format     Format
	source     string
	opts       Options
	n, h, w, c int
	pix        []byte  // n*h*w*c bytes, HWC per image
	labels     []int32 // n labels, or nil when unlabelled
	numClasses int
	files      []fileSpan // where each file's records start, for keys
}

// fileSpan names the file that holds records [start, next span's start).
type fileSpan struct {
	name  string
	start int
}

// FromArrays wraps n same-sized images already in memory as a Dataset: pix holds n
// images of h*w*c bytes each (HWC), labels holds n labels in [0, numClasses) or is nil
// for unlabelled data (every Label is then -1). The Dataset keeps pix and labels
// without copying; the caller must not change them while a Loader reads it. It serves
// tests and programs that make their own data.
func FromArrays(name string, h, w, c int, pix []byte, labels []int, numClasses int,
	opts Options) (Dataset, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("arrays %s: %w", name, err)
	}
	if h <= 0 || w <= 0 || (c != 1 && c != 3) {
		return nil, fmt.Errorf("arrays %s: image shape %dx%dx%d: want positive sides "+
			"and 1 or 3 channels", name, h, w, c)
	}
	size := h * w * c
	if len(pix) == 0 || len(pix)%size != 0 {
		return nil, fmt.Errorf("arrays %s: %d pixel bytes are not a positive multiple "+
			"of %d (one image)", name, len(pix), size)
	}
	n := len(pix) / size
	ds := &memoryDataset{format: FormatArrays, source: name, opts: opts,
		n: n, h: h, w: w, c: c, pix: pix, files: []fileSpan{{name, 0}}}
	if labels != nil {
		if len(labels) != n {
			return nil, fmt.Errorf("arrays %s: %d labels for %d images", name, len(labels), n)
		}
		ds.labels = make([]int32, n)
		for i, l := range labels {
			if l < 0 || l >= numClasses {
				return nil, fmt.Errorf("arrays %s: image %d: label %d out of range [0, %d)",
					name, i, l, numClasses)
			}
			ds.labels[i] = int32(l)
		}
		ds.numClasses = numClasses
	}
	return ds, nil
}

// The Dataset methods; Dataset states their contracts.
func (d *memoryDataset) Format() Format       { return d.format }
func (d *memoryDataset) Source() string       { return d.source }
func (d *memoryDataset) Len() int             { return d.n }
func (d *memoryDataset) NumClasses() int      { return d.numClasses }
func (d *memoryDataset) ClassNames() []string { return nil }
func (d *memoryDataset) Stats() Stats         { return Stats{} }
func (d *memoryDataset) reader() sampleReader { return d }
func (d *memoryDataset) options() Options     { return d.opts }

// load copies image i into dst; it cannot fail once the dataset has been built.
func (d *memoryDataset) load(i int, dst *Sample) error {
	if i < 0 || i >= d.n {
		return fmt.Errorf("index %d out of range [0, %d)", i, d.n)
	}
	size := d.h * d.w * d.c
	dst.Image.H, dst.Image.W, dst.Image.C = d.h, d.w, d.c
	dst.Image.Pix = grow(dst.Image.Pix, size)
	copy(dst.Image.Pix, d.pix[i*size:(i+1)*size])
	dst.Index = i
	dst.Label = -1
	if d.labels != nil {
		dst.Label = int(d.labels[i])
	}
	dst.Key = d.key(i)
	return nil
}

// fileOf is the file that held record i.
func (d *memoryDataset) fileOf(i int) string {
	f := sort.Search(len(d.files), func(k int) bool { return d.files[k].start > i }) - 1
	return d.files[f].name
}

// key names record i as "file#record", the record counted within its file.
func (d *memoryDataset) key(i int) string {
	f := sort.Search(len(d.files), func(k int) bool { return d.files[k].start > i }) - 1
	span := d.files[f]
	return span.name + "#" + strconv.Itoa(i-span.start)
}

// checkLabels verifies that every label is below limit, naming the record that is not.
func (d *memoryDataset) checkLabels(limit int) error {
	for i, l := range d.labels {
		if l < 0 || int(l) >= limit {
			return fmt.Errorf("%s: label %d out of range [0, %d)", d.key(i), l, limit)
		}
	}
	return nil
}

// finishMemory applies Options.NumClasses to a dataset built by a reader.
func finishMemory(d *memoryDataset, fileClasses int) (*memoryDataset, error) {
	if d.n == 0 {
		return nil, errors.New("the dataset holds no images")
	}
	d.numClasses = fileClasses
	if d.opts.NumClasses > 0 {
		if err := d.checkLabels(d.opts.NumClasses); err != nil {
			return nil, err
		}
		d.numClasses = d.opts.NumClasses
	}
	return d, nil
}
