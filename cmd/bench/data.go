package main

// bench data: how fast each dataset format is decoded and delivered, and how much of a
// training step is left waiting for data.
//
// The inputs are the CIFAR-10 training shards (../shared/data/cifar10 from the project
// root, or -data), rewritten by the benchmark into a temporary folder as .tar.gz and
// .tar.zst shards, an ImageFolder tree of the same JPEGs, and CIFAR binary batches of
// the decoded pixels; MNIST is the built-in GoMNIST copy. For each format it runs
// three epochs through datasets.Loader:
//
//  1. one decode worker, consumer doing nothing: images per second on one core;
//  2. -workers decode workers: images per second, and images per CPU-second of the
//     whole process (getrusage), which is the cost per image whatever the core count;
//  3. the same workers with a simulated training step (-step, a sleep: the CPU is free
//     while a GPU would compute): the share of step time spent waiting for data.

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/polyview/polyview/datasets"
)

func init() {
	subcommands["data"] = subcommand{run: runData,
		help: "dataset decode/delivery throughput per format and the data wait of a step"}
}

// dataRow is one format's measurements (also the JSON record).
type dataRow struct {
	Format         string  `json:"format"`
	Source         string  `json:"source"`
	Samples        int     `json:"samples"`
	OpenSeconds    float64 `json:"open_seconds"`
	OneWorkerRate  float64 `json:"img_per_s_1_worker"`
	Workers        int     `json:"workers"`
	Rate           float64 `json:"img_per_s"`
	PerCPUSecond   float64 `json:"img_per_cpu_s"`
	StepMillis     float64 `json:"step_ms"`
	WaitShare      float64 `json:"wait_share"`
	WaitMillisStep float64 `json:"wait_ms_per_step"`
	Skipped        int64   `json:"skipped"`
}

// dataReport is the JSON file: the machine, the settings and the rows.
type dataReport struct {
	GoVersion  string    `json:"go_version"`
	NumCPU     int       `json:"num_cpu"`
	GOMAXPROCS int       `json:"gomaxprocs"`
	Batch      int       `json:"batch"`
	Shards     int       `json:"shards"`
	Rows       []dataRow `json:"rows"`
}

// dataFlags are the settings of one run.
type dataFlags struct {
	dataDir  string
	shards   int
	batch    int
	workers  int
	step     time.Duration
	formats  []string
	tmp      string
	jsonPath string
}

var dataFormats = []string{"tar", "tar.gz", "tar.zst", "imagefolder", "cifar-bin", "mnist"}

