package datasets

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// IDX is the MNIST file format: a 4-byte magic (0, 0, element type, number of
// dimensions), one big-endian uint32 per dimension, then the elements in row-major
// order. polyview reads unsigned-byte elements only (type 0x08): images have three
// dimensions (count, rows, columns), labels one (count).
const (
	idxTypeUint8 = 0x08
	maxIDXBytes  = 1 << 32 // larger claims are refused before any memory is allocated
)

// idxArray is the content of one IDX file.
type idxArray struct {
	dims []int
	data []byte
}

// readIDX parses an IDX stream with wantDims dimensions. Image sides are bounded by
// maxSide. A stream shorter or longer than its header promises is an error.
func readIDX(r io.Reader, wantDims, maxSide int) (idxArray, error) {
	var magic [4]byte
	if _, err := io.ReadFull(r, magic[:]); err != nil {
		return idxArray{}, fmt.Errorf("magic: %w", noEOF(err))
	}
	if magic[0] != 0 || magic[1] != 0 {
		return idxArray{}, fmt.Errorf("magic %x: not an IDX file (first two bytes "+
			"must be zero)", magic)
	}
	if magic[2] != idxTypeUint8 {
		return idxArray{}, fmt.Errorf("element type 0x%02x: only unsigned bytes "+
			"(0x08) are supported", magic[2])
	}
	if int(magic[3]) != wantDims {
		return idxArray{}, fmt.Errorf("%d dimensions: want %d", magic[3], wantDims)
	}

	raw := make([]byte, 4*wantDims)
	if _, err := io.ReadFull(r, raw); err != nil {
		return idxArray{}, fmt.Errorf("dimensions: %w", noEOF(err))
	}
	arr := idxArray{dims: make([]int, wantDims)}
	total := int64(1)
	for i := range arr.dims {
		d := int64(binary.BigEndian.Uint32(raw[4*i:]))
		if d == 0 {
			return idxArray{}, fmt.Errorf("dimension %d is zero", i)
		}
		if i > 0 && d > int64(maxSide) {
			return idxArray{}, fmt.Errorf("dimension %d is %d: exceeds the %d-pixel "+
				"limit per side", i, d, maxSide)
		}
		total *= d
		if total > maxIDXBytes {
			return idxArray{}, fmt.Errorf("dimensions %x promise more than %d bytes",
				raw, int64(maxIDXBytes))
		}
		arr.dims[i] = int(d)
	}

	// The buffer grows with the data actually read, so a header that lies about the
	// size costs no memory.
	var buf bytes.Buffer
	buf.Grow(int(min(total, 64<<20)))
	if _, err := buf.ReadFrom(io.LimitReader(r, total+1)); err != nil {
		return idxArray{}, fmt.Errorf("data: %w", err)
	}
	switch got := int64(buf.Len()); {
	case got < total:
		return idxArray{}, fmt.Errorf("truncated: the header promises %d data bytes, "+
			"the file holds %d", total, got)
	case got > total:
		return idxArray{}, fmt.Errorf("trailing bytes after the %d data bytes the "+
			"header promises", total)
	}
	arr.data = buf.Bytes()
	return arr, nil
}

// noEOF reports a stream that ends inside a header or member as truncated.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("truncated: %w", io.ErrUnexpectedEOF)
	}
	return err
}

// readIDXFile reads an IDX file, plain or gzip (detected from its first bytes).
func readIDXFile(path string, wantDims, maxSide int) (idxArray, error) {
	f, err := os.Open(path)
	if err != nil {
		return idxArray{}, err
	}
	defer f.Close()
	r, err := maybeGunzip(bufio.NewReaderSize(f, 1<<16))
	if err != nil {
		return idxArray{}, fmt.Errorf("%s: %w", path, err)
	}
	arr, err := readIDX(r, wantDims, maxSide)
	if err != nil {
		return idxArray{}, fmt.Errorf("%s: %w", path, err)
	}
	return arr, nil
}

// maybeGunzip returns a reader of the decompressed stream when br starts with the
// gzip magic, else br itself.
func maybeGunzip(br *bufio.Reader) (io.Reader, error) {
	head, _ := br.Peek(2)
	if len(head) == 2 && head[0] == 0x1f && head[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, nil
	}
	return br, nil
}

// openIDX reads an images file and the labels file beside it into memory.
func openIDX(imagesPath string, opts Options) (Dataset, error) {
	images, err := readIDXFile(imagesPath, 3, opts.MaxImageSide)
	if err != nil {
		return nil, err
	}
	labelsPath, err := idxLabelsPath(imagesPath)
	if err != nil {
		return nil, err
	}
	labels, err := readIDXFile(labelsPath, 1, opts.MaxImageSide)
	if err != nil {
		return nil, err
	}
	return idxDataset(images, labels, imagesPath, labelsPath, opts)
}

// idxDataset checks that images and labels agree and wraps them as a Dataset. The
// number of classes is the largest label plus one unless Options.NumClasses says.
func idxDataset(images, labels idxArray, imagesPath, labelsPath string,
	opts Options) (*memoryDataset, error) {
	n := images.dims[0]
	if labels.dims[0] != n {
		return nil, fmt.Errorf("%s holds %d labels for the %d images of %s",
			labelsPath, labels.dims[0], n, imagesPath)
	}
	d := &memoryDataset{format: FormatIDX, source: imagesPath, opts: opts,
		n: n, h: images.dims[1], w: images.dims[2], c: 1, pix: images.data,
		labels: make([]int32, n), files: []fileSpan{{filepath.Base(imagesPath), 0}}}
	maxLabel := 0
	for i, l := range labels.data {
		d.labels[i] = int32(l)
		maxLabel = max(maxLabel, int(l))
	}
	return finishMemory(d, maxLabel+1)
}

// idxLabelsPath finds the labels file that goes with an images file
// (train-images-idx3-ubyte -> train-labels-idx1-ubyte, gzip or not).
func idxLabelsPath(imagesPath string) (string, error) {
	dir, base := filepath.Split(imagesPath)
	base = strings.Replace(base, "idx3", "idx1", 1)
	base = strings.Replace(base, "images", "labels", 1)
	plain := strings.TrimSuffix(base, ".gz")
	for _, name := range []string{base, plain, plain + ".gz"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: no labels file %s beside it", imagesPath, base)
}

func isIDXImagesName(base string) bool {
	b := strings.TrimSuffix(base, ".gz")
	return strings.HasSuffix(b, "idx3-ubyte")
}

// idxImagesFile picks the images file of a split from a folder listing ("train..." or
// "t10k..."/"test..."), preferring the uncompressed copy; "" when there is none.
func idxImagesFile(names []string, split string) string {
	prefixes := []string{"train"}
	if split == "test" {
		prefixes = []string{"t10k", "test"}
	}
	var found []string
	for _, n := range names {
		for _, p := range prefixes {
			if strings.HasPrefix(n, p) && isIDXImagesName(n) {
				found = append(found, n)
			}
		}
	}
	if len(found) == 0 {
		return ""
	}
	sort.Strings(found) // "x-idx3-ubyte" sorts before "x-idx3-ubyte.gz"
	return found[0]
}
