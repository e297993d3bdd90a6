package datasets

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Format names a file format that Open understands.
type Format string

// The formats Open detects.
const (
	FormatIDX         Format = "idx"         // MNIST IDX files, held in memory
	FormatCIFAR10     Format = "cifar10"     // CIFAR-10 binary batches, held in memory
	FormatCIFAR100    Format = "cifar100"    // CIFAR-100 binary files, held in memory
	FormatImageFolder Format = "imagefolder" // one subfolder per class, files read on demand
	FormatWebDataset  Format = "webdataset"  // tar shards, streamed
	FormatArrays      Format = "arrays"      // pixels handed to FromArrays
)

// Defaults for the zero fields of Options.
const (
	DefaultMaxImageSide  = 8192     // pixels; larger headers are refused before decoding
	DefaultMaxImageBytes = 64 << 20 // bytes of one encoded image file or tar member
)

// Options tune Open. The zero value reads the training split leniently.
type Options struct {
	// Split selects "train" (the default when empty) or "test". For a folder holding
	// train/ and test/ (or val/) subfolders, the split's subfolder is read; for a folder
	// of shards, the shards whose names begin with the split are read.
	Split string

	// Strict turns every bad sample or shard, which is otherwise skipped, counted and
	// logged, into an error.
	Strict bool

	// MaxImageSide bounds the width and height read from an image header before the
	// image is decoded (a guard against decompression bombs). Zero means
	// DefaultMaxImageSide.
	MaxImageSide int

	// MaxImageBytes bounds the size of one encoded image (a file or a tar member).
	// Zero means DefaultMaxImageBytes.
	MaxImageBytes int64

	// NumClasses, when positive, is the number of classes the caller expects: every
	// label must lie in [0, NumClasses), and Dataset.NumClasses reports it when the
	// files themselves do not say.
	NumClasses int

	// CoarseLabels selects the 20 coarse CIFAR-100 labels instead of the 100 fine ones.
	CoarseLabels bool

	// Logger receives one warning per bad sample (file, key, problem). Nil means
	// slog.Default().
	Logger *slog.Logger
}