func runData(args []string) error {
	fs := flag.NewFlagSet("data", flag.ContinueOnError)
	var f dataFlags
	fs.StringVar(&f.dataDir, "data", defaultCIFARDir(), "folder of CIFAR-10 WebDataset shards")
	fs.IntVar(&f.shards, "shards", 10, "training shards to use (5,000 images each)")
	fs.IntVar(&f.batch, "batch", 256, "batch size")
	fs.IntVar(&f.workers, "workers", runtime.GOMAXPROCS(0), "decode workers")
	fs.DurationVar(&f.step, "step", 20*time.Millisecond, "simulated training step per batch")
	formats := fs.String("formats", strings.Join(dataFormats, ","), "formats to measure")
	fs.StringVar(&f.tmp, "tmp", "", "folder for the rewritten data (default: a new "+
		"temporary folder, removed at the end)")
	fs.StringVar(&f.jsonPath, "json", "", "also write the rows as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	f.formats = strings.Split(*formats, ",")
	if f.shards < 1 || f.batch < 1 || f.workers < 1 {
		return errors.New("-shards, -batch and -workers must be positive")
	}

	shards, err := trainShards(f.dataDir, f.shards)
	if err != nil {
		return err
	}
	if f.tmp == "" {
		if f.tmp, err = os.MkdirTemp("", "polyview-bench-data-"); err != nil {
			return err
		}
		defer os.RemoveAll(f.tmp)
	}

	report := dataReport{GoVersion: runtime.Version(), NumCPU: runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0), Batch: f.batch, Shards: len(shards)}
	fmt.Printf("bench data: %d CIFAR-10 shards from %s, batch %d, %d workers, "+
		"step %v, GOMAXPROCS %d\n\n", len(shards), f.dataDir, f.batch, f.workers, f.step,
		runtime.GOMAXPROCS(0))
	// Rows print as they are measured, so the columns have fixed widths.
	const rowFormat = "%-12s %8v %7v %10v %10v %10v %7v %8v %7v\n"
	fmt.Printf(rowFormat, "format", "samples", "open s", "img/s", "img/s", "img/CPU-s",
		"wait", "wait ms", "skipped")
	fmt.Printf(rowFormat, "", "", "", "1 worker", fmt.Sprintf("%d workers", f.workers),
		"", "share", "per step", "")
	for _, format := range f.formats {
		path, err := prepareFormat(format, shards, f)
		if err != nil {
			return fmt.Errorf("%s: %w", format, err)
		}
		row, err := measureFormat(format, path, f)
		if err != nil {
			return fmt.Errorf("%s: %w", format, err)
		}
		report.Rows = append(report.Rows, row)
		fmt.Printf(rowFormat, row.Format, row.Samples, fmt.Sprintf("%.2f", row.OpenSeconds),
			fmt.Sprintf("%.0f", row.OneWorkerRate), fmt.Sprintf("%.0f", row.Rate),
			fmt.Sprintf("%.0f", row.PerCPUSecond), fmt.Sprintf("%.3f", row.WaitShare),
			fmt.Sprintf("%.2f", row.WaitMillisStep), row.Skipped)
	}

	if f.jsonPath != "" {
		b, err := json.MarshalIndent(report, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(f.jsonPath, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// defaultCIFARDir is $POLYVIEW_DATA/cifar10 or ../shared/data/cifar10 (the layout of a
// checkout beside the shared data).
func defaultCIFARDir() string {
	if env := os.Getenv("POLYVIEW_DATA"); env != "" {
		return filepath.Join(env, "cifar10")
	}
	return filepath.Join("..", "shared", "data", "cifar10")
}

// trainShards lists the first n training shards of dir.
func trainShards(dir string, n int) ([]string, error) {
	var shards []string
	for i := 0; i < n; i++ {
		p := filepath.Join(dir, fmt.Sprintf("train-%04d.tar", i))
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("CIFAR-10 shards: %w (set -data)", err)
		}
		shards = append(shards, p)
	}
	return shards, nil
}

// prepareFormat writes (once) the data of one format and returns the path to open.
func prepareFormat(format string, shards []string, f dataFlags) (string, error) {
	dir := filepath.Join(f.tmp, format)
	switch format {
	case "tar":
		return dir, linkShards(shards, dir)
	case "mnist":
		return "mnist", nil
	case "tar.gz", "tar.zst":
		return dir, rewriteShards(shards, dir, format)
	case "imagefolder":
		return dir, writeFolderTree(shards, dir)
	case "cifar-bin":
		return dir, writeCIFARBatches(shards, dir)
	}
	return "", fmt.Errorf("unknown format; want one of %s", strings.Join(dataFormats, ","))
}

// linkShards makes dir a folder of links to the chosen shards, with classes.txt.
func linkShards(shards []string, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, s := range shards {
		abs, err := filepath.Abs(s)
		if err != nil {
			return err
		}
		if err := os.Symlink(abs, filepath.Join(dir, filepath.Base(s))); err != nil &&
			!errors.Is(err, os.ErrExist) {
			return err
		}
	}
	return copyClasses(filepath.Dir(shards[0]), dir)
}

// rewriteShards compresses each shard with gzip or zstd into dir, with classes.txt.
func rewriteShards(shards []string, dir, format string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := copyClasses(filepath.Dir(shards[0]), dir); err != nil {
		return err
	}
	for _, s := range shards {
		out := filepath.Join(dir, filepath.Base(s)+strings.TrimPrefix(format, "tar"))
		if err := compressFile(s, out, format); err != nil {
			return err
		}
	}
	return nil
}

func compressFile(src, dst, format string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	var w io.WriteCloser
	if format == "tar.gz" {
		w = gzip.NewWriter(out)
	} else if w, err = zstd.NewWriter(out); err != nil {
		out.Close()
		return err
	}
	if _, err := io.Copy(w, in); err != nil {
		out.Close()
		return err
	}
	if err := w.Close(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func copyClasses(from, to string) error {
	b, err := os.ReadFile(filepath.Join(from, "classes.txt"))
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(to, "classes.txt"), b, 0o644)
}

// writeFolderTree writes every JPEG of the shards to dir/<class name>/<key>.jpg.
func writeFolderTree(shards []string, dir string) error {
	b, err := os.ReadFile(filepath.Join(filepath.Dir(shards[0]), "classes.txt"))
	if err != nil {
		return err
	}
	classes := strings.Fields(string(b))
	for _, s := range shards {
		if err := extractShard(s, dir, classes); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

// extractShard relies on the layout of these shards: each .jpg is followed by its .cls.
func extractShard(shard, dir string, classes []string) error {
	f, err := os.Open(shard)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var jpg []byte
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return err
		}
		key, ext, _ := strings.Cut(h.Name, ".")
		switch ext {
		case "jpg":
			jpg = data
		case "cls":
			label, err := strconv.Atoi(string(data))
			if err != nil || label < 0 || label >= len(classes) || jpg == nil {
				return fmt.Errorf("member %s: unexpected label or order", h.Name)
			}
			classDir := filepath.Join(dir, classes[label])
			if err := os.MkdirAll(classDir, 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(classDir, key+".jpg"), jpg, 0o644); err != nil {
				return err
			}
			jpg = nil
		}
	}
}

// writeCIFARBatches decodes the shards and writes one CIFAR-10 binary batch per shard
// (records of a label byte, then the red, green and blue planes).
func writeCIFARBatches(shards []string, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for i, shard := range shards {
		out, err := cifarRecordsOf(shard)
		if err != nil {
			return err
		}
		name := filepath.Join(dir, fmt.Sprintf("data_batch_%d.bin", i+1))
		if err := os.WriteFile(name, out, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// cifarRecordsOf decodes one shard, in order, into CIFAR-10 records.
func cifarRecordsOf(shard string) ([]byte, error) {
	ds, err := datasets.Open(shard, datasets.Options{Strict: true})
	if err != nil {
		return nil, err
	}
	l, err := datasets.NewLoader(ds, datasets.LoaderConfig{BatchSize: 1000,
		Sequential: true, Workers: 1})
	if err != nil {
		return nil, err
	}
	defer l.Close()
	var out []byte
	for {
		b, err := l.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		for _, s := range b.Samples {
			if s.Image.H != 32 || s.Image.W != 32 || s.Image.C != 3 {
				return nil, fmt.Errorf("%s: %s is not 32x32 RGB", shard, s.Key)
			}
			out = append(out, byte(s.Label))
			for c := 0; c < 3; c++ {
				for p := 0; p < 32*32; p++ {
					out = append(out, s.Image.Pix[3*p+c])
				}
			}
		}
		b.Release()
	}
}

// measureFormat opens one dataset and runs the three epochs described at the top.
func measureFormat(format, path string, f dataFlags) (dataRow, error) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	start := time.Now()
	ds, err := datasets.Open(path, datasets.Options{Logger: quiet})
	if err != nil {
		return dataRow{}, err
	}
	row := dataRow{Format: format, Source: ds.Source(), Samples: ds.Len(),
		OpenSeconds: time.Since(start).Seconds(), Workers: f.workers,
		StepMillis: float64(f.step) / float64(time.Millisecond)}

	one, err := runEpoch(ds, datasets.LoaderConfig{BatchSize: f.batch, Seed: 1,
		Workers: 1}, 0)
	if err != nil {
		return row, err
	}
	row.OneWorkerRate = one.rate()

	all, err := runEpoch(ds, datasets.LoaderConfig{BatchSize: f.batch, Seed: 1, Epoch: 1,
		Workers: f.workers}, 0)
	if err != nil {
		return row, err
	}
	row.Rate = all.rate()
	row.PerCPUSecond = float64(all.images) / all.cpu.Seconds()
	row.Skipped = all.skipped

	stepped, err := runEpoch(ds, datasets.LoaderConfig{BatchSize: f.batch, Seed: 1,
		Epoch: 2, Workers: f.workers}, f.step)
	if err != nil {
		return row, err
	}
	ws := stepped.wait
	row.WaitShare = ws.Share()
	if ws.Batches > 1 {
		row.WaitMillisStep = float64(ws.Wait) / float64(time.Millisecond) /
			float64(ws.Batches-1)
	}
	return row, nil
}

// epochResult is what one epoch cost.
type epochResult struct {
	images  int
	wall    time.Duration
	cpu     time.Duration // user + system time of the process
	wait    datasets.WaitStats
	skipped int64
}

func (r epochResult) rate() float64 { return float64(r.images) / r.wall.Seconds() }

// runEpoch reads one epoch, sleeping step after each batch to stand for the training
// step (a GPU step leaves the CPU free, which a sleep imitates).
func runEpoch(ds datasets.Dataset, cfg datasets.LoaderConfig, step time.Duration) (
	epochResult, error) {
	cpu0, err := processCPU()
	if err != nil {
		return epochResult{}, err
	}
	start := time.Now()
	l, err := datasets.NewLoader(ds, cfg)
	if err != nil {
		return epochResult{}, err
	}
	defer l.Close()
	var res epochResult
	for {
		b, err := l.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return res, err
		}
		res.images += len(b.Samples)
		if step > 0 {
			time.Sleep(step)
		}
		b.Release()
	}
	res.wall = time.Since(start)
	cpu1, err := processCPU()
	if err != nil {
		return res, err
	}
	res.cpu = cpu1 - cpu0
	res.wait = l.WaitStats()
	res.skipped = l.Stats().Skipped
	return res, nil
}

// processCPU is the user plus system CPU time this process has used.
func processCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
