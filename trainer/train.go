package trainer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/polyview/polyview/bindings"
	"github.com/polyview/polyview/datasets"
	"github.com/polyview/polyview/trainer/checkpoint"
	"github.com/polyview/polyview/trainer/dist"
	"github.com/polyview/polyview/trainer/eval"
	"github.com/polyview/polyview/trainer/gpumon"
	"github.com/polyview/polyview/trainer/metrics"
	"github.com/polyview/polyview/trainer/model"
	"github.com/polyview/polyview/trainer/optim"
)

// ErrInterrupted is returned (wrapped) when the context ends a run; a
// checkpoint has been written first.
var ErrInterrupted = errors.New("training interrupted")

// ErrStopped is returned (wrapped) when -stop-after ends this process's
// share of a run; a checkpoint has been written first.
var ErrStopped = errors.New("training stopped after -stop-after steps")

// Result summarises a finished run.
type Result struct {
	Steps         int64
	FinalLoss     float64
	KNNBefore     float64 // kNN top-1 of the encoder at the run's first step (NaN if not run)
	KNNAfter      float64 // kNN top-1 at the end (NaN if not run)
	ViewsPerSec   float64 // mean over the run's timed steps
	DataWait      float64 // share of step time spent waiting for data
	LastCkpt      string  // base path of the last checkpoint written
	Losses        []float64
	ResumedAtStep int64
}

// run is the state of one training run.
type run struct {
	cfg     Config
	log     *slog.Logger
	console io.Writer
	dev     *bindings.Device
	model   *model.Model
	opt     *optim.Optimizer
	sched   optim.Schedule
	loss    bindings.Loss
	recipes []bindings.Recipe
	train   datasets.Dataset
	held    datasets.Dataset // nil when no labelled held-out set exists
	metrics *metrics.Writer
	gpu     *gpumon.Monitor
	prof    *profiler

	// Data-parallel (parallel.go): nil group for one rank.
	group    dist.Collective
	ownGroup dist.Collective // a group this run made (NCCL) and closes
	gloss    *dist.GlobalLoss
	reducer  *dist.GradReducer
	serial   *dist.Serial // orders the collectives of the backward pass
	sentMark dist.Traffic // the group's traffic at the last metrics record
	stepMark int64        // and its step
	flags    *bindings.Tensor

	replicas  []*model.Model   // multi-size steps: one per size group but the last
	views, dh *bindings.Tensor // the step's views and dL/dh, reused across steps

	step, total      int64
	epoch, batchInEp int
	stepsPerEpoch    int
	res              Result
	knn              []metrics.Point
}

// Train runs cfg to completion or until ctx ends. Log lines go to log;
// the start-up table and the progress bar to console.
func Train(ctx context.Context, cfg Config, log *slog.Logger, console io.Writer) (*Result, error) {
	r := &run{cfg: cfg, log: log, console: console}
	r.res.KNNBefore, r.res.KNNAfter = math.NaN(), math.NaN()
	defer r.close()
	if err := r.setup(); err != nil {
		if cfg.Dist != nil {
			cfg.Dist.Fail(err)
		}
		return nil, err
	}
	err := r.loop(ctx)
	if r.rank0() {
		r.writePlots()
	}
	if err != nil {
		if r.group != nil && !errors.Is(err, ErrStopped) && !errors.Is(err, ErrInterrupted) {
			r.group.Fail(err) // the other ranks stop now rather than time out
		}
		return &r.res, err
	}
	return &r.res, nil
}

func (r *run) close() {
	if r.prof != nil {
		r.prof.close()
	}
	if r.opt != nil {
		r.opt.Close()
	}
	r.closeDist()
	for _, rep := range r.replicas {
		rep.Close() // before the model, whose tensors they borrow
	}
	for _, t := range []*bindings.Tensor{r.views, r.dh} {
		if t != nil {
			t.Close()
		}
	}
	if r.model != nil {
		r.model.Close()
	}
	if r.metrics != nil {
		r.metrics.Close()
	}
	if r.dev != nil {
		r.dev.Close()
	}
}