// withDefaults returns o with zero fields filled in and the split checked.
func (o Options) withDefaults() (Options, error) {
	switch o.Split {
	case "":
		o.Split = "train"
	case "train", "test":
	default:
		return o, fmt.Errorf("split %q: want \"train\" or \"test\"", o.Split)
	}
	if o.MaxImageSide <= 0 {
		o.MaxImageSide = DefaultMaxImageSide
	}
	if o.MaxImageBytes <= 0 {
		o.MaxImageBytes = DefaultMaxImageBytes
	}
	if o.NumClasses < 0 {
		return o, fmt.Errorf("NumClasses %d: must not be negative", o.NumClasses)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

// Image is an 8-bit image stored row by row, pixel by pixel, channel by channel (HWC):
// the value of channel c at row y, column x is Pix[(y*W+x)*C+c], and len(Pix) == H*W*C.
// C is 1 for grayscale and 3 for RGB.
type Image struct {
	H, W, C int
	Pix     []byte
}

// Sample is one image with its label. In a Batch, the Pix memory of Image belongs to the
// batch and is valid until Batch.Release.
type Sample struct {
	// Key names the sample in its dataset: the tar key of a shard sample, the path of an
	// ImageFolder file relative to the root, or "file#record" for IDX and CIFAR.
	Key string

	// Index is the sample's position in the dataset, in [0, Dataset.Len()). It does not
	// change with shuffling, so (seed, epoch, Index, view) identifies a view.
	Index int

	Image Image

	// Label is the class in [0, NumClasses), or -1 when the sample has none.
	Label int
}

// Dataset is a source of labelled images opened by Open or FromArrays. A Dataset holds
// no open files and may be read by several Loaders, one after another or at once.
type Dataset interface {
	// Format tells which reader Open chose.
	Format() Format

	// Source is the path (or paths) the dataset was read from, for logs.
	Source() string

	// Len is the number of samples, counted when the dataset was opened. Bad samples
	// found only while decoding are included.
	Len() int

	// NumClasses is the number of classes, or 0 when the dataset has no labels.
	NumClasses() int

	// ClassNames returns the class names in label order when the files name them
	// (ImageFolder folders, a classes.txt beside shards), or nil.
	ClassNames() []string

	// Stats counts the problems found while opening (bad shards, tar members that
	// form no sample, unreadable labels). Problems found while loading are counted
	// by each Loader.
	Stats() Stats

	// reader is how a Loader reaches the samples; being unexported, it keeps
	// Dataset implementable only by this package.
	reader() sampleReader
}

// sampleReader is implemented by the in-memory and ImageFolder datasets (indexed) or by
// the shard dataset (sharded); a Loader handles both.
type sampleReader interface {
	options() Options
}

// indexedReader reads any sample by its index.
type indexedReader interface {
	sampleReader
	// load fills dst with sample i, reusing dst.Image.Pix. An error means sample i is
	// bad; the dataset stays usable.
	load(i int, dst *Sample) error
	// fileOf names the file that holds sample i, for reports.
	fileOf(i int) string
}

// Open reads the dataset at path. The format is detected from the path:
//
//   - "" or "mnist": the built-in MNIST from the GoMNIST module;
//   - a name ending in .tar, .tar.gz, .tgz, .tar.zst, a glob matching such files, or a
//     folder of them: WebDataset shards;
//   - a name ending in -idx3-ubyte or -idx3-ubyte.gz, or a folder holding such files:
//     MNIST IDX (the labels file is found by the usual naming);
//   - a .bin file, or a folder holding data_batch_*.bin, test_batch.bin, train.bin or
//     test.bin: CIFAR binary;
//   - any other folder with subfolders: ImageFolder, one class per subfolder.
//
// Open fails, naming the file and the problem, on a missing path, an empty dataset, a
// label out of range, or a truncated IDX or CIFAR file.
func Open(path string, opts Options) (Dataset, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("open %q: %w", path, err)
	}
	ds, err := openDetected(path, opts)
	if err != nil {
		return nil, fmt.Errorf("open %q: %w", path, err)
	}
	return ds, nil
}

func openDetected(path string, opts Options) (Dataset, error) {
	if path == "" || path == "mnist" {
		return openGoMNIST(opts)
	}
	if strings.ContainsAny(path, "*?[") {
		shards, err := filepath.Glob(path)
		if err != nil {
			return nil, err
		}
		shards = keepShards(shards)
		if len(shards) == 0 {
			return nil, errors.New("no .tar, .tar.gz or .tar.zst file matches the pattern")
		}
		return openShards(shards, filepath.Dir(shards[0]), opts)
	}
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !info.IsDir() {
		return openFile(path, opts)
	}
	return openDir(path, opts)
}

// openFile opens a dataset that is a single file.
func openFile(path string, opts Options) (Dataset, error) {
	base := filepath.Base(path)
	switch {
	case isShardName(base):
		return openShards([]string{path}, filepath.Dir(path), opts)
	case isIDXImagesName(base):
		return openIDX(path, opts)
	case strings.HasSuffix(base, ".bin"):
		return openCIFAR([]string{path}, opts)
	}
	return nil, errors.New("unknown format: want a tar shard, an -idx3-ubyte file, " +
		"a CIFAR .bin file or a folder")
}

// openDir opens a folder, detecting the format from the names inside it.
func openDir(dir string, opts Options) (Dataset, error) {
	for _, sub := range []string{"cifar-10-batches-bin", "cifar-100-binary"} {
		if isDir(filepath.Join(dir, sub)) {
			dir = filepath.Join(dir, sub)
		}
	}
	if split := splitSubdir(dir, opts.Split); split != "" {
		dir = split
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	if files := cifarFiles(names, opts.Split); files != nil {
		return openCIFAR(joinAll(dir, files), opts)
	}
	if f := idxImagesFile(names, opts.Split); f != "" {
		return openIDX(filepath.Join(dir, f), opts)
	}
	for _, n := range names {
		if isIDXImagesName(n) {
			return nil, fmt.Errorf("no IDX images file for split %q (want a name "+
				"beginning with %s)", opts.Split, map[string]string{
				"train": "train", "test": "t10k or test"}[opts.Split])
		}
	}
	if shards := keepShards(names); len(shards) > 0 {
		picked, err := shardsOfSplit(shards, opts.Split)
		if err != nil {
			return nil, err
		}
		return openShards(joinAll(dir, picked), dir, opts)
	}
	return openImageFolder(dir, opts)
}

// splitSubdir returns dir/split (or dir/val for the test split) when it is a folder.
func splitSubdir(dir, split string) string {
	candidates := []string{split}
	if split == "test" {
		candidates = append(candidates, "val")
	}
	for _, c := range candidates {
		if p := filepath.Join(dir, c); isDir(p) {
			return p
		}
	}
	return ""
}

// cifarFiles picks the CIFAR binary files of a split from a folder listing, or returns
// nil when the folder holds none.
func cifarFiles(names []string, split string) []string {
	var train10, test10, train100, test100 []string
	for _, n := range names {
		switch {
		case strings.HasPrefix(n, "data_batch_") && strings.HasSuffix(n, ".bin"):
			train10 = append(train10, n)
		case n == "test_batch.bin":
			test10 = append(test10, n)
		case n == "train.bin":
			train100 = append(train100, n)
		case n == "test.bin":
			test100 = append(test100, n)
		}
	}
	sort.Strings(train10)
	pick := func(train, test []string) []string {
		if split == "test" {
			return nonNil(test)
		}
		return nonNil(train)
	}
	if len(train10)+len(test10) > 0 {
		return pick(train10, test10)
	}
	if len(train100)+len(test100) > 0 {
		return pick(train100, test100)
	}
	return nil
}

// nonNil returns s, or an empty non-nil slice, so that "the folder is CIFAR but the split
// is missing" is told apart from "not CIFAR".
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// shardsOfSplit keeps the shards whose names begin with the split ("val" also serves
// "test"). With the default train split and no name matching it, all shards are kept.
func shardsOfSplit(shards []string, split string) ([]string, error) {
	prefixes := []string{split}
	if split == "test" {
		prefixes = append(prefixes, "val")
	}
	for _, p := range prefixes {
		var picked []string
		for _, s := range shards {
			if strings.HasPrefix(s, p) {
				picked = append(picked, s)
			}
		}
		if len(picked) > 0 {
			return picked, nil
		}
	}
	if split == "train" {
		return shards, nil
	}
	return nil, fmt.Errorf("no shard name begins with split %q", split)
}

// keepShards returns the names that look like tar shards, sorted.
func keepShards(names []string) []string {
	var out []string
	for _, n := range names {
		if isShardName(filepath.Base(n)) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

func isShardName(base string) bool {
	for _, ext := range []string{".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd"} {
		if strings.HasSuffix(strings.ToLower(base), ext) {
			return true
		}
	}
	return false
}

func isDir(path string) bool {
	info, err := os.Stat(path)
	return err == nil && info.IsDir()
}

func joinAll(dir string, names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = filepath.Join(dir, n)
	}
	return out
}