// setup resolves the config (a resumed run takes its checkpoint's),
// opens device and data, builds the model and optimizer and restores
// state.
func (r *run) setup() error {
	var resumeTensors map[string]checkpoint.Tensor
	var resumeState checkpoint.State
	if r.cfg.Resume != "" {
		path := r.cfg.Resume
		if path == "auto" {
			p, err := checkpoint.Latest(r.cfg.Out)
			if err != nil && !checkpoint.IsNotExist(err) {
				return err
			}
			path = p
		}
		if path != "" {
			t, st, err := checkpoint.Load(path)
			if err != nil {
				return err
			}
			if err := r.adoptConfig(st.Config); err != nil {
				return fmt.Errorf("resume %s: %w", path, err)
			}
			resumeTensors, resumeState = t, st
			r.log.Info("resuming", "checkpoint", path, "step", st.Step, "epoch", st.Epoch,
				"batch", st.BatchInEpoch)
		}
	}
	if err := r.cfg.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if resumeTensors == nil && r.rank0() {
		r.cfg.Out = freshOut(r.cfg.Out, r.log)
	}
	if r.rank0() {
		if err := os.MkdirAll(r.cfg.Out, 0o755); err != nil {
			return err
		}
	}
	if err := r.open(); err != nil {
		return err
	}
	if resumeTensors != nil {
		if err := r.restore(resumeTensors, resumeState, true); err != nil {
			return err
		}
	} else if r.cfg.InitFrom != "" {
		t, st, err := checkpoint.Load(r.cfg.InitFrom)
		if err != nil {
			return err
		}
		if err := r.restore(t, st, false); err != nil {
			return err
		}
		r.log.Info("initialised weights", "from", r.cfg.InitFrom)
	}
	if err := r.setupDist(); err != nil {
		return err
	}
	if !r.rank0() {
		return nil // rank 0 writes the folder and prints the summary
	}
	cfgJSON, _ := json.MarshalIndent(r.cfg, "", "  ")
	if err := os.WriteFile(filepath.Join(r.cfg.Out, "config.json"), cfgJSON, 0o644); err != nil {
		return err
	}
	var err error
	r.metrics, err = metrics.Open(filepath.Join(r.cfg.Out, "metrics.jsonl"))
	if err != nil {
		return err
	}
	r.printSummary()
	return nil
}

// adoptConfig replaces the run's config with a checkpoint's, keeping only
// the settings that do not change the computation's result.
func (r *run) adoptConfig(raw json.RawMessage) error {
	saved := DefaultConfig()
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&saved); err != nil {
		return fmt.Errorf("checkpoint config: %v", err)
	}
	saved.Out, saved.Resume, saved.InitFrom = r.cfg.Out, r.cfg.Resume, ""
	saved.Device, saved.Progress, saved.LogEvery = r.cfg.Device, r.cfg.Progress, r.cfg.LogEvery
	saved.ProfileSteps, saved.Dist = r.cfg.ProfileSteps, r.cfg.Dist
	saved.Threads, saved.Workers = r.cfg.Threads, r.cfg.Workers
	r.cfg = saved
	return nil
}

func (r *run) open() error {
	var err error
	if r.cfg.Threads > 0 {
		if err := bindings.SetCPUThreads(r.cfg.Threads); err != nil {
			return err
		}
	}
	if r.dev, err = bindings.Open(r.cfg.Device, r.log); err != nil {
		return err
	}
	for _, family := range []string{"augment", "encoder", "loss"} {
		if r.dev.HasOps(family) {
			continue
		}
		if r.cfg.Device != "auto" && r.cfg.Device != "" {
			return fmt.Errorf("-device %s: %s has no %s ops (this build of the CUDA backend "+
				"lacks them); use -device cpu", r.cfg.Device, r.dev.Name(), family)
		}
		r.log.Warn("the GPU backend lacks ops the trainer needs; running on the CPU",
			"device", r.dev.Name(), "missing", family)
		r.dev.Close()
		if r.dev, err = bindings.Open("cpu", r.log); err != nil {
			return err
		}
		break
	}
	if r.cfg.Precision == "bf16" && !r.dev.IsCUDA() {
		return fmt.Errorf("-precision bf16: mixed precision runs on a GPU; %s computes in "+
			"fp32 (use -precision fp32)", r.dev.Name())
	}
	if r.dev.IsCUDA() {
		if r.gpu, err = gpumon.Open(0); err != nil {
			r.log.Debug("no GPU readings", "reason", err)
		}
	}
	if r.prof, err = newProfiler(r.cfg, r.dev, r.log); err != nil {
		return err
	}
	obj, _ := bindings.ParseObjective(r.cfg.Objective)
	r.loss = bindings.Loss{Objective: obj, Tau: r.cfg.Tau}
	r.recipes, _ = r.cfg.Recipes()

	dsOpts := datasets.Options{Split: "train", Logger: r.log}
	if r.train, err = datasets.Open(r.cfg.Data, dsOpts); err != nil {
		return err
	}
	heldPath := r.cfg.EvalData
	if heldPath == "" {
		heldPath = r.cfg.Data
	}
	dsOpts.Split = "test"
	if r.held, err = datasets.Open(heldPath, dsOpts); err != nil || r.held.NumClasses() <= 0 {
		r.log.Warn("no labelled held-out split: the kNN monitor is off", "data", heldPath,
			"reason", err)
		r.held = nil
	}
	if r.train.Len() < r.cfg.N {
		return fmt.Errorf("-data %s: %d images, fewer than -n %d", r.train.Source(),
			r.train.Len(), r.cfg.N)
	}
	r.stepsPerEpoch = r.train.Len() / r.cfg.N
	r.total = int64(r.cfg.Steps)
	if r.total == 0 {
		r.total = int64(r.cfg.Epochs * r.stepsPerEpoch)
	}

	mcfg := model.Config{Arch: r.cfg.Arch, Stem: r.cfg.Stem, Width: r.cfg.Width,
		HeadDims: r.cfg.HeadDims, ZeroInitResidual: r.cfg.ZeroInit, Seed: r.cfg.Seed,
		BF16Activations: r.cfg.Precision == "bf16"}
	if r.model, err = model.New(r.dev, mcfg); err != nil {
		return err
	}
	ocfg := optim.Config{Name: r.cfg.Optimizer, Momentum: r.cfg.Momentum,
		WeightDecay: r.cfg.WeightDecay}
	if r.cfg.Optimizer == "adamw" {
		ocfg.Momentum, ocfg.Beta1 = 0, r.cfg.Momentum
	}
	if r.opt, err = optim.New(ocfg, r.model.Params()); err != nil {
		return err
	}
	r.sched = optim.Schedule{Peak: r.cfg.ScaledLR(), Final: 0, WarmupSteps: r.cfg.WarmupSteps,
		TotalSteps: int(r.total)}
	return nil
}

func (r *run) printSummary() {
	rows := [][2]string{
		{"device", r.dev.Name()},
		{"data", fmt.Sprintf("%s (%d images, %d classes)", r.train.Source(), r.train.Len(),
			r.train.NumClasses())},
		{"model", fmt.Sprintf("%s, head %v, %d parameters", r.cfg.Arch, r.cfg.HeadDims,
			r.model.NumParams())},
		{"objective", fmt.Sprintf("%s, N=%d, M=%d, tau=%g", r.cfg.Objective, r.cfg.N, r.cfg.M,
			r.cfg.Tau)},
		{"views", fmt.Sprintf("%s, %dx%d", r.cfg.Views, r.recipes[0].Height, r.recipes[0].Width)},
		{"optimizer", fmt.Sprintf("%s, lr %g (%s scaling of %g), wd %g, warmup %d",
			r.cfg.Optimizer, r.cfg.ScaledLR(), r.cfg.LRScaling, r.cfg.LR, r.cfg.WeightDecay,
			r.cfg.WarmupSteps)},
		{"schedule", fmt.Sprintf("%d steps (%d per epoch), from step %d", r.total,
			r.stepsPerEpoch, r.step)},
		{"ranks", r.ranksSummary()},
		{"seed", fmt.Sprint(r.cfg.Seed)},
		{"output", r.cfg.Out},
	}
	fmt.Fprintln(r.console, "polyview train")
	for _, row := range rows {
		fmt.Fprintf(r.console, "  %-10s %s\n", row[0], row[1])
	}
	// Every resolved value, one per line, as config.json holds them.
	var all map[string]any
	b, _ := json.Marshal(r.cfg)
	json.Unmarshal(b, &all)
	keys := make([]string, 0, len(all))
	for k := range all {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintln(r.console, "  resolved config:")
	for _, k := range keys {
		v, _ := json.Marshal(all[k])
		fmt.Fprintf(r.console, "    %-14s %s\n", k, v)
	}
}

// loop trains from r.step to r.total.
func (r *run) loop(ctx context.Context) error {
	if r.step == 0 {
		r.res.KNNBefore = r.evalKNN("before")
	}
	r.res.ResumedAtStep = r.step
	bar := newProgress(r.console, r.cfg.Progress, r.total)
	var viewsTimed float64
	var timeTimed time.Duration
	var waitTotal, stepTotal time.Duration
	for r.step < r.total {
		loader, err := datasets.NewLoader(r.train, datasets.LoaderConfig{
			BatchSize: r.localN(), Seed: r.cfg.Seed, Epoch: r.epoch, StartBatch: r.batchInEp,
			Rank: r.rank(), WorldSize: r.world(), Workers: r.cfg.Workers, DropLast: true})
		if err != nil {
			return err
		}
		for r.step < r.total && r.batchInEp < r.stepsPerEpoch {
			t0 := time.Now()
			end := r.dev.Range("data")
			b, err := loader.Next()
			end()
			wait := time.Since(t0)
			eof := errors.Is(err, io.EOF)
			if err != nil && !eof {
				loader.Close()
				return err
			}
			stopped := r.cfg.StopAfter > 0 && r.step-r.res.ResumedAtStep >= int64(r.cfg.StopAfter)
			interrupted := ctx.Err() != nil
			short := !eof && len(b.Samples) < max(2, r.localN())
			if r.group == nil {
				short = !eof && len(b.Samples) < 2
			} else {
				// The ranks move together: a stop asked of any rank stops all
				// at this step; a batch shortened by a bad sample on any rank
				// is skipped by all (the shares must stay equal); the epoch
				// ends when any rank's data does (shards need not split
				// evenly).
				anyStop, anyShort, anyEnd, err := r.agree(interrupted || stopped, short, eof)
				if err != nil {
					if b != nil {
						b.Release()
					}
					loader.Close()
					return fmt.Errorf("step %d: %w", r.step, err)
				}
				interrupted = interrupted || (anyStop && !stopped)
				short, eof = anyShort, anyEnd
			}
			if (interrupted || stopped || eof) && b != nil {
				b.Release()
			}
			if interrupted || stopped {
				loader.Close()
				bar.done()
				why := ErrInterrupted
				if stopped {
					why = ErrStopped
				}
				r.res.Steps = r.step
				if err := r.checkpoint(); err != nil {
					return fmt.Errorf("%w at step %d; checkpoint failed: %v", why, r.step, err)
				}
				return fmt.Errorf("%w at step %d; checkpoint %s", why, r.step, r.res.LastCkpt)
			}
			if eof {
				break // epoch done
			}
			r.batchInEp = b.Position + 1
			if short {
				b.Release()
				continue
			}
			r.prof.beforeStep(r.step)
			loss, err := r.trainStep(b)
			taken := len(b.Samples)
			b.Release() // its memory goes back to the loader: b is not read after this
			if err != nil {
				loader.Close()
				return fmt.Errorf("step %d: %w", r.step, err)
			}
			if math.IsNaN(loss) || math.IsInf(loss, 0) {
				loader.Close()
				return fmt.Errorf("step %d: loss is %v; stopping with the last good checkpoint "+
					"(%s) kept", r.step, loss, orNone(r.res.LastCkpt))
			}
			r.step++
			dt := time.Since(t0)
			views := float64(taken * r.cfg.M * r.world()) // over all ranks
			if r.step > r.res.ResumedAtStep+1 {           // the first step warms up
				viewsTimed += views
				timeTimed += dt
			}
			waitTotal += wait
			stepTotal += dt
			r.res.FinalLoss = loss
			r.res.Losses = append(r.res.Losses, loss)
			vps := views / dt.Seconds()
			bar.update(r.step, loss, vps, waitTotal.Seconds()/stepTotal.Seconds())
			if r.cfg.LogEvery > 0 && r.step%int64(r.cfg.LogEvery) == 0 {
				r.record(loss, vps, waitTotal.Seconds()/stepTotal.Seconds())
			}
			if r.cfg.CkptEvery > 0 && r.step%int64(r.cfg.CkptEvery) == 0 && r.step < r.total {
				if err := r.checkpoint(); err != nil {
					loader.Close()
					return err
				}
			}
		}
		loader.Close()
		if r.step < r.total || r.batchInEp >= r.stepsPerEpoch {
			r.epoch++
			r.batchInEp = 0
			if r.cfg.KNNEvery > 0 && r.epoch%r.cfg.KNNEvery == 0 && r.step < r.total {
				r.evalKNN(fmt.Sprintf("epoch %d", r.epoch))
			}
		}
	}
	bar.done()
	if timeTimed > 0 {
		r.res.ViewsPerSec = viewsTimed / timeTimed.Seconds()
	}
	if stepTotal > 0 {
		r.res.DataWait = waitTotal.Seconds() / stepTotal.Seconds()
	}
	r.res.Steps = r.step
	r.res.KNNAfter = r.evalKNN("after")
	return r.checkpoint()
}

// trainStep runs one optimizer step on a batch and returns its loss.
func (r *run) trainStep(b *datasets.Batch) (float64, error) {
	if len(bindings.Groups(r.recipes)) > 1 {
		return r.multiSizeStep(b)
	}
	n := len(b.Samples)
	end := r.dev.Range("augment")
	err := augmentInto(r.dev, b.Samples, r.recipes, 0, r.cfg.Seed, uint64(b.Epoch),
		r.model.ActDType(), &r.views)
	end()
	if err != nil {
		return 0, fmt.Errorf("views: %w", err)
	}
	end = r.dev.Range("forward")
	h, err := r.model.ForwardViews(r.views, r.cfg.M)
	end()
	if err != nil {
		return 0, err
	}
	if r.dh == nil || !slices.Equal(r.dh.Shape(), h.Shape()) {
		if r.dh != nil {
			r.dh.Close()
		}
		if r.dh, err = r.dev.NewTensor(h.DType(), n, r.cfg.M, r.model.OutDim); err != nil {
			return 0, err
		}
	}
	dh := r.dh
	end = r.dev.Range("loss")
	loss, err := r.lossStep(h, dh)
	end()
	if err != nil {
		return 0, err
	}
	if math.IsNaN(loss) || math.IsInf(loss, 0) {
		return loss, nil
	}
	if err := r.backward(dh); err != nil {
		return 0, err
	}
	end = r.dev.Range("optimizer")
	defer end()
	return loss, r.opt.Step(r.sched.LR(int(r.step)))
}

func (r *run) record(loss, vps, wait float64) {
	if r.metrics == nil {
		return // not rank 0
	}
	rec := metrics.Record{Kind: "step", Step: r.step, Epoch: r.epoch, Loss: loss,
		LR: r.sched.LR(int(r.step - 1)), ViewsPerSec: vps, ImagesPerSec: vps / float64(r.cfg.M),
		DataWait: wait, GPU: r.gpu.Read()}
	if r.group != nil {
		tr := r.group.Traffic()
		rec.SentPerStep = float64(tr.Bytes-r.sentMark.Bytes) / float64(r.step-r.stepMark)
		r.sentMark, r.stepMark = tr, r.step
	}
	if err := r.metrics.Write(rec); err != nil {
		r.log.Warn("metrics", "err", err)
	}
	if !r.cfg.Progress {
		r.log.Info("step", "step", r.step, "loss", fmt.Sprintf("%.4f", loss),
			"lr", fmt.Sprintf("%.4g", rec.LR), "views/s", fmt.Sprintf("%.0f", vps),
			"data_wait", fmt.Sprintf("%.1f%%", 100*wait))
	}
}

// evalKNN measures the encoder with the kNN monitor; NaN when off.
func (r *run) evalKNN(when string) float64 {
	if r.held == nil || r.train.NumClasses() <= 0 || !r.rank0() {
		return math.NaN()
	}
	rec := EvalRecipe(r.recipes[0])
	r.model.SetTraining(false)
	defer r.model.SetTraining(true)
	bank, err := Embed(r.dev, r.model, r.train, rec, r.cfg.KNNBank, 256, false)
	if err == nil {
		var query *Embedding
		if query, err = Embed(r.dev, r.model, r.held, rec, r.cfg.KNNQueries, 256, false); err == nil {
			var acc float64
			if acc, err = eval.KNN(bank.Features, query.Features, r.cfg.KNNK, r.cfg.KNNTemp); err == nil {
				fmt.Fprintf(r.console, "kNN top-1 %s: %.2f%% (k=%d, %d bank, %d queries)\n", when,
					100*acc, r.cfg.KNNK, bank.Features.N, query.Features.N)
				r.metrics.Write(metrics.Record{Kind: "eval", Step: r.step, Epoch: r.epoch,
					KNNTop1: acc})
				r.knn = append(r.knn, metrics.Point{X: float64(r.step), Y: acc})
				return acc
			}
		}
	}
	r.log.Warn("kNN monitor failed", "when", when, "err", err)
	return math.NaN()
}

func orNone(s string) string {
	if s == "" {
		return "none written yet"
	}
	return s
}

// freshOut returns out, or, when out already holds a run (metrics or
// checkpoints) that this one is not resuming, the first free out-2,
// out-3, ...: a new run never mixes its files with, or overwrites the
// checkpoints of, an earlier one.
func freshOut(out string, log *slog.Logger) string {
	used := func(dir string) bool {
		ckpts, _ := filepath.Glob(filepath.Join(dir, "ckpt-*"))
		_, err := os.Stat(filepath.Join(dir, "metrics.jsonl"))
		return len(ckpts) > 0 || err == nil
	}
	if !used(out) {
		return out
	}
	for k := 2; ; k++ {
		next := fmt.Sprintf("%s-%d", out, k)
		if !used(next) {
			log.Info("the output folder holds an earlier run; this run writes elsewhere "+
				"(-resume auto continues the earlier one)", "earlier", out, "now", next)
			return next
		}
	}
}
